"""systemd's sd_notify protocol, without a dependency: READY, WATCHDOG, STOPPING, STATUS.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a datagram unix socket,
``@``-prefixed for the abstract namespace) and, with ``WatchdogSec=``,
``$WATCHDOG_USEC``.  Every function is a no-op returning False outside systemd.
"""

from __future__ import annotations

import os


def notify(state: str) -> bool:
    """Send one state string (``"READY=1"``, ...) to systemd; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    import socket  # here: only a daemon under systemd pays for it (3 ms)

    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
        return True
    except OSError:
        return False


def ready() -> bool:
    """Tell systemd the daemon is up (every actor answered)."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd an orderly stop has begun."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Pet the watchdog."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """A one-line status for ``systemctl status``."""
    return notify("STATUS=" + text.replace("\n", " "))


def watchdog_interval() -> float | None:
    """Seconds between watchdog pets (half of ``WatchdogSec``), or None when no watchdog is asked for.

    As libsystemd's ``sd_watchdog_enabled``: ``$WATCHDOG_USEC`` must be a positive
    integer and, when ``$WATCHDOG_PID`` is set, it must name this process (children
    that inherit the environment do not pet the watchdog).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    if not usec.isdigit() or int(usec) <= 0:
        return None
    return max(0.05, int(usec) / 2e6)

"""Where the panel listens and its token: ``<run dir>/panel.json`` (mode 0600, in the 0700 run directory).

The supervisor's panel extension writes the file when a client asks for the
panel (``ensemble panel``, ``up --panel``); the panel process reads it at
every start, so a restarted panel (killed, or terminated alone) serves the
same port and token and an open page reconnects.  When the port asked for is
0 the panel writes back the port it got.  The CLI reads the token from it to
print the URL: only the daemon's own user can.  The file goes when the daemon
stops (the panel removes it on the daemon's ``Stop``); one an earlier daemon
left behind is removed when the next one starts its children.

Also the checks of an address, as pure functions: :func:`host_refusal` (what
the daemon refuses before any process tries it) and :func:`bind_refusal` (why
an address could not be bound, and what to do instead).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import secrets
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "panel.json"
DEFAULT_PORT = 8765
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class PanelSettings:
    """The panel's address and the token its WebSocket and uploads must carry (the page keeps it in its tab)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str = ""
    serial: int = 0  # which request for the panel wrote it: the panel reports the serial it last tried to serve

    @property
    def loopback(self) -> bool:
        """Whether the panel binds only the loopback interface."""
        return is_loopback(self.host)

    def url(self, with_token: bool = True) -> str:
        """The page's address (with ``?token=...`` the first visit needs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if with_token else "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_refusal(host: str) -> str:
    """Why the panel cannot be asked to bind ``host`` ("" if it may try): not an IP address or a host name.

    Only the text is checked, never resolved (the daemon's loop must not
    wait for DNS): a name that does not resolve is a :func:`bind_refusal`.
    Dotted numbers are an IPv4 address or nothing (``999.999.1.1`` is refused).
    """
    fix = "give an IP address of this host (127.0.0.1: this host only; 0.0.0.0: every interface) or a host name"
    try:
        ipaddress.ip_address(host)
        return ""
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"panel host {host[:100]!r} is not an IP address or a host name; {fix}"
    if labels[-1].isdigit():  # a name never ends in a number: meant as an IPv4 address, and it is none
        return f"panel host {host[:100]!r} is not an IPv4 address (four numbers 0..255); {fix}"
    return ""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``PORT`` or ``HOST`` -> (host, port); raises ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = ("", text) if text.isdigit() else (text, str(DEFAULT_PORT))
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"panel address {text!r}: the port must be 0..65535")
    why = host_refusal(host)
    if why:
        raise ValueError(why)
    return host, int(port)


# where a panel's address is given: its own command's flags, or the daemon's (`up --panel` has no --host)
_WHERE = "`ensemble panel --host ADDRESS --port N`, or `ensemble up --panel ADDRESS:PORT`"


def bind_refusal(host: str, port: int, exc: OSError) -> str:
    """What a failed bind of ``host:port`` means for the user, and the fix: the panel's error text."""
    code = exc.errno
    if isinstance(exc, socket.gaierror):
        return (f"cannot bind {host}: the name does not resolve ({exc.strerror or exc}); "
                f"give an IP address of this host ({_WHERE})")
    reason = os.strerror(code) if code else str(exc)
    if code == errno.EADDRINUSE:
        return (f"port {port} is in use on {host} (another program listens there); choose another port with "
                f"{_WHERE} (port 0: any free port), or stop the program that holds it")
    if code == errno.EADDRNOTAVAIL:
        return (f"cannot bind {host}: {reason} (no interface of this host has that address); give one of its "
                f"addresses ({_WHERE}; 127.0.0.1: this host only)")
    if code == errno.EACCES:
        return (f"cannot bind {host}:{port}: {reason} (ports below 1024 need privileges); "
                f"choose a port from 1024 up ({_WHERE})")
    return f"cannot bind {host}:{port}: {reason}; choose another address ({_WHERE})"


def new_token() -> str:
    """A fresh token (32 bytes from the OS's random source, URL-safe)."""
    return secrets.token_urlsafe(32)


def read(run_dir: Path) -> PanelSettings | None:
    """The settings in ``run_dir``, or None if no panel was asked for (or the file is unreadable)."""
    try:
        data = json.loads((run_dir / FILE).read_text())
        return PanelSettings(str(data["host"]), int(data["port"]), str(data["token"]), int(data.get("serial", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(run_dir: Path, settings: PanelSettings) -> None:
    """Write the settings atomically, readable by the daemon's user only."""
    tmp = run_dir / (FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(settings), f)
    os.replace(tmp, run_dir / FILE)


def remove(run_dir: Path) -> None:
    """Remove the settings file (the daemon stops; nothing is left in the run directory)."""
    remove_written(run_dir, FILE)


def remove_written(run_dir: Path, file: str) -> None:
    """Remove ``file`` of the run directory and the temporary file it is written through, if there."""
    for name in (file, file + ".tmp"):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass

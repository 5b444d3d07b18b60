"""Where the panel listens and its token: ``<run dir>/panel.json`` (mode 0600, in the 0700 run directory).

The supervisor's panel extension writes the file when a client asks for the
panel (``ensemble panel``, ``up --panel``); the panel process reads it at
every start, so a restarted panel serves the same port and token and an open
page reconnects.  When the port asked for is 0 the panel writes back the port
it got.  The CLI reads the token from it to print the URL: only the daemon's
own user can.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "panel.json"
DEFAULT_PORT = 8765
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class PanelSettings:
    """The panel's address and the token every request must carry (in the URL once, then as a cookie)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str = ""

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


def new_token() -> str:
    """A fresh token (32 bytes from the OS's random source, URL-safe)."""
    return secrets.token_urlsafe(32)


def read(run_dir: Path) -> PanelSettings | None:
    """The settings in ``run_dir``, or None if no panel was asked for (or the file is unreadable)."""
    try:
        data = json.loads((run_dir / FILE).read_text())
        return PanelSettings(str(data["host"]), int(data["port"]), str(data["token"]))
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
    for name in (FILE, FILE + ".tmp"):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass

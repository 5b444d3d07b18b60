"""A real daemon started with its panel (``ensemble up --panel 127.0.0.1:0``), and raw HTTP helpers."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import Daemon


@dataclass
class Panel:
    """The daemon, the URL ``up --panel`` printed, and the address and token in it."""

    daemon: Daemon
    url: str
    port: int
    token: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request with exactly the headers given (plus Host unless given)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if body is not None:
                hdrs["Content-Length"] = str(len(body))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()


def start_panel(d: Daemon) -> Panel:
    out = d.cli("up", "--timeout", "120", "--panel", "127.0.0.1:0", timeout=180).stdout
    d.pid = int((d.base / "run" / "daemon.pid").read_text())
    m = re.search(r"panel: (http://127\.0\.0\.1:(\d+)/\?token=(\S+))", out)
    assert m, out
    settings = json.loads((d.base / "run" / "panel.json").read_text())
    assert settings["token"] == m.group(3) and settings["port"] == int(m.group(2))
    return Panel(d, m.group(1), int(m.group(2)), m.group(3))


@pytest.fixture
def panel(make_daemon: Callable[..., Daemon]) -> Panel:
    """A daemon (null audio, 2 workers) with its panel on a free loopback port."""
    return start_panel(make_daemon())


@pytest.fixture(scope="module")
def shared_panel() -> Iterator[Panel]:
    """One daemon with its panel for a whole test module (for tests that only read, or clean up after them)."""
    base = Path(tempfile.mkdtemp(prefix="ens-p"))
    d = Daemon(base)
    try:
        yield start_panel(d)
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "instruments"


def loaded(p: Panel, script: Path) -> Any:
    """Load ``script`` and wait until the processor runs it; returns a client."""
    from tests.conftest import wait_for

    c = p.daemon.client()
    c.load_script(str(script), wait=60)  # a reload of the same script too: the processor's stats alone cannot tell
    wait_for(lambda: p.daemon.actor("processor").stats.get("script") == str(script.resolve()),
             what="the script to load")
    return c


@dataclass
class Kill:
    """What stood before the panel was killed: its ActorInfo, the processor's blocks, the others' pids."""

    panel: Any
    blocks: int
    others: dict[str, int]

    def others_untouched(self, d: Daemon) -> bool:
        """Whether processor and controller are the very processes they were before the kill."""
        return {a.name: a.pid for a in d.status().actors if a.role in ("processor", "controller")} == self.others


def kill_panel(d: Daemon) -> Kill:
    """SIGKILL the panel's process (by its pid), having noted what must not change."""
    import os
    import signal

    st = d.status().actors
    before = Kill(next(a for a in st if a.role == "panel"), next(a for a in st if a.role == "processor").stats["blocks"],
                  {a.name: a.pid for a in st if a.role in ("processor", "controller")})
    os.kill(before.panel.pid, signal.SIGKILL)
    return before

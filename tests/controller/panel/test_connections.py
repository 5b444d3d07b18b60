"""Connections before the token (``controller.panel._connections``): a deadline each, a cap on all, quiet accepts.

The gate's bookkeeping first, with a fake clock and no sockets; then a real
panel of a real daemon against a peer without the token that opens
connections and never finishes a request's headers.
"""

from __future__ import annotations

import socket
import time
from typing import Iterator

import psutil
import pytest

from controller.panel._connections import HEADER_TIMEOUT, Gate, limits
from controller.panel._requestlog import BURST
from tests.conftest import Daemon, wait_for
from tests.controller.panel.conftest import Panel


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_untrusted_connections_past_their_share_close_the_oldest_and_past_the_total_the_newest() -> None:
    clock = Clock()
    gate = Gate((5, 3), timeout=10.0, clock=clock)
    assert [gate.opened(c) for c in "abc"] == [[], [], []]
    gate.trust("b")  # showed the token: it keeps its place
    assert gate.opened("d") == [] and gate.opened("e") == ["a"]  # the oldest untrusted goes for the newest
    assert gate.opened("f") == ["c"] and gate.open() == 4
    gate.trust("d")
    assert gate.opened("g") == [] and gate.open() == 5
    assert gate.opened("h") == ["h"] and gate.refused == 1  # the total reached: the new one is closed
    gate.closed("b")
    assert gate.opened("i") == ["e"]


def test_an_untrusted_connection_expires_at_its_deadline_a_trusted_one_never() -> None:
    clock = Clock()
    gate = Gate((10, 8), timeout=10.0, clock=clock)
    gate.opened("a")
    clock.now = 5.0
    gate.opened("b")
    gate.opened("c")
    gate.trust("c")
    clock.now = 10.0
    assert gate.expired() == ["a"]
    clock.now = 1000.0
    assert gate.expired() == ["b"] and gate.open() == 1 and gate.timed_out == 2


def test_the_limits_leave_a_reserve_and_follow_a_low_descriptor_limit() -> None:
    assert limits(20000) == (256, 192)
    total, untrusted = limits(100)
    assert total == 50 and untrusted < total


def _half_open(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send part of a request's headers and nothing more (no token)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-a: " % port)
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


def _panel_lines(d: Daemon, start: int) -> list[str]:
    with open(d.base / "state" / "daemon.log", "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").splitlines()


def _log_size(d: Daemon) -> int:
    return (d.base / "state" / "daemon.log").stat().st_size


@pytest.fixture
def flood(panel: Panel) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow  # 5-13 s: the default suite stays under its 5 minutes
@pytest.mark.timeout(120)
def test_half_open_connections_without_the_token_are_capped_and_closed_and_the_token_holder_gets_in(
        panel: Panel, flood: list[socket.socket]) -> None:
    """300 connections that never finish their headers (no token): past the untrusted share the oldest are closed,
    a request with the token is answered meanwhile, every one of the 300 is closed within the header deadline,
    and the log says so in a bounded number of lines."""
    start = _log_size(panel.daemon)
    flood.extend(_half_open(panel.port, 300))
    total, untrusted = limits(psutil.Process(panel.daemon.actor("panel").pid).rlimit(psutil.RLIMIT_NOFILE)[0])
    wait_for(lambda: sum(_closed_by_server(s) for s in flood) >= 300 - untrusted, what="the oldest to be closed")
    status, _, body = panel.request("GET", f"/?token={panel.token}")
    assert status in (200, 303), body
    wait_for(lambda: all(_closed_by_server(s) for s in flood), HEADER_TIMEOUT + 30, interval=0.5,
             what="every connection without the token to be closed at its deadline")
    lines = [ln for ln in _panel_lines(panel.daemon, start) if "ensemble.panel.http" in ln]
    assert any("panel-connection-dropped" in ln for ln in lines), lines
    assert any("panel-connection-timeout" in ln for ln in lines), lines
    assert len(lines) <= BURST, lines


@pytest.mark.slow  # 5-13 s: the default suite stays under its 5 minutes
@pytest.mark.timeout(120)
def test_accepts_that_find_no_descriptor_are_logged_within_the_budget(panel: Panel,
                                                                     flood: list[socket.socket]) -> None:
    """With the panel's descriptor limit just over what it holds, a flood of connections makes its accepts
    fail: that is a few log lines (the traceback each time filled 155 MB of log in 50 s), and once the flood
    is gone the token holder gets in."""
    proc = psutil.Process(panel.daemon.actor("panel").pid)
    hard = proc.rlimit(psutil.RLIMIT_NOFILE)[1]
    proc.rlimit(psutil.RLIMIT_NOFILE, (proc.num_fds() + 16, hard))
    start = _log_size(panel.daemon)
    flood.extend(_half_open(panel.port, 60))  # the kernel's backlog holds those the panel cannot accept
    end = time.monotonic() + 3
    wait_for(lambda: time.monotonic() > end and "panel-accept-failed" in "".join(_panel_lines(panel.daemon, start)),
             what="the panel to fail accepts for a while")
    for s in flood:
        s.close()
    flood.clear()
    wait_for(lambda: panel.request("GET", f"/?token={panel.token}")[0] in (200, 303), 30, interval=0.5,
             what="the token holder to get in once the flood is gone")
    lines = _panel_lines(panel.daemon, start)
    assert not any("Traceback" in ln or "out of system resource" in ln for ln in lines), lines[:20]
    assert len([ln for ln in lines if "ensemble.panel.http" in ln]) <= BURST, lines

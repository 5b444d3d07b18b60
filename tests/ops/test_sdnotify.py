"""systemd notifications: a real daemon tells a real notify socket READY, WATCHDOG and STOPPING."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tests.conftest import wait_for


def test_daemon_sends_ready_watchdog_and_stopping(make_daemon: Any, short_tmp: Path) -> None:
    path = str(short_tmp / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    got: list[str] = []

    def received(text: str) -> bool:
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        return any(text in g for g in got)

    try:
        d = make_daemon(extra_env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        d.up()
        wait_for(lambda: received("READY=1"), what="READY=1")
        wait_for(lambda: sum("WATCHDOG=1" in g for g in got) >= 2 or received("WATCHDOG=1") and
                 sum("WATCHDOG=1" in g for g in got) >= 2, what="two watchdog pets")
        assert any(g.startswith("STATUS=") for g in got)
        d.down()
        wait_for(lambda: received("STOPPING=1"), what="STOPPING=1")
    finally:
        sock.close()


def test_without_systemd_every_call_is_a_no_op(monkeypatch: Any) -> None:
    from actors import _sdnotify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert _sdnotify.ready() is False and _sdnotify.watchdog_interval() is None

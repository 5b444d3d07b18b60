"""actors._sdnotify against real AF_UNIX datagram sockets, as systemd's NOTIFY_SOCKET is.

(tests/ops/test_sdnotify.py checks that a real daemon sends READY/WATCHDOG/STOPPING;
these check the client itself: addresses, datagram contents, the watchdog rules.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from actors import _sdnotify

ROOT = Path(__file__).resolve().parent.parent.parent


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def notify_socket(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket at a filesystem path, named in $NOTIFY_SOCKET."""
    path = str(short_tmp / "notify")
    sock = _receiver(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()


def test_each_call_sends_one_datagram_with_its_state(notify_socket: socket.socket) -> None:
    assert _sdnotify.ready() is True
    assert _sdnotify.watchdog() is True
    assert _sdnotify.status("4 actors running") is True
    assert _sdnotify.stopping() is True
    assert _sdnotify.notify("RELOADING=1") is True
    got = [notify_socket.recv(4096) for _ in range(5)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"STATUS=4 actors running", b"STOPPING=1", b"RELOADING=1"]


def test_status_is_one_line(notify_socket: socket.socket) -> None:
    # the protocol is newline-separated VAR=value: a newline would start a new assignment
    assert _sdnotify.status("worker-1 failed\nREADY=1") is True
    assert notify_socket.recv(4096) == b"STATUS=worker-1 failed READY=1"


def test_abstract_socket_names_start_with_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ensemble-test-notify-{os.getpid()}-{os.urandom(4).hex()}"
    sock = _receiver("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert _sdnotify.ready() is True
        assert _sdnotify.watchdog() is True
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_outside_systemd_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert [_sdnotify.ready(), _sdnotify.watchdog(), _sdnotify.stopping(), _sdnotify.status("x")] == [False] * 4
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert _sdnotify.ready() is False


def test_a_socket_nobody_listens_on_is_reported_not_raised(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "gone"))
    assert _sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@ensemble-test-nobody-" + os.urandom(6).hex())
    assert _sdnotify.watchdog() is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    (None, None, None),                  # no WatchdogSec=
    ("10000000", None, 5.0),             # WatchdogSec=10s: pet every 5 s
    ("10000000", "self", 5.0),           # WATCHDOG_PID names this process
    ("10000000", "1", None),             # ... or another one: not ours to pet
    ("10000000", "not-a-pid", None),
    ("0", None, None),
    ("-5", None, None),
    ("ten", None, None),
    ("1", None, 0.05),                   # a floor so the poll loop never spins
])
def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch, usec: str | None,
                                                    pid: str | None, expected: float | None) -> None:
    for var, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    assert _sdnotify.watchdog_interval() == expected


def test_children_that_inherit_the_environment_do_not_pet_the_watchdog() -> None:
    env = dict(os.environ, WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid()), PYTHONPATH=str(ROOT))
    code = "from actors import _sdnotify; print(_sdnotify.watchdog_interval())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "None"
    env["WATCHDOG_PID"] = "$$"  # not a pid: treated as not ours
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "None"

"""``ensemble top`` in a real terminal (a pty) while the daemon stops or stops answering, and with no terminal.

The deadlines for ``top`` to end (20 s) are no timing assertions: they are
generous bounds for what now takes a refresh or two, chosen under the 30 s
for which the old ``top`` waited on one unanswered request (its only way
out), so that a ``top`` that waits the daemon out fails instead of passing
late.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Daemon, wait_for

_ESCAPES = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_]|\][^\x07]*\x07)")
_ENDS_WITHIN = 20.0  # s: see the module's doc


class _Terminal:
    """``ensemble top`` run by this process on a pty of 160x40; what it wrote, escapes removed, in :meth:`text`."""

    def __init__(self, daemon: Daemon) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.master = master
        self.out = bytearray()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "actors", "top", "--refresh", "0.2"],
                                         stdin=slave, stdout=slave, stderr=slave, env=daemon.env)
        finally:
            os.close(slave)
        self.reader = threading.Thread(target=self._read, name="top-pty-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every end of the pty's other side is closed (top exited)
                return
            if not chunk:
                return
            self.out += chunk

    def text(self) -> str:
        return _ESCAPES.sub(b"", bytes(self.out)).decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def exit_status(self) -> int | None:
        return self.proc.poll()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(10)
        os.close(self.master)


@pytest.fixture
def terminal(jobs_daemon: Daemon) -> Iterator[_Terminal]:
    term = _Terminal(jobs_daemon)
    try:
        wait_for(lambda: "worker-1" in term.text() and "worker-2" in term.text(), 60, what="top to show the workers")
        yield term
    finally:
        term.close()


def test_top_ends_by_itself_when_the_daemon_stops(jobs_daemon: Daemon, terminal: _Terminal) -> None:
    """`down` while top runs: top says the daemon stopped, in one line, and exits 0 (a daemon stopped on purpose is
    not top's failure). Before, it showed every actor running for 30 s and then exited 1 with a timeout."""
    jobs_daemon.down()
    wait_for(lambda: terminal.exit_status() is not None, _ENDS_WITHIN, what="top to exit once the daemon stopped")
    wait_for(lambda: not terminal.reader.is_alive(), 10, what="top's last output")
    assert terminal.exit_status() == 0, terminal.text()[-2000:]
    assert "the daemon 't' stopped" in terminal.text()
    assert "did not answer" not in terminal.text()


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_top_ends_with_an_error_when_the_daemon_dies(jobs_daemon: Daemon, terminal: _Terminal) -> None:
    """The daemon killed (SIGKILL: its socket left behind): top exits 1 with one error line saying it died and what
    to do. Before, it froze for 30 s and blamed a timeout."""
    os.kill(jobs_daemon.pid, signal.SIGKILL)
    wait_for(lambda: terminal.exit_status() is not None, _ENDS_WITHIN, what="top to exit once the daemon died")
    wait_for(lambda: not terminal.reader.is_alive(), 10, what="top's last output")
    assert terminal.exit_status() == 1, terminal.text()[-2000:]
    assert (f"ensemble: error: the daemon 't' died (its files are left in {jobs_daemon.base / 'run'}); "
            "`ensemble up --name t` starts it again and runs the jobs in its journal") in terminal.text()


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_top_quits_on_q_while_the_daemon_does_not_answer(jobs_daemon: Daemon, terminal: _Terminal) -> None:
    """A daemon that holds its lock but answers nothing (stopped with SIGSTOP): top says it has no answer, shows
    the last state, and quits on q. Before, it was blocked in the request and read no key for 30 s."""
    os.kill(jobs_daemon.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "no answer from the daemon" in terminal.text(), _ENDS_WITHIN,
                 what="top to say the daemon does not answer")
        terminal.type("q")
        wait_for(lambda: terminal.exit_status() is not None, _ENDS_WITHIN, what="top to quit on q")
    finally:
        os.kill(jobs_daemon.pid, signal.SIGCONT)
    assert terminal.exit_status() == 0, terminal.text()[-2000:]


def test_top_refuses_output_that_is_no_terminal(jobs_daemon: Daemon) -> None:
    """`ensemble top | cat`: one error line naming the commands for a pipe, exit status 2, at once. Before, it
    printed nothing until interrupted (the subprocess's timeout ends it here)."""
    proc = jobs_daemon.cli("top", check=False, timeout=_ENDS_WITHIN)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == ("ensemble: error: top needs a terminal; use `ensemble status` or `ensemble jobs` for "
                           "output to a pipe or file\n")


def test_top_into_a_pipe_says_it_needs_a_terminal_before_it_looks_for_a_daemon(tmp_path: Any) -> None:
    """With no daemon running, `ensemble top | cat` said "no daemon" (exit 1): the pipe is the mistake either
    way, and starting a daemon would not have helped."""
    env = {**os.environ, "ENSEMBLE_NAME": "nobody-home", "ENSEMBLE_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.run([sys.executable, "-m", "actors", "top"], env=env, capture_output=True, text=True,
                          timeout=_ENDS_WITHIN)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("ensemble: error: top needs a terminal"), proc.stderr

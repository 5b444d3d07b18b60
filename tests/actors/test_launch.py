"""Starting a daemon in the background: the readiness pipe says exactly when it serves, or why it never will."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from actors import DaemonError
from actors._launch import start_daemon, wait_signal
from actors.client import Client
from actors.config import Config, load_config
from tests.conftest import fd_targets


def _config(base: Path, run_dir: Path) -> Config:
    cfg = load_config(env={})
    return dataclasses.replace(cfg, daemon=dataclasses.replace(
        cfg.daemon, name="launch", workers="2", run_dir=str(run_dir), state_dir=str(base / "state"), extensions=()))


def test_the_readiness_pipe_reports_a_daemon_that_cannot_start_with_its_own_words(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("not a directory")
    cfg = _config(short_tmp, short_tmp / "file" / "run")
    read_end, write_end = os.pipe()
    try:
        proc = start_daemon(cfg, short_tmp / "daemon.err", None, write_end)
    finally:
        os.close(write_end)
    with pytest.raises(DaemonError, match="is not a directory"):
        wait_signal(proc, read_end, 60, short_tmp / "daemon.err")  # end of file, not the 60 s timeout
    assert proc.wait(10) == 1


def test_a_daemon_signals_ready_once_it_answers_and_its_workers_do_not_hold_the_pipe(short_tmp: Path) -> None:
    cfg = _config(short_tmp, short_tmp / "run")
    read_end, write_end = os.pipe()
    pipe = f"pipe:[{os.fstat(read_end).st_ino}]"
    try:
        proc = start_daemon(cfg, short_tmp / "daemon.err", None, write_end)
    finally:
        os.close(write_end)
    try:
        wait_signal(proc, read_end, 60, short_tmp / "daemon.err")
        with Client(config=cfg, timeout=10) as c:
            status = c.status()  # answered: the sockets were bound before the signal
            workers = [a.pid for a in status.actors if a.role == "worker"]
            assert len(workers) == 2
            for pid in [proc.pid, *workers]:
                assert pipe not in fd_targets(pid), f"pid {pid} still holds the readiness pipe"
            c.shutdown()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    run = short_tmp / "run"
    assert not (run.exists() and [p for p in run.iterdir() if p.is_socket()])


def test_the_wait_times_out_loudly_when_nothing_is_written(short_tmp: Path) -> None:
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                            pass_fds=(write_end,))  # holds the write end and never writes
    os.close(write_end)
    try:
        with pytest.raises(DaemonError, match="not ready within 0.3s"):
            wait_signal(proc, read_end, 0.3, short_tmp / "daemon.err")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)

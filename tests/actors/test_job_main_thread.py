"""Jobs run on their worker's main thread, as a ``ProcessPoolExecutor`` worker's do; the worker's signals still work.

A per-call timeout by ``signal.alarm`` and a check for the main thread work in
a job submitted by a client and by an :class:`ensemble.Executor`.  The
supervision loop runs on a thread of its own, and SIGTERM (an orderly stop),
SIGINT (dropped) and a job's own SIGTERM handler (it runs instead of the
worker's, and the daemon still stops the worker) are checked on real workers.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from actors.client import Executor
from tests import jobs
from tests.conftest import Daemon, pid_alive, running_daemon, wait_for

_DEADLINE = 60.0  # s a job here may run before the daemon aborts it (each takes a second or two)


@pytest.fixture(scope="module")
def main_daemon() -> Iterator[Daemon]:
    """A jobs-only daemon shared by this module's tests that only submit jobs."""
    yield from running_daemon(Path(tempfile.mkdtemp(prefix="ens-m")), jobs_only=True)


def _workers(d: Daemon) -> set[int]:
    return {a.pid for a in d.status().actors if a.role == "worker" and a.state == "running"}


def _read_pid(marker: Path) -> int:
    wait_for(marker.exists, 60, what=f"the job to write its worker's pid to {marker}")
    return int(marker.read_text())


def test_a_job_runs_on_the_main_thread(main_daemon: Daemon) -> None:
    """``threading.current_thread() is threading.main_thread()`` in a job, from a client and from an Executor."""
    c = main_daemon.client()
    assert c.submit(jobs.on_main_thread, deadline=_DEADLINE).result(_DEADLINE + 30) == [True, "MainThread"]
    with Executor(config=main_daemon.config) as ex:
        assert ex.submit(jobs.on_main_thread).result(_DEADLINE) == [True, "MainThread"]
        assert list(ex.map(jobs.identity, range(3), timeout=_DEADLINE)) == [0, 1, 2]


@pytest.mark.slow  # waits for the alarm: ~3 s
def test_signal_alarm_times_out_a_call_in_a_job(main_daemon: Daemon) -> None:
    """``signal.signal(SIGALRM, handler); signal.alarm(1)`` cuts a long sleep short, as in a process pool
    (on a job thread ``signal.signal`` raised "signal only works in main thread of the main interpreter")."""
    c = main_daemon.client()
    assert c.submit(jobs.alarm_timeout, 1, deadline=_DEADLINE).result(_DEADLINE + 30) == "timed out"
    with Executor(config=main_daemon.config) as ex:
        assert ex.submit(jobs.alarm_timeout, 1).result(_DEADLINE) == "timed out"
        assert list(ex.map(jobs.alarm_timeout, [1, 1], timeout=_DEADLINE)) == ["timed out", "timed out"]


def test_sigint_does_not_interrupt_a_job(jobs_daemon: Daemon, tmp_path: Path) -> None:
    """A Ctrl-C is the daemon's to act on: the worker's handler drops it, and the job's sleep goes on."""
    marker, gate = tmp_path / "pid", tmp_path / "gate"
    c = jobs_daemon.client()
    h = c.submit(jobs.pid_then_wait, str(marker), str(gate), deadline=_DEADLINE)
    pid = _read_pid(marker)
    for _ in range(3):
        os.kill(pid, signal.SIGINT)
    gate.touch()
    assert h.result(_DEADLINE + 30) == "released"
    assert pid in _workers(jobs_daemon)


def test_sigterm_stops_an_idle_worker(jobs_daemon: Daemon) -> None:
    """The handler runs on the main thread, which waits for a job: the loop thread stops all the same, and the
    daemon replaces the worker."""
    c = jobs_daemon.client()
    assert c.submit(jobs.identity, 1).result(60) == 1
    before = _workers(jobs_daemon)
    victim = min(before)
    os.kill(victim, signal.SIGTERM)
    wait_for(lambda: not pid_alive(victim), 30, what=f"worker {victim} to stop on SIGTERM")
    wait_for(lambda: len(_workers(jobs_daemon) - before) == 1, 60, what="a new worker in its place")
    assert [h.result(60) for h in [c.submit(jobs.identity, n) for n in range(4)]] == [0, 1, 2, 3]


def test_sigterm_aborts_the_running_job_and_stops_the_worker(jobs_daemon: Daemon, tmp_path: Path) -> None:
    """An orderly stop while a job runs: the job is asked to abort, its result is sent, the worker ends."""
    marker = tmp_path / "pid"
    c = jobs_daemon.client()
    h = c.submit(jobs.pid_then_wait, str(marker), str(tmp_path / "never"), deadline=_DEADLINE)
    pid = _read_pid(marker)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), 30, what=f"worker {pid} to stop on SIGTERM")
    assert h.result(60) == "aborted"


def test_a_job_s_own_sigterm_handler_runs_instead_and_the_daemon_still_stops_the_worker(
        jobs_daemon: Daemon, tmp_path: Path) -> None:
    """As in a ``ProcessPoolExecutor`` worker, the job's handler wins (the worker does not stop on SIGTERM then);
    a daemon stopping stops the worker all the same (its Stop message needs no signal)."""
    marker = tmp_path / "caught"
    c = jobs_daemon.client()
    pid = c.submit(jobs.own_sigterm_handler, str(marker), deadline=_DEADLINE).result(_DEADLINE + 30)
    os.kill(pid, signal.SIGTERM)
    wait_for(marker.exists, 30, what="the job's SIGTERM handler to run")
    assert [h.result(60) for h in [c.submit(jobs.identity, n) for n in range(4)]] == [0, 1, 2, 3]
    assert pid in _workers(jobs_daemon)
    jobs_daemon.down()
    wait_for(lambda: not pid_alive(pid), 30, what=f"worker {pid} to stop with its daemon")


def test_stop_ends_a_worker_whose_job_never_returns(jobs_daemon: Daemon) -> None:
    """A job that ignores its abort (a long C sleep) on the main thread: the loop thread ends the process."""
    c = jobs_daemon.client()
    c.submit(jobs.sleep, 3600.0)
    wait_for(lambda: any(j.state == "running" for j in c.jobs()), 60, what="the job to start")
    pids = _workers(jobs_daemon)
    jobs_daemon.down()  # fails if the daemon is still there after 30 s
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, what=f"workers {pids} to end")

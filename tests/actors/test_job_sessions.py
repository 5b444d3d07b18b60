"""Processes a local worker's jobs start in a session of their own end with the daemon at the latest.

A local worker's jobs' processes die with its process group, but one started
with ``setsid`` (``start_new_session=True``, a daemonizing helper) leaves the
group: once its parent ended it went to init and outlived ``ensemble down``.
The daemon is a child subreaper now (:mod:`actors._subreaper`): it adopts such
orphans, reaps those that end, and kills the rest when it stops.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from actors._procs import stat
from tests import jobs
from tests.conftest import pid_alive, processes_mentioning, wait_for


def _ours(pid: int) -> bool:
    """Whether ``pid`` is still a ``sleep`` this test's job started, not a pid reused since."""
    try:
        return pid_alive(pid) and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00")
    except OSError:
        return False


def test_a_jobs_processes_in_sessions_of_their_own_are_reaped_and_end_with_the_daemon(make_daemon: Any,
                                                                                      tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    pids: list[int] = []
    try:
        pids = d.client().submit(jobs.leave_sessions, str(tmp_path / "pids")).result(60)
        child, orphan, brief = pids
        # outside the worker's group and session (the orphan's pid is echoed before `setsid` ran in it: waited for)
        wait_for(lambda: os.getsid(child) == child and os.getsid(orphan) == orphan, 30, what="their own sessions")
        wait_for(lambda: stat(orphan) is not None and int(stat(orphan)[1]) == d.pid, 30,  # type: ignore[index]
                 what="the daemon to adopt the orphan (before: init did)")
        wait_for(lambda: stat(brief) is None, 30, what="the orphan that ended to be reaped (not left a zombie)")
        assert pid_alive(child) and pid_alive(orphan)  # a job may leave a helper running: it is not killed early
        d.down()
        assert not pid_alive(child) and not pid_alive(orphan), "left running after the daemon stopped"
    finally:
        for pid in pids:
            if _ours(pid):
                os.kill(pid, signal.SIGKILL)


_OWN_CHILD_UNREADABLE = """
import os, resource, subprocess, time
from actors import _subreaper
from actors._procs import stat

child = subprocess.Popen(["sh", "-c", "exit 3"])
_subreaper.started(child.pid)
while stat(child.pid)[0] != "Z":  # ended, not reaped: as a slot's process is until the daemon reads its pidfd
    time.sleep(0.01)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
held = []
try:
    while True:  # every descriptor taken: /proc cannot be read
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    reaped = _subreaper.reap_adopted()
finally:
    for fd in held:
        os.close(fd)
print(reaped, child.wait())
"""


def test_an_ended_child_of_the_daemons_own_is_left_to_its_owner_when_proc_cannot_be_read() -> None:
    """With no descriptor left (tests/reliability/test_descriptor_exhaustion.py), the daemon could not read whether
    an ended child was one it started, took it for an orphan and reaped it: its owner then read no exit status
    (``subprocess`` says 0), and the scan of ``/proc`` that followed raised out of the daemon's loop."""
    out = subprocess.run([sys.executable, "-c", _OWN_CHILD_UNREADABLE], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "3"]  # none reaped; its owner reads its own exit code


def test_a_killed_jobs_processes_in_sessions_of_their_own_go_with_it(make_daemon: Any, tmp_path: Path) -> None:
    """A job that ignores its cancel: the daemon kills its worker's process group, and what the job started in a
    session of its own (a child, a grandchild) lived on until the daemon stopped; it goes with the job now."""
    from actors import JobCancelled

    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    pids: list[int] = []
    try:
        pidfile = tmp_path / "pids"
        job = d.client().submit("tests.jobs:ignore_abort_with_sessions", str(pidfile), grace=0.3)
        pids = [int(p) for p in wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60,
                                         what="the job's processes' pids").split()]
        # (the grandchild's pid is echoed as `sh` forks it, before `setsid` ran in it: waited for, not asserted)
        wait_for(lambda: all(os.getsid(p) == p for p in pids), 30, what="the job's processes in their own sessions")
        assert all(pid_alive(p) for p in pids)
        info = job.cancel(block=True)
        assert info is not None and info.state == "killed"
        try:
            job.result(30)
        except JobCancelled:
            pass
        wait_for(lambda: not any(pid_alive(p) for p in pids), 30,
                 what=f"the killed job's processes {pids} to go with it (the daemon still runs)")
        assert d.client().submit(jobs.square, 4).result(60) == 16  # its worker was replaced
    finally:
        for pid in pids:
            if _ours(pid):
                os.kill(pid, signal.SIGKILL)


def test_what_a_job_left_before_its_worker_was_killed_or_crashed_goes_and_an_earlier_job_s_helper_stays(
        make_daemon: Any, tmp_path: Path) -> None:
    """A process a job left in a session of its own whose launcher had already exited (an orphan of the daemon by
    then) lived on when the daemon killed the job's worker (kill_below reads only the worker's tree), and so did
    everything such a job left when its worker crashed on its own.  They go with the job now; a helper an earlier
    job on that worker left on purpose stays."""
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client()
    pids: list[int] = []
    try:
        helpers = c.submit(jobs.leave_sessions, str(tmp_path / "helpers")).result(60)[:2]  # a child, an orphan
        pids += helpers
        # /proc counts start times in clock ticks: one started in the tick a job starts in counts as that job's
        born = max(int(stat(p)[19]) for p in helpers)  # type: ignore[index]
        wait_for(lambda: time.clock_gettime_ns(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK") // 10**9 > born, 30,
                 what="the clock to pass the helpers' start tick")
        for then in ("ignore", "crash"):
            pidfile = tmp_path / then
            job = c.submit("tests.jobs:orphan_then", str(pidfile), then, grace=0.3)
            orphan = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, what="the orphan's pid"))
            pids.append(orphan)
            wait_for(lambda: os.getsid(orphan) == orphan and int(stat(orphan)[1]) == d.pid, 30,  # type: ignore[index]
                     what="the orphan to be the daemon's (its launcher exited)")
            if then == "ignore":
                info = job.cancel(block=True)
                assert info is not None and info.state == "killed", info
            else:
                assert job.wait(60).state == "worker-lost"
            wait_for(lambda: not _ours(orphan), 30,
                     what=f"the orphan the {then} job left to go with it (it lived until the daemon stopped)")
            assert all(_ours(p) for p in helpers)  # an earlier job's helpers stay
        assert c.submit(jobs.square, 5).result(60) == 25
    finally:
        for pid in pids:
            if _ours(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # a daemon killed and brought up again
def test_what_jobs_left_running_when_their_daemon_was_killed_goes_at_its_next_start(make_daemon: Any,
                                                                                   tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    pids: list[int] = []
    try:
        child, orphan, _ = pids = d.client().submit(jobs.leave_sessions, str(tmp_path / "pids")).result(60)
        wait_for(lambda: os.getsid(child) == child and os.getsid(orphan) == orphan, 30, what="their own sessions")
        os.kill(d.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
                 what="the daemon and its worker to die")
        assert _ours(child) and _ours(orphan)  # init has them now: nothing else would end them
        d.up()
        wait_for(lambda: not _ours(child) and not _ours(orphan), 30,
                 what="the killed daemon's jobs' helpers to be killed at its next start (they ran for ever)")
        logged = (d.base / "state" / "daemon.log").read_text()
        # (the third, a sleep of 0.5 s, may have ended by then)
        assert re.search(r"event=jobs-left-killed count=[23] ", logged), logged[-3000:]
        d.down()
    finally:
        for pid in pids:
            if _ours(pid):
                os.kill(pid, signal.SIGKILL)

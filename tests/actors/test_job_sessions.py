"""Processes a local worker's jobs start in a session of their own end with the daemon at the latest.

A local worker's jobs' processes die with its process group, but one started
with ``setsid`` (``start_new_session=True``, a daemonizing helper) leaves the
group: once its parent ended it went to init and outlived ``ensemble down``.
The daemon is a child subreaper now (:mod:`actors._subreaper`): it adopts such
orphans, reaps those that end, and kills the rest when it stops.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from actors._procs import stat
from tests import jobs
from tests.conftest import pid_alive, wait_for


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
        assert os.getsid(child) == child and os.getsid(orphan) == orphan  # outside the worker's group and session
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

"""A worker whose job holds the GIL in one long C call: silent, but busy, so not replaced (actors.supervisor._children).

Its heartbeats stop (the worker's main thread cannot run), but it keeps using
the CPU, which the supervisor reads from /proc once a heartbeat is late; a
worker that is silent *and* idle (hung on a lock with the GIL held) is
replaced at the heartbeat timeout as before.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from actors import JobLost, Task
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_FAST = {"ENSEMBLE_SUPERVISION_HEARTBEAT_INTERVAL": "0.1", "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "0.6"}


def busy_in_c(task: Task, seconds: float, marker: str) -> int:
    """A job: touch ``marker``, then one ``pow`` (C, GIL held, CPU-bound) of about ``seconds``; the worker's pid."""
    modulus = (1 << 8192) | 1
    t = time.perf_counter()
    pow(3, (1 << 300) - 1, modulus)  # the cost of one exponent bit on this machine, now
    per_bit = (time.perf_counter() - t) / 300
    bits = max(300, int(seconds / per_bit))
    Path(marker).touch()
    pow(3, (1 << bits) - 1, modulus)
    return os.getpid()


def stuck_in_c(task: Task, marker: str) -> None:
    """A job: touch ``marker``, then sleep in C with the GIL held (a hung extension): silent and idle."""
    Path(marker).touch()
    ctypes.PyDLL(None).sleep(3600)  # PyDLL: the GIL stays held through the call


def _worker(d: Daemon) -> Any:
    return d.actor("worker-1")


def _started(make_daemon: Callable[..., Daemon], tmp_path: Path, fn: str, *args: Any) -> tuple[Daemon, int, Any]:
    """A one-worker daemon with fast heartbeats running job ``fn(*args, marker)`` in its C call: (daemon, the
    worker's pid, the job)."""
    d = make_daemon(workers=1, extra_env=_FAST, jobs_only=True)
    d.up()
    pid = _worker(d).pid
    marker = tmp_path / "started"
    job = d.client().submit(f"{__name__}:{fn}", *args, str(marker))
    wait_for(marker.exists, 60, what="the job to start its C call")
    return d, pid, job


@pytest.mark.slow  # a 3 s call in C: ~4 s
def test_a_job_holding_the_gil_in_c_is_not_taken_for_a_dead_worker(make_daemon: Callable[..., Daemon],
                                                                   tmp_path: Path) -> None:
    d, pid, job = _started(make_daemon, tmp_path, "busy_in_c", 3.0)  # five heartbeat timeouts without a heartbeat
    wait_for(lambda: _worker(d).detail.startswith("busy"), 30, what="status to say the worker is busy in C")
    assert job.result(120) == pid  # it ran to its end, in the worker it started in
    w = _worker(d)
    assert w.pid == pid and w.restarts == 0, [line for line in (d.base / "state" / "daemon.log").read_text().splitlines()
                                              if "worker-1" in line]
    wait_for(lambda: not _worker(d).detail, 30, what="the busy note to clear once it answers again")
    log = (d.base / "state" / "daemon.log").read_text()
    assert "event=busy-silent name=worker-1" in log and "event=silent name=worker-1" not in log


def test_a_job_hung_in_c_with_the_gil_still_loses_its_worker(make_daemon: Callable[..., Daemon],
                                                             tmp_path: Path) -> None:
    d, pid, job = _started(make_daemon, tmp_path, "stuck_in_c")
    with pytest.raises(JobLost):
        job.result(60)
    assert "silent" in _worker(d).detail
    wait_for(lambda: _worker(d).pid not in (0, pid) and _worker(d).state == "running", 60,
             what="a new worker to replace the hung one")

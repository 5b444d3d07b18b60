"""A daemon whose loop stalls past the heartbeat timeout (a long request, the host's scheduler) loses no job."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_FAST = {"ENSEMBLE_SUPERVISION_HEARTBEAT_INTERVAL": "0.1", "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "0.6"}


def held(marker: str, release: str) -> int:
    """A job: touch ``marker``, wait until ``release`` exists (at most 120 s); the worker's pid."""
    Path(marker).touch()
    end = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
    return os.getpid()


def _gone_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow  # waits out 3 s of silence: run by .ci/run's slow pass (the default suite stays under 5 minutes)
def test_a_worker_waits_out_its_daemons_silence_and_its_job_ends_done(make_daemon: Callable[..., Daemon],
                                                                      tmp_path: Path) -> None:
    """A local worker left when its daemon said nothing for ``heartbeat_timeout``, so one request that held the
    daemon's loop for seconds (a probe's 60M job ids) lost every running job; its parent alive, it waits now."""
    d = make_daemon(workers=1, extra_env=_FAST, jobs_only=True)
    d.up()
    pid = d.actor("worker-1").pid
    marker, release = tmp_path / "started", tmp_path / "release"
    job = d.client().submit(f"{__name__}:held", str(marker), str(release))
    wait_for(marker.exists, 60, what="the job to start")
    os.kill(d.pid, signal.SIGSTOP)
    try:
        silence = time.monotonic() + 5 * 0.6  # five heartbeat timeouts of silence, unless the worker leaves first
        wait_for(lambda: time.monotonic() > silence or _gone_or_zombie(pid), 60, what="a long silence")
    finally:
        os.kill(d.pid, signal.SIGCONT)
    release.touch()
    assert job.result(60) == pid  # done, by the same worker: not lost, not run again elsewhere
    assert not _gone_or_zombie(pid)
    assert "supervisor silent" in (d.base / "state" / "daemon.log").read_text()


_SLOW_BEAT = {"ENSEMBLE_SUPERVISION_HEARTBEAT_INTERVAL": "0.1", "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "2"}


@pytest.mark.slow  # waits out 5 s of silence: run by .ci/run's slow pass
def test_a_daemon_back_from_a_stall_measures_silences_from_its_return(make_daemon: Callable[..., Daemon],
                                                                      tmp_path: Path) -> None:
    """Back from a stall, the daemon's first heartbeat tick judged each child by the time since it last read from
    it: the whole stall, though what the child sent meanwhile was still queued, so a worker the host scheduled a
    moment after the daemon was replaced and its job lost (a CI run under load).  A stall of its own loop now
    restarts every silence; here the worker is held until the daemon has ticked, so the race is certain."""
    d = make_daemon(workers=1, extra_env=_SLOW_BEAT, jobs_only=True)
    d.up()
    c = d.client()
    pid = d.actor("worker-1").pid
    marker, release = tmp_path / "started", tmp_path / "release"
    job = c.submit(f"{__name__}:held", str(marker), str(release))
    wait_for(marker.exists, 60, what="the job to start")
    os.kill(pid, signal.SIGSTOP)
    try:
        os.kill(d.pid, signal.SIGSTOP)
        try:
            silence = time.monotonic() + 2.5 * 2  # two and a half heartbeat timeouts
            wait_for(lambda: time.monotonic() > silence, 60, what="a long silence")
        finally:
            os.kill(d.pid, signal.SIGCONT)
        c.ping()
        c.ping()  # answered in a later loop iteration than the first: the daemon's first tick after the stall ran
    finally:
        os.kill(pid, signal.SIGCONT)
    release.touch()
    assert job.result(60) == pid  # done, by the same worker: not replaced as silent
    assert "event=daemon-stalled" in (d.base / "state" / "daemon.log").read_text()

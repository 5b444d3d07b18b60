"""A shared daemon killed for good: what waits on it ends after ``[jobs] reconnect_wait``, never waits for ever."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

import pytest

from actors import DaemonError
from actors.client import Executor
from tests import jobs
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for


@pytest.mark.slow  # a daemon killed, and two seconds of waiting for it: ~5 s
def test_jobs_and_calls_on_a_daemon_that_does_not_come_back_end_saying_so(
        make_daemon: Callable[..., Daemon], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An Executor's future waited for ever, and so did the `with` block's shutdown (PPE: BrokenProcessPool);
    a Client's handle too. Now each ends once the daemon has been gone for reconnect_wait, saying where the
    jobs are."""
    d = make_daemon(workers=2, jobs_only=True, extra_env={"ENSEMBLE_JOBS_RECONNECT_WAIT": "2"})
    d.up()
    ex = Executor(config=d.config)
    fut = ex.submit(jobs.plain_sleep, 120)
    wait_for(fut.running, 60, what="the executor's job to start")
    c = d.client(timeout=10)
    handle = c.submit("tests.jobs:sleep", 120)
    wait_for(lambda: handle.refresh().state == "running", 60, what="the client's job to start")
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its workers to die")
    # both connections (the executor's, the client's) noticed: a submit sent before that fails as one the daemon
    # may or may not have taken (TransportError), not as one made while it is away
    wait_for(lambda: caplog.text.count("event=daemon-disconnected") >= 2, 30, what="the clients to notice")
    markers, gate = tmp_path / "markers", tmp_path / "gate"
    markers.mkdir()
    gate.touch()
    late = ex.submit(jobs.plain_gate, str(markers), str(gate))  # while it is gone: held by ZeroMQ, then dropped
    with pytest.raises(BrokenProcessPool, match="reconnect_wait"):
        late.result(60)
    with pytest.raises(BrokenProcessPool, match="reconnect_wait") as info:
        fut.result(60)
    assert "still in its journal" in str(info.value)
    with pytest.raises(BrokenProcessPool):
        ex.submit(jobs.square, 2)
    ended = handle.wait(60)
    assert ended.state == "worker-lost" and "reconnect_wait" in ended.error_message, ended
    with pytest.raises(DaemonError, match="reconnect_wait"):
        c.status()
    d.up()  # a daemon started again never gets the submit its caller was told had failed (the executor still open)
    fresh = d.client()
    assert fresh.submit("examples.jobs:add", 1, 2).result(60) == 3
    # (ZeroMQ's reconnect may take seconds: this sees a held submit only if it came by now; without the socket's
    # disconnect at the give-up, one came within 5 s here)
    assert list(markers.iterdir()) == [] and not [j for j in fresh.jobs() if j.fn.endswith("plain_gate")]
    ex.shutdown(wait=True)  # returns: nothing is left to wait for

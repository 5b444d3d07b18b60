"""A child asked to stop before it finished connecting still hears the Stop (real daemon, real processes).

The daemon's ROUTER refuses a frame for a peer it does not know yet, so a
Stop sent to a worker that was still starting was lost: the worker said
Hello afterwards and waited out the stop grace for SIGTERM (a short
``with Executor()`` block sometimes took 2 s to close).  The daemon now
keeps the Stop owed and sends it with the Hello's answer.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable

from tests.conftest import Daemon, pid_alive, wait_for


def _starting_worker(d: Daemon, name: str) -> Any:
    """The actor ``name`` once it has a pid, frozen with SIGSTOP while it is still starting (before its Hello)."""
    info = wait_for(lambda: next((a for a in d.status().actors if a.name == name and a.pid), None), 30,
                    interval=0.002, what=f"{name} to be spawned")
    os.kill(info.pid, signal.SIGSTOP)
    return info


def _log(d: Daemon) -> str:
    return (d.base / "state" / "daemon.log").read_text()


def test_a_worker_still_starting_when_the_daemon_stops_gets_its_stop_when_it_connects(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    d.client().scale(2)  # a fresh interpreter after start-up: ~0.1 s or more before it connects
    worker = _starting_worker(d, "worker-2")
    try:
        assert worker.state == "starting", worker
        d.client().shutdown()
        wait_for(lambda: "event=stopping" in _log(d), 30, what="the daemon to begin stopping")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_for(lambda: not pid_alive(d.pid), 60, what="the daemon to exit")
    log = _log(d)
    assert "event=stop-resent name=worker-2 reason=" in log, log[-2000:]
    assert "event=sigterm" not in log, log[-2000:]  # it stopped when asked, not after the grace
    assert not pid_alive(worker.pid)


def test_a_worker_still_starting_when_scaled_down_stops_when_it_connects(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    c.scale(2)
    worker = _starting_worker(d, "worker-2")
    try:
        assert worker.state == "starting", worker
        c.scale(1)
        wait_for(lambda: "event=scale workers=1" in _log(d), 30, what="the scale-down")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_for(lambda: not pid_alive(worker.pid), 30, what="the scaled-down worker to exit")
    assert "event=stop-resent name=worker-2 reason=scaled down" in _log(d)
    # (its exit and the daemon's reaping of it are two moments: status drops it at the second)
    wait_for(lambda: [a.name for a in d.status().actors if a.role == "worker"] == ["worker-1"], 30,
             what="status to list worker-1 alone")
    assert c.submit("examples.jobs:add", 2, 3).result(30) == 5

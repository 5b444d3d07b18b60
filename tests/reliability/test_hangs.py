"""Restart intensity and hangs, with their figures."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from actors._procs import zombies_of
from tests.conftest import pid_alive, wait_for
from tests.reliability.history import report

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # the fault-injection suite: .ci/run runs it (-m slow)


def test_a_child_crashing_on_start_is_spawned_at_most_limit_plus_one_times(make_daemon: Any) -> None:
    d = make_daemon(extra_env={"ENSEMBLE_TEST_CRASH_ROLE": "controller"})
    d.cli("up", check=False)  # the controller never becomes ready; the daemon stays up
    d.pid = int((d.base / "run" / "daemon.pid").read_text())
    ctl = wait_for(lambda: (a := d.actor("controller")).state == "failed" and a, 60, what="controller marked failed")
    log = (d.base / "state" / "daemon.log").read_text()
    spawns = len(re.findall(r"event=spawn name=controller ", log))
    workers = [a for a in d.status().actors if a.role == "worker"]
    report("restart intensity", {"spawns": spawns, "limit": 5, "state": ctl.state, "detail": ctl.detail,
                                 "siblings_running": all(a.state == "running" for a in workers)})
    assert spawns <= 6 and "gave up" in ctl.detail and "CRITICAL" in log
    assert all(a.state == "running" and a.restarts == 0 for a in workers)


def test_stopped_worker_and_gil_holding_job_are_detected(make_daemon: Any, tmp_path: Path) -> None:
    d = make_daemon(workers=2)
    d.up()
    c = d.client()
    hb = d.config.supervision
    # a job spinning with the GIL held, never checking should_abort(), cancelled
    spin = c.submit("tests.jobs:spin_started", 3600.0, grace=0.3)
    wait_for(lambda: spin.refresh().status == "spinning", what="the spin to have started")
    t = time.monotonic()
    spin.cancel()
    final = spin.wait(60)
    spin_s = time.monotonic() - t
    # a SIGSTOPped worker running a job: stopped once the job has begun in it (a job shown "running" may not have
    # begun yet, and one that never began is requeued, not lost, when its worker dies)
    markers = tmp_path / "markers"
    markers.mkdir()
    sleeper = c.submit("tests.jobs:plain_gate", str(markers), str(tmp_path / "gate"), 3600.0)
    wait_for(lambda: any(markers.iterdir()), what="sleeper begun")
    victim = next(a for a in d.status().actors if a.name == sleeper.refresh().worker)
    os.kill(victim.pid, signal.SIGSTOP)
    t = time.monotonic()
    try:
        lost = sleeper.wait(60)
        stop_s = time.monotonic() - t
    finally:
        if pid_alive(victim.pid):
            os.kill(victim.pid, signal.SIGCONT)
    wait_for(lambda: not pid_alive(victim.pid), what="the stopped worker to be gone")
    # the worker's sentinel, orphaned by its death, ends as the daemon's child (a subreaper): reaped within a tick
    zombies: list[int] = []
    try:
        wait_for(lambda: not zombies_of(d.pid), 10, what="the daemon's ended children to be reaped")
    except AssertionError:
        zombies = zombies_of(d.pid)
    report("hangs", {"spin_cancel_to_end_s": round(spin_s, 3), "spin_state": final.state,
                     "sigstop_detect_s": round(stop_s, 3), "sigstop_state": lost.state,
                     "heartbeat_timeout_plus_interval_s": hb.heartbeat_timeout + hb.heartbeat_interval,
                     "zombies": len(zombies)})
    assert final.state == "killed" and lost.state == "worker-lost" and not zombies
    assert [e[1] for e in sleeper.events()].count("killed") <= 1


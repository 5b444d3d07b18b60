"""Jobs under faults, Jepsen-style: every operation recorded, the history checked at the end.

Worker kill -9 chaos, a crash right behind a finished job, daemon kill -9
under a 4-client burst.  Reduced sizes run in the default suite;
``ENSEMBLE_FULL=1`` runs the issue's sizes (2,000 chaos jobs).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors.client import make_spec
from tests.conftest import pid_alive, processes_mentioning, wait_for
from tests.reliability.history import History, full, report

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # the fault-injection suite: .ci/run runs it (-m slow)


def _running_workers(d: Any) -> list[Any]:
    return [a for a in d.status().actors if a.role == "worker" and a.state == "running" and a.pid]


def _chaos(d: Any, history: History, stop: threading.Event, seed: int) -> None:
    """SIGKILL a random running worker every 0.5-2 s (0.2-0.6 s at the reduced size) until ``stop``."""
    rng = random.Random(seed)
    low, high = (0.5, 2.0) if full() else (0.2, 0.6)
    while not stop.wait(rng.uniform(low, high)):
        alive = _running_workers(d)
        if alive:
            victim = rng.choice(alive).pid
            history.killed(victim)
            os.kill(victim, signal.SIGKILL)


def test_worker_kill_9_chaos_loses_nothing_and_reruns_only_with_the_right(make_daemon: Any, tmp_path: Path) -> None:
    n = 2000 if full() else 300
    d = make_daemon(workers=2, extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "100000"})
    d.up()
    c = d.client(timeout=60)
    log = tmp_path / "executions"
    history = History()
    stop = threading.Event()
    killer = threading.Thread(target=_chaos, args=(d, history, stop, 7), daemon=True)
    killer.start()
    try:
        handles = []
        for start in range(0, n, 50):
            specs = [make_spec("tests.jobs:record_execution", [str(log), 0.01], {}, retries=i % 3)
                     for i in range(start, min(n, start + 50))]
            history.invoke(len(specs))
            batch = c.submit_many(specs)
            history.ack([h.id for h in batch])
            handles += batch
        for h in handles:
            info = h.wait(300)
            history.observe(h.id, info.state, info.result)
    finally:
        stop.set()
        killer.join(10)
    figures = history.check(d.base / "state" / "jobs.sqlite3", log, results_are_ids=True)
    figures["worker_kills"] = len(history.killed_pids)
    report("1. worker kill -9 chaos", figures)
    assert figures["lost"] == [] and figures["unexpected"] == [], figures
    assert figures["duplicated_rows"] == [] and figures["duplicated_results"] == [] and figures["wrong_results"] == []
    assert figures["ran_twice_without_right"] == [], figures
    assert figures["still_running"] == [] and figures["integrity_check"] == "ok"
    assert figures["worker_kills"] > 0


def test_a_job_started_behind_a_finished_one_runs_at_most_once_when_its_worker_dies(make_daemon: Any,
                                                                                   tmp_path: Path) -> None:
    # A worker runs the jobs handed to it back to back: the second may start (and crash the worker) before
    # the result of the first has left the process.  Neither may run again without retries.
    pairs = 50 if full() else 10
    d = make_daemon(workers=1, extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "100000"})
    d.up()
    c = d.client(timeout=60)
    log = tmp_path / "executions"
    history = History()
    crashers = set()
    for _ in range(pairs):
        specs = [make_spec("tests.jobs:record_execution", [str(log)], {}),
                 make_spec("tests.jobs:record_then_crash", [str(log)], {})]
        history.invoke(2)
        batch = c.submit_many(specs)
        history.ack([h.id for h in batch])
        crashers.add(batch[1].id)
        for h in batch:
            info = h.wait(60)
            history.observe(h.id, info.state, info.result)
    figures = history.check(d.base / "state" / "jobs.sqlite3", log)
    report("1b. crash right behind a finished job", figures)
    assert figures["lost"] == [] and figures["unexpected"] == [] and figures["duplicated_results"] == []
    assert figures["ran_twice"] == [] and figures["executions"] == 2 * pairs
    assert {i for i, seen in history.observed.items() if seen[0][0] == "worker-lost"} >= crashers


_BURST = """
import sys
from actors.client import Client, make_spec
from actors.config import load_config
log, invoked, acked, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    with Client(config=load_config(), timeout=10) as c, open(invoked, "a") as inv, open(acked, "a") as out:
        for i in range(0, count, 20):
            specs = [make_spec("tests.jobs:record_execution", [log], {}, retries=(i + k) % 2) for k in range(20)]
            inv.write("20\\n")
            inv.flush()
            ids = [h.id for h in c.submit_many(specs)]
            out.write("".join(f"{j}\\n" for j in ids))
            out.flush()
except Exception:  # the daemon died under us: that is the point
    pass
"""


def test_daemon_kill_9_during_a_burst_from_4_clients_loses_no_acknowledged_job(make_daemon: Any,
                                                                              tmp_path: Path) -> None:
    d = make_daemon(workers=2)
    d.up()
    log = tmp_path / "executions"
    invoked = [tmp_path / f"invoked{i}" for i in range(4)]
    acked = [tmp_path / f"acked{i}" for i in range(4)]
    per_client = 4000 if full() else 1000
    clients = [subprocess.Popen([sys.executable, "-c", _BURST, str(log), str(inv), str(ack), str(per_client)],
                                env=d.env) for inv, ack in zip(invoked, acked)]
    try:
        wait_for(lambda: sum(len(p.read_text().split()) for p in acked if p.exists()) >= 200, 60, what="a burst")
        os.kill(d.pid, signal.SIGKILL)
        t = time.monotonic()
        wait_for(lambda: not processes_mentioning(str(d.base)), 10, interval=0.005,
                 what="the dead daemon's children to follow it")
        children_gone_s = time.monotonic() - t
        for p in clients:
            p.wait(60)
    finally:
        for p in clients:
            if p.poll() is None:
                p.kill()
                p.wait()
    wait_for(lambda: not pid_alive(d.pid), what="daemon death")
    d.up()
    history = History()
    history.invoke(sum(int(x) for p in invoked if p.exists() for x in p.read_text().split()))
    history.ack([int(x) for p in acked if p.exists() for x in p.read_text().split()])
    c = d.client(timeout=60)
    for jid in sorted(history.acknowledged):
        info = c.job(jid).wait(120)
        history.observe(jid, info.state, info.result)
    wait_for(lambda: not c.jobs(states=["queued", "running"]), 120, what="recovered jobs to finish too")
    figures = history.check(d.base / "state" / "jobs.sqlite3", log, results_are_ids=True)
    figures["children_gone_after_kill_s"] = round(children_gone_s, 3)
    report("2. daemon kill -9 during a 4-client burst", figures)
    assert figures["lost"] == [] and figures["unexpected"] == [] and figures["duplicated_results"] == []
    assert figures["ran_twice_without_right"] == [] and figures["wrong_results"] == []
    assert figures["integrity_check"] == "ok" and figures["still_running"] == []

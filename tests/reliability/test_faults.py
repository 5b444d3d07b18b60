"""Reliability under faults, Jepsen-style: every operation recorded, the history checked at the end.

Reduced sizes run in the default suite; ``ENSEMBLE_FULL=1`` runs the full
sizes of the issue (2,000 chaos jobs, 200 soak cycles, 10,000 hostile frames).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from actors.client import make_spec
from tests.conftest import pid_alive, wait_for
from tests.reliability.history import History, full, is_zombie_child, report

pytestmark = pytest.mark.reliability


def _workers(d: Any) -> list[Any]:
    return [a for a in d.status().actors if a.role == "worker" and a.state == "running" and a.pid]


def test_worker_kill_chaos_loses_nothing_and_runs_twice_only_with_the_right(make_daemon: Any, tmp_path: Path) -> None:
    n = 2000 if full() else 300
    d = make_daemon(workers=2, extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "1000"})
    d.up()
    c = d.client(timeout=60)
    runs = tmp_path / "runs"
    history = History()
    tags: dict[int, int] = {}
    stop = threading.Event()
    kills = [0]

    def chaos() -> None:
        rng = random.Random(7)
        while not stop.wait(rng.uniform(0.5, 2.0) if full() else rng.uniform(0.2, 0.6)):
            alive = _workers(d)
            if alive:
                os.kill(rng.choice(alive).pid, signal.SIGKILL)
                kills[0] += 1

    killer = threading.Thread(target=chaos, daemon=True)
    killer.start()
    try:
        handles = []
        for start in range(0, n, 50):
            specs = [make_spec("tests.jobs:record_run", [str(runs), i, 0.01], {}, retries=i % 2)
                     for i in range(start, min(n, start + 50))]
            batch = c.submit_many(specs)
            history.ack([h.id for h in batch])
            tags.update({h.id: start + k for k, h in enumerate(batch)})
            handles += batch
        for h in handles:
            history.observe(h.id, h.wait(300).state)
    finally:
        stop.set()
        killer.join(10)
    figures = history.check(d.base / "state" / "jobs.sqlite3", runs, tags)
    figures["kills"] = kills[0]
    report("worker kill -9 chaos", figures)
    assert figures["lost"] == [] and figures["unexpected"] == [] and figures["duplicated_results"] == []
    assert figures["ran_twice_without_right"] == []
    assert figures["integrity_check"] == "ok" and kills[0] > 0
    no_retry = {jid for jid, tag in tags.items() if tag % 2 == 0}
    assert not set(figures["ran_twice"]) & no_retry  # retries=0 jobs never run twice


_BURST = """
import sys
from actors.client import Client, make_spec
from actors.config import load_config
path, count = sys.argv[1], int(sys.argv[2])
try:
    with Client(config=load_config(), timeout=10) as c, open(path, "a") as out:
        for _ in range(0, count, 20):
            ids = [h.id for h in c.submit_many([make_spec("examples.jobs:noop", [], {}) for _ in range(20)])]
            out.write("".join(f"{i}\\n" for i in ids))
            out.flush()
except Exception:  # the daemon died under us: that is the point
    pass
"""


def test_daemon_kill_9_during_a_burst_from_4_clients(make_daemon: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    d = make_daemon(workers=1)
    d.up()
    acked = [tmp_path / f"acked{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _BURST, str(p), str(4000 if full() else 1000)], env=d.env)
             for p in acked]
    wait_for(lambda: sum(p.exists() and len(p.read_text().split()) for p in acked) >= 200, 60, what="a burst")
    os.kill(d.pid, signal.SIGKILL)
    for p in procs:
        p.wait(60)
    wait_for(lambda: not pid_alive(d.pid), what="daemon death")
    d.up()
    history = History()
    history.ack([int(x) for p in acked if p.exists() for x in p.read_text().split()])
    c = d.client()
    for jid in sorted(history.acknowledged):
        history.observe(jid, c.job(jid).wait(120).state)
    figures = history.check(d.base / "state" / "jobs.sqlite3")
    report("daemon kill -9 during a 4-client burst", figures)
    assert figures["lost"] == [] and figures["integrity_check"] == "ok"
    assert "running" not in figures["states"]


def test_leak_soak_kill_restart_cycles(make_daemon: Any) -> None:
    cycles = 200 if full() else 20
    d = make_daemon(workers=2, extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "100000"})
    d.up()
    c = d.client()
    prefix = f"ensemble.{d.config.shm_key}."

    def fds() -> int:
        return len(os.listdir(f"/proc/{d.pid}/fd"))

    def rss() -> int:
        with open(f"/proc/{d.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def settle(gone: int) -> None:
        wait_for(lambda: (st := d.status()) and all(a.state == "running" and a.pid != gone for a in st.actors),
                 60, what="every actor back, the killed one replaced")

    for _ in range(5):  # warm-up
        victim = _workers(d)[0]
        os.kill(victim.pid, signal.SIGKILL)
        settle(victim.pid)
    fd0, rss0 = fds(), rss()
    for i in range(cycles):
        name = "processor" if i % 4 == 0 else None
        victim = d.actor("processor") if name else _workers(d)[0]
        os.kill(victim.pid, signal.SIGKILL)
        settle(victim.pid)
    assert c.submit("examples.jobs:add", 1, 1).result(30) == 2
    zombies = [p for p in os.listdir("/proc") if p.isdigit() and is_zombie_child(int(p), d.pid)]
    orphans = [p for p in os.listdir("/dev/shm") if p.startswith(prefix)]
    figures = {"cycles": cycles, "fd_delta": fds() - fd0, "rss_growth": round(rss() / rss0 - 1, 4),
               "zombies": zombies, "orphan_segments": orphans}
    report("leak soak", figures)
    assert abs(figures["fd_delta"]) <= 5 and figures["rss_growth"] < 0.10 and not zombies and not orphans



def test_producer_killed_while_writing_a_buffer_is_never_played(make_daemon: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    d = make_daemon(workers=0)
    d.up()
    code = ("import sys, numpy as np\nfrom actors.client import Client\nfrom actors.config import load_config\n"
            "c = Client(config=load_config())\n"
            "data = np.ones(50_000_000, dtype=np.float32)\n"  # 200 MB: the copy takes a while
            "print('writing', flush=True)\nc.upload_sample(data, 'half', 48000)\nprint('done', flush=True)\n")
    prefix = f"ensemble.{d.config.shm_key}."
    before = {p for p in os.listdir("/dev/shm") if p.startswith(prefix)}
    producer = subprocess.Popen([sys.executable, "-c", code], env=d.env, stdout=subprocess.PIPE, text=True)
    assert producer.stdout is not None and producer.stdout.readline().strip() == "writing"
    wait_for(lambda: {p for p in os.listdir("/dev/shm") if p.startswith(prefix)} - before, 60,
             what="the producer's segment to appear")
    producer.send_signal(signal.SIGKILL)
    producer.wait(30)
    c = d.client()
    registered = [s.name for s in c.samples()]
    proc = d.actor("processor")
    figures = {"registered": registered, "mapped_by_processor": proc.stats.get("samples", [])}
    d.down()  # the orphaned segment is swept with the daemon's other segments
    figures["segments_left"] = sorted({p for p in os.listdir("/dev/shm") if p.startswith(prefix)})
    report("producer SIGKILLed mid-write", figures)
    assert registered == [] and figures["mapped_by_processor"] == [] and figures["segments_left"] == []

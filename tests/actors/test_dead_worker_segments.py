"""What a killed job had made in shared memory goes with its worker; what a result names stays for its taker.

A job killed under its worker (an ignored cancel, a deadline, a crash) left its ``task.empty()`` arrays in
``/dev/shm`` until ``ensemble down``: a job killed at its deadline each minute filled it.  Against a real daemon,
its real worker killed by the daemon itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from actors.shm import SHM_DIR
from tests.conftest import Daemon, wait_for


def test_a_killed_job_s_segments_are_unlinked_and_an_untaken_result_s_stay(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client()
    pid = next(a.pid for a in c.status().actors if a.role == "worker")
    worker_made = f"ensemble.{d.config.shm_key}.{pid}."
    # a result nobody has taken yet, made by the worker about to be killed: submitted unwatched (as `ensemble
    # submit` without --wait), so no client took it as it ended
    (kept_id,) = c.conn.submit([c.spec("tests.jobs:make_shared", 1000)]).result(60)
    wait_for(lambda: _listed(c, kept_id), 60, what="the result")
    kept = [n for n in os.listdir(SHM_DIR) if n.startswith(worker_made)]
    assert len(kept) == 1, kept

    marker = tmp_path / "segment"
    job = c.submit("tests.jobs:fill_shared", 1_000_000, str(marker), grace=0.2)
    wait_for(marker.exists, 60, what="the job's task.empty() array")
    made = SHM_DIR / marker.read_text()
    assert made.exists()
    assert made.name.startswith(worker_made)  # the worker's own segment
    c.cancel(job.id)  # it ignores the abort: killed after its 0.2 s grace
    assert job.wait(60).state == "killed"
    wait_for(lambda: not made.exists(), 30, what="the killed job's segment to be unlinked (it stayed until down)")
    assert c.status().daemon.counters.get("dead_worker_segments_unlinked") == 1
    assert (SHM_DIR / kept[0]).exists()  # a result's segment is its taker's
    assert c.job(kept_id).result(60).tolist() == [1.5] * 1000
    assert c.submit("tests.jobs:make_shared", 3).result(60).tolist() == [1.5] * 3  # the new worker serves


def _listed(c: Any, job_id: int) -> bool:
    return any(i.id == job_id and i.state == "done" for i in c.jobs(limit=10))



"""A result array nobody takes leaves shared memory when its job is pruned (it stayed until `ensemble down`).

The daemon is a private one, forked from this process (``ENSEMBLE_PRIVATE_START=fork``), so it prunes as this
module patches it: every 50 ms, jobs that ended 2 s before (retention 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Iterator

import numpy as np
import pytest

from actors.client import Client
from actors.shm import SHM_DIR
from tests.conftest import ROOT, wait_for


@pytest.fixture
def pruning_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A private daemon (one worker) that prunes every job as soon as it ended."""
    import actors.supervisor as supervisor
    import actors.supervisor._work as work

    monkeypatch.setenv("ENSEMBLE_PRIVATE_START", "fork")  # a fork of this process: it runs with these patches
    monkeypatch.setenv("ENSEMBLE_JOBS_RETENTION", "0")
    monkeypatch.setattr(supervisor, "PRUNE_FIRST_S", 0.05)
    monkeypatch.setattr(supervisor, "PRUNE_EVERY_S", 0.05)
    # pruned 2 s after they end: time for a client to take a result array first (at 0, a loaded machine's
    # client found its array pruned before it took it)
    monkeypatch.setattr(work, "KEEP_ENDED_S", 2.0)
    with Client(private=True, max_workers=1) as c:
        yield c


def _segments(prefix: str) -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith(prefix)}


def test_result_arrays_nobody_took_are_unlinked_when_their_jobs_are_pruned(pruning_client: Client) -> None:
    c = pruning_client
    prefix = f"ensemble.{c.config.shm_key}."
    own = c.empty(100_000)  # the client's own segment: a job that returns it hands back the client's memory
    own[:] = 3.0
    taken = c.submit("tests.jobs:make_shared", 100_000)
    assert float(taken.result(60)[0]) == 1.5  # taken: its taker unlinked it; pruning it later finds it gone
    before = _segments(prefix)
    ids = [c.conn.submit([c.spec(fn, *args)]).result(60)[0] for fn, args in (  # submitted unwatched, as
        ("tests.jobs:make_shared", (100_000,)),  # `ensemble submit` without --wait: task.empty(), the worker's
        ("tests.jobs:scale_array", (np.ones(200_000), 2.0)),  # a new array the worker copied into a segment
        ("tests.jobs:double_in_place", (own,)),  # the client's own array, doubled in place and returned
    )]
    ids.append(taken.id)

    def listed() -> set[int]:  # (a listing shows a result array without taking it)
        return {i.id for i in c.jobs(limit=20)} & set(ids)

    wait_for(lambda: not listed(), 30, what="the jobs to be pruned")
    # the two result arrays nobody took, the worker's, are gone (they stayed until the daemon stopped); the
    # client's own array, which a job returned, and the pooled segment that carried the scaled argument stay
    mine = f"{prefix}{os.getpid()}."
    assert {n for n in _segments(prefix) if not n.startswith(mine)} == set()
    assert before <= _segments(prefix) and own.shared_handle.name in before and float(own[0]) == 6.0
    assert c.status().daemon.counters.get("result_segments_unlinked") == 2
    assert c.submit("tests.jobs:make_shared", 10).result(60).tolist() == [1.5] * 10  # the daemon goes on

    env = {**os.environ, "ENSEMBLE_NAME": c.config.name, "ENSEMBLE_RUN_DIR": str(c.config.run_dir),
           "ENSEMBLE_STATE_DIR": str(c.config.state_dir), "PYTHONPATH": str(ROOT)}
    gone = subprocess.run([sys.executable, "-m", "actors", "result", str(ids[0])], env=env, capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 1 and f"job(s) {ids[0]} unknown to this daemon" in gone.stderr \
        and "pruned" in gone.stderr, gone


def test_only_this_daemon_s_segments_made_before_their_job_ended_are_unlinked(
        caplog: pytest.LogCaptureFixture) -> None:
    """The names come from a worker's result, through the journal's file: each is checked before it is unlinked."""
    from actors.shm import unlink_ended

    prefix = f"ensemble.t-prune-{os.getpid()}.00000000."
    made = []
    for n in range(3):
        name = f"{prefix}{os.getpid()}.{n}"
        (SHM_DIR / name).write_bytes(b"x")
        made.append(name)
    try:
        later = time.time() - 3600  # segment 1 was made after "its" job ended: another one of that name
        ended = time.time() + 5
        segments = [(made[0], ended), (made[1], later), (made[2], ended),
                    (f"{prefix}{os.getpid()}.99", ended),  # gone already (taken): fine
                    (f"{prefix}../../tmp/x", ended), (f"ensemble.other.{os.getpid()}.0", ended),  # not ours
                    (f"{prefix}{os.getpid()}", ended)]
        with caplog.at_level("WARNING", logger="ensemble.shm"):
            assert unlink_ended(segments, prefix) == 2
        assert sorted(_segments(prefix)) == [made[1]]
        assert caplog.text.count("foreign-result-segment") == 3
        with pytest.raises(ValueError):
            unlink_ended([], "/dev/shm/")
    finally:
        for name in made:
            (SHM_DIR / name).unlink(missing_ok=True)

"""A finished job whose result the worker still held back when the next job killed it (actors.worker._hold).

A worker holds a short job's result back (at most 10 ms) while more jobs wait
there, to send them together.  Each held result is also written to the
worker's held-results file in the run directory (actors._rundir.HeldResults,
mapped shared: a ``kill -9`` does not reach it).  If the next job kills the
worker in that time, the daemon reads that file as it reaps the worker, and the
job ends as it really ended, with its result, exactly once; the job that killed
the worker ends ``worker-lost``.  A result both sent and still in the file
reaches the client once.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import msgspec
import numpy as np

from actors.client import make_spec
from actors.messages import ArrayHandle, JobDone, JobInfo, JobsDone, encode
from tests.conftest import Daemon, wait_for

_TERMINAL = {"done", "failed", "cancelled", "killed", "worker-lost"}


# --------------------------------------------------------------------------------- in-process
def test_a_frame_built_from_results_encoded_one_by_one_is_the_frame_of_the_results() -> None:
    from actors.worker import _ITEM_AT

    results = [JobDone(1, True, None, started=1.5),
               JobDone(2, True, {"k": [1, "a", b"b"]}, progress=1.0, status="ok", properties={"p": 2.5}),
               JobDone(3, False, None, "ValueError", "no", "Traceback ...", aborted=True),
               JobDone(4, True, np.arange(6, dtype=np.float32).reshape(2, 3)),
               JobDone(5, True, [ArrayHandle("ensemble.x", "<f8", (1000,), 0), "\u00e9" * 300]),
               JobDone(2**63 - 1, True, b"x" * 70_000)]
    # what the worker holds: the result of each frame of one, past the frame's header
    items = [msgspec.Raw(encode(JobsDone([done]))[_ITEM_AT:]) for done in results]
    assert encode(JobsDone(items)) == encode(JobsDone(results))  # type: ignore[arg-type]
    assert encode(JobsDone(items[:1])) == encode(JobsDone(results[:1]))  # type: ignore[arg-type]


def test_the_held_results_file_gives_what_was_published_and_both_halves(tmp_path: Path) -> None:
    from actors._rundir import HeldResults

    path = tmp_path / "held.w"
    assert HeldResults.read(path) == []  # no file: nothing held
    held = HeldResults(path)
    try:
        assert HeldResults.read(path) == []
        held.add(7, b"seven")
        held.add(8, memoryview(b"..eight")[2:])
        # a record written but not published (a crash before its length was stored) is not read
        held.map[8 + held.used:8 + held.used + 20] = b"\xff" * 20
        assert HeldResults.read(path) == [(7, b"seven"), (8, b"eight")]
        big = b"b" * HeldResults.ITEM_MAX
        n = 0
        while held.fits(len(big)):
            held.add(100 + n, big)
            n += 1
        assert n > 2 and len(HeldResults.read(path)) == 2 + n
        held.turn()  # the other half: the full one stays readable until it is reused
        held.add(9, b"nine")
        assert HeldResults.read(path)[-1] == (9, b"nine") and len(HeldResults.read(path)) == 3 + n
        held.turn()  # back to the first half, emptied
        held.add(10, b"ten")
        assert sorted(HeldResults.read(path)) == [(9, b"nine"), (10, b"ten")]
    finally:
        held.close()


# --------------------------------------------------------------------------------- through a daemon
def _submit_watched(d: Daemon, specs: list[Any]) -> tuple[list[int], dict[int, list[JobInfo]], Callable[[], bool]]:
    """Submit, keeping every push the client gets for each job; ``(ids, pushes by id, all ended?)``."""
    c = d.client(timeout=60)
    pushes: dict[int, list[JobInfo]] = collections.defaultdict(list)
    lock = threading.Lock()

    def listener(info: JobInfo) -> None:
        with lock:
            pushes[info.id].append(info)

    ids = c.conn.submit(specs, listener).result(60)

    def ended() -> bool:
        with lock:
            return all(any(i.state in _TERMINAL for i in pushes[j]) for j in ids)

    return ids, pushes, ended


def _ends(pushes: dict[int, list[JobInfo]], jid: int) -> list[JobInfo]:
    return [i for i in pushes[jid] if i.state in _TERMINAL]


def _journal_states(d: Daemon, ids: list[int]) -> dict[int, str]:
    db = sqlite3.connect(f"file:{d.base / 'state' / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(ids))
        return dict(db.execute(f"SELECT id, state FROM job_rows WHERE id IN ({marks})", ids).fetchall())
    finally:
        db.close()


def test_a_result_held_when_the_next_job_killed_the_worker_ends_done_with_it_once(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    runs = tmp_path / "runs"
    # one submit: a fresh worker is handed both at once, so the first's result is held while the second runs
    first, killer = d.client().submit_many([make_spec("tests.jobs:record_execution", [str(runs)], {}),
                                            make_spec("tests.jobs:crash", [], {})])
    lost = killer.wait(60)
    assert lost.state == "worker-lost" and "died while running the job" in lost.error_message, lost
    info = first.wait(60)
    assert info.state == "done" and info.error_message == "", info
    assert first.result(1) == first.id
    assert [line.split()[0] for line in runs.read_text().splitlines()] == [str(first.id)]  # it ran once
    assert not (Path(d.config.run_dir) / "held.worker-1.1").exists()  # the dead incarnation's file is gone


def test_results_both_sent_and_held_reach_the_client_once(make_daemon: Callable[..., Daemon],
                                                          tmp_path: Path) -> None:
    # A batch of held results leaves at 64 of them: a crash right behind one finds them sent and still in the
    # file; around it, some were sent, some held.  Each job ends once, with its own result, in the client and
    # in the journal.
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "1000"})
    d.up()
    runs = tmp_path / "runs"
    short, killers, pushes = [], [], {}
    for n in (1, 63, 64, 65, 200):
        specs = [make_spec("tests.jobs:record_execution", [str(runs)], {}) for _ in range(n)]
        ids, seen, ended = _submit_watched(d, [*specs, make_spec("tests.jobs:crash", [], {})])
        wait_for(ended, 120, what=f"the {n} short jobs and the crash to end")
        short += ids[:-1]
        killers.append(ids[-1])
        pushes.update(seen)
    for jid in short:
        ends = _ends(pushes, jid)
        assert [(i.state, i.result) for i in ends] == [("done", jid)], (jid, ends)
    for jid in killers:
        assert [i.state for i in _ends(pushes, jid)] == ["worker-lost"], jid
    ran = collections.Counter(int(line.split()[0]) for line in runs.read_text().splitlines())
    assert ran == {jid: 1 for jid in short}  # each ran once
    assert d.status().daemon.counters["jobs_done"] == len(short)  # each finished once in the book
    states = _journal_states(d, short + killers)
    assert states == {**{j: "done" for j in short}, **{j: "worker-lost" for j in killers}}


def test_a_held_failure_and_a_held_result_in_shared_memory_end_as_they_ended(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client()
    # each pair in one submit: a fresh daemon hands a worker two jobs at once, and short jobs keep it so
    failed, killer = c.submit_many([make_spec("tests.jobs:boom", ["held too"], {}),
                                    make_spec("tests.jobs:crash", [], {})])
    assert killer.wait(60).state == "worker-lost"
    info = failed.wait(60)  # a failure held back ends failed, as it really ended
    assert info.state == "failed" and info.error_type.endswith("CustomJobError"), info
    assert "held too" in info.error_message and "inner_helper" in info.traceback, info
    made, killer = c.submit_many([make_spec("tests.jobs:make_shared", [200_000], {}),
                                  make_spec("tests.jobs:crash", [], {})])
    assert killer.wait(60).state == "worker-lost"
    array = made.result(60)  # its segment outlived the worker that wrote it, as a sent result's does
    assert array.dtype == np.float32 and array.shape == (200_000,) and float(array[-1]) == 1.5
    del array
    d.close_clients()

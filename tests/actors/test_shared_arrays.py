"""Numpy arrays in jobs: shared memory instead of the socket, and no segment left behind.

The tests share the module's daemon: each counts only the segments that
appeared since it began, and its clients are closed after it (``shared_daemon``).
"""

from __future__ import annotations

import os

import numpy as np

from tests import jobs
from tests.conftest import Daemon, wait_for


def _ours(d: Daemon) -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith(f"ensemble.{d.config.shm_key}.")}


def test_large_arguments_and_results_cross_through_shared_memory(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    a = np.arange(1_000_000, dtype=np.float64)  # 8 MB: over the inline limit
    r = c.submit("tests.jobs:scale_array", a, 2.0).result(60)
    assert isinstance(r, np.ndarray) and r.shape == a.shape and np.array_equal(r, a * 2)
    small = c.submit("tests.jobs:scale_array", np.ones(4), 3.0).result(60)  # inline both ways
    assert small.tolist() == [3.0, 3.0, 3.0, 3.0]


def test_runtime_allocated_arrays_cross_by_handle_and_are_written_in_place(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    s = c.empty(1_000_000, "float64")
    s[:] = 1.0
    r = c.submit("tests.jobs:double_in_place", s).result(60)
    assert r is s  # the same memory came back, nothing copied
    assert float(s[123]) == 2.0
    made = c.submit("tests.jobs:make_shared", 2_000_000).result(60)
    assert made.dtype == np.float32 and made.shape == (2_000_000,) and float(made[-1]) == 1.5


def test_segments_are_released_when_the_client_closes(shared_daemon: Daemon) -> None:
    before = _ours(shared_daemon)
    c = shared_daemon.client()
    for _ in range(3):  # the pool reuses one segment for the same size
        c.submit("tests.jobs:scale_array", np.ones(500_000), 1.0).result(60)
    s = c.empty(1000)
    mid = _ours(shared_daemon) - before
    assert s.shared_handle.name in mid
    assert len([n for n in mid if n != s.shared_handle.name]) == 1  # one pooled argument segment
    c.close()
    assert _ours(shared_daemon) - before == set()


def test_an_argument_returned_as_the_result_goes_back_to_the_pool_when_dropped(shared_daemon: Daemon) -> None:
    import gc

    before = _ours(shared_daemon)
    c = shared_daemon.client()
    a = np.arange(1_000_000, dtype=np.float64)
    r = c.submit("tests.jobs:double_in_place", a).result(60)  # returns its (pooled) argument
    assert np.array_equal(r, a * 2) and not np.shares_memory(r, a)
    lent = _ours(shared_daemon) - before
    del r
    gc.collect()
    for _ in range(3):  # the same pooled segment serves every later submit: no new segment appears
        assert float(c.submit("tests.jobs:double_in_place", a).result(60)[7]) == 14.0
        gc.collect()
    assert _ours(shared_daemon) - before == lent
    c.close()
    assert _ours(shared_daemon) - before == set()


def test_an_executor_s_arrays_keep_shared_memory_and_everything_around_them_keeps_its_type(
        shared_daemon: Daemon) -> None:
    from actors.client import Executor

    before = _ours(shared_daemon)
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB: over the inline limit
    with Executor(config=shared_daemon.config) as ex:
        kind, shared, rest, doubled, total = ex.submit(jobs.array_origin, big, (1, 2), {"k": frozenset({3})}).result(60)
        # the argument came through shared memory as a plain array; the tuple, dict and frozenset stayed themselves
        assert (kind, shared) == ("ndarray", True)
        assert rest == ((1, 2), {"k": frozenset({3})}) and type(rest[0]) is tuple
        assert type(doubled) is np.ndarray and np.array_equal(doubled, big * 2) and jobs.in_mapping(doubled)
        assert type(total) is np.float64 and total == big.sum()
        kind, shared, rest, doubled, total = ex.submit(jobs.array_origin, np.arange(3), (4,)).result(60)
        assert (kind, shared, rest) == ("ndarray", False, ((4,),)) and not jobs.in_mapping(doubled)  # small: in the pickle
        s = ex.conn.arrays.empty(1000)  # a shared array crosses by handle both ways and is written in place
        assert ex.submit(jobs.fill_sevens, s).result(60) is s and float(s[999]) == 7.0
        ex.conn.arrays.free(s)
        zero_d = ex.submit(jobs.fill_sevens, np.zeros(())).result(60)
        assert zero_d.shape == () and float(zero_d) == 7.0
    assert _ours(shared_daemon) - before == set()


def test_results_derived_from_a_shared_argument_cross_the_messagepack_path(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    a = np.ones(1_000_000)
    kind, shared, rest, doubled, total = c.submit("tests.jobs:array_origin", a, 5).result(60)
    # a * 2 and a.sum() of a shared argument are arrays of the shared subclass: they come back as plain ones
    assert (kind, shared, rest) == ("SharedNDArray", True, (5,))  # (a tuple of the job's, a tuple here)
    assert np.array_equal(doubled, a * 2) and total.shape == () and float(total) == 1_000_000.0


def test_a_result_array_is_handed_to_its_taker_not_to_a_listing_or_the_unwatched_submit(shared_daemon: Daemon) -> None:
    """A result in shared memory is handed over once: `ensemble submit` without --wait took it when the job ended
    before it exited, and a listing (`ensemble jobs`, `Client.jobs()`) took it too, so `ensemble result ID`
    then said it was already taken."""
    import json

    d = shared_daemon
    job_id = int(d.cli("submit", "tests.jobs:make_shared", "100000").stdout.strip())

    def listed_state() -> str:
        rows = json.loads(d.cli("jobs", "--json", "--limit", "50").stdout)
        return next((r["state"] for r in rows if r["id"] == job_id), "")

    wait_for(lambda: listed_state() == "done", 60, what="the job to end, as a listing shows it")
    with d.client() as c:  # a listing in Python shows the array, and leaves it too
        shown = next(i for i in c.jobs(limit=50) if i.id == job_id)
        assert float(shown.result[0]) == 1.5 and len(shown.result) == 100000
    got = d.cli("result", str(job_id), check=False)
    assert got.returncode == 0 and "1.5" in got.stdout, got
    again = d.cli("result", str(job_id), check=False)  # taken once: the second is told so, as before
    assert again.returncode == 1 and "already taken" in again.stderr, again

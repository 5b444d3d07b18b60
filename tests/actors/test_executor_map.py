"""Executor.map as ProcessPoolExecutor.map behaves: chunks as jobs, order, first failure, timeout, early exit."""

from __future__ import annotations

import concurrent.futures
import functools
from pathlib import Path
from typing import Any

import pytest

from actors.client import Executor
from tests import jobs
from tests.conftest import wait_for


@pytest.fixture
def ex(module_daemon: Any) -> Any:
    """An Executor on the module's daemon (no cap: the fast map path), for tests that only look at results."""
    e = Executor(config=module_daemon.config)
    yield e
    e.shutdown(cancel_futures=True)


@pytest.fixture
def own_ex(jobs_daemon: Any) -> Any:
    """An Executor on a (jobs-only) daemon of the test's own, for tests that count every job's end state."""
    e = Executor(config=jobs_daemon.config)
    yield e
    e.shutdown(cancel_futures=True)


@pytest.mark.parametrize("chunksize", [1, 7, 64, 1000])
def test_map_gives_every_result_in_order_at_any_chunksize(ex: Any, module_daemon: Any, chunksize: int) -> None:
    before = len(module_daemon.client().jobs(limit=10_000))
    out = list(ex.map(jobs.identity, range(300), chunksize=chunksize))
    assert out == list(range(300))
    ran = len(module_daemon.client().jobs(limit=10_000)) - before
    assert ran == -(-300 // chunksize)  # one job per chunk, as ProcessPoolExecutor sends them


@pytest.mark.parametrize("callable_", ["bound method", "class", "callable object", "partial", "partial of a builtin"])
def test_a_callable_without_a_job_path_travels_in_each_chunk(ex: Any, module_daemon: Any, callable_: str) -> None:
    """Pickled with each chunk, as the pools pickle the function with each chunk: one job a chunk still."""
    fn, want = {"bound method": (jobs.Scaler(3).scale, [3 * x for x in range(100)]),
                "class": (str, [str(x) for x in range(100)]),
                "callable object": (jobs.Offset(1), [x + 1 for x in range(100)]),
                "partial": (functools.partial(jobs.plain_divmod, b=7), [divmod(x, 7) for x in range(100)]),
                "partial of a builtin": (functools.partial(pow, 2), [2 ** x for x in range(100)])}[callable_]
    before = len(module_daemon.client().jobs(limit=10_000))
    assert list(ex.map(fn, range(100), chunksize=25)) == want
    assert len(module_daemon.client().jobs(limit=10_000)) - before == 4


def test_a_partial_travels_as_its_submit_would(ex: Any) -> None:
    """A partial of the standard library's function runs (pickled, as the pool sends it); of a lambda, refused."""
    import os

    from actors import JobRefused

    assert list(ex.map(functools.partial(os.path.join, "/x"), ["a", "b"], chunksize=4)) == ["/x/a", "/x/b"]
    with pytest.raises(JobRefused, match="lambda or a closure"):
        list(ex.map(functools.partial(lambda a, b: a, 1), [1], chunksize=4))


@pytest.mark.parametrize("chunksize", [1, 40])  # a range's chunks travel as lists, then as ranges
@pytest.mark.parametrize("kind", ["range", "stepped range", "tuple", "list", "generator"])
def test_a_range_a_tuple_a_list_or_any_iterable_map_alike_through_every_batch_size(ex: Any, kind: str,
                                                                                    chunksize: int) -> None:
    n = 3400 * chunksize  # 3,400 jobs: batches of 64, 256, 1,024, 2,000 and the rest (actors._map)
    want = list(range(3 * n, 0, -3)) if kind == "stepped range" else list(range(n))
    items = {"range": range(n), "stepped range": range(3 * n, 0, -3), "tuple": tuple(want), "list": list(want),
             "generator": (x for x in want)}[kind]
    out = list(ex.map(jobs.identity, items, chunksize=chunksize))
    assert out == want
    assert {type(v) for v in out} == {int}  # a range travels as ranges; the worker hands the function ints


@pytest.mark.parametrize("items", [range(2**31 - 100, 2**31 + 100), range(-2**31 - 50, -2**31 + 50),
                                   range(2**40, 2**40 - 2**33, -2**30), range(10**30, 10**30 + 70)])
def test_a_range_past_32_bits_maps_alike(ex: Any, items: range) -> None:
    """A chunk of a range whose bounds fit 32 bits is pickled by hand (actors._map); one that does not, by pickle."""
    assert list(ex.map(jobs.identity, items, chunksize=32)) == list(items)


def test_map_zips_several_iterables_and_keeps_exact_types(ex: Any) -> None:
    assert list(ex.map(jobs.identity, [(1, 2), {3}, frozenset({4})], chunksize=2)) == [(1, 2), {3}, frozenset({4})]
    assert [type(v) for v in ex.map(jobs.identity, [(1,), {2}])] == [tuple, set]
    assert list(ex.map(jobs.plain_divmod, [7, 9], [2, 4], chunksize=2)) == [(3, 1), (2, 1)]
    assert list(ex.map(jobs.square, [])) == []


def test_the_first_failure_is_raised_with_its_own_type_where_the_iterator_reaches_it(ex: Any) -> None:
    it = ex.map(jobs.plain_fail, ["a", "b"], chunksize=1)
    with pytest.raises(KeyError, match="a") as caught:
        next(it)
    assert type(caught.value.__cause__).__name__ == "RemoteError"


def _gated_map(ex: Any, tmp_path: Path, n: int, **kw: Any) -> tuple[Any, list[Path]]:
    """``ex.map(plain_gate)`` over ``n`` items, each waiting for its own gate file (the first one's is open)."""
    gates = [tmp_path / f"gate{i}" for i in range(n)]
    gates[0].touch()
    (tmp_path / "ran").mkdir()
    return ex.map(jobs.plain_gate, [str(tmp_path / "ran")] * n, [str(g) for g in gates], **kw), gates


def _ended_without_interrupting(daemon: Any, tmp_path: Path, gates: list[Path], running: int) -> None:
    """As the pools': the jobs that had started run to their end (never killed); the rest never run."""
    c = daemon.client()
    for g in gates:
        g.touch()
    wait_for(lambda: all(j.state in ("done", "cancelled", "killed") for j in c.jobs(limit=100)
                         if j.fn == "tests.jobs:plain_gate"), 60, what="every gated job to end")
    states = sorted(j.state for j in c.jobs(limit=100) if j.fn == "tests.jobs:plain_gate")
    assert states == ["cancelled"] * (len(gates) - running) + ["done"] * running
    assert len(list((tmp_path / "ran").iterdir())) == running


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_map_past_its_timeout_raises_timeout_error_and_cancels_the_rest(own_ex: Any, jobs_daemon: Any,
                                                                        tmp_path: Path) -> None:
    it, gates = _gated_map(own_ex, tmp_path, 5, timeout=1.0)
    assert next(it) > 0
    wait_for(lambda: len(list((tmp_path / "ran").iterdir())) == 3, 60, what="both workers to start a gated job")
    with pytest.raises(concurrent.futures.TimeoutError):
        next(it)
    _ended_without_interrupting(jobs_daemon, tmp_path, gates, running=3)


def test_map_s_timeout_counts_from_the_map_call_not_the_first_next(ex: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the pools': ``map(timeout=2)``, then 5 s before the first ``next()``: that ``next`` raises at once."""
    import types

    from actors import _map

    now = [1000.0]  # the map's clock, moved by hand: no wall-clock time in the test
    monkeypatch.setattr(_map, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    it = ex.map(jobs.plain_sleep, [0.2], timeout=2.0)
    now[0] += 5.0
    with pytest.raises(concurrent.futures.TimeoutError):  # counted from the first next(), the job's 0.2 s
        next(it)                                          # result came well within its 2 s


def test_leaving_the_iterator_early_cancels_what_has_not_run(own_ex: Any, jobs_daemon: Any, tmp_path: Path) -> None:
    it, gates = _gated_map(own_ex, tmp_path, 6)
    assert next(it) > 0
    wait_for(lambda: len(list((tmp_path / "ran").iterdir())) == 3, 60, what="both workers to start a gated job")
    it.close()  # the caller left the loop: as ProcessPoolExecutor.map, what has not started is cancelled
    _ended_without_interrupting(jobs_daemon, tmp_path, gates, running=3)


def test_shutdown_waits_for_a_map_and_cancel_futures_stops_it(jobs_daemon: Any, tmp_path: Path) -> None:
    e = Executor(config=jobs_daemon.config)
    results = e.map(jobs.square, range(50), chunksize=5)
    e.shutdown(wait=True)
    assert list(results) == [x * x for x in range(50)]
    with pytest.raises(RuntimeError, match="after shutdown"):
        e.map(jobs.square, [1])
    e2 = Executor(config=jobs_daemon.config)
    _, gates = _gated_map(e2, tmp_path, 5)
    wait_for(lambda: len(list((tmp_path / "ran").iterdir())) == 3, 60, what="both workers to start a gated job")
    e2.shutdown(wait=False, cancel_futures=True)  # what has not started is cancelled; the two running finish
    c = jobs_daemon.client()
    wait_for(lambda: sorted(j.state for j in c.jobs(limit=100) if j.fn == "tests.jobs:plain_gate")
             == ["cancelled", "cancelled", "done", "running", "running"], 20, what="the unstarted jobs cancelled "
             + str([(j.state, j.error_message) for j in c.jobs(limit=100) if j.fn == "tests.jobs:plain_gate"]))
    _ended_without_interrupting(jobs_daemon, tmp_path, gates, running=3)


def test_under_a_cap_on_a_shared_daemon_map_still_gives_every_result(module_daemon: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in module_daemon.env.items():
        if key.startswith("ENSEMBLE_"):
            monkeypatch.setenv(key, value)
    with Executor(max_workers=1) as e:
        assert e._private is None and e._cap == 1
        assert list(e.map(jobs.square, range(20), chunksize=4)) == [x * x for x in range(20)]

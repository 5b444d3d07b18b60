"""The same scenarios on ProcessPoolExecutor(2) and on ensemble.Executor(2): what a user sees must match.

Each scenario runs once per module on both pools (the module fixture ``seen``); each test reads its own
observations.  Where ensemble differs on purpose (documented in docs/guides/your-own-code.md and
coming-from.md) the test asserts ensemble's behaviour and that its error says what happened.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import datetime
import decimal
import functools
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from actors import JobLost, JobRefused, RemoteError
from actors.client import Executor
from tests import differential_jobs as J
from tests.conftest import ROOT, Daemon, pid_alive, processes_mentioning, running_daemon, wait_for

POOLS = ("ppe", "ensemble")
Scenario = Callable[[Any, Path], dict[str, Any]]
SHARED: dict[str, Scenario] = {}  # run on one pool of each kind, one after another
FRESH_PPE: dict[str, Scenario] = {}  # break a ProcessPoolExecutor: a new one each (ensemble's carries on)
OWN_POOL: dict[str, Callable[[str, Path], dict[str, Any]]] = {}  # make their own pools (lifecycle)


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a user sees of ``call()``: its value's type and repr, or the exception's type, text and cause."""
    try:
        value = call()
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from a job are observations
        return "raised", type(exc), str(exc), exc.__cause__ is not None
    return "returned", type(value), repr(value)


def where_it_fails(pool: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """``("submit" or "result", exception type)`` of a job that cannot run."""
    try:
        fut = pool.submit(fn, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return "submit", type(exc), str(exc)
    got = outcome(lambda: fut.result(60))
    return "result", got[1], got[2]


def _gated(tmp: Path, name: str) -> tuple[Path, Path]:
    marks = tmp / f"{name}-started"
    marks.mkdir()
    return marks, tmp / f"{name}-gate"


# -- scenarios on a shared pool
def shared(fn: Scenario) -> Scenario:
    SHARED[fn.__name__] = fn
    return fn


@shared
def values(pool: Any, tmp: Path) -> dict[str, Any]:
    sent = [(1, 2), {1, 2}, frozenset({3}), {(1, 2): "t", None: 0}, 2 ** 100, 1 + 2j, decimal.Decimal("1.10"),
            datetime.datetime(2026, 1, 2, 3, 4, 5, 6), bytearray(b"y"), J.PlainError("returned, not raised"),
            [1, (2, {3})], None, float("inf")]
    return {"round trip": [outcome(lambda v=v: pool.submit(J.identity, v).result(60)) for v in sent],
            "big": [pool.submit(J.size, bytes(20_000_000)).result(60),
                    len(pool.submit(J.zeros, 20_000_000).result(60))],
            "deep but fine": [pool.submit(J.depth_of, J.nested(300)).result(60),
                              J.depth_of(pool.submit(J.nested, 300).result(60))]}


@shared
def errors(pool: Any, tmp: Path) -> dict[str, Any]:
    jobs = {"plain": (J.raise_plain, "mine"), "builtin": (J.raise_value_error, "bad value"),
            "SystemExit": (J.raise_system_exit,), "sys.exit(3)": (J.call_sys_exit,),
            "KeyboardInterrupt": (J.raise_keyboard_interrupt,)}
    out = {name: outcome(lambda c=call: pool.submit(*c).result(60)) for name, call in jobs.items()}
    fut = pool.submit(J.raise_plain, "in the cause")
    exc = fut.exception(60)
    out["exception()"] = (type(exc), str(exc), "raise_plain" in str(exc.__cause__))
    return out


@shared
def map_shapes(pool: Any, tmp: Path) -> dict[str, Any]:
    def at_map_or_next(iterables: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            it = pool.map(J.identity, *iterables)
        except Exception as exc:  # noqa: BLE001
            return "map()", type(exc), str(exc)
        return ("next()",) + outcome(lambda: list(it))

    return {"order": [list(pool.map(J.identity, range(50), chunksize=c)) for c in (1, 7, 64)],
            "unequal": list(pool.map(J.add, [1, 2, 3], [10, 20])),
            "endless beside finite": list(pool.map(J.add, iter(int, 1), [1, 2])),
            "empty": list(pool.map(J.identity, [])),
            "raising iterable": at_map_or_next((J.raising_items(3),)),
            "first failure": outcome(lambda: list(pool.map(J.raise_value_error, ["a", "b"])))}


@shared
def map_timeout(pool: Any, tmp: Path) -> dict[str, Any]:
    for attempt, timeout in enumerate((1.0, 4.0, 16.0)):  # a loaded machine: the first item itself may take long
        marks, gate = _gated(tmp, f"map{attempt}")
        (tmp / f"open{attempt}").touch()
        it = pool.map(J.gate, [str(marks)] * 3, [str(tmp / f"open{attempt}"), str(gate), str(gate)], ["a", "b", "c"],
                      timeout=timeout)
        first = outcome(lambda: next(it))
        second = outcome(lambda: next(it))
        after = outcome(lambda: next(it))
        gate.touch()
        if first[0] == "returned":
            break
    return {"first": first, "second": second[:2], "after the timeout": after[:2]}


@shared
def future_states(pool: Any, tmp: Path) -> dict[str, Any]:
    marks, gate = _gated(tmp, "states")
    busy = [pool.submit(J.gate, str(marks), str(gate), i) for i in range(2)]
    wait_for(lambda: len(list(marks.iterdir())) == 2, 60, what="both workers to start a gated job")
    # (ensemble hears of a start a hop after the job's first line ran: documented)
    wait_for(lambda: all(f.running() for f in busy), 60, what="both futures to say running")
    queued = [pool.submit(J.identity, i) for i in range(8)]
    last = queued[-1]  # behind both workers and whatever a pool queues ahead: not started
    out = {"running": [(f.running(), f.done()) for f in busy], "cancel running": busy[0].cancel(),
           "result(timeout)": outcome(lambda: busy[0].result(timeout=0.05))[:2],
           "exception(timeout)": outcome(lambda: busy[0].exception(timeout=0.05))[:2],
           "cancel pending": last.cancel(), "cancel again": last.cancel(),
           "cancelled": (last.cancelled(), last.done(), last.running()),
           "cancelled result": outcome(lambda: last.result(0))[:2],
           "cancelled exception": outcome(lambda: last.exception(0))[:2]}
    gate.touch()
    out["results"] = [f.result(60) for f in busy + queued[:-1]]
    out["ended"] = [(f.running(), f.done(), f.cancelled(), f.exception(0)) for f in busy]
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().split(" for ")[0])


@shared
def callbacks(pool: Any, tmp: Path) -> dict[str, Any]:
    calls: list[Any] = []
    records = _Records()
    logging.getLogger("concurrent.futures").addHandler(records)
    try:
        fut = pool.submit(J.add, 1, 2)
        fut.add_done_callback(lambda f: calls.append(("before", f.result())))
        fut.add_done_callback(lambda f: 1 / 0)  # logged, not raised, and the next callback still runs
        fut.add_done_callback(lambda f: calls.append("after the failing one"))
        fut.result(60)
        wait_for(lambda: len(calls) == 2, 60, what="the callbacks to run")
        fut.add_done_callback(lambda f: calls.append(("added when done", threading.current_thread().name)))
        fut.add_done_callback(lambda f: 1 / 0)
        chained: list[Any] = []
        first = pool.submit(J.add, 2, 2)
        first.add_done_callback(lambda f: chained.append(pool.submit(J.add, f.result(), 1)))  # submit from a callback
        wait_for(lambda: chained, 60, what="the callback's submit")
        chained_result = chained[0].result(60)
    finally:
        logging.getLogger("concurrent.futures").removeHandler(records)
    return {"calls": calls, "logged": records.messages, "submitted from a callback": chained_result}


@shared
def waiting(pool: Any, tmp: Path) -> dict[str, Any]:
    marks, gate = _gated(tmp, "wait")
    slow = pool.submit(J.gate, str(marks), str(gate), "slow")
    wait_for(lambda: list(marks.iterdir()), 60, what="the gated job to start")
    quick, bad = pool.submit(J.identity, "quick"), pool.submit(J.raise_value_error, "bad")
    done, not_done = cf.wait([slow, quick], timeout=60, return_when=cf.FIRST_COMPLETED)
    out: dict[str, Any] = {"FIRST_COMPLETED": (quick in done, slow in not_done)}
    done, not_done = cf.wait([slow, bad], timeout=60, return_when=cf.FIRST_EXCEPTION)
    out["FIRST_EXCEPTION"] = (bad in done, slow in not_done)
    done, not_done = cf.wait([slow, quick, bad], timeout=0.05)
    out["ALL_COMPLETED past its timeout"] = (len(done), len(not_done))
    out["as_completed past its timeout"] = outcome(lambda: list(cf.as_completed([slow, quick], timeout=0.05)))
    gate.touch()
    out["as_completed"] = sorted(f.result() for f in cf.as_completed([slow, quick, quick], timeout=60))
    return out


@shared
def unpicklable(pool: Any, tmp: Path) -> dict[str, Any]:
    def map_fails(chunksize: int) -> tuple[Any, ...]:
        try:
            it = pool.map(J.identity, [1, threading.Lock(), 3], chunksize=chunksize)
        except Exception as exc:  # noqa: BLE001
            return "map() raised", type(exc), str(exc)
        got = [outcome(lambda: next(it)) for _ in range(2)]
        texts.append(next(g[2] for g in got if g[0] == "raised"))
        return tuple((g[0], g[1]) for g in got)

    texts: list[str] = []

    return {"argument": where_it_fails(pool, J.identity, threading.Lock()),
            "lambda in kwargs": where_it_fails(pool, sorted, [3, 1], key=lambda x: x),
            "argument nested too deep": where_it_fails(pool, J.identity, J.nested(5000)),
            "result": where_it_fails(pool, J.return_lock),
            "local function as result": where_it_fails(pool, J.return_local_function),
            "result nested too deep": where_it_fails(pool, J.nested, 5000),
            "map item": map_fails(1), "map item in a chunk": map_fails(2), "map texts": texts}


@shared
def own_pickle_error(pool: Any, tmp: Path) -> dict[str, Any]:
    """Values whose own pickling raises an exception class of the user's (``J.RefusesPickle``)."""
    notes: dict[str, list[str]] = {}

    def fails(key: str, call: Callable[[list[str]], Any]) -> tuple[Any, ...]:
        """``(stage, type, text)`` of ``call()``'s failure; its notes kept in ``notes[key]``."""
        stage = ["submit"]
        try:
            call(stage)
        except Exception as exc:  # noqa: BLE001
            notes[key] = getattr(exc, "__notes__", [])
            return stage[-1], type(exc), str(exc)
        return ("returned",)

    def submitted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[list[str]], Any]:
        def call(stage: list[str]) -> Any:
            fut = pool.submit(fn, *args, **kwargs)
            stage.append("result")
            return fut.result(60)
        return call

    def mapped(stage: list[str]) -> Any:
        it = pool.map(J.identity, [1, J.RefusesPickle(), 3])
        stage.append("next() past item 0")
        assert next(it) == 1
        stage.append("next() at item 1")
        return next(it)

    out = {"argument": fails("argument", submitted(J.identity, J.RefusesPickle())),
           "nested in a keyword argument": fails("nested in a keyword argument",
                                                 submitted(J.identity, value=[1, {"k": J.RefusesPickle()}])),
           "result": fails("result", submitted(J.return_refuses_pickle)),
           "map item": fails("map item", mapped)}
    return {**out, "notes": notes}


@shared
def lambdas(pool: Any, tmp: Path) -> dict[str, Any]:
    def local(x: int) -> int:
        return x

    return {"lambda": where_it_fails(pool, lambda x: x, 1), "local function": where_it_fails(pool, local, 1)}


@shared
def nested_executor(pool: Any, tmp: Path) -> dict[str, Any]:
    kind = "ppe" if isinstance(pool, ProcessPoolExecutor) else "ensemble"
    futures = [pool.submit(J.nested_executor, kind, x) for x in range(2)]  # both workers make a pool of their own
    return {"results": [f.result(120) for f in futures]}


# -- scenarios that break a ProcessPoolExecutor
def fresh_ppe(fn: Scenario) -> Scenario:
    FRESH_PPE[fn.__name__] = fn
    return fn


@fresh_ppe
def unrebuildable_exception(pool: Any, tmp: Path) -> dict[str, Any]:
    return {"two-argument constructor": outcome(lambda: pool.submit(J.raise_two_arg).result(60))}


@fresh_ppe
def unpicklable_exception(pool: Any, tmp: Path) -> dict[str, Any]:
    return {"holds a lock": outcome(lambda: pool.submit(J.raise_locked).result(60))}


@fresh_ppe
def worker_exits(pool: Any, tmp: Path) -> dict[str, Any]:
    marks, gate = _gated(tmp, "exit")
    others = [pool.submit(J.gate, str(marks), str(gate), i) for i in range(2)]
    wait_for(lambda: len(list(marks.iterdir())) == 2, 60, what="both workers to start a gated job")
    dying = pool.submit(J.exit_process)
    gate.touch()
    out = {"the job": outcome(lambda: dying.result(60)),
           "the others": [outcome(lambda f=f: f.result(60))[:2] for f in others]}
    out["a later submit"] = outcome(lambda: pool.submit(J.add, 1, 2).result(60))[:2]
    return out


# -- scenarios with pools of their own
def own_pool(fn: Callable[[str, Path], dict[str, Any]]) -> Callable[[str, Path], dict[str, Any]]:
    OWN_POOL[fn.__name__] = fn
    return fn


def _pool(kind: str, *args: Any, **kwargs: Any) -> Any:
    return (ProcessPoolExecutor if kind == "ppe" else Executor)(*args, **kwargs)


@own_pool
def constructor(kind: str, tmp: Path) -> dict[str, Any]:
    out = {f"max_workers={n!r}": outcome(lambda n=n: _pool(kind, n))[:2] for n in (0, -1, 2.5)}
    out["max_tasks_per_child=0"] = outcome(lambda: _pool(kind, 1, max_tasks_per_child=0))[:2]
    out["initializer=5"] = outcome(lambda: _pool(kind, 1, initializer=5))[:2]
    out["max_tasks_per_child, fork"] = outcome(
        lambda: _pool(kind, 1, multiprocessing.get_context("fork"), max_tasks_per_child=1).shutdown())[:2]
    return out


@own_pool
def after_shutdown(kind: str, tmp: Path) -> dict[str, Any]:
    pool = _pool(kind, 2)
    fut = pool.submit(J.add, 1, 2)
    pool.shutdown()
    out = {"done": (fut.done(), fut.result(0)), "shutdown again": outcome(pool.shutdown)[:2],
           "submit": outcome(lambda: pool.submit(J.add, 1, 2)), "map": outcome(lambda: pool.map(J.add, [1], [2]))}
    return out


@own_pool
def cancel_futures(kind: str, tmp: Path) -> dict[str, Any]:
    marks, gate = _gated(tmp, "cancel")
    pool = _pool(kind, 2)
    busy = [pool.submit(J.gate, str(marks), str(gate), i) for i in range(2)]
    wait_for(lambda: len(list(marks.iterdir())) == 2, 60, what="both workers to start a gated job")
    queued = [pool.submit(J.identity, i) for i in range(10)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    # (not cf.wait: the pool leaves the futures it cancels here CANCELLED, never notified, and wait() counts
    # them as not done until its timeout; ensemble's are notified)
    wait_for(lambda: all(f.done() for f in busy + queued), 60, what="every future to end")
    pool.shutdown()
    return {"busy": [f.result(0) for f in busy], "last cancelled": queued[-1].cancelled(),
            "every one ended": all(f.done() for f in queued)}


@own_pool
def raise_in_with(kind: str, tmp: Path) -> dict[str, Any]:
    marks, gate = _gated(tmp, "with")
    try:
        with _pool(kind, 2) as pool:
            fut = pool.submit(J.gate, str(marks), str(gate), "waited for")
            wait_for(lambda: list(marks.iterdir()), 60, what="the gated job to start")
            gate.touch()
            raise KeyError("inside the block")
    except KeyError as exc:
        return {"raised": str(exc), "the future": (fut.done(), fut.result(0))}
    return {}


@own_pool
def failing_initializer(kind: str, tmp: Path) -> dict[str, Any]:
    with _pool(kind, 1, initializer=J.init_fails, initargs=("no licence",)) as pool:
        first = outcome(lambda: pool.submit(J.add, 1, 2).result(60))
        later = outcome(lambda: pool.submit(J.add, 1, 2).result(60))
    return {"first": first[:2], "later": later[:2], "first is a BrokenProcessPool": issubclass(first[1],
                                                                                            BrokenProcessPool)}


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
    """``seen[scenario][pool]``: every scenario's observations on both pools, run once for the module."""
    base = tmp_path_factory.mktemp("differential")
    out: dict[str, dict[str, dict[str, Any]]] = {}

    def run(name: str, kind: str, go: Callable[[Path], dict[str, Any]]) -> None:
        tmp = base / kind / name
        tmp.mkdir(parents=True)
        try:
            out.setdefault(name, {})[kind] = go(tmp)
        except Exception as exc:  # noqa: BLE001 - that scenario's tests fail saying so; the others still run
            out.setdefault(name, {})[kind] = collections.defaultdict(lambda: ("the scenario raised", repr(exc)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENSEMBLE_NAME", "nobody-home")  # no daemon there: every Executor starts a private one
        mp.setenv("ENSEMBLE_RUN_DIR", str(base / "run"))
        for kind in POOLS:
            with _pool(kind, 2) as pool:
                for name, scenario in SHARED.items():
                    run(name, kind, lambda tmp: scenario(pool, tmp))
                for name, scenario in FRESH_PPE.items():
                    if kind == "ppe":
                        with ProcessPoolExecutor(2) as own:
                            run(name, kind, lambda tmp: scenario(own, tmp))
                    else:
                        run(name, kind, lambda tmp: scenario(pool, tmp))
                private = getattr(pool, "_private", None)
            if private is not None and private.proc is not None:
                pid = private.proc.pid
                wait_for(lambda: not pid_alive(pid), 30, what="the private daemon to stop with its executor")
        for name, make in OWN_POOL.items():
            for kind in POOLS:
                run(name, kind, lambda tmp: make(kind, tmp))
    yield out


def _same(seen: dict[str, dict[str, dict[str, Any]]], scenario: str, key: str) -> Any:
    ppe, ens = seen[scenario]["ppe"][key], seen[scenario]["ensemble"][key]
    assert ens == ppe, f"{scenario} / {key}:\n  ProcessPoolExecutor: {ppe!r}\n  ensemble.Executor:   {ens!r}"
    return ens


# -- what must be the same
@pytest.mark.parametrize("scenario, key", [
    ("values", "round trip"), ("values", "big"), ("values", "deep but fine"),
    ("errors", "plain"), ("errors", "builtin"), ("errors", "SystemExit"), ("errors", "sys.exit(3)"),
    ("errors", "KeyboardInterrupt"), ("errors", "exception()"),
    ("map_shapes", "order"), ("map_shapes", "unequal"), ("map_shapes", "endless beside finite"),
    ("map_shapes", "empty"), ("map_shapes", "raising iterable"), ("map_shapes", "first failure"),
    ("map_timeout", "first"), ("map_timeout", "second"), ("map_timeout", "after the timeout"),
    ("future_states", "running"), ("future_states", "cancel running"), ("future_states", "result(timeout)"),
    ("future_states", "exception(timeout)"), ("future_states", "cancel pending"), ("future_states", "cancel again"),
    ("future_states", "cancelled"), ("future_states", "cancelled result"), ("future_states", "cancelled exception"),
    ("future_states", "results"), ("future_states", "ended"),
    ("callbacks", "logged"), ("callbacks", "submitted from a callback"),
    ("waiting", "FIRST_COMPLETED"), ("waiting", "FIRST_EXCEPTION"), ("waiting", "ALL_COMPLETED past its timeout"),
    ("waiting", "as_completed past its timeout"), ("waiting", "as_completed"),
    ("nested_executor", "results"),
    ("constructor", "max_workers=0"), ("constructor", "max_workers=-1"), ("constructor", "max_workers=2.5"),
    ("constructor", "max_tasks_per_child=0"), ("constructor", "initializer=5"),
    ("after_shutdown", "done"), ("after_shutdown", "shutdown again"), ("after_shutdown", "submit"),
    ("after_shutdown", "map"), ("cancel_futures", "busy"), ("cancel_futures", "last cancelled"),
    ("cancel_futures", "every one ended"), ("raise_in_with", "raised"), ("raise_in_with", "the future"),
    ("failing_initializer", "first is a BrokenProcessPool"),
])
def test_the_executor_behaves_as_processpoolexecutor(seen: Any, scenario: str, key: str) -> None:
    _same(seen, scenario, key)


def test_done_callbacks_run_once_in_order_and_at_once_when_added_late(seen: Any) -> None:
    for kind in POOLS:
        calls = seen["callbacks"][kind]["calls"]
        assert calls[:2] == [("before", 3), "after the failing one"], kind
        assert calls[2] == ("added when done", threading.main_thread().name) and len(calls) == 3, kind
    assert _same(seen, "callbacks", "logged") == ["exception calling callback"] * 2


@pytest.mark.parametrize("key", ["argument", "lambda in kwargs", "argument nested too deep", "result",
                                 "local function as result", "result nested too deep"])
def test_a_value_that_does_not_pickle_fails_at_result_with_pickle_s_own_error_saying_where(seen: Any,
                                                                                          key: str) -> None:
    """The pool raises pickle's error (TypeError for a lock, PicklingError for a lambda, AttributeError for a
    local function, RecursionError for a value nested too deep) from ``result()``; ensemble the same class, its
    text naming the part that does not pickle and where it sits (it raised TypeError for all of them)."""
    ppe, ens = seen["unpicklable"]["ppe"][key], seen["unpicklable"]["ensemble"][key]
    assert ens[:2] == ppe[:2], (ppe, ens)
    where = "result" if "result" in key else "args[0]" if "argument" in key else "kwargs['key']"
    assert where in ens[2] and "cannot cross to another process" in ens[2], ens[2]
    # what to do about it, said to whoever made the value: a list that is too deep pickles, a result is returned
    fix = "a flatter value" if "too deep" in key else "something picklable"
    assert f"; {'return' if 'result' in key else 'pass'} {fix}" in ens[2], ens[2]


@pytest.mark.parametrize("key, where", [
    ("argument", "tests.differential_jobs:identity: args[0]"),
    ("nested in a keyword argument", "tests.differential_jobs:identity: kwargs['value'][1]['k']"),
    ("result", "the job's result"), ("map item", "tests.differential_jobs:identity: map item 1")])
def test_a_value_whose_own_pickling_raises_fails_with_that_exception_saying_where_as_a_note(seen: Any, key: str,
                                                                                         where: str) -> None:
    """A ``__reduce__`` of the user's that raises an exception class of the user's: the pool raises that exception
    from ``result()`` (from ``next()`` at the item in ``map``), its type and text; ensemble the same (it raised
    TypeError), where the value sits added as a note, which a traceback prints under the user's own text."""
    stage = "next() at item 1" if key == "map item" else "result"
    assert seen["own_pickle_error"]["ppe"][key] == (stage, J.PickleRefused, "this handle stays in its process")
    _same(seen, "own_pickle_error", key)
    assert seen["own_pickle_error"]["ensemble"]["notes"][key] == [
        f"{where} cannot cross to another process: a tests.differential_jobs.RefusesPickle raised this when it was "
        "pickled"]


@pytest.mark.parametrize("key", ["map item", "map item in a chunk"])
def test_a_map_item_that_does_not_pickle_fails_where_the_iterator_reaches_it(seen: Any, key: str) -> None:
    """As the pool's map: the values before it come, then its error (map() itself raised it, and the chunks
    already sent ran on unwatched)."""
    assert _same(seen, "unpicklable", key) == {"map item": (("returned", int), ("raised", TypeError)),
                                               "map item in a chunk": (("raised", TypeError),
                                                                       ("raised", StopIteration))}[key]
    assert all("tests.differential_jobs:identity: map item 1 cannot cross to another process: a _thread.lock"
               in text for text in seen["unpicklable"]["ensemble"]["map texts"])


# -- what differs on purpose
def test_a_lambda_or_a_local_function_is_refused_at_submit_saying_what_to_do(seen: Any) -> None:
    """Documented: the pool fails in result() (it cannot pickle it); ensemble refuses it at submit."""
    for key in ("lambda", "local function"):
        assert seen["lambdas"]["ppe"][key][:2] == ("result", AttributeError)
        stage, cls, text = seen["lambdas"]["ensemble"][key]
        assert (stage, cls) == ("submit", JobRefused) and "define it at module level" in text


def test_an_exception_that_cannot_come_back_still_comes_back_as_its_class(seen: Any) -> None:
    """The pool breaks (an exception it cannot rebuild) or raises pickle's TypeError (one it cannot pickle).
    ensemble raises the one pickle cannot rebuild as it raises any job's exception (itself, rebuilt without its
    ``__init__``), and the one that does not pickle as a RemoteError of the job's class; each with the job's text
    and the remote traceback as its cause."""
    ppe = {**seen["unrebuildable_exception"]["ppe"], **seen["unpicklable_exception"]["ppe"]}
    ens = {**seen["unrebuildable_exception"]["ensemble"], **seen["unpicklable_exception"]["ensemble"]}
    assert issubclass(ppe["two-argument constructor"][1], BrokenProcessPool)
    assert ppe["holds a lock"][1] is TypeError
    _, got, message, caused = ens["two-argument constructor"]
    assert got is J.TwoArgError and message == "1/2" and caused, ens["two-argument constructor"]
    _, got, message, caused = ens["holds a lock"]
    assert issubclass(got, J.LockedError) and issubclass(got, RemoteError) and message == "holds a lock" and caused


def test_a_worker_that_exits_loses_its_job_only(seen: Any) -> None:
    """Documented: the pool breaks for every pending future and later submits; ensemble's future raises JobLost,
    also a BrokenProcessPool, and the others and later submits run on a replaced worker."""
    ppe, ens = seen["worker_exits"]["ppe"], seen["worker_exits"]["ensemble"]
    assert issubclass(ppe["the job"][1], BrokenProcessPool) and issubclass(ppe["a later submit"][1], BrokenProcessPool)
    assert issubclass(ens["the job"][1], JobLost) and issubclass(ens["the job"][1], BrokenProcessPool)
    assert "died while running the job" in ens["the job"][2]
    assert ens["the others"] == [("returned", int)] * 2 and ens["a later submit"] == ("returned", int)


def test_mp_context_is_ignored_so_fork_with_max_tasks_per_child_is_accepted(seen: Any) -> None:
    assert seen["constructor"]["ppe"]["max_tasks_per_child, fork"][:2] == ("raised", ValueError)
    assert seen["constructor"]["ensemble"]["max_tasks_per_child, fork"] == ("returned", type(None))


def test_a_failing_initializer_breaks_the_pool_saying_why(seen: Any) -> None:
    ens = seen["failing_initializer"]["ensemble"]
    assert issubclass(ens["first"][1], BrokenProcessPool) and issubclass(ens["later"][1], BrokenProcessPool)


@pytest.mark.parametrize("initializer", [J.identity, functools.partial(J.identity)], ids=["named", "pickled"])
def test_initargs_that_do_not_pickle_are_refused_at_once_saying_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      initializer: Any) -> None:
    """A forked pool never pickles its initargs; ensemble's cross to the daemon's workers, so one that cannot is
    refused when the executor is made, naming it (it raised pickle's bare "cannot pickle '_thread.lock' object").
    An initializer with no importable name travels first among them, and the error counted it: initargs[2]."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(TypeError, match=r"^initargs\[1\] cannot cross to another process: a _thread.lock"):
        Executor(1, initializer=initializer, initargs=(1, threading.Lock()))
    with pytest.raises(TypeError, match=r"^initializer cannot cross to another process: a functools.partial does "
                                          r"not pickle \(cannot pickle '_thread.lock' object\)"):
        Executor(1, initializer=functools.partial(J.identity, threading.Lock()), initargs=(1,))


# -- a job's own executor, beside a running daemon
@pytest.fixture(scope="module")
def jobs_only_daemon() -> Iterator[Daemon]:
    yield from running_daemon(Path(tempfile.mkdtemp(prefix="ens-m")), jobs_only=True)


@pytest.mark.parametrize("where", ["job", "thread"])
def test_a_job_s_own_executor_is_a_pool_of_its_own_not_its_daemon(jobs_only_daemon: Daemon, where: str) -> None:
    """Both workers run a job that makes an ``Executor()`` and waits on it, as jobs making a process pool do.
    The daemon those jobs run on is running and is the default where they run: the inner executors attached to
    it, and their jobs waited behind the outer ones for ever.  A job's executor starts a pool of its own now,
    also when a thread the job started makes it (it attached to the daemon)."""
    ex = Executor(config=jobs_only_daemon.config)
    fn = J.nested_executor if where == "job" else J.nested_executor_in_thread
    try:
        futures = [ex.submit(fn, "ensemble", x) for x in range(2)]
        done, _ = cf.wait(futures, timeout=60)
        assert len(done) == 2, "the jobs' own executors waited for the workers their jobs held"
        assert [f.result(0) for f in futures] == [1, 2]
    finally:
        ex.shutdown(wait=False)  # (stuck jobs, without the fix: the daemon's stop ends them)


_EXIT_SCRIPT = """
    import sys
    from concurrent.futures import ProcessPoolExecutor
    from actors.client import Executor
    from tests import differential_jobs as J

    pool = (ProcessPoolExecutor if sys.argv[1] == "ppe" else Executor)(2)
    futures = [pool.submit(J.write, f"{sys.argv[2]}/{i}", str(i)) for i in range(6)]
    pool.shutdown(wait=False)
    print("left")
"""


@pytest.mark.parametrize("kind", POOLS)
def test_shutdown_without_wait_then_exit_still_runs_the_submitted_jobs(kind: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    env.update(PYTHONPATH=str(ROOT), ENSEMBLE_NAME="nobody-home", ENSEMBLE_RUN_DIR=str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_EXIT_SCRIPT), kind, str(tmp_path)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "left\n" and out.stderr == "", out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == [str(i) for i in range(6)]


def test_map_under_a_cap_on_a_running_daemon_sends_a_job_per_chunk(jobs_only_daemon: Daemon) -> None:
    """Under a ``max_workers`` cap, ``map`` fell back to a job per item whatever its chunksize (1,000 jobs for
    ``chunksize=100``, 300 times slower than the pool).  A job per chunk now, the cap still held, the values
    and the first error as ``ProcessPoolExecutor.map`` gives them."""
    from ensemble import Client

    d = jobs_only_daemon
    with Client(config=d.config) as c, Executor(2, config=d.config) as ex:
        before = c.submit("examples.jobs:add", 0, 0)
        assert list(ex.map(J.add, range(1000), range(1000), chunksize=100)) == [2 * i for i in range(1000)]
        after = c.submit("examples.jobs:add", 0, 0)
        assert after.id - before.id - 1 == 10  # ten chunk jobs
        values = ex.map(J.identity, [1, 2, threading.Lock(), 4], chunksize=2)
        assert next(values) == 1 and next(values) == 2
        with pytest.raises(TypeError, match=r"map item 2 cannot cross to another process: a _thread.lock"):
            next(values)
        with pytest.raises(ZeroDivisionError):
            list(ex.map(divmod, [4, 5, 6], [2, 0, 3], chunksize=2))


@pytest.mark.slow  # pools of their own or a program each: run by .ci/run's slow pass (default < 5 min)
@pytest.mark.parametrize("kind", POOLS)
def test_jobs_start_in_the_order_they_were_submitted(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two idle workers and six jobs: the first worker was handed jobs 0 and 1, the second 2 and 3, so 0 and 2
    ran while 1 waited, and a shutdown's ``cancel_futures`` cancelled 1 and spared 2.  The pools start jobs in
    the order they came: what ran is the first ones."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    pool = _pool(kind, 2)
    try:
        assert pool.submit(J.add, 1, 1).result(60) == 2  # (the pool is up)
        if kind == "ensemble":  # both workers ready (one still starting when the jobs come takes none of them)
            from ensemble import Client

            with Client(config=pool.config) as c:
                wait_for(lambda: sum(a.role == "worker" and a.state == "running" for a in c.status().actors) == 2,
                         60, what="both workers to be ready")
        futures = [pool.submit(J.gate, str(marks), str(gate), i) for i in range(6)]
        wait_for(lambda: len(list(marks.iterdir())) == 2, 60, what="both workers to start a job")
        pool.shutdown(wait=False, cancel_futures=True)
        gate.touch()
        ran = [f.result(60) for f in futures if not f.cancelled()]
        assert len(ran) >= 2 and ran == list(range(len(ran))), ran
    finally:
        gate.touch()
        pool.shutdown()


_ATTACHED_EXIT_SCRIPT = """
    import sys
    from actors.client import Executor
    from tests import differential_jobs as J

    pool = Executor(int(sys.argv[2]) or None, daemon=sys.argv[3])
    futures = [pool.submit(J.write, f"{sys.argv[1]}/{i}", str(i)) for i in range(int(sys.argv[4]))]
    print("left")
"""


@pytest.mark.slow  # pools of their own or a program each: run by .ci/run's slow pass (default < 5 min)
@pytest.mark.parametrize("cap, jobs", [(2, 6), (0, 300)])
def test_an_executor_on_a_running_daemon_runs_its_jobs_when_its_script_ends_without_shutdown(
        jobs_only_daemon: Daemon, tmp_path: Path, cap: int, jobs: int) -> None:
    """The jobs its ``max_workers`` held back, and those its I/O thread had not sent yet, never reached the
    daemon: 2 of 6 ran, or none of 300.  They run before the script ends, as ``ProcessPoolExecutor``'s."""
    d = jobs_only_daemon
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_ATTACHED_EXIT_SCRIPT), str(tmp_path), str(cap),
                          d.config.name, str(jobs)], env={**d.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "left\n" and out.stderr == "", out.stderr
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == list(range(jobs))


_COLLECTED_SCRIPT = """
    import gc
    import os
    import sys
    import time
    from actors.client import Executor
    from tests import differential_jobs as J

    out, cap, name, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    pool = Executor(cap or None, daemon=name or None)
    for i in range(n):
        pool.submit(J.write, f"{out}/{i}", str(i))  # every future dropped at once
    del pool
    gc.collect()  # the executor, its futures and held jobs are a cycle: collected here unless something keeps it
    end = time.monotonic() + 60
    while len(os.listdir(out)) < n and time.monotonic() < end:
        time.sleep(0.02)
    print(len(os.listdir(out)))
"""


@pytest.mark.parametrize("cap, jobs", [(1, 6), (0, 50)])
def test_an_executor_dropped_unshut_runs_its_submitted_jobs(jobs_only_daemon: Daemon, tmp_path: Path, cap: int,
                                                           jobs: int) -> None:
    """An executor on a running daemon, with its futures, dropped without ``shutdown`` while jobs are still to
    run: ``ProcessPoolExecutor`` runs them all (its manager thread outlives it).  Ours was collected, its
    connection closed, and the jobs its ``max_workers`` held back were never sent."""
    d = jobs_only_daemon
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_COLLECTED_SCRIPT), str(out_dir), str(cap),
                          d.config.name, str(jobs)], env={**d.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout == f"{jobs}\n"


_MAIN_ERRORS_SCRIPT = """
    import json
    import sys
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from actors import RemoteError
    from actors.client import Executor


    class MyError(Exception):
        '''Rebuilds: the pool re-raises it as itself.'''


    class TwoArgError(Exception):
        '''Pickles, but cannot be rebuilt: its constructor takes two arguments, its args hold one.'''

        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")


    class LockedError(Exception):
        '''Cannot be pickled at all: it holds a lock.'''

        def __init__(self, message):
            super().__init__(message)
            self.lock = threading.Lock()


    def raise_my_error():
        raise MyError("mine")


    def raise_two_arg():
        raise TwoArgError(1, 2)


    def raise_locked():
        raise LockedError("holds a lock")


    if __name__ == "__main__":
        seen = {}
        for name, fn, cls in [("plain", raise_my_error, MyError), ("two-argument constructor", raise_two_arg,
                              TwoArgError), ("holds a lock", raise_locked, LockedError)]:
            with (ProcessPoolExecutor if sys.argv[1] == "ppe" else Executor)(1) as pool:  # a pool each: one breaks
                try:
                    pool.submit(fn).result(60)
                except Exception as exc:
                    seen[name] = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                                  "the script's class": isinstance(exc, cls),
                                  "a RemoteError": isinstance(exc, RemoteError), "text": str(exc),
                                  "its cause names the function": fn.__name__ in str(exc.__cause__)}
        print(json.dumps(seen))
"""
MAIN_KINDS: dict[str, dict[str, str]] = {"ppe": {}, "ensemble": {},
                                         "ensemble, a spawned daemon": {"ENSEMBLE_PRIVATE_START": "spawn"}}


@pytest.fixture(scope="module")
def main_script_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, Any]]]:
    """``[kind][case]``: what a script run as ``__main__`` sees of the exceptions of its own classes its own
    functions raise, on each pool (ensemble's private daemon forked from the script, as by default, whose
    workers have the script as their ``__main__``; or spawned, whose workers load it as ``__mp_main__``)."""
    base = tmp_path_factory.mktemp("main-errors")
    script = base / "script_errors.py"
    script.write_text(textwrap.dedent(_MAIN_ERRORS_SCRIPT))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, extra in MAIN_KINDS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
        env.update(PYTHONPATH=str(ROOT), ENSEMBLE_NAME="nobody-home", ENSEMBLE_RUN_DIR=str(base / "run"), **extra)
        proc = subprocess.run([sys.executable, str(script), "ppe" if kind == "ppe" else "ensemble"], env=env,
                              cwd=base, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stderr == "", (kind, proc.stderr)
        out[kind] = json.loads(proc.stdout)
        wait_for(lambda: not processes_mentioning(str(base)), 30, what=f"the script's processes ({kind}) to exit")
    return out


def test_an_exception_of_a_class_of_the_script_comes_back_as_that_class(
        main_script_errors: dict[str, dict[str, dict[str, Any]]]) -> None:
    """A job function of the script run as ``__main__`` raises an exception class of the script: the pool
    re-raises it as that class (pickle finds ``__main__.MyError`` in the caller), its text the job's, the remote
    traceback as its cause; ensemble the same, however its daemon started."""
    assert main_script_errors["ppe"]["plain"] == {
        "type": "__main__.MyError", "the script's class": True, "a RemoteError": False, "text": "mine",
        "its cause names the function": True}
    for kind in MAIN_KINDS:
        assert main_script_errors[kind]["plain"] == main_script_errors["ppe"]["plain"], kind


@pytest.mark.parametrize("case, text", [("two-argument constructor", "1/2"), ("holds a lock", "holds a lock")])
def test_an_exception_of_the_script_that_cannot_come_back_still_comes_back_as_its_class(
        main_script_errors: dict[str, dict[str, dict[str, Any]]], case: str, text: str) -> None:
    """As for a module's class (above): the pool breaks or raises pickle's TypeError; ensemble raises the script's
    class, its text the job's, the remote traceback as its cause: the exception itself when it pickles (rebuilt
    without its ``__init__``), a RemoteError of that class when it does not.  (A worker forked from the script
    names the class bare, as a traceback does, and only builtins were looked in: a plain RemoteError.)"""
    ppe = main_script_errors["ppe"][case]
    assert ppe["type"] == {"two-argument constructor": "concurrent.futures.process.BrokenProcessPool",
                           "holds a lock": "builtins.TypeError"}[case]
    for kind in ("ensemble", "ensemble, a spawned daemon"):
        assert main_script_errors[kind][case] == {
            "type": f"__main__.{'TwoArgError' if case.startswith('two') else 'LockedError'}",
            "the script's class": True, "a RemoteError": case == "holds a lock", "text": text,
            "its cause names the function": True}, kind

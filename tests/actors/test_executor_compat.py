"""The Executor as a drop-in for ProcessPoolExecutor, and one calling convention for every entry point."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from actors import JobRefused
from actors.client import Client, Executor
from tests import jobs
from tests.conftest import ROOT, Daemon, wait_for


# -- one calling convention
@pytest.mark.parametrize("fn", ["convention_plain", "convention_named", "convention_annotated"])
def test_the_same_function_runs_alike_from_every_entry_point(module_daemon: Daemon, fn: str) -> None:
    func = getattr(jobs, fn)
    kind = fn.removeprefix("convention_")
    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(func, 3).result(60) == [kind, True, 3]
    with Client(config=module_daemon.config) as c:
        assert c.submit(func, 4).result(60) == [kind, True, 4]
        assert c.submit(f"tests.jobs:{fn}", 5).result(60) == [kind, True, 5]
    out = module_daemon.cli("submit", f"tests.jobs:{fn}", "6", "--wait")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [kind, True, 6]


def test_example_jobs_keep_their_task_first_form(module_daemon: Daemon) -> None:
    from examples import jobs as examples

    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(examples.add, 2, 3).result(60) == 5
    with Client(config=module_daemon.config) as c:
        assert c.submit("examples.jobs:add", 2, 3).result(60) == 5


def test_builtins_and_partials_run_and_a_client_naming_a_denied_builtin_is_refused(module_daemon: Daemon) -> None:
    """Pure builtins go by path (``builtins:pow``); the rest travel pickled from a local executor (its own
    user's, as the pool's); a client naming ``builtins:exec`` as a job is refused whoever it is."""
    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(pow, 2, 10).result(60) == 1024
        assert list(ex.map(divmod, [7, 9, 100], [2, 4, 7], timeout=60)) == [(3, 1), (2, 1), (14, 2)]
        assert ex.submit(sorted, {3, 1, 2}).result(60) == [1, 2, 3]
        assert list(ex.map(functools.partial(divmod, 100), [3, 7], timeout=60)) == [(33, 1), (14, 2)]
        assert ex.submit(functools.partial(jobs.convention_named, x=8)).result(60) == ["named", True, 8]
        assert ex.submit(eval, "1 + 1").result(60) == 2
        assert ex.submit(str.upper, "a").result(60) == "A"
        import numpy as np  # a ufunc has a module and a name, but is no function: it was refused by its path

        assert list(ex.map(np.negative, [1, 2], timeout=60)) == [-1, -2]
        assert ex.submit(np.add, 1, 2).result(60) == 3
    with Client(config=module_daemon.config) as c:
        assert c.submit(pow, 3, 4).result(60) == 81
        assert c.submit(functools.partial(pow, 2), 5).result(60) == 32  # a partial travels as its function
        with pytest.raises(JobRefused):
            c.submit("builtins:exec", "print(1)")


def test_classes_run_as_their_constructors_as_under_a_process_pool(module_daemon: Daemon) -> None:
    """``ex.map(str, ...)``, ``ex.submit(Decimal, "1.10")``, a user's dataclass: a class travels pickled (no job
    runs a class by path); of builtins only the classes whose call builds a plain value, and print."""
    import decimal
    import fractions

    with Executor(config=module_daemon.config) as ex:
        assert list(ex.map(str, range(3), timeout=60)) == ["0", "1", "2"]
        assert ex.submit(int, "7").result(60) == 7
        assert ex.submit(tuple, [1, 2]).result(60) == (1, 2)
        value = ex.submit(decimal.Decimal, "1.10").result(60)
        assert type(value) is decimal.Decimal and str(value) == "1.10"
        assert ex.submit(fractions.Fraction, 1, 3).result(60) == fractions.Fraction(1, 3)
        assert ex.submit(jobs.Offset, 4).result(60) == jobs.Offset(4)
        assert ex.submit(print, "printed by a job").result(60) is None



def test_the_standard_library_s_callables_run_as_under_a_process_pool(module_daemon: Daemon, tmp_path: Path) -> None:
    """A local executor is its own user's: ``subprocess.run``, ``os.stat``, ``shutil.copyfile``, ``getattr``,
    ``str.upper`` run (pickled, as the pool pickles them); naming ``os:system`` as a job stays refused."""
    import shutil

    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_text("copied")
    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(subprocess.run, ["true"]).result(60).returncode == 0
        assert ex.submit(os.stat, str(src)).result(60).st_size == 6
        ex.submit(shutil.copyfile, str(src), str(dst)).result(60)
        assert dst.read_text() == "copied"
        assert ex.submit(getattr, "abc", "upper").result(60)() == "ABC"
        assert list(ex.map(str.upper, ["a", "b"], timeout=60)) == ["A", "B"]
        assert ex.submit(os.getpid).result(60) != os.getpid()
        with pytest.raises(TypeError, match="'int' object is not callable"):
            ex.submit(5)  # type: ignore[arg-type]
    with pytest.raises(JobRefused, match="never runs as a job"):
        module_daemon.client().submit("os:system", "true")


# -- ProcessPoolExecutor's constructor
def test_the_initializer_runs_once_per_worker_and_executor_before_its_first_job(
        module_daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))  # no daemon there: a private one, 2 workers
    with Executor(2, None, jobs.init_worker, (str(first), ("one", 1))) as ex:
        assert ex._private is not None
        got = list(ex.map(jobs.initialised, range(40), timeout=60))
    assert all(r[1] == [("one", 1)] for r in got)  # initargs cross exactly (a tuple stays a tuple)
    pids = collections.Counter(p.name.split("-")[0] for p in first.iterdir())
    assert set(pids) == {str(r[0]) for r in got} and set(pids.values()) == {1}  # once per worker that ran a job
    with Executor(config=module_daemon.config, initializer=jobs.init_worker, initargs=(str(second), "two")) as ex:
        assert ex.submit(jobs.initialised, 0).result(60)[1] == ["two"]  # a worker that served another executor
    assert len(list(second.iterdir())) == 1


@pytest.mark.parametrize("size", [3_000, 2_000_000, "array"])
def test_initargs_of_any_size_reach_every_worker_while_each_job_stays_small(
        size: int | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job carries its executor's setup: 3 kB initargs times 200 queued submits made one merged frame over
    a 64 kB limit (every job failed with ProtocolError), and 2 MB initargs made each job over it. Now the
    merges count them, and initargs over 4 kB go once into shared memory, the jobs carrying a handle.  A numpy
    array among them went with each job as MessagePack (and was journaled with each): pickled now, as the rest."""
    import numpy as np

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("ENSEMBLE_MAX_FRAME", str(64 * 1024))
    table: Any = np.arange(100_000) % 256 if size == "array" else bytes(range(256)) * (int(size) // 256)
    with Executor(2, initializer=jobs.init_table, initargs=(table,)) as ex:
        futures = [ex.submit(jobs.look_up, i) for i in range(200)]
        assert [f.result(60) for f in futures] == [table[i % len(table)] for i in range(200)]
        assert list(ex.map(jobs.look_up, range(500), chunksize=3)) == [table[i % len(table)] for i in range(500)]


def test_a_failing_initializer_breaks_the_pool_as_in_processpoolexecutor(module_daemon: Daemon) -> None:
    with Executor(config=module_daemon.config, initializer=jobs.init_fails, initargs=("no licence",)) as ex:
        fut = ex.submit(jobs.square, 3)
        with pytest.raises(BrokenProcessPool, match="no licence"):
            fut.result(60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(jobs.square, 4)
    with Executor(config=module_daemon.config, initializer=jobs.init_fails, initargs=("no licence",)) as ex:
        with pytest.raises(BrokenProcessPool, match="no licence"):  # the same through map's chunks
            list(ex.map(jobs.square, range(10), chunksize=3))
        with pytest.raises(BrokenProcessPool):
            ex.submit(jobs.square, 4)
        with pytest.raises(BrokenProcessPool):
            ex.map(jobs.square, range(3))


def inner_pool_lost_a_process() -> None:
    """A job whose own pool broke: it raises BrokenProcessPool itself."""
    raise BrokenProcessPool("a process of the job's own pool terminated abruptly")


def test_a_job_raising_brokenprocesspool_itself_breaks_nothing(module_daemon: Daemon) -> None:
    """The job's own error comes back, and the executor goes on, as ProcessPoolExecutor's does: it was taken for
    a failed initializer (the same type name), and every later submit and map raised BrokenProcessPool."""
    with Executor(config=module_daemon.config) as ex:
        with pytest.raises(BrokenProcessPool, match="the job's own pool"):
            ex.submit(inner_pool_lost_a_process).result(60)
        assert ex.submit(jobs.square, 3).result(60) == 9
        assert list(ex.map(jobs.square, [1, 2], timeout=60)) == [1, 4]


def test_a_worker_dying_under_a_job_raises_brokenprocesspool_and_the_pool_carries_on(module_daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    """ProcessPoolExecutor code catching BrokenProcessPool catches it (it is a JobLost too); unlike that pool,
    this one is not broken by it: the daemon replaced the worker."""
    from actors import JobLost

    with Executor(config=module_daemon.config) as ex:
        with pytest.raises(BrokenProcessPool, match="died while running the job") as caught:
            ex.submit(jobs.crash_once, str(tmp_path / "crashed")).result(60)
        assert isinstance(caught.value, JobLost)
        with pytest.raises(BrokenProcessPool, match="died while running the job"):  # a chunk of map's: alike
            list(ex.map(jobs.crash_once, [str(tmp_path / "again")] * 3, chunksize=3))
        assert ex.submit(jobs.square, 4).result(60) == 16


def test_max_tasks_per_child_replaces_a_worker_after_that_many_jobs(module_daemon: Daemon) -> None:
    before = {a.name: a.restarts for a in module_daemon.status().actors}
    with Executor(config=module_daemon.config, max_tasks_per_child=2) as ex:
        pids = [ex.submit(jobs.plain_pid).result(60) for _ in range(6)]  # one at a time
        more = list(ex.map(jobs.plain_pid, range(20), timeout=60))
    counts = collections.Counter(pids + more)
    assert max(counts.values()) <= 2 and len(counts) >= 13
    status = module_daemon.status()
    assert all(a.state != "failed" for a in status.actors)
    log = (module_daemon.base / "state" / "daemon.log").read_text()
    assert "max_tasks_per_child=2" in log and "CRITICAL" not in log
    assert {a.name for a in status.actors} >= set(before)


def test_the_constructor_takes_processpoolexecutor_s_arguments_and_checks_them(module_daemon: Daemon) -> None:
    import multiprocessing

    cfg = module_daemon.config
    with Executor(2, multiprocessing.get_context("spawn"), None, (), max_tasks_per_child=None, config=cfg) as ex:
        assert ex.submit(jobs.square, 5).result(60) == 25
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        Executor(max_tasks_per_child=0, config=cfg)
    with pytest.raises(TypeError, match="initializer"):
        Executor(initializer=42, config=cfg)  # type: ignore[arg-type]
    for bad in (2.5, True, "2"):  # refused here, not at the first submit
        with pytest.raises(TypeError, match=f"max_workers must be an int .*got {bad!r}"):
            Executor(bad, config=cfg)  # type: ignore[arg-type]


# -- shutdown and stderr
_SHUTDOWN_SCRIPT = """
    import concurrent.futures, sys
    from actors.client import Executor
    from tests import jobs

    ex = Executor(max_workers=2)
    futures = [ex.submit(jobs.plain_sleep, 0.2) for _ in range(60)]
    futures[0].result(60)
    ex.shutdown(wait=True, cancel_futures=True)
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    cancelled = sum(f.cancelled() for f in futures)
    assert not not_done and cancelled > 0, (len(not_done), cancelled)
    try:
        ex.submit(jobs.square, 1)
    except RuntimeError:
        pass
    else:
        sys.exit("submit after shutdown did not raise")

    ex = Executor(max_workers=2)
    futures = list(map(lambda x: ex.submit(jobs.plain_sleep, 0.1), range(20)))
    for f in futures[5:]:
        f.cancel()
    ex.shutdown(wait=False, cancel_futures=True)
    concurrent.futures.wait(futures, timeout=60)
    with Executor(max_workers=2) as ex:
        it = ex.map(jobs.plain_sleep, [0.05] * 40)
        next(it)
        ex.shutdown(wait=True, cancel_futures=True)
    import os, tempfile
    marker = os.path.join(tempfile.mkdtemp(), "crashed")
    with Executor(max_workers=2, retries=1) as ex:  # its worker dies: the job starts again (a second "running")
        assert ex.submit(jobs.crash_once, marker).result(60) == "survived"
    print("ok", cancelled)
"""


def test_shutdown_with_cancel_futures_leaves_nothing_on_stderr(module_daemon: Daemon) -> None:
    env = dict(module_daemon.env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_SHUTDOWN_SCRIPT)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
    assert out.stderr == "", out.stderr  # no "Future ... in unexpected state", no traceback, no log noise


def test_as_completed_and_wait_see_cancelled_futures(module_daemon: Daemon) -> None:
    with Executor(1, config=module_daemon.config) as ex:
        futures = [ex.submit(jobs.plain_sleep, 0.05) for _ in range(10)]
        for f in futures[3:]:
            f.cancel()
        done = list(concurrent.futures.as_completed(futures, timeout=60))
    assert len(done) == 10 and all(f.done() for f in futures)


def test_a_map_read_past_shutdown_with_cancel_futures_raises_cancelled_error(module_daemon: Daemon) -> None:
    """The pools' map raises the cancelled future's CancelledError where its values stop; ours raised JobCancelled,
    which ``except CancelledError`` misses."""
    with Executor(config=module_daemon.config) as ex:  # (no max_workers: a cap on a shared daemon maps by submits)
        it = ex.map(jobs.plain_sleep, [0.1] * 60)
        got = [next(it)]
        ex.shutdown(wait=True, cancel_futures=True)
        with pytest.raises(concurrent.futures.CancelledError):
            got.extend(it)  # the values of the chunks that had started, then the error
    assert 1 <= len(got) < 60 and set(got) == {0.1}
    with Executor(config=module_daemon.config) as ex:
        with pytest.raises(ValueError, match="chunksize must be an int, got 1.5"):  # TypeError, where the pools'
            ex.map(jobs.square, range(4), chunksize=1.5)  # type: ignore[arg-type]  # islice says ValueError


def test_a_running_future_is_running_and_cancel_futures_leaves_it_to_finish(module_daemon: Daemon,
                                                                          tmp_path: Path) -> None:
    """As in ProcessPoolExecutor: a future whose job started says running(), cannot be cancelled, and
    shutdown(cancel_futures=True) cancels only the futures not started (it used to abort running jobs too)."""
    gate = tmp_path / "gate"
    with Executor(1, config=module_daemon.config) as ex:
        first = ex.submit(jobs.plain_gate, str(tmp_path), str(gate))
        rest = [ex.submit(jobs.plain_sleep, 0.01) for _ in range(5)]
        wait_for(first.running, 60, what="the first job to be reported running")
        assert not first.cancel() and not first.cancelled()
        assert not any(f.running() for f in rest)  # one worker, capped at one job: the rest wait
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in rest)
        gate.touch()
        assert first.result(60) > 0  # it ran to the end (the worker's pid)


# -- a new user's project, outside the repository, with no configuration at all
_MYWORK = '''
import dataclasses
import threading


def square(x):
    return x * x


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def echo(value):
    return value


def lock_inside():
    return {"ok": 1, "lock": threading.Lock()}


class Picky(Exception):
    def __init__(self, x):
        super().__init__()
        self.x = x


def picky():
    return Picky(1)
'''

_MAIN = '''
import collections, datetime, decimal, fractions, os, pathlib, sys, threading, uuid

import mywork
from ensemble import Executor, RemoteError

with Executor() as ex:
    assert list(ex.map(mywork.square, range(1000))) == [x * x for x in range(1000)]
    print(ex._private.proc.pid, ex._private.dir)
    values = [(1, 2), {1, 2}, frozenset({3}), {(1, 2): "t", 3: "i", None: 0}, 2 ** 100, 1 + 2j,
              datetime.datetime(2026, 12, 3, 11, 0, 1, 5), datetime.date(2026, 1, 2), datetime.time(1, 2),
              datetime.timedelta(days=3), decimal.Decimal("1.10"), uuid.UUID(int=7), pathlib.PurePosixPath("a/b"),
              pathlib.Path("rel"), b"x", bytearray(b"y"), mywork.Point(1, 2), fractions.Fraction(1, 3),
              collections.OrderedDict(a=1), collections.Counter("aab"), [1, (2, {3})], float("inf"), None, True]
    for value in values:
        got = ex.submit(mywork.echo, value).result(60)
        assert got == value and type(got) is type(value), (value, got)
    fut = ex.submit(mywork.echo, {"a": [1, (2, threading.Lock())]})
    assert "args[0]['a'][1][1]" in str(fut.exception(0)) and "_thread.lock" in str(fut.exception(0))
    err = ex.submit(mywork.lock_inside).exception(60)
    assert isinstance(err, TypeError) and "result['lock']" in str(err) and "_thread.lock" in str(err), err
    err = ex.submit(mywork.picky).exception(60)
    assert isinstance(err, RemoteError) and "cannot be rebuilt" in str(err), err
    source = open("mywork.py").read()
    open("mywork.py", "w").write(source.replace("return x * x", "return -x"))
    os.utime("mywork.py", ns=(1, 1))  # a different mtime even on a coarse clock
    assert list(ex.map(mywork.square, range(1000))) == [-x for x in range(1000)]  # every one on the new code
print("ok")
'''


def test_a_new_user_s_project_runs_with_no_setup_and_faithful_values(tmp_path: Path) -> None:
    import os

    from tests.conftest import pid_alive, wait_for

    project = tmp_path / "project"
    project.mkdir()
    (project / "mywork.py").write_text(_MYWORK)
    (project / "main.py").write_text(_MAIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), ENSEMBLE_NAME="nobody-home", ENSEMBLE_RUN_DIR=str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "main.py"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    first, last = out.stdout.strip().splitlines()[0], out.stdout.strip().splitlines()[-1]
    assert last == "ok" and out.stderr == ""
    pid, where = int(first.split()[0]), Path(first.split()[1])
    wait_for(lambda: not pid_alive(pid), 30, what="the private daemon to stop with its executor")
    assert not where.exists()


def test_an_executor_s_worker_setup_survives_the_journal() -> None:
    from actors._jobs import pack_spec, unpack_job
    from actors.messages import JobSpec, WorkerSetup

    setup = WorkerSetup("k1", "tests.jobs:init_worker", [b"\x80\x05blob"], True, 3)
    spec = JobSpec("tests.jobs:square", [2], {}, setup=setup)
    assert unpack_job(pack_spec(spec, "", False, ("/tmp", ["/tmp"])))[0] == spec  # a restarted daemon still has it
    plain = JobSpec("tests.jobs:square", [2])
    assert unpack_job(pack_spec(plain))[0].setup is None


def test_map_in_chunks_keeps_the_calling_convention_and_the_worker_setup(module_daemon: Daemon,
                                                                         tmp_path: Path) -> None:
    with Executor(config=module_daemon.config, initializer=jobs.init_worker, initargs=(str(tmp_path), "m"),
                  max_tasks_per_child=3) as ex:
        got = list(ex.map(jobs.initialised, range(30), chunksize=4, timeout=120))
        named = list(ex.map(jobs.convention_named, range(6), chunksize=3, timeout=60))
        partial = list(ex.map(functools.partial(divmod, 100), [3, 7], chunksize=2, timeout=60))
    assert [r[2] for r in got] == list(range(30)) and all(r[1] == ["m"] for r in got)
    assert max(collections.Counter(r[0] for r in got).values()) <= 3 * 4  # at most 3 chunk jobs per worker
    assert named == [["named", True, x] for x in range(6)] and partial == [(33, 1), (14, 2)]


def test_a_pickled_callable_s_errors_name_it_not_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bound method that ended its worker said "job 3 (actors.callables:pickled): worker ... died": the runner
    that calls every pickled callable, not the callable.  Its errors name the callable now."""
    from concurrent.futures.process import BrokenProcessPool

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    with Executor(1) as ex:
        with pytest.raises(BrokenProcessPool) as info:
            ex.submit(jobs.Crasher().crash).result(60)
    assert "(tests.jobs:Crasher.crash)" in str(info.value) and "callables:pickled" not in str(info.value), info.value


def test_callables_without_a_job_path_run_as_under_a_process_pool(module_daemon: Daemon) -> None:
    """Bound methods (of the user's objects and of the library's), callable objects, static methods, private
    functions: an
    Executor sends them pickled (under actors.callables:pickled, their label as the job's name), as
    ProcessPoolExecutor does; a lambda or a closure stays refused with the fix."""
    scaler = jobs.Scaler(3)
    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(scaler.scale, 5).result(60) == 15
        assert ex.submit(scaler, 2).result(60) == [3, 2]
        assert ex.submit(jobs.Offset(2), 3).result(60) == 5  # unhashable
        assert ex.submit(jobs.Scaler.negate, 4).result(60) == -4
        assert ex.submit(collections.Counter("abca").most_common, 1).result(60) == [("a", 2)]
        assert ex.submit(jobs._private_helper, 1).result(60) == 101
        assert list(ex.map(scaler.scale, [1, 2, 3], timeout=60)) == [3, 6, 9]
        with pytest.raises(JobRefused, match="lambda or a closure"):
            ex.submit(lambda: 1)
    with Client(config=module_daemon.config) as c:
        named = [j.name for j in c.jobs(limit=50) if j.fn == "actors.callables:pickled"]
        assert "tests.jobs:Scaler.scale" in named and "tests.jobs:Scaler" in named
        # the job function that stands for a pickled callable runs nothing else (a path from a client)
        with pytest.raises(JobRefused, match="only a callable pickled by a local Executor"):
            c.submit("actors.callables:pickled", "tests.jobs:square", 3).result(60)

"""An AsyncClient dropped without ``close()`` (or ``async with``) lets go of everything once it is collected.

Its connection (an I/O thread, sockets, descriptors) stayed for the life of the process, and a private daemon it
started ran until the process ended.  The client reaper (see ``actors.client._close_when_dropped``) closes it
now, without its event loop (closed, or gone, by then), and never while a handle of it is held or a job of it is
followed.  Real daemons; the leaks are counted (threads, descriptors, processes) and polled for with a generous
deadline.  Each test fails on the code before (the Executor's held already).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Callable, Iterator

import pytest

from actors.client import AsyncClient, Executor
from tests import jobs
from tests.conftest import Daemon, pid_alive, wait_for

Make = Callable[..., Daemon]


def _counts() -> tuple[int, int]:
    """This process's threads (but the reaper, started once for good by the first client) and open descriptors."""
    threads = sum(t.name != "ensemble-client-reaper" for t in threading.enumerate())
    return threads, len(os.listdir("/proc/self/fd"))


def _released(threads: int, fds: int) -> bool:
    """Whether no more threads, and at most 2 more descriptors, are open than ``_counts()`` said before.

    Collects first, each time: a client's last reference may go a moment after the test dropped its own (the
    I/O thread that handed a job's end to the loop lets go of its listener after), and the collector would
    only find the client later, at its next pass."""
    gc.collect()
    now_threads, now_fds = _counts()
    return now_threads <= threads and now_fds <= fds + 2


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` on the running loop (which goes on serving meanwhile) until it holds; fail after ``timeout``."""
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The test logs nothing at WARNING or above (asyncio's "Task was destroyed but it is pending!", a reaper's
    failure) and raises no warning (an unclosed socket's ResourceWarning, a coroutine never awaited)."""
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        yield
        gc.collect()
    logged = caplog.get_records("call") + caplog.records  # (the test's, and this teardown's)
    assert [r.getMessage() for r in logged if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in raised] == []


@pytest.fixture
def warm(make_daemon: Make) -> Daemon:
    """A jobs-only daemon, and what a first async client leaves for good (asyncio's imports) there already."""
    d = make_daemon(workers=1, jobs_only=True)
    d.up()

    async def first() -> None:
        async with AsyncClient(config=d.config) as c:
            await c.ping()

    asyncio.run(first())
    gc.collect()
    return d


def test_async_clients_dropped_after_their_loop_ended_let_their_threads_and_descriptors_go(
        warm: Daemon, quiet: None) -> None:
    """Dropped unclosed, an AsyncClient kept its I/O thread and descriptors for the life of the process (the
    loop that used it had ended: nothing of it could close them). Collected, it is closed by the reaper; one of
    them had awaited a job (its handles' pinger ran on that loop), one was used by two loops."""
    threads, fds = _counts()

    async def use(c: AsyncClient, job: bool) -> None:
        await c.ping()
        if job:
            assert await (await c.submit("tests.jobs:sleep", 0.01)) == 0.01

    for i in range(6):
        c = AsyncClient(config=warm.config)
        asyncio.run(use(c, job=i % 2 == 0))
        if i == 5:
            asyncio.run(use(c, job=True))  # (a second loop, its own pinger)
        del c
    gc.collect()
    wait_for(lambda: _released(threads, fds), 60, what="the dropped async clients' threads and descriptors to go")


def test_an_async_client_dropped_while_its_loop_runs_is_closed_and_the_loop_goes_on(
        warm: Daemon, quiet: None) -> None:
    """Dropped on a loop that keeps running, a client is closed off the loop (the loop is not needed, nor
    blocked), once nothing of it runs there any more: a job it follows keeps it until the job has ended."""
    async def main() -> None:
        threads, fds = _counts()  # (the loop's own descriptors counted)
        for _ in range(4):
            c = AsyncClient(config=warm.config)
            await c.ping()
            del c
        c = AsyncClient(config=warm.config)
        await c.submit("tests.jobs:sleep", 0.3)  # its handle dropped at once: the client follows the job
        following = weakref.ref(c)
        del c
        gc.collect()
        kept = following()
        assert kept is not None and not kept.conn.closed  # (kept while its job runs)
        del kept
        await _until(lambda: _released(threads, fds), 60,
                     "the dropped async clients' threads and descriptors to go, the loop running")
        async with AsyncClient(config=warm.config) as again:  # the loop serves a new client as before
            await again.ping()

    asyncio.run(main())


def test_a_held_handle_keeps_its_dropped_async_client_until_it_is_dropped(warm: Daemon, quiet: None) -> None:
    """Nothing still in use is closed: a handle held keeps its client (and connection) open, its result comes;
    the client goes once the handle is dropped too."""
    async def main() -> None:
        threads, fds = _counts()
        c = AsyncClient(config=warm.config)
        handle = await c.submit("tests.jobs:sleep", 0.3)
        del c
        gc.collect()
        assert await handle.result(60) == 0.3
        gc.collect()
        assert (await handle.refresh()).state == "done"  # the connection is still open: it asks the daemon
        del handle
        await _until(lambda: _released(threads, fds), 60, "the client to go with its last handle")

    asyncio.run(main())


def test_an_async_client_dropped_on_a_loop_closed_with_its_pinger_pending_says_nothing(
        warm: Daemon, quiet: None) -> None:
    """A loop run by hand and closed while the client still followed a job (its pinger task pending, never
    cancelled): the client goes once the job has ended, and asyncio says nothing of the task it drops."""
    threads, fds = _counts()
    loop = asyncio.new_event_loop()
    try:
        c = AsyncClient(config=warm.config)
        loop.run_until_complete(c.submit("tests.jobs:sleep", 0.2))
    finally:
        loop.close()
    del c, loop
    gc.collect()
    wait_for(lambda: _released(threads, fds), 60,
             what="the client to go once its job ended, its loop closed")


def test_a_dropped_async_client_s_private_daemon_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      quiet: None) -> None:
    """A private daemon ran on until the process ended when its AsyncClient was dropped unclosed; it is stopped
    (its directory removed) once the client is collected, and the client's thread and descriptors go."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    threads, fds = _counts()

    async def main() -> tuple[int, Path]:
        c = AsyncClient(private=True, max_workers=1)
        assert c._private is not None and c._private.proc is not None
        await c.ping()
        return c._private.proc.pid, c._private.dir

    pid, where = asyncio.run(main())
    gc.collect()
    wait_for(lambda: not pid_alive(pid) and not where.exists(), 60,
             what="the dropped client's private daemon to stop and its directory to go")
    wait_for(lambda: _released(threads, fds), 60, what="the dropped client's thread and descriptors to go")


def test_executors_dropped_without_shutdown_let_their_threads_and_descriptors_go(warm: Daemon, quiet: None) -> None:
    """An Executor dropped unshut is released once collected, as a Client is (its futures done). This held
    already (its own finalizer, ``actors.client._release``, not the reaper): kept as a regression."""
    threads, fds = _counts()
    for _ in range(4):
        ex = Executor(config=warm.config)
        assert ex.submit(jobs.square, 3).result(60) == 9
        del ex
    gc.collect()
    wait_for(lambda: _released(threads, fds), 60, what="the dropped executors' threads and descriptors to go")


def test_an_executor_collected_where_its_connection_is_locked_is_released_by_the_reaper(warm: Daemon) -> None:
    """An Executor's finalizer closed its connection on the thread the collector ran in, which may hold that
    connection's lock (a thread inside a call of it; the connection's lock is not reentrant): that thread waited on
    itself for ever.  It is queued for the reaper thread now, as a dropped Client's is."""
    ex = Executor(config=warm.config)
    assert ex.submit(jobs.square, 3).result(60) == 9
    conn = ex._conn
    assert conn is not None
    held = [ex]
    del ex
    dropped = threading.Event()

    def drop_holding_the_lock() -> None:
        with conn._lock:  # as a thread in the middle of a call holds it when the collector runs
            held.clear()
            gc.collect()
        dropped.set()

    threading.Thread(target=drop_holding_the_lock, name="drop-executor", daemon=True).start()
    assert dropped.wait(30), "the thread that dropped the executor hung in its finalizer"
    wait_for(lambda: conn.closed, 30, what="the reaper to close the dropped executor's connection")


def test_an_executor_collected_during_the_first_import_of_asyncio_is_released(
        warm: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finalizer imported asyncio to see whether a loop runs; the collector can run it inside the first import
    of asyncio, which then gave back the module half made ("partially initialized module 'asyncio' has no attribute
    '_get_running_loop'", printed as an exception ignored in the finalizer, seen under a script run with a spawned
    private daemon), and the executor was never released.  Such a module is what ``sys.modules`` holds then."""
    import sys
    import types

    ex = Executor(config=warm.config)
    assert ex.submit(jobs.square, 3).result(60) == 9
    conn = ex._conn
    assert conn is not None
    half_made = types.ModuleType("asyncio")  # as sys.modules holds it while asyncio's own imports run
    errors: list[str] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: errors.append(f"{u.exc_type.__name__}: {u.exc_value}"))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "asyncio", half_made)
        del ex
        gc.collect()
    assert errors == []
    wait_for(lambda: conn.closed, 30, what="the executor's connection to be released")

"""Clients: reattach, Executor, AsyncClient, concurrency (exactly once), limits and transport errors."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from actors import (
    ClientClosed, DaemonNotRunning, JobCancelled, JobNotFound, JobRefused, JobTimeout, NoAnswer, ProtocolError,
    RemoteError, TransportError, WaitTimeout,
)
from actors.client import AsyncClient, Client, Executor
from actors.config import load_config
from tests import jobs
from tests.conftest import Daemon, wait_for

Make = Callable[..., Daemon]


# --------------------------------------------------------------------------------- reattach
def test_client_job_reattaches_from_another_client(module_daemon: Daemon) -> None:
    first, second = module_daemon.client(), module_daemon.client()
    job = first.submit("tests.jobs:props", 11)
    other = second.job(job.id)
    assert other.id == job.id
    wait_for(lambda: other.progress == 0.5 and other.status_message == "half way" and other.properties == {"n": 11},
             30, what="the second client to see the job's progress")
    seen: list[str] = []
    watched = second.watch(job.id, lambda info: seen.append(info.state))
    second.cancel(job.id, block=True)
    assert other.wait(30).state == "cancelled"
    assert job.wait(30).state == "cancelled"
    wait_for(lambda: watched.done(), 30, what="the watcher to hear the end")
    assert seen[-1] == "cancelled"


def test_client_job_reattaches_from_another_process(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:polite", 120)
    wait_for(lambda: job.status_message == "started", 30, what="the job to start")
    code = ("import sys; from actors.client import Client; from actors.config import load_config\n"
            "with Client(config=load_config()) as c:\n"
            "    h = c.job(int(sys.argv[1]))\n"
            "    print(h.state, flush=True)\n"
            "    h.cancel(block=True)\n"
            "    print(h.wait(30).state, h.wait(30).result)\n")
    out = subprocess.run([sys.executable, "-c", code, str(job.id)], env=module_daemon.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    assert first == "running" and second == "cancelled aborted"
    assert job.wait(30).state == "cancelled"


def test_reattach_to_a_finished_or_unknown_job(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    done = c.submit("examples.jobs:add", 1, 2)
    assert done.result(30) == 3
    again = module_daemon.client().job(done.id)
    assert again.done() and again.result(1) == 3
    from actors import JobNotFound

    with pytest.raises(JobNotFound, match="unknown to this daemon"):
        c.job(10**9)
    with pytest.raises(JobNotFound):
        c.cancel(10**9)


def test_result_timeout_raises_job_timeout(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:polite", 120)
    with pytest.raises(WaitTimeout, match="did not finish within"):
        job.result(timeout=0.2)
    job.cancel(block=True)


# --------------------------------------------------------------------------------- Executor
def test_executor_works_with_as_completed_wait_and_map(module_daemon: Daemon) -> None:
    with Executor(config=module_daemon.config) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        futures = {ex.submit(jobs.square, i): i for i in range(20)}
        got = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures, timeout=60)}
        assert got == {i: i * i for i in range(20)}
        more = [ex.submit(jobs.square, i) for i in range(5)]
        done, not_done = concurrent.futures.wait(more, timeout=60)
        assert not not_done and sorted(f.result() for f in done) == [0, 1, 4, 9, 16]
        assert list(ex.map(jobs.square, range(10), timeout=60)) == [i * i for i in range(10)]
        assert list(ex.map(jobs.square, [])) == []


def test_executor_functions_reach_their_task_through_current_task(module_daemon: Daemon) -> None:
    with Executor(config=module_daemon.config) as ex:
        job_id, x, prop = ex.submit(jobs.plain_with_task, 5).result(60)
    assert (x, prop) == (5, 5)
    info = module_daemon.client().job(job_id).wait(30)
    assert info.progress == 1.0 and info.properties == {"x": 5} and info.fn == "tests.jobs:plain_with_task"


def test_executor_futures_carry_remote_errors(module_daemon: Daemon) -> None:
    with Executor(config=module_daemon.config) as ex:
        fut = ex.submit(jobs.plain_fail, "missing-key")
        exc = fut.exception(60)
        assert isinstance(exc, KeyError) and "missing-key" in str(exc)  # the job's own exception, as PPE gives it
        assert isinstance(exc.__cause__, RemoteError) and "plain_fail" in exc.__cause__.traceback_text
        assert ex.submit(__import__("json").dumps, [1]).result(60) == "[1]"  # local: trusted as the user
        assert ex.submit(__import__("os").system, "true").result(60) == 0  # pickled, as the pool runs it
        with pytest.raises(JobRefused, match="lambda"):
            ex.submit(lambda: 1)


def test_executor_shutdown_waits_for_everything_submitted(module_daemon: Daemon) -> None:
    with Executor(config=module_daemon.config) as ex:
        futures = [ex.submit(jobs.square, i) for i in range(50)]
    assert [f.result(0) for f in futures] == [i * i for i in range(50)]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(jobs.square, 1)


def test_executor_shutdown_without_wait_lets_pending_futures_finish(module_daemon: Daemon) -> None:
    ex = Executor(config=module_daemon.config)
    futures = [ex.submit(jobs.square, i) for i in range(20)]
    ex.shutdown(wait=False)
    assert [f.result(60) for f in futures] == [i * i for i in range(20)]
    wait_for(lambda: ex.conn.closed, 30, what="the connection to close after the last future")


def _occupy_workers(c: Client, gate: Path) -> list[Any]:
    """Both of the module daemon's workers busy until ``gate`` exists: jobs submitted now wait in the daemon."""
    blockers = [c.submit("tests.jobs:wait_file", str(gate)) for _ in range(2)]
    wait_for(lambda: all(b.state == "running" for b in blockers), 60, what="both workers busy")
    return blockers


def test_executor_shutdown_can_cancel_pending_futures(module_daemon: Daemon, tmp_path: Path) -> None:
    c = module_daemon.client()
    gate = tmp_path / "gate"
    blockers = _occupy_workers(c, gate)
    try:
        ex = Executor(config=module_daemon.config)
        futures = [ex.submit(jobs.plain_sleep, 3600) for _ in range(3)]
        wait_for(lambda: all(hasattr(f, "job_id") for f in futures), 30, what="job ids")
        assert not any(f.running() for f in futures)
        ex.shutdown(wait=True, cancel_futures=True)
        assert all(f.cancelled() for f in futures)
        for f in futures:
            assert c.job(f.job_id).wait(60).state == "cancelled"  # type: ignore[attr-defined]
    finally:
        gate.touch()
    assert [b.result(60) for b in blockers] == ["released", "released"]


def test_cancelling_an_executor_future_cancels_the_job(module_daemon: Daemon, tmp_path: Path) -> None:
    c = module_daemon.client()
    gate = tmp_path / "gate"
    blockers = _occupy_workers(c, gate)
    try:
        with Executor(config=module_daemon.config) as ex:
            fut = ex.submit(jobs.plain_sleep, 3600)
            wait_for(lambda: hasattr(fut, "job_id"), 30, what="the job id")
            assert fut.cancel()
            info = c.job(fut.job_id).wait(60)  # type: ignore[attr-defined]
        assert info.state == "cancelled"
    finally:
        gate.touch()
    assert [b.result(60) for b in blockers] == ["released", "released"]


# --------------------------------------------------------------------------------- AsyncClient
def test_async_client_submits_awaits_and_cancels(module_daemon: Daemon) -> None:
    async def main() -> None:
        async with AsyncClient(config=module_daemon.config) as c:
            assert (await c.ping()).pid == module_daemon.pid
            assert len((await c.status()).actors) == 4
            handle = await c.submit("examples.jobs:add", 1, 2)
            assert await handle == 3
            handles = [await c.submit("examples.jobs:add", i, i) for i in range(10)]
            assert await asyncio.gather(*(h.result(60) for h in handles)) == [2 * i for i in range(10)]
            polite = await c.submit("tests.jobs:polite", 120)
            with pytest.raises(WaitTimeout):
                await polite.wait(0.1)
            await polite.cancel(block=True)
            assert polite.info is not None and polite.info.state == "cancelled"
            with pytest.raises(JobCancelled):
                await polite.result(5)
            failing = await c.submit("tests.jobs:boom", "async")
            with pytest.raises(RemoteError) as info:
                await failing
            assert info.value.type_name == "tests.jobs.CustomJobError"
            assert (await failing.refresh()).state == "failed"
            with pytest.raises(JobRefused):
                await c.submit("os:system", "true")

    asyncio.run(main())


def test_an_async_handle_follows_its_job_s_progress_to_the_end(module_daemon: Daemon) -> None:
    """An AsyncJobHandle had no progress, status or properties at all (AttributeError), and no way to follow
    them: ``updates()`` yields each snapshot as the daemon pushes it, ending with the final one."""
    async def main() -> None:
        async with AsyncClient(config=module_daemon.config) as c:
            job = await c.submit("examples.jobs:countdown", 1.0, 0.05)
            assert not job.done() and job.state in ("queued", "running")
            seen = [info async for info in job.updates()]
            assert seen[-1].state == "done" and job.done() and job.state == "done" and job.progress == 1.0
            running = [i.progress for i in seen if i.state == "running"]
            assert len(set(running)) >= 3 and running == sorted(running), running  # pushed as it went
            assert await job == "done"
            assert [i.state async for i in job.updates()] == ["done"]  # one that ended: its final snapshot
            held = await c.submit("tests.jobs:props", 7)  # sets its properties, then waits for an abort
            first, second = held.updates(), held.updates()
            async for info in first:
                if info.properties:
                    break
            assert held.properties == {"n": 7} and held.status_message == "half way" and held.progress == 0.5
            await held.cancel()
            ends = [i.state async for i in second]
            assert ends[-1] == "cancelled" and held.state == "cancelled"
        c = AsyncClient(config=module_daemon.config)
        left = await c.submit("tests.jobs:polite", 120)
        seen: list[str] = []

        async def follow() -> None:
            async for info in left.updates():
                seen.append(info.state)

        following = asyncio.ensure_future(follow())
        while not seen:
            await asyncio.sleep(0.01)
        await c.close()  # the job goes on in the daemon; this client's follower ends, saying why
        with pytest.raises(ClientClosed):
            await asyncio.wait_for(following, 60)
        module_daemon.client().cancel(left.id, block=True)

    asyncio.run(main())


def test_an_async_client_reattaches_lists_and_cancels_by_id(module_daemon: Daemon) -> None:
    """An AsyncClient could only submit: a job of another client could not be awaited, listed or cancelled."""
    polite = module_daemon.client().submit("tests.jobs:polite", 120)
    done = module_daemon.client().submit("examples.jobs:add", 2, 3)
    done.result(60)

    async def main() -> None:
        async with AsyncClient(config=module_daemon.config) as c:
            assert await (await c.job(done.id)) == 5
            again = await c.job(polite.id)
            assert not again.done()
            listed = {i.id: i.state for i in await c.jobs(limit=1000)}
            assert listed[polite.id] in ("queued", "running") and listed[done.id] == "done"
            final = await c.cancel(polite.id, block=True)
            assert final is not None and final.state == "cancelled"
            with pytest.raises(JobCancelled):
                await again.result(60)
            with pytest.raises(JobNotFound):
                await c.job(10**9)

    asyncio.run(main())


def test_an_async_client_submits_many_at_once_and_passes_shared_arrays(module_daemon: Daemon) -> None:
    """``submit_many``, ``spec``, ``empty`` and ``free`` were the Client's only: an asyncio program could not
    send a batch in one message, nor an array without a copy."""
    import numpy as np

    async def main() -> None:
        async with AsyncClient(config=module_daemon.config) as c:
            handles = await c.submit_many([c.spec("examples.jobs:add", i, i, priority=1) for i in range(50)])
            assert [h.id for h in handles] == sorted(h.id for h in handles)  # in order, one message
            assert await asyncio.gather(*handles) == [2 * i for i in range(50)]
            big = c.empty(250_000, "float32")  # 1 MB in shared memory
            big[:] = 0.5
            back = await (await c.submit("examples.jobs:echo", big))
            assert isinstance(back, np.ndarray) and back.shape == (250_000,) and float(back[-1]) == 0.5
            c.free(big)

    asyncio.run(main())


def test_empty_after_close_is_refused_and_a_client_never_closed_leaves_no_segment(module_daemon: Daemon,
                                                                                   tmp_path: Path) -> None:
    """``empty()`` after ``close()`` made a segment nothing would unlink until the daemon's next start, and a
    program that never closed its client left its arrays there too."""
    from actors import ClientClosed
    from actors.shm import segment_prefix
    from tests.conftest import ROOT

    c = Client(config=module_daemon.config)
    c.close()
    with pytest.raises(ClientClosed, match="this client was closed"):
        c.empty(10)

    async def closed_async() -> None:
        a = AsyncClient(config=module_daemon.config)
        await a.close()
        a.empty(10)

    with pytest.raises(ClientClosed):
        asyncio.run(closed_async())
    prefix = segment_prefix(module_daemon.config.daemon.name)
    before = {p for p in os.listdir("/dev/shm") if p.startswith(prefix)}
    script = ("import sys\nfrom actors.config import Config\nfrom ensemble import Client\n"
              "c = Client(config=Config.from_json(sys.argv[1]))\nbig = c.empty(1000)\n"
              "print(c.submit('examples.jobs:echo', big).result(60).shape)\n")  # and exits, c never closed
    out = subprocess.run([sys.executable, "-c", script, module_daemon.config.to_json()], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "(1000,)", out.stderr
    assert not {p for p in os.listdir("/dev/shm") if p.startswith(prefix)} - before


def test_submit_many_of_no_specs_and_a_scale_to_part_of_a_worker_are_refused_saying_so(module_daemon: Daemon) -> None:
    """``submit_many(["x"])`` raised AttributeError from inside the connection; ``scale(2.5)`` scaled to 2."""
    from actors import OutOfRange

    with Client(config=module_daemon.config) as c:
        with pytest.raises(TypeError, match="submit_many takes the JobSpecs spec.. or make_spec.. build; item 1 is "
                                            "a str"):
            c.submit_many([c.spec("examples.jobs:add", 1, 2), "examples.jobs:add"])  # type: ignore[list-item]
        with pytest.raises(OutOfRange, match="cannot scale to 2.5 workers: give a whole number"):
            c.scale(2.5)  # type: ignore[arg-type]
        assert [h.result(60) for h in c.submit_many([c.spec("examples.jobs:add", 1, 2)])] == [3]  # nothing sent

    async def main() -> None:
        async with AsyncClient(config=module_daemon.config) as a:
            with pytest.raises(TypeError, match="item 0 is a str"):
                await a.submit_many(["x"])  # type: ignore[list-item]
            with pytest.raises(OutOfRange):
                await a.scale(2.5)  # type: ignore[arg-type]

    asyncio.run(main())


def test_a_client_made_in_a_job_reaches_the_daemon_that_runs_it(module_daemon: Daemon) -> None:
    """A job's ``Client()`` looked for the daemon named ``default``: a daemon started with ``--name`` (the
    instruments guide's job that uploads a sample) failed with DaemonNotRunning."""
    with Client(config=module_daemon.config) as c:
        assert c.submit("tests.jobs:daemon_of_client").result(60) == module_daemon.config.daemon.name != "default"


# --------------------------------------------------------------------------------- concurrency
def test_1000_jobs_from_4_concurrent_clients_complete_exactly_once(module_daemon: Daemon, tmp_path: Path) -> None:
    marks = str(tmp_path / "marks")
    per_client = 250
    results: dict[int, list[tuple[int, Any, str]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run(n: int) -> None:
        try:
            with Client(config=module_daemon.config) as c:
                barrier.wait(30)
                handles = [(c.submit("tests.jobs:record", marks, f"c{n}-{i}"), f"c{n}-{i}") for i in range(per_client)]
                results[n] = [(h.id, h.result(120), tag) for h, tag in handles]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    rows = [r for n in range(4) for r in results[n]]
    ids = [r[0] for r in rows]
    assert len(rows) == 1000 and len(set(ids)) == 1000
    assert all(value == tag for _, value, tag in rows)
    ran = collections.Counter(Path(marks).read_text().split())
    assert len(ran) == 1000 and set(ran.values()) == {1}  # each function ran exactly once
    db = sqlite3.connect(str(module_daemon.base / "state" / "jobs.sqlite3"))
    try:
        marks_sql = ",".join("?" * len(ids))
        states = db.execute(f"SELECT state, attempts, COUNT(*) FROM job_rows WHERE id IN ({marks_sql}) GROUP BY 1, 2",
                            ids).fetchall()
    finally:
        db.close()
    assert states == [("done", 1, 1000)]


# --------------------------------------------------------------------------------- limits and failures
def test_oversize_payload_is_refused_on_the_client_side(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True, extra_env={"ENSEMBLE_MAX_FRAME": "65536"})
    d.up()
    c = d.client()
    with pytest.raises(ProtocolError, match="over the daemon's frame limit of 65536"):
        c.submit("examples.jobs:echo", "x" * 100_000)
    assert c.jobs() == []  # nothing reached the journal
    with Executor(config=d.config) as ex:  # a local Executor's pickle over the limit crosses beside the frame
        assert ex.submit(len, "x" * 100_000).result(30) == 100_000
    assert c.submit("examples.jobs:echo", "x" * 1000).result(30) == "x" * 1000


def test_no_daemon_and_closed_client_are_clear_errors(tmp_path: Path, module_daemon: Daemon) -> None:
    cfg = load_config(env={"ENSEMBLE_RUN_DIR": str(tmp_path / "run"), "ENSEMBLE_NAME": "ghost"})
    with pytest.raises(DaemonNotRunning, match="no daemon named 'ghost' is running.*ensemble up"):
        Client(config=cfg)
    c = Client(config=module_daemon.config)
    c.close()
    with pytest.raises(ClientClosed, match="closed"):
        c.status()
    assert not issubclass(ClientClosed, TransportError)  # you closed it: nothing broke
    c.close()  # closing twice is fine


def test_an_unresponsive_daemon_is_a_transport_error(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True)
    d.up()
    c = d.client(timeout=0.3)
    os.kill(d.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TransportError, match="did not answer Status within 0.3s") as raised:
            c.status()
        assert isinstance(raised.value, NoAnswer)  # a wait that ran out, told from a failed request by its type
    finally:
        os.kill(d.pid, signal.SIGCONT)
    wait_for(lambda: d.status().daemon.pid == d.pid, 30, what="the daemon to answer again")


def test_cancelled_executor_futures_log_nothing_alarming(module_daemon: Daemon,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="concurrent.futures"):
        ex = Executor(config=module_daemon.config)
        futures = [ex.submit(jobs.plain_sleep, 0.5) for _ in range(20)]  # 5 s of work on 2 workers: most cancelled
        ex.shutdown(wait=True, cancel_futures=True)  # (those that started run to their end, as the pool's)
    assert all(f.cancelled() or f.done() for f in futures)
    assert not [r for r in caplog.records if "unexpected state" in r.getMessage()]


def test_executor_values_come_back_as_processpoolexecutor_gives_them(module_daemon: Daemon) -> None:
    import fractions

    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(jobs.identity, (1, 2)).result(60) == (1, 2)  # a tuple stays a tuple
        assert ex.submit(jobs.identity, {1: {"a", "b"}}).result(60) == {1: {"a", "b"}}  # int keys, sets
        assert ex.submit(jobs.identity, fractions.Fraction(1, 3)).result(60) == fractions.Fraction(1, 3)
        with pytest.raises(ValueError, match="plain"):
            ex.submit(jobs.plain_raise_value_error, "plain").result(60)


def test_every_handle_on_one_job_hears_its_end(module_daemon: Daemon, tmp_path: Path) -> None:
    """The submit's own handle, a reattached one and a watcher on the same client all get the final state."""
    c = module_daemon.client()
    gate = tmp_path / "gate"
    first = c.submit("tests.jobs:wait_file", str(gate))
    again = c.job(first.id)
    heard: list[str] = []
    watched = c.watch(first.id, lambda info: heard.append(info.state))
    gate.touch()
    assert first.result(60) == again.result(60) == watched.result(60) == "released"
    wait_for(lambda: "done" in heard, 30, what="the watcher to hear the end")


def test_sent_sends_what_was_queued_before_it_in_a_frame_of_its_own(tmp_path: Path) -> None:
    """The I/O thread merges queued submits into one frame; ``Connection.sent`` is the cut a ``map`` makes after
    its first small batch, so the daemon starts those jobs while the caller packs the rest.  A ZeroMQ ROUTER
    stands in for the daemon and reads what arrives."""
    import zmq

    from actors._connection import Connection
    from actors.messages import JobSpec, Submit, decode

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/fake-daemon.sock"
    router.bind(endpoint)
    conn = Connection(load_config(env={"ENSEMBLE_RUN_DIR": str(tmp_path / "run")}), endpoint=endpoint)
    try:
        conn._wake_pending = True  # hold the I/O thread's wake-up until all three are queued (else it may
        conn.submit([JobSpec("tests.jobs:pid")] * 3)  # take the first before the others arrive either way)
        cut = conn.sent()
        conn.submit([JobSpec("tests.jobs:pid")] * 5)
        conn.submit([JobSpec("tests.jobs:pid")] * 7)
        conn._wake_pending = False
        conn._wake()
        cut.result(30)
        sizes: list[int] = []
        while sum(sizes) < 15:
            assert router.poll(30_000), f"the fake daemon got {sizes} jobs, not 15"
            _, msg = decode(router.recv_multipart()[1])
            assert isinstance(msg, Submit)
            sizes.append(len(msg.jobs))
        assert sizes == [3, 12]  # the two after the cut still travel together
    finally:
        conn.close()
        router.close()
        ctx.term()


def test_a_reply_the_client_cannot_read_fails_its_request_at_once_saying_why(module_daemon: Daemon) -> None:
    import msgspec

    done = module_daemon.client().submit("tests.jobs:big_string", 200_000)
    assert done.result(60) == "x" * 200_000
    cfg = module_daemon.config
    small = msgspec.structs.replace(cfg, daemon=msgspec.structs.replace(cfg.daemon, max_frame=65_536))
    # its reply is over this client's limit: it used to be dropped, and the request waited out its timeout
    reader = Client(config=small, timeout=120)
    try:
        with pytest.raises(ProtocolError, match="reply could not be read.*exceeds the limit of 65536.*max_frame"):
            reader.job(done.id).refresh()
        assert reader.ping().version  # the connection still serves
    finally:
        reader.close()


def test_a_blocking_cancel_returns_the_final_snapshot_of_a_queued_or_ended_job_too(make_daemon: Make) -> None:
    """``cancel(block=True)`` promises the job's final snapshot once it has stopped: a job still queued, or one
    that had already ended, gave ``None`` (its caller's ``info.state`` raised AttributeError)."""
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    with d.client() as c:
        ended = c.submit("examples.jobs:add", 1, 2)
        assert ended.result(60) == 3
        info = ended.cancel(block=True)
        assert info is not None and info.state == "done" and info.id == ended.id
        again = c.cancel(ended.id, block=True)
        assert again is not None and again.state == "done"

        c.scale(0)  # no worker: the next job stays queued
        wait_for(lambda: not [a for a in c.status().actors if a.role == "worker"], 60, what="the worker to go")
        queued = c.submit("examples.jobs:add", 3, 4)
        assert queued.state == "queued"
        final = queued.cancel(block=True)
        assert final is not None and final.state == "cancelled" and final.id == queued.id
        assert queued.state == "cancelled"  # the handle took the snapshot too

        async def from_asyncio() -> Any:
            from actors.client import AsyncClient

            async with AsyncClient(config=d.config) as ac:
                return await (await ac.job(ended.id)).cancel(block=True)

        got = asyncio.run(from_asyncio())
        assert got is not None and got.state == "done"


def test_a_client_dropped_without_close_lets_its_thread_and_descriptors_go(make_daemon: Make) -> None:
    """A client collected without ``close()`` kept its connection for the life of the process: its I/O thread
    held it (1,000 dropped clients: 3,001 threads, 13,006 descriptors). It is closed once collected, by a thread
    of its own; a dropped client's job still running keeps it until the job ends."""
    import gc

    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    with d.client() as warm:  # (the reaper thread is started by the first client: counted in the baseline)
        warm.ping()
    gc.collect()
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        c = Client(config=d.config)
        c.ping()
        del c
    gc.collect()
    wait_for(lambda: threading.active_count() <= threads and len(os.listdir("/proc/self/fd")) <= fds + 2, 60,
             what="the dropped clients' threads and descriptors to go")
    c = Client(config=d.config)
    job = c.submit("tests.jobs:sleep", 0.5)
    del c
    gc.collect()
    assert job.result(60) == 0.5  # its handle kept the client, and the client its connection, to the end

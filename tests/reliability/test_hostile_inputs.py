"""Hostile and awkward input found by the adversarial review of 2026-12-05, each against a live daemon.

Every case here once crashed, hung, lost a job or grew the daemon's memory;
each test sends the input with a raw socket (or a client), then checks that
the sender got a clear error, that the daemon still answers, that every
actor kept its pid and that other clients' jobs completed.  The daemon is
jobs-only, with a 1 MiB frame limit (so that "over the frame limit" costs
megabytes, not hundreds of them) and a CURVE client endpoint with a client
key, shared by the module; the test that stalls it on purpose has its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Generator, Iterator

import pytest
import zmq

from actors import Task
from actors._rundir import RunDir
from actors._state import FINAL
from actors.messages import (
    Error, GetJobs, JobInfos, JobSpec, Limits, Message, Pong, Submit, Submitted, Watch, decode, encode,
)
from tests.conftest import Daemon, wait_for
from tests.security.conftest import Remote, free_port, issue_keys

LIMIT = 1 << 20  # daemon.max_frame of the module's daemon


def _remote(base: Path, workers: int) -> Generator[Remote, None, None]:
    """A fixture's body: a jobs-only daemon with a CURVE client endpoint, client keys c1, c2 and admin key a1;
    stopped after."""
    client_ep = f"tcp://127.0.0.1:{free_port()}"
    d = Daemon(base, workers=workers, jobs_only=True,
               extra_env={"ENSEMBLE_CLIENT_TCP": client_ep, "ENSEMBLE_MAX_FRAME": str(LIMIT),
                          "ENSEMBLE_JOBS_ALLOW": "examples.jobs:add,examples.jobs:echo,tests.jobs:big_string"})
    try:
        keys = issue_keys(d, {"client": ("c1", "c2"), "admin": ("a1",)})
        d.up()
        yield Remote(d, client_ep, "", keys, str(d.base / "state" / "keys" / "server.key"))
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile() -> Iterator[Remote]:
    """The module's daemon: 4 workers (results of several end in one loop iteration)."""
    yield from _remote(Path(tempfile.mkdtemp(prefix="ens-h")), workers=4)


def _local(d: Daemon) -> zmq.Socket[bytes]:
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(RunDir(d.config.run_dir).control_endpoint)
    return s


def _answer(s: zmq.Socket[bytes], corr: int, timeout: float = 60.0) -> tuple[int, Message]:
    """The reply to request ``corr`` (pushes and other replies skipped), read with the daemon's own frame limit:
    a frame over it is what a client refuses, and fails the test."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not s.poll(200):
            continue
        frame = s.recv()
        assert len(frame) <= LIMIT, f"a frame of {len(frame)} bytes, over the frame limit a client reads"
        got, msg = decode(frame, Limits(LIMIT), handles=None)
        if got == corr:
            return len(frame), msg
    raise AssertionError(f"no answer to request {corr} within {timeout}s")


def _alive(d: Daemon, before: dict[str, tuple[int, int]]) -> None:
    """The daemon answers, every actor kept its pid and counted no restart, and a new job runs."""
    st = d.status()
    assert {a.name: (a.pid, a.restarts) for a in st.actors} == before
    assert "standby_used" not in st.daemon.counters  # no worker was replaced
    assert d.client().submit("examples.jobs:add", 2, 3).result(60) == 5


def _actors(d: Daemon) -> dict[str, tuple[int, int]]:
    return {a.name: (a.pid, a.restarts) for a in d.status().actors}


def test_results_that_end_together_reach_the_client_in_frames_it_reads(hostile: Remote) -> None:
    """Four workers' batches of 300 KB results, pushed to one client in one iteration, made frames of up to 7 MB
    against a 1 MiB limit: the client dropped them, and an Executor's futures waited for ever."""
    before = _actors(hostile.d)
    s = _local(hostile.d)
    n = 200
    try:
        s.send(encode(Submit([JobSpec("tests.jobs:big_string", [300_000]) for _ in range(n)], watch=True), 1))
        _, reply = _answer(s, 1)
        assert isinstance(reply, Submitted)
        ended: set[int] = set()
        end = time.monotonic() + 120
        while len(ended) < n and time.monotonic() < end:
            if not s.poll(200):
                continue
            frame = s.recv()
            assert len(frame) <= LIMIT, f"a push of {len(frame)} bytes, over the frame limit of {LIMIT}"
            _, push = decode(frame, Limits(LIMIT))
            if isinstance(push, JobInfos):
                ended |= {i.id for i in push.jobs if i.state == "done" and len(i.result) == 300_000}
        assert ended == set(reply.ids)
    finally:
        s.close(0)
    _alive(hostile.d, before)


@pytest.mark.parametrize("kind", [GetJobs, Watch])
def test_a_job_named_many_times_is_refused_not_multiplied(hostile: Remote, kind: type) -> None:
    """GetJobs of one job's id 300 times made a reply of 300 times its record (300 MB for a 1 MB result; 100,000
    ids, any key's own job, would take the daemon's memory); now: refused, saying which job was named twice."""
    before = _actors(hostile.d)
    mine = hostile.client("c1").submit("examples.jobs:echo", "x" * 200_000)
    assert len(mine.result(60)) == 200_000
    s = hostile.raw("c1", hostile.client_ep)
    try:
        s.send(encode(kind([mine.id] * 300), 7))
        size, reply = _answer(s, 7)
        assert isinstance(reply, Error) and reply.code == "protocol", reply
        assert f"names job {mine.id} more than once" in reply.message
        assert size < 1000
        s.send(encode(kind([mine.id]), 8))  # named once, it is answered
        _, reply = _answer(s, 8)
        assert isinstance(reply, JobInfos) and [i.id for i in reply.jobs] == [mine.id]
    finally:
        s.close(0)
    _alive(hostile.d, before)


def test_records_that_cannot_fit_one_reply_are_refused_saying_so(hostile: Remote) -> None:
    """Five jobs of 300 KB results, asked for at once: a 1.5 MB reply the client refused, and it waited on."""
    c = hostile.client("c1")
    jobs = [c.submit("examples.jobs:echo", "y" * 300_000) for _ in range(5)]
    assert all(len(j.result(60)) == 300_000 for j in jobs)
    s = hostile.raw("c1", hostile.client_ep)
    try:
        s.send(encode(GetJobs([j.id for j in jobs]), 9))
        _, reply = _answer(s, 9)
        assert isinstance(reply, Error) and reply.code == "protocol", reply
        assert "frame limit" in reply.message and "fewer jobs" in reply.message
        s.send(encode(GetJobs([j.id for j in jobs[:2]]), 10))  # what fits is answered
        _, reply = _answer(s, 10)
        assert isinstance(reply, JobInfos) and len(reply.jobs) == 2
    finally:
        s.close(0)


def test_a_client_key_asking_for_others_jobs_learns_nothing_about_them(hostile: Remote) -> None:
    """Another key's job, alone, among the asker's own or among 10,000 ids: unknown, and the message stays short."""
    theirs = hostile.client("c2").submit("examples.jobs:add", 1, 1)
    mine = hostile.client("c1").submit("examples.jobs:add", 2, 2)
    assert theirs.result(60) == 2 and mine.result(60) == 4
    s = hostile.raw("c1", hostile.client_ep)
    try:
        for corr, ids in enumerate(([theirs.id], [mine.id, theirs.id], list(range(10**9, 10**9 + 10_000))), 20):
            s.send(encode(GetJobs(ids), corr))
            _, reply = _answer(s, corr)
            assert isinstance(reply, Error) and reply.code == "not-found", reply
            assert len(reply.message) < 400 and ("more" in reply.message or str(theirs.id) in reply.message)
        s.send(encode(Watch([theirs.id]), 30))
        _, reply = _answer(s, 30)
        assert isinstance(reply, Error) and reply.code == "not-found"
    finally:
        s.close(0)


@pytest.mark.parametrize("cwd, path, why", [
    ("/tmp\x00x", [], "NUL"),
    ("", ["/tmp", "\x00"], "NUL"),
    ("/" + "d" * 5000, [], "at most 4096"),
    ("", ["/tmp"] * 1025, "at most 1024 entries"),
], ids=["nul-cwd", "nul-path", "long-cwd", "many-paths"])
def test_a_submit_whose_directory_or_import_path_no_worker_can_use_is_refused(
        hostile: Remote, cwd: str, path: list[str], why: str) -> None:
    """A NUL in a local submit's cwd or path failed every worker's job loop that took the job: each retired, the job
    went to the next, for ever (189 workers in 5 s), and a job dispatched beside it was lost."""
    before = _actors(hostile.d)
    s = _local(hostile.d)
    try:
        s.send(encode(Submit([JobSpec("examples.jobs:add", [1, 2])], cwd=cwd, path=path), 3))
        _, reply = _answer(s, 3)
        assert isinstance(reply, Error) and reply.code == "refused" and why in reply.message, reply
    finally:
        s.close(0)
    _alive(hostile.d, before)


def gated_shared(task: Task, gate: str) -> Any:
    """A job: wait for ``gate`` to exist, then return a 2 MiB array made in shared memory."""
    end = time.monotonic() + 120
    while not Path(gate).exists() and time.monotonic() < end:
        time.sleep(0.01)
    out = task.empty(1 << 19, "float32")
    out[:] = 1.5
    return out


def test_a_shared_memory_result_too_big_for_tcp_reaches_a_remote_watcher_as_a_failure_saying_why(
        hostile: Remote, tmp_path: Path) -> None:
    """A local client's job returns a 2 MiB array (in shared memory, so within the frame limit locally); a remote
    admin watching it gets the array copied into the push, over the 1 MiB limit: the push was sent as it was,
    its client dropped it, and the job looked unfinished there for ever."""
    gate = tmp_path / "gate"
    job = hostile.d.client().submit(f"{__name__}:gated_shared", str(gate))
    s = hostile.raw("a1", hostile.client_ep)
    try:
        s.send(encode(Watch([job.id]), 7))
        _answer(s, 7)  # watching it now, while it waits for the gate
        gate.touch()
        end = time.monotonic() + 60
        while True:  # the push of the job's end
            assert time.monotonic() < end, "no push of the job's end"
            if not s.poll(200):
                continue
            frame = s.recv()
            assert len(frame) <= LIMIT, f"a frame of {len(frame)} bytes, over the frame limit a client reads"
            corr, msg = decode(frame, Limits(LIMIT), handles=None)
            if corr == 0 and isinstance(msg, JobInfos) and any(i.id == job.id and i.state in FINAL for i in msg.jobs):
                break
        (info,) = [i for i in msg.jobs if i.id == job.id]
        assert info.state == "failed" and info.result is None, info
        assert "ended done" in info.error_message and "frame limit" in info.error_message, info
        assert job.result(60).nbytes == 2 << 20  # for the daemon, and its local client, the job is done
    finally:
        s.close(0)


@pytest.mark.slow  # about 15 s: a daemon of its own, held busy on purpose
def test_a_flood_of_costly_requests_leaves_the_workers_and_other_clients_jobs_alone(short_tmp: Path) -> None:
    """60 GetJobs of 100,000 ids from a client key, unread: each held the loop 0.5 s (a query per id), the loop
    read all of them before it looked at the children, took the workers for dead (no heartbeat for 30 s) and lost
    the local client's running job.  Now one query per request, and the loop takes its turn between them."""
    gen = _remote(short_tmp / "f", workers=2)
    (short_tmp / "f").mkdir()
    r = next(gen)
    try:
        before = _actors(r.d)
        c = r.d.client()
        job = c.submit("tests.jobs:sleep", 3.0)
        wait_for(lambda: job.refresh().state == "running", 60, what="the job to run")
        s = r.raw("c1", r.client_ep)
        try:
            frame = encode(GetJobs(list(range(10**9, 10**9 + 100_000))), 5)
            for _ in range(60):
                s.send(frame)
            assert isinstance(_ping(r.d), Pong)  # another client is answered meanwhile
            assert job.result(120) == 3.0  # not worker-lost
            answered = 0
            while answered < 60:
                assert s.poll(120_000), f"only {answered} of 60 requests answered"
                _, reply = decode(s.recv(), handles=None)
                assert isinstance(reply, Error) and reply.code == "not-found"
                answered += 1
        finally:
            s.close(0)
        _alive(r.d, before)
    finally:
        gen.close()


def _ping(d: Daemon) -> Any:
    """A ping from a fresh local client (a generous time to answer: the daemon is busy on purpose)."""
    from actors.client import Client

    with Client(config=d.config, timeout=60) as c:
        return c.ping()

"""A remote worker's key sending well-typed worker messages with awkward values: the daemon stays up and whole.

What a worker key may send over tcp (``Hello``, ``Heartbeat``, ``JobsDone``, ``JobUpdate``, ``Recalled``) is
generated from the declared types (the generator of ``test_typed_requests``), job ids among them both random and
those of real jobs in the queue: results for jobs it does not hold are counted stale and dropped, and nothing a
worker key sends crashes the daemon, restarts a local actor or ends a local job that key never ran.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from msgspec import inspect as mi

import actors.messages as M
from tests.conftest import wait_for
from tests.reliability.history import full
from tests.security.conftest import Remote, remote_daemon
from tests.security.test_typed_requests import _Values

N = 5_000 if full() else 600


def test_well_typed_worker_frames_with_awkward_values_from_a_worker_key_break_nothing(remote: Remote) -> None:
    d = remote.d
    c = d.client()
    before = {a.name: a.pid for a in d.status().actors}
    mine = c.submit("tests.jobs:sleep", 30.0)  # a local job the remote key has never been given
    kinds = [(int(cls.KIND), cls) for cls in (M.Heartbeat, M.JobsDone, M.JobUpdate, M.Recalled, M.Hello)]
    values = _Values(seed=20261205)
    sock = remote.raw("w1", remote.worker_ep)
    try:
        sock.send(M.encode(M.Hello("worker", "w1", 4242, {})))
        for _ in range(N):
            kind, cls = values.r.choice(kinds)
            fields = [values.of(f.type) for f in mi.type_info(cls).fields]
            if cls is M.JobsDone and fields[0] and values.r.random() < 0.5:  # aim some at the real job
                fields[0][0][0] = mine.id
            if cls in (M.JobUpdate, M.Recalled) and values.r.random() < 0.5:
                fields[0] = mine.id if cls is M.JobUpdate else [mine.id]
            sock.send(msgspec.msgpack.encode([M.VERSION, kind, 0, [kind, *fields]]))
            while sock.poll(0):
                sock.recv()
        status = d.status()  # answered after all of them
    finally:
        sock.close(0)
    assert {a.name: a.pid for a in status.actors if a.name in before} == before  # nothing local crashed
    assert all(a.restarts == 0 for a in status.actors if a.name in before)
    assert status.daemon.counters.get("stale_results", 0) > 0  # they reached the handlers, which dropped them
    assert c.job(mine.id).state in ("queued", "running")  # still the local worker's, untouched
    c.cancel(mine.id)


def test_a_remote_worker_whose_connection_is_gone_is_given_up_at_the_send_that_fails(short_tmp: Path) -> None:
    """A send to a worker on another host that the socket no longer reaches failed, its jobs were queued again
    and handed to it again at the next dispatch, for ever, until its heartbeat silence was judged; and a
    daemon whose loop stalled at each try (a probe's job with a costly argument) never judged it.  Now the send
    that fails gives the worker up: with a heartbeat timeout of ten minutes, the job waits queued, not for the
    timeout, and runs on the worker that comes next."""
    for remote in remote_daemon(short_tmp, workers=0, env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "600"}):
        d = remote.d
        sock = remote.raw("w1", remote.worker_ep)
        try:
            sock.send(M.encode(M.Hello("worker", "w1", 4242, {})))
            wait_for(lambda: any(a.name.startswith("remote:w1") for a in d.status().actors), 30,
                     what="the remote worker to join")
        finally:
            sock.close(0)  # gone, without a word: its heartbeats would say so only after 600 s
        c = d.client()
        job = c.submit("examples.jobs:add", 2, 3)
        wait_for(lambda: not any(a.name.startswith("remote:w1") for a in d.status().actors), 60,
                 what="the daemon to give the gone worker up at its failed send")
        assert c.job(job.id).state == "queued"  # not lost: queued again
        d.cli("scale", "1")
        assert job.result(60) == 5


def test_one_worker_key_cannot_take_every_remote_worker_place(remote: Remote) -> None:
    """The daemon takes 1,024 remote workers; one key could join them all and keep every other host out, and the
    worker refused was told nothing (it waited for jobs that never came).  A key joins 256 at most; the one
    refused is told why, and another key still joins."""
    from actors.supervisor._children import REMOTE_WORKERS_PER_KEY

    socks = []
    try:
        for i in range(REMOTE_WORKERS_PER_KEY + 1):
            if i == REMOTE_WORKERS_PER_KEY:  # (the hellos of several connections are read in any order)
                wait_for(lambda: sum(a.name.startswith("remote:w1") for a in remote.d.status().actors)
                         == REMOTE_WORKERS_PER_KEY, 60, what="the key's workers to join")
            s = remote.raw("w1", remote.worker_ep)
            socks.append(s)
            s.send(M.encode(M.Hello("worker", f"w1-{i}", 4242 + i, {})))
        last = socks[-1]
        assert last.poll(60_000), "the refused worker was told nothing"
        frames = []
        while last.poll(100):
            frames.append(M.decode(last.recv())[1])
        stops = [f for f in frames if isinstance(f, M.Stop)]
        assert stops and stops[0].reason.startswith(f"refused: key w1 has {REMOTE_WORKERS_PER_KEY} workers"), frames
        other = remote.raw("w2", remote.worker_ep)
        socks.append(other)
        other.send(M.encode(M.Hello("worker", "w2", 99, {})))
        wait_for(lambda: any(a.name.startswith("remote:w2") for a in remote.d.status().actors), 60,
                 what="another key's worker to join")
        joined = [a for a in remote.d.status().actors if a.name.startswith("remote:w1")]
        assert len(joined) == REMOTE_WORKERS_PER_KEY
    finally:
        for s in socks:
            s.close(0)

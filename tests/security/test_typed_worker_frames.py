"""A remote worker's key sending well-typed worker messages with awkward values: the daemon stays up and whole.

What a worker key may send over tcp (``Hello``, ``Heartbeat``, ``JobsDone``, ``JobUpdate``, ``Recalled``) is
generated from the declared types (the generator of ``test_typed_requests``), job ids among them both random and
those of real jobs in the queue: results for jobs it does not hold are counted stale and dropped, and nothing a
worker key sends crashes the daemon, restarts a local actor or ends a local job that key never ran.
"""

from __future__ import annotations

import msgspec
from msgspec import inspect as mi

import actors.messages as M
from tests.reliability.history import full
from tests.security.conftest import Remote
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

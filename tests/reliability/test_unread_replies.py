"""What a remote client does not read costs the daemon a bounded number of bytes, and a slow client loses nothing.

A client key that sent requests and never read the replies grew the daemon's
memory without bound (3,000 unread 330 KB replies: 352 MB), and a client whose
queue was full lost its pushes: its jobs looked unfinished for ever.  The
daemon here has a 1 MiB frame limit, so a key's budget of unread bytes is the
4 MiB minimum (``actors/supervisor/_outbox.py``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from actors._state import FINAL
from actors.messages import Error, GetJobs, JobInfos, JobSpec, Limits, Submit, Submitted, decode, encode
from tests.conftest import wait_for
from tests.reliability.test_hostile_inputs import LIMIT, _actors, _alive, _answer, _remote
from tests.security.conftest import Remote

RESULT = 300_000  # bytes of each job's result


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    yield from _remote(Path(tempfile.mkdtemp(prefix="ens-u")), workers=2)


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _deaf(r: Remote, key: str) -> zmq.Socket[bytes]:
    """A client socket that takes as little as it can from the connection until it reads."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.RCVHWM, 1)
    s.setsockopt(zmq.RCVBUF, 64 * 1024)
    s.setsockopt(zmq.LINGER, 0)
    from actors._keys import curve_client

    curve_client(s, r.keys[key], r.server_key)
    s.connect(r.client_ep)
    return s


def _frames_seen(r: Remote) -> int:
    return int(r.d.status().daemon.counters.get("tcp_frames", 0))


def test_a_key_that_never_reads_its_replies_cannot_grow_the_daemon(remote: Remote) -> None:
    """3,000 GetJobs of a 300 KB result, none read: 900 MB queued for that key before; now at most its budget
    (the rest refused, saying why), and every request is still answered once the client reads."""
    d = remote.d
    before = _actors(d)
    job = remote.client("c1").submit("tests.jobs:big_string", RESULT)
    assert len(job.result(60)) == RESULT
    pid = d.status().daemon.pid
    rss_before = _rss(pid)
    frames_before = _frames_seen(remote)
    n = 3000
    s = _deaf(remote, "c1")
    try:
        for corr in range(1, n + 1):
            s.send(encode(GetJobs([job.id]), corr))
        wait_for(lambda: _frames_seen(remote) >= frames_before + n, 90, what="the daemon to read every request")
        d.status()  # one more turn of its loop: the replies of the last requests are sent
        grown = _rss(pid) - rss_before
        assert grown < 64 * 1024 * 1024, f"the daemon grew {grown / 1e6:.0f} MB for replies nobody read"
        counters = d.status().daemon.counters
        assert counters.get("reply_refused", 0) + counters.get("requests_over_budget", 0) > 0, counters
        answers: dict[int, object] = {}
        end = time.monotonic() + 120
        while len(answers) < n and time.monotonic() < end:
            if s.poll(200):
                corr, msg = decode(s.recv(), Limits(LIMIT), handles=None)
                assert corr not in answers, f"request {corr} answered twice"
                answers[corr] = msg
        assert sorted(answers) == list(range(1, n + 1)), f"{n - len(answers)} requests never answered"
        results = [m for m in answers.values() if isinstance(m, JobInfos)]
        refusals = [m for m in answers.values() if isinstance(m, Error)]
        assert len(results) + len(refusals) == n
        assert results and all(len(m.jobs[0].result) == RESULT for m in results)
        assert refusals and all(m.code == "daemon" and "not read yet" in m.message and "c1" in m.message
                                for m in refusals), refusals[:1]
        # having read them, it is answered again
        s.send(encode(GetJobs([job.id]), n + 1))
        _, reply = _answer(s, n + 1)
        assert isinstance(reply, JobInfos) and len(reply.jobs[0].result) == RESULT
    finally:
        s.close(0)
    _alive(d, before)


def test_pushes_a_slow_client_cannot_take_yet_reach_it_once_it_reads(remote: Remote) -> None:
    """Results pushed faster than a client reads them were queued without limit (or, with the queue full,
    dropped: the jobs never ended for that client); now they wait as job ids and come when it reads, each
    job's end once."""
    d = remote.d
    before = _actors(d)
    deferred = int(d.status().daemon.counters.get("push_deferred", 0))
    n = 40  # 12 MB of results against a 4 MiB budget
    s = _deaf(remote, "c2")
    try:
        s.send(encode(Submit([JobSpec("tests.jobs:big_string", [RESULT]) for _ in range(n)], watch=True), 1))
        wait_for(lambda: int(d.status().daemon.counters.get("push_deferred", 0)) > deferred, 120,
                 what="a push the client could not take yet to be deferred")
        ended: dict[int, int] = {}
        ids: list[int] = []
        end = time.monotonic() + 120
        while (not ids or len(ended) < n) and time.monotonic() < end:
            if not s.poll(200):
                continue
            corr, msg = decode(s.recv(), Limits(LIMIT), handles=None)
            if corr == 1:
                assert isinstance(msg, Submitted)
                ids = list(msg.ids)
            elif isinstance(msg, JobInfos):
                for info in msg.jobs:
                    if info.state in FINAL:
                        assert info.state == "done" and len(info.result) == RESULT, info.error_message
                        ended[info.id] = ended.get(info.id, 0) + 1
        assert sorted(ended) == sorted(ids), f"{n - len(ended)} jobs never reported ended"
        assert set(ended.values()) == {1}, "a job's end was pushed more than once"
    finally:
        s.close(0)
    _alive(d, before)


def test_an_honest_remote_client_reading_big_results_gets_every_one(remote: Remote) -> None:
    """A client that reads as fast as it can, with more results ending at once than its key's budget: nothing is
    refused or lost; the pushes over the budget only come a little later."""
    c = remote.client("c1", timeout=60)
    futures = [c.submit("tests.jobs:big_string", RESULT) for _ in range(40)]
    assert all(len(f.result(120)) == RESULT for f in futures)
    assert len(c.submit("tests.jobs:big_string", 10).result(60)) == 10


def test_a_client_gone_with_pushes_owed_is_forgotten(remote: Remote) -> None:
    """The pushes owed to a client that disconnected are dropped, not retried for ever."""
    d = remote.d
    s = _deaf(remote, "c2")
    try:
        s.send(encode(Submit([JobSpec("tests.jobs:big_string", [RESULT]) for _ in range(40)], watch=True), 1))
        deferred = int(d.status().daemon.counters.get("push_deferred", 0))
        wait_for(lambda: int(d.status().daemon.counters.get("push_deferred", 0)) > deferred, 120,
                 what="a push to be deferred")
    finally:
        s.close(0)
    wait_for(lambda: d.status().daemon.counters.get("client_gone", 0) > 0, 60,
             what="the daemon to learn the client is gone")
    assert d.client().submit("examples.jobs:add", 2, 3).result(60) == 5
    assert os.path.exists(f"/proc/{d.status().daemon.pid}")

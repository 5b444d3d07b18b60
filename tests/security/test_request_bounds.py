"""What one frame from a key may make the daemon hold or do: bounded before the frame's items are read.

A frame of 64 MiB could name 60 million job ids (``Unwatch``, ``GetJobs``, ``Watch``) or carry 900,000 job
specs: decoding and handling them held the daemon's loop for 4-16 s and half a gigabyte, long enough that its
workers, hearing nothing, left with the jobs they ran. A worker key's heartbeat stats were kept decoded and
put in every status, whatever their size. (A trust-boundary probe found each; tests/security.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

import actors.messages as M
from actors import ProtocolError
from actors.client import make_spec
from tests.conftest import wait_for
from tests.security.conftest import Remote


def _answer(remote: Remote, key: str, frame: bytes) -> object:
    sock = remote.raw(key, remote.client_ep)
    try:
        sock.send(frame)
        assert sock.poll(60_000), "no answer within 60 s"
        return M.decode(sock.recv())[1]
    finally:
        sock.close(0)


@pytest.mark.parametrize("kind", [M.Unwatch, M.GetJobs, M.Watch])
def test_a_request_naming_too_many_job_ids_is_refused_saying_the_limit(shared_remote: Remote, kind: type) -> None:
    frame = msgspec.msgpack.encode([M.VERSION, int(kind.KIND), 7, [int(kind.KIND), list(range(M.MAX_IDS + 1))]])
    reply = _answer(shared_remote, "c1", frame)
    assert isinstance(reply, M.Error) and f"length <= {M.MAX_IDS}" in reply.message, reply
    assert shared_remote.d.status().daemon.pid == shared_remote.d.pid


def test_a_submit_over_the_limit_is_refused_and_a_client_sends_a_big_batch_in_frames(shared_remote: Remote) -> None:
    spec = ["examples.jobs:add", [1, 2]]
    kind = int(M.Kind.SUBMIT)
    frame = msgspec.msgpack.encode([M.VERSION, kind, 7, [kind, [spec] * (M.MAX_SUBMIT + 1), True]])
    reply = _answer(shared_remote, "c1", frame)
    assert isinstance(reply, M.Error) and f"length <= {M.MAX_SUBMIT}" in reply.message, reply
    c = shared_remote.client("c2", timeout=60)
    handles = c.submit_many([make_spec("examples.jobs:add", [i, 1], {}) for i in range(M.MAX_SUBMIT + 5)])
    assert len({h.id for h in handles}) == M.MAX_SUBMIT + 5  # (two frames: ids of both, in order)
    assert [handles[0].result(120), handles[-1].result(120)] == [1, M.MAX_SUBMIT + 5]


@pytest.mark.slow  # a daemon of its own: run by .ci/run's slow pass (the default suite stays under 5 minutes)
def test_a_worker_keys_oversize_heartbeat_stats_are_dropped(remote: Remote) -> None:
    sock = remote.raw("w1", remote.worker_ep)
    try:
        sock.send(M.encode(M.Hello("worker", "w1", 4242, {})))
        sock.send(M.encode(M.Heartbeat({"junk": [{}] * 100_000})))

        def shown() -> dict[str, object]:
            return next((a.stats for a in remote.d.status().actors if a.name.startswith("remote:w1")), {})

        wait_for(lambda: "dropped" in shown(), 60, what="the remote worker's stats to be dropped")
    finally:
        sock.close(0)
    assert "event=remote-stats-dropped name=remote:w1" in (remote.d.base / "state" / "daemon.log").read_text()


def test_the_decoder_refuses_a_long_list_from_its_header() -> None:
    """The limits are the messages' own (checked as msgspec reads the list's length), not a handler's."""
    with pytest.raises(ProtocolError, match="Unwatch.job_ids"):
        M.decode(M.encode(M.Unwatch(list(range(M.MAX_IDS + 1)))))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_queued_jobs_cost_the_daemon_about_what_their_arguments_were_sent_as(remote: Remote, tmp_path: Path) -> None:
    """An empty list is one byte on the wire and 64 in memory: the daemon kept a queued job's arguments decoded, so
    ``jobs.queue_bytes`` (1 GiB) of them from one client key made it hold up to 75 GiB.  It holds them packed now."""
    release = tmp_path / "release"
    c = remote.client("c1", timeout=60)
    first = c.submit("tests.jobs:wait_file", str(release))
    wait_for(lambda: first.state == "running", 60, what="the first job to hold the worker")
    before = _rss(remote.d.pid)
    kind, sent = int(M.Kind.SUBMIT), 0
    for _ in range(16):  # 16 jobs of 1 MB of empty lists each, queued behind the first
        frame = msgspec.msgpack.encode([M.VERSION, kind, 7, [kind, [["tests.jobs:wait_file",
                                                                      [str(release), [[]] * 1_000_000]]], True]])
        sent += len(frame)
        reply = _answer(remote, "c2", frame)
        assert isinstance(reply, M.Submitted), reply
    grown = _rss(remote.d.pid) - before
    assert grown < 16 * sent, f"the daemon grew {grown >> 20} MiB for {sent >> 20} MiB of queued arguments"
    release.touch()
    assert first.result(60) == "released"
    assert remote.d.status().daemon.pid == remote.d.pid

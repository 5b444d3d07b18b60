"""Generated hostile frames on both tcp endpoints, under each role's key: 0 crashes, 0 hangs."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.messages import VERSION, Kind, Ping, decode, encode
from tests.reliability.history import full, report
from tests.reliability.test_hostile import _frames
from tests.security.conftest import Remote

N = 3000 if full() else 150

# well-formed envelopes of every kind with generated fields: they pass msgpack and reach the role checks
_fields = st.lists(st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.text(max_size=8)
                   | st.lists(st.integers(-3, 2**63), max_size=3), max_size=6)
# (Scale and Shutdown are left out: an admin key may send them, and would stop or swamp the daemon under test)
_kinds = st.integers(0, 90).filter(lambda k: k not in (int(Kind.SCALE), int(Kind.SHUTDOWN)))
_typed = st.builds(lambda k, c, f: msgpack.packb([VERSION, k, c, [k, *f]]), _kinds, st.integers(0, 2**63 - 1), _fields)


@pytest.mark.slow  # a daemon with both tcp endpoints, fuzzed with every role's key: run by .ci/run's slow pass (default suite < 5 min)
def test_hostile_frames_on_both_tcp_endpoints_with_every_role(remote: Remote) -> None:
    before = {a.name: a.pid for a in remote.d.status().actors}
    peers = {"client@client_tcp": remote.raw("c1", remote.client_ep),
             "admin@client_tcp": remote.raw("a1", remote.client_ep),
             "worker@tcp": remote.raw("w1", remote.worker_ep)}
    sent = dict.fromkeys(peers, 0)

    @settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_frames | _typed, st.booleans())
    def blast(frame: bytes, multipart: bool) -> None:
        for name, sock in peers.items():
            sock.send_multipart([frame, frame] if multipart else [frame])
            sent[name] += 1
            while sock.poll(0):
                sock.recv_multipart()

    try:
        blast()
        for name in ("client@client_tcp", "admin@client_tcp"):  # each still gets an answer: nothing hangs
            s = peers[name]
            s.send(encode(Ping(), 99))
            deadline = 200
            while deadline:
                assert s.poll(30_000), f"{name}: the daemon stopped answering"
                corr, reply = decode(s.recv())
                if corr == 99:
                    break
                deadline -= 1
            assert type(reply).__name__ == "Pong"
    finally:
        for s in peers.values():
            s.close(0)
    st_ = remote.d.status()
    counters = st_.daemon.counters
    report("tcp hostile frames", {"frames": sent, "bad_frames": counters.get("bad_frames", 0),
                                  "denied_requests": counters.get("denied_requests", 0),
                                  "stray_frames": counters.get("stray_frames", 0)})
    assert {a.name: a.pid for a in st_.actors if not a.name.startswith("remote:")} == before  # 0 crashes
    assert all(a.restarts == 0 for a in st_.actors)
    _: Any = zmq

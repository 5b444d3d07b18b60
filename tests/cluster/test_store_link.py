"""The object-store key on the wire and the node-local link between a worker and its host actor (no cluster needed)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from actors._errors import ProtocolError
from actors.messages import JobDone, JobsDone, StoredArray, decode, encode


def test_a_stored_key_crosses_only_where_the_decoder_accepts_keys() -> None:
    key = StoredArray("abc.7.1", "<f8", (1024, 3))
    frame = encode(JobsDone([JobDone(7, True, [key, 1.5])]))
    assert len(frame) < 100  # a key, a dtype, a shape: no array bytes
    _, msg = decode(frame, handles=None, stored=True)
    assert isinstance(msg, JobsDone) and msg.results[0].value == [key, 1.5]
    assert msg.results[0].value[0].nbytes == 1024 * 3 * 8
    with pytest.raises(ProtocolError, match="only between the daemon and its Ray-placed workers"):
        decode(frame, handles=None)  # a client's frame, or a worker not placed by Ray
    with pytest.raises(ProtocolError, match="not allowed"):
        decode(encode(JobsDone([JobDone(7, True, StoredArray("k", "|O", (1,)))])), stored=True)


def test_the_link_carries_raw_bytes_both_ways_and_the_actor_keeps_results_until_taken() -> None:
    from actors._ray_host import WorkerHost
    from actors._storelink import StoreLink

    host = WorkerHost("tcp://127.0.0.1:1", "", "", "ray-test-1", {}, {})
    mine, theirs = socket.socketpair()
    put: list[str] = []
    server = threading.Thread(target=host._serve, args=(mine, put), daemon=True)
    server.start()
    link = StoreLink(theirs.detach(), 1 << 20)
    assert link.wants(1 << 20) and not link.wants((1 << 20) - 1)
    a = np.arange(300_000, dtype="<i4").reshape(600, 500)[::-1]  # not contiguous: sent as C order
    key = link.put(a)
    assert (key.dtype, key.shape) == ("<i4", (600, 500)) and put == [key.key]
    (back,) = host.take([key.key])
    assert back.dtype == a.dtype and np.array_equal(back, a)
    with pytest.raises(KeyError, match="no result array"):
        host.take([key.key])  # taken once
    link.sock.close()
    server.join(10)
    assert not server.is_alive()
    mine.close()

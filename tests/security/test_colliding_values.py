"""Values whose hashes collide cost the daemon no more than others (a trust-boundary probe's finding).

In the daemon an exact value (a tuple, a big int, a set... ext 4) stays a :class:`actors._values.Exact`,
equal only to itself. It hashed as the value it stands for, so a set or a map of N values with one hash (big
ints ``k * (2**61 - 1)``, or one tuple sent N times: N distinct keys there) compared each insert with all
before it: a client key's frame of 120 KB held the loop 15.7 s, and again at each read of the journal's row.
"""

from __future__ import annotations

import msgspec

import actors.messages as M
from actors import _values
from actors._values import BIGINT, SET, TUPLE, Exact

N = 3_000


def _in_the_daemon(frame: bytes) -> object:
    saved = M._KEEPS_EXACT[0]
    try:
        M.keep_exact_values()  # this process, as the daemon does at start
        return M.decode(frame, handles="ensemble.x.")[1]
    finally:
        M._KEEPS_EXACT[0] = saved


def _comparisons(frame: bytes, monkeypatch: object) -> int:
    calls = [0]
    eq = Exact.__eq__

    def counted(self: Exact, other: object) -> bool:
        calls[0] += 1
        return eq(self, other)

    monkeypatch.setattr(Exact, "__eq__", counted)  # type: ignore[attr-defined]
    _in_the_daemon(frame)
    return calls[0]


def _submit(value: object) -> bytes:
    kind = int(M.Kind.SUBMIT)
    return msgspec.msgpack.encode([M.VERSION, kind, 1, [kind, [["examples.jobs:echo", [value]]], True]])


def test_a_set_of_one_tuple_sent_many_times_is_read_without_comparing_its_items(monkeypatch: object) -> None:
    item = msgspec.msgpack.Ext(4, msgspec.msgpack.encode([TUPLE, [0]]))
    frame = _submit(msgspec.msgpack.Ext(4, msgspec.msgpack.encode([SET, [item] * N])))
    assert _comparisons(frame, monkeypatch) < N  # (it was N * (N - 1) / 2)


def test_a_map_keyed_by_big_ints_of_one_hash_is_read_without_comparing_its_keys(monkeypatch: object) -> None:
    def big(k: int) -> msgspec.msgpack.Ext:
        n = (k + 10) * (2**61 - 1)  # above 2**64: an exact value; every one hashes to 0
        return msgspec.msgpack.Ext(4, msgspec.msgpack.encode([BIGINT, n.to_bytes(16, "little", signed=True)]))

    assert len({hash(_values.rebuild(BIGINT, (k * (2**61 - 1)).to_bytes(16, "little", signed=True)))
                for k in range(10, 20)}) == 1
    pairs = b"".join(msgspec.msgpack.encode(big(k)) + b"\xc0" for k in range(N))  # each key's value: nil
    frame = _submit(None).replace(b"\xc0", b"\xdf" + N.to_bytes(4, "big") + pairs, 1)  # a map of N keys
    assert _comparisons(frame, monkeypatch) < N


def test_an_unhashable_exact_value_is_still_refused_as_a_key() -> None:
    """What the value's hash did and identity cannot: a tuple holding a list is no key where it is rebuilt."""
    inner = msgspec.msgpack.Ext(4, msgspec.msgpack.encode([TUPLE, [[1]]]))
    frame = _submit(msgspec.msgpack.Ext(4, msgspec.msgpack.encode([SET, [inner]])))
    try:
        _in_the_daemon(frame)
    except M.ProtocolError as exc:
        assert "unhashable" in str(exc), exc
    else:
        raise AssertionError("a set holding a tuple that holds a list was read")

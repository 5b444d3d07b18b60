"""The wire protocol: envelope, typed messages, explicit limits, hostile bytes (no sockets)."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._errors import ProtocolError
from actors.messages import (
    VERSION, Ack, ArrayHandle, Cancel, Error, Heartbeat, JobInfo, JobInfos, JobSpec, Kind, Limits, Ping,
    Pong, SampleInfo, SampleLoad, Scale, Status, Submit, Submitted, decode, encode, peek_corr,
)


def frame(*env: object) -> bytes:
    return msgpack.packb(list(env))


# ------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("msg", [
    Ping(),
    Status(),
    Ack("fine"),
    Pong("0.1.0", 1234),
    Error("protocol", "bad"),
    Scale(3),
    Cancel(7, True),
    Submitted([1, 2, 3]),
    Heartbeat({"done": 3, "nested": {"a": [1, 2.5, None, True, b"x"]}}),
    Submit([JobSpec("tests.jobs:pid", [1, "a", [2.5]], {"k": {"n": None}}, "name", 5, 900, 1.5, 2, False)]),
    JobInfos([JobInfo(9, "m:f", "n", "done", 1.0, "ok", {"p": 1}, {"r": [1]}, events=[[1.0, "abort", "cancel"]])]),
])
def test_round_trip_keeps_every_field(msg: object) -> None:
    corr, back = decode(encode(msg, corr=42))  # type: ignore[arg-type]
    assert corr == 42
    assert back == msg
    assert type(back) is type(msg)


def test_envelope_is_version_kind_corr_fields() -> None:
    env = msgpack.unpackb(encode(Scale(4), corr=11))
    assert env == [VERSION, int(Kind.SCALE), 11, [4]]


def test_messages_are_slotted_values() -> None:
    # Not frozen on purpose (a frozen __init__ costs 5x; see actors/messages.py), but slotted:
    # no stray attributes, and equal by value.
    with pytest.raises(AttributeError):
        Scale(1).other = 2  # type: ignore[attr-defined]
    assert Scale(1) == Scale(1) and dataclasses.replace(Scale(1), workers=2) == Scale(2)


def test_every_kind_number_is_unique() -> None:
    values = [int(k) for k in Kind]
    assert len(values) == len(set(values))


def test_defaults_fill_missing_trailing_fields() -> None:
    corr, msg = decode(frame(VERSION, int(Kind.CANCEL), 3, [5]))
    assert msg == Cancel(5, False)


def test_small_numpy_arrays_travel_inline() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    _, msg = decode(encode(Heartbeat({"a": a, "scalar": np.int64(7)})))
    assert isinstance(msg, Heartbeat)
    back = msg.stats["a"]
    assert back.dtype == np.float32 and back.shape == (3, 4)
    np.testing.assert_array_equal(back, a)
    assert msg.stats["scalar"] == 7 and type(msg.stats["scalar"]) is int


def test_array_handle_crosses_as_ext_type() -> None:
    handle = ArrayHandle("ensemble.t.abc", "<f4", (100, 2), 64)
    _, msg = decode(encode(SampleLoad(SampleInfo("s", handle, 48000))))
    assert isinstance(msg, SampleLoad)
    assert msg.sample.handle == handle
    assert handle.nbytes == 100 * 2 * 4


def test_object_arrays_are_refused_when_sending() -> None:
    with pytest.raises(ProtocolError, match="numeric only"):
        encode(Heartbeat({"a": np.array([object()], dtype=object)}))


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, range(3)])
def test_unsendable_values_are_refused_with_the_type_named(value: object) -> None:
    with pytest.raises(ProtocolError, match="cannot encode Heartbeat"):
        encode(Heartbeat({"v": value}))


# ------------------------------------------------------------------------------- hostile frames
def test_random_bytes_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\xc1\xff\x00garbage")


def test_truncated_msgpack_is_refused() -> None:
    full = encode(Submit([JobSpec("tests.jobs:pid")]), corr=5)
    for cut in (1, 3, len(full) // 2, len(full) - 1):
        with pytest.raises(ProtocolError):
            decode(full[:cut])


def test_bin32_header_claiming_4_gib_is_refused_without_allocating() -> None:
    hostile = b"\x94\x01\x14\x05\xc6\xff\xff\xff\xff" + b"x" * 16
    with pytest.raises(ProtocolError):
        decode(hostile)
    assert peek_corr(hostile) == 5


def test_array_header_claiming_billions_of_items_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\xdd\xff\xff\xff\xff\x01")


def test_100k_deep_nesting_is_refused() -> None:
    hostile = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        decode(hostile)


def test_nesting_within_the_stack_limit_is_fine() -> None:
    value: object = None
    for _ in range(100):
        value = [value]
    _, msg = decode(encode(Heartbeat({"deep": value})))
    assert isinstance(msg, Heartbeat)


def test_oversize_frame_is_refused_before_unpacking() -> None:
    big = encode(Heartbeat({"blob": b"x" * 5000}))
    with pytest.raises(ProtocolError, match="exceeds the limit of 4096"):
        decode(big, Limits(max_frame=4096))


@pytest.mark.parametrize("env, reason", [
    ([VERSION, 999, 1, []], "unknown message kind 999"),
    ([VERSION, "ping", 1, []], "unknown message kind"),
    ([VERSION + 1, int(Kind.PING), 1, []], "protocol version"),
    ([VERSION, int(Kind.PING), -1, []], "correlation id"),
    ([VERSION, int(Kind.PING), "1", []], "correlation id"),
    ([VERSION, int(Kind.PING), 1], "envelope"),
    ({"version": 1}, "envelope"),
    ([VERSION, int(Kind.SCALE), 1, ["three"]], "Scale.workers: expected int, got str"),
    ([VERSION, int(Kind.SCALE), 1, [True]], "expected int, got bool"),
    ([VERSION, int(Kind.SCALE), 1, []], "takes 1..1 fields, got 0"),
    ([VERSION, int(Kind.SCALE), 1, [1, 2]], "takes 1..1 fields, got 2"),
    ([VERSION, int(Kind.SCALE), 1, 5], "must be a list of fields"),
    ([VERSION, int(Kind.SUBMIT), 1, ["notalist"]], "expected list"),
    ([VERSION, int(Kind.SUBMIT), 1, [[["tests.jobs:pid", [], {"k": 1}, "n", "high"]]]], "priority: expected int"),
    ([VERSION, int(Kind.CANCEL), 1, [1, "yes"]], "expected bool"),
])
def test_bad_envelopes_and_fields_are_refused_with_the_reason(env: object, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(msgpack.packb(env))


def test_non_string_map_keys_are_refused() -> None:
    spec = ["tests.jobs:pid", [], {1: "one"}]
    raw = msgpack.packb([VERSION, int(Kind.SUBMIT), 1, [[spec]]])
    with pytest.raises(ProtocolError):
        decode(raw)
    nested_key = msgpack.packb([VERSION, int(Kind.HEARTBEAT), 1, [{"ok": {2: 3}}]])
    with pytest.raises(ProtocolError):
        decode(nested_key)
    bytes_key = msgpack.packb([VERSION, int(Kind.SUBMIT), 1, [[["tests.jobs:pid", [], {b"k": 1}]]]])
    with pytest.raises(ProtocolError, match="map keys must be strings"):
        decode(bytes_key)


@pytest.mark.parametrize("ext", [
    msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\x00" * 8])),  # object dtype
    msgpack.ExtType(1, msgpack.packb(["<f8", [3], b"\x00" * 8])),  # size does not match shape
    msgpack.ExtType(1, msgpack.packb(["no-such-dtype", [1], b"\x00"])),
    msgpack.ExtType(1, b"\xc1"),  # not msgpack
    msgpack.ExtType(2, msgpack.packb(["seg", "<f4", [-1], 0])),  # negative dimension
    msgpack.ExtType(2, msgpack.packb(["seg", "|O", [1], 0])),
    msgpack.ExtType(9, b""),  # unknown ext code
])
def test_malformed_ext_types_are_refused(ext: msgpack.ExtType) -> None:
    raw = msgpack.packb([VERSION, int(Kind.HEARTBEAT), 1, [{"a": ext}]])
    with pytest.raises(ProtocolError):
        decode(raw)


@pytest.mark.parametrize("limits, stats", [
    (Limits(max_str=100), {"s": "x" * 101}),
    (Limits(max_array=10), {"a": list(range(11))}),
    (Limits(max_map=10), {str(i): i for i in range(11)}),
])
def test_str_array_and_map_limits_are_enforced(limits: Limits, stats: dict[str, object]) -> None:
    raw = encode(Heartbeat(stats))
    with pytest.raises(ProtocolError):
        decode(raw, limits)
    decode(raw)  # fine under the default limits


def test_peek_corr_finds_the_correlation_id_of_a_frame_that_fails_later() -> None:
    raw = msgpack.packb([VERSION, 999, 77, []])
    assert peek_corr(raw) == 77
    assert peek_corr(b"") == 0
    assert peek_corr(b"\xff\xfe") == 0
    assert peek_corr(msgpack.packb([VERSION, 20, "x", []])) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30,
))
def test_plain_values_round_trip(value: object) -> None:
    _, msg = decode(encode(Heartbeat({"v": value})))
    assert isinstance(msg, Heartbeat)
    assert msg.stats["v"] == value

"""The wire protocol: envelope, typed messages, explicit limits, hostile bytes (no sockets)."""

from __future__ import annotations

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._errors import ProtocolError
from actors.messages import (
    Ack, ArrayHandle, Cancel, Error, Heartbeat, JobInfo, JobInfos, JobSpec, Kind, Limits, Ping, Pong, Scale, Status, Submit, Submitted, VERSION, decode, encode, peek_corr,
)
from audio.messages import SampleInfo, SampleLoad

HEARTBEAT, SUBMIT, CANCEL, SCALE, PING = (int(k) for k in (Kind.HEARTBEAT, Kind.SUBMIT, Kind.CANCEL, Kind.SCALE, Kind.PING))


def frame(kind: int, corr: int, *fields: object) -> bytes:
    """A frame built by hand: ``[VERSION, kind, corr, [kind, *fields]]``."""
    return msgpack.packb([VERSION, kind, corr, [kind, *fields]])


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


def test_envelope_is_version_kind_corr_and_the_tagged_message() -> None:
    env = msgpack.unpackb(encode(Scale(4), corr=11))
    assert env == [VERSION, SCALE, 11, [SCALE, 4, ""]]  # fields in order, defaults included (``on`` came later)


def test_frames_of_older_releases_decode_with_the_new_fields_defaulted() -> None:
    """Fields are added at the end with defaults, so a frame without them still decodes."""
    _, back = decode(msgpack.packb([VERSION, SCALE, 0, [SCALE, 4]]))
    assert back == Scale(4, on="")


def test_messages_are_frozen_values() -> None:
    with pytest.raises(AttributeError):
        Scale(1).other = 2  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        Scale(1).workers = 2  # type: ignore[misc]
    assert Scale(1) == Scale(1) and msgspec.structs.replace(Scale(1), workers=2) == Scale(2)


def test_every_kind_number_is_unique() -> None:
    values = [int(k) for k in Kind]
    assert len(values) == len(set(values))


def test_defaults_fill_missing_trailing_fields() -> None:
    _, msg = decode(frame(CANCEL, 3, 5))
    assert msg == Cancel(5, False)


def test_extra_trailing_fields_are_ignored() -> None:
    """A newer peer may append fields; this side reads the ones it knows."""
    assert decode(frame(CANCEL, 3, 5, True, False, "a field from the future")) == (3, Cancel(5, True))


def test_small_numpy_arrays_travel_inline() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    _, msg = decode(encode(Heartbeat({"a": a, "scalar": np.int64(7)})))
    assert isinstance(msg, Heartbeat)
    back = msg.stats["a"]
    assert back.dtype == np.float32 and back.shape == (3, 4)
    np.testing.assert_array_equal(back, a)
    assert msg.stats["scalar"] == 7 and type(msg.stats["scalar"]) is int


def test_inline_arrays_keep_their_shape_and_values_whatever_their_layout() -> None:
    zero_d, fortran = np.array(2.5), np.asfortranarray(np.arange(6).reshape(2, 3))
    _, msg = decode(encode(Heartbeat({"z": zero_d, "f": fortran, "v": fortran[:, 1]})))
    assert isinstance(msg, Heartbeat)
    assert msg.stats["z"].shape == () and float(msg.stats["z"]) == 2.5  # not turned into shape (1,)
    np.testing.assert_array_equal(msg.stats["f"], fortran)
    np.testing.assert_array_equal(msg.stats["v"], [1, 4])


def test_inline_arrays_keep_the_ext_payload_of_version_1() -> None:
    """Journal rows hold ext types written by msgpack: the bytes are the same."""
    a = np.arange(4, dtype="<i2")
    payload = msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()])
    old = msgpack.packb({"a": msgpack.ExtType(1, payload)})
    assert encode(Heartbeat({"a": a})).endswith(old)


def test_journal_rows_written_with_msgpack_read_back_and_are_written_the_same() -> None:
    from actors.messages import _decode_value, _encode_value

    a = np.arange(3, dtype="<f8")
    row = ["examples.jobs:add", [1, 2.5, msgpack.ExtType(1, msgpack.packb(["<f8", [3], a.tobytes()]))],
           {"k": "v"}, "name", 0, 500, 0.0, 0, True, "", False]
    old = msgpack.packb(row)
    back = _decode_value(old)
    np.testing.assert_array_equal(back[1][2], a)
    assert back[:1] + [back[1][:2]] + back[2:] == row[:1] + [row[1][:2]] + row[2:]
    assert _encode_value(back) == old
    assert _decode_value(_encode_value({"r": {1: "one"}})) == {"r": {1: "one"}}  # results that cross now


def test_array_handle_crosses_as_ext_type() -> None:
    handle = ArrayHandle("ensemble.t.abc", "<f4", (100, 2), 64)
    _, msg = decode(encode(SampleLoad(SampleInfo("s", handle, 48000))))
    assert isinstance(msg, SampleLoad)
    assert msg.sample.handle == handle
    assert handle.nbytes == 100 * 2 * 4
    _, msg = decode(encode(Heartbeat({"h": [handle]})))
    assert isinstance(msg, Heartbeat) and msg.stats["h"] == [handle]


def test_array_handles_are_immutable_values() -> None:
    handle = ArrayHandle("ensemble.t.abc", "<f4", (2,))
    with pytest.raises(AttributeError):
        handle.name = "other"  # type: ignore[misc]
    assert handle == ArrayHandle("ensemble.t.abc", "<f4", (2,), 0) and len({handle, handle}) == 1
    import pickle

    assert pickle.loads(pickle.dumps(handle)) == handle


def test_object_arrays_are_refused_when_sending() -> None:
    with pytest.raises(ProtocolError, match="numeric only"):
        encode(Heartbeat({"a": np.array([object()], dtype=object)}))


@pytest.mark.parametrize("value", [object(), range(3)])
def test_unsendable_values_are_refused_with_the_type_named(value: object) -> None:
    with pytest.raises(ProtocolError, match=f"cannot encode Heartbeat: cannot send a value of type builtins.{type(value).__name__}"):
        encode(Heartbeat({"v": value}))


def test_complex_numbers_and_paths_cross_anywhere_as_exact_values() -> None:
    """msgspec packs neither: its hook makes them ext 4 wherever they are (a job's value, a property, stats)."""
    from pathlib import Path

    _, msg = decode(encode(Heartbeat({"c": 1 - 2j, "p": Path("/tmp/x")})))
    assert isinstance(msg, Heartbeat) and msg.stats == {"c": 1 - 2j, "p": Path("/tmp/x")}
    assert type(msg.stats["p"]) is type(Path("/tmp/x"))


def test_sets_and_tuples_cross_as_lists() -> None:
    _, msg = decode(encode(Heartbeat({"s": {1, 2}, "t": (1, "a")})))
    assert isinstance(msg, Heartbeat)
    assert sorted(msg.stats["s"]) == [1, 2] and msg.stats["t"] == [1, "a"]


# ------------------------------------------------------------------------------- hostile frames
def test_random_bytes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(b"\xc1\xff\x00garbage")


def test_truncated_msgpack_is_refused() -> None:
    full = encode(Submit([JobSpec("tests.jobs:pid")]), corr=5)
    for cut in (1, 3, len(full) // 2, len(full) - 1):
        with pytest.raises(ProtocolError):
            decode(full[:cut])


def test_bin32_header_claiming_4_gib_is_refused_without_allocating() -> None:
    hostile = b"\x94\x02\x14\x05\xc6\xff\xff\xff\xff" + b"x" * 16
    with pytest.raises(ProtocolError):
        decode(hostile)
    assert peek_corr(hostile) == 5


def test_array_header_claiming_billions_of_items_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\xdd\xff\xff\xff\xff\x01")


def test_100k_deep_nesting_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x91" * 100_000 + b"\xc0")
    inside = msgpack.packb([VERSION, HEARTBEAT, 4, [HEARTBEAT, {"d": 0}]])[:-1] + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError, match="nests too deeply"):
        decode(inside)
    assert peek_corr(inside) == 4


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
    decode(big)  # fine under the default limit


@pytest.mark.parametrize("env, reason", [
    ([VERSION, 999, 1, [999]], "unknown message kind 999"),
    ([VERSION, "ping", 1, [PING]], "not an ensemble envelope"),
    ([VERSION + 1, PING, 1, [PING]], "protocol version 3 is not supported"),
    ([1, PING, 1, []], "protocol version 1 is not supported"),
    ([VERSION, PING, -1, [PING]], "correlation id -1"),
    ([VERSION, PING, "1", [PING]], "not an ensemble envelope"),
    ([VERSION, PING, 1], "not an ensemble envelope"),
    ({"version": 1}, "not an ensemble envelope"),
    ([VERSION, SCALE, 1, [Kind.SHUTDOWN]], r"the envelope says kind 28 but the message is of kind 29 \(Shutdown\)"),
    ([VERSION, SCALE, 1, [5, 1]], r"the envelope says kind 28 \(Scale\) but the message is of kind 5"),
    ([VERSION, SCALE, 1, [SCALE, "three"]], r"Scale.workers: Expected `int`, got `str`"),
    ([VERSION, SCALE, 1, [SCALE, True]], r"Scale.workers: Expected `int`, got `bool`"),
    ([VERSION, SCALE, 1, [SCALE]], "Scale: needs at least 1 field, got 0"),
    ([VERSION, SCALE, 1, []], "Scale: needs at least 1 field, got 0"),
    ([VERSION, SCALE, 1, 5], r"Scale: Expected `array`, got `int`"),
    ([VERSION, SCALE, 1, ["x", 1]], r"Scale \(its kind\): Expected `int`, got `str`"),
    ([VERSION, SUBMIT, 1, [SUBMIT, "notalist"]], r"Submit.jobs: Expected `array`, got `str`"),
    ([VERSION, SUBMIT, 1, [SUBMIT, [["tests.jobs:pid", [], {"k": 1}, "n", "high"]]]], r"Submit.jobs\[0\].priority: Expected `int`"),
    ([VERSION, CANCEL, 1, [CANCEL, 1, "yes"]], r"Cancel.block: Expected `bool`"),
])
def test_bad_envelopes_and_fields_are_refused_with_the_reason(env: object, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(msgpack.packb(env))


def test_property_and_kwarg_names_must_be_strings() -> None:
    raw = frame(SUBMIT, 1, [["tests.jobs:pid", [], {1: "one"}]])
    with pytest.raises(ProtocolError, match=r"Submit.jobs\[0\].kwargs \(a map key\): Expected `str`, got `int`"):
        decode(raw)
    with pytest.raises(ProtocolError, match=r"\(a map key\): Expected `str`, got `bytes`"):
        decode(frame(SUBMIT, 1, [["tests.jobs:pid", [], {b"k": 1}]]))


def test_maps_inside_plain_values_may_have_other_keys() -> None:
    stats = {"ok": {2: 3, -1: "minus", b"b": None, 1.5: [1], (1, "t"): True}}
    assert decode(encode(Heartbeat(stats))) == (0, Heartbeat(stats))


@pytest.mark.parametrize("ext", [
    msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\x00" * 8])),  # object dtype
    msgpack.ExtType(1, msgpack.packb(["<f8", [3], b"\x00" * 8])),  # size does not match shape
    msgpack.ExtType(1, msgpack.packb(["no-such-dtype", [1], b"\x00"])),
    msgpack.ExtType(1, b"\xc1"),  # not msgpack
    msgpack.ExtType(1, msgpack.packb(["<f8", [1] * 65, b"\x00" * 8])),  # too many dimensions
    msgpack.ExtType(2, msgpack.packb(["ensemble.seg", "<f4", [-1], 0])),  # negative dimension
    msgpack.ExtType(2, msgpack.packb(["ensemble.seg", "|O", [1], 0])),
    msgpack.ExtType(2, msgpack.packb(["ensemble.seg", "<f4", [1]])),  # a field short
    msgpack.ExtType(9, b""),  # unknown ext code
])
def test_malformed_ext_types_are_refused(ext: msgpack.ExtType) -> None:
    with pytest.raises(ProtocolError):
        decode(frame(HEARTBEAT, 1, {"a": ext}))


def test_peek_corr_finds_the_correlation_id_of_a_frame_that_fails_later() -> None:
    assert peek_corr(frame(999, 77)) == 77
    assert peek_corr(frame(SUBMIT, 2**40, "broken")) == 2**40
    assert peek_corr(encode(Cancel(4, True), corr=9)[:-2]) == 9
    assert peek_corr(b"") == 0
    assert peek_corr(b"\xff\xfe") == 0
    assert peek_corr(msgpack.packb([VERSION, PING, "x", []])) == 0
    assert peek_corr(msgpack.packb([VERSION, PING, -5, []])) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5) | st.integers(-2**63, 2**64 - 1),
                                                                 inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(_plain)
def test_plain_values_round_trip(value: object) -> None:
    _, msg = decode(encode(Heartbeat({"v": value})))
    assert isinstance(msg, Heartbeat)
    assert msg.stats["v"] == value


def test_a_run_jobs_frame_a_worker_cannot_read_whole_is_read_job_by_job() -> None:
    """A worker that cannot read one job of a RunJobs (a dict key it cannot rebuild: a tuple holding a list) runs
    the others and fails that one by its id, where dropping the frame held every job in it running for ever."""
    from actors.messages import EXT_VALUE, Dispatch, RunJobs, salvage_run_jobs

    key = msgspec.msgpack.encode(msgspec.msgpack.Ext(EXT_VALUE, msgspec.msgpack.encode([0, [[1, 2]]])))
    poison = msgspec.Raw(b"\x81" + key + b"\x01")  # {([1, 2],): 1}
    jobs = [Dispatch(1, "m:f", [1], {}, 0, 1), Dispatch(2, "m:f", [poison], {}, 0, 1), Dispatch(3, "m:g", [], {}, 0, 1)]
    frame = encode(RunJobs(jobs))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="hashable"):
        decode(frame)
    read, failed = salvage_run_jobs(frame, Limits())  # type: ignore[misc]
    assert [(d.job_id, d.fn, d.args) for d in read] == [(1, "m:f", [1]), (3, "m:g", [])]
    assert [job_id for job_id, _ in failed] == [2] and "hashable" in failed[0][1]
    assert salvage_run_jobs(encode(Ping()), Limits()) is None  # not a RunJobs: nothing to answer for

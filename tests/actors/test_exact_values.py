"""A Client job's values come back as they went in: tuples, sets, big ints, datetimes... as MessagePack ext 4."""

from __future__ import annotations

import collections
import datetime
import decimal
import math
import pathlib
import signal
import uuid
import zoneinfo
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import ProtocolError, Task
from actors._values import Exact, rebuild, to_wire
from actors.messages import EXT_VALUE, _decode_value, _encode_value
from tests import jobs
from tests.conftest import Daemon, wait_for

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
VALUES: list[Any] = [
    (1, "two", (3.0, None)), {1, 2}, frozenset({"a"}), 2**100, -(2**64), 2**64 - 1, 1 + 2j,
    datetime.datetime(2026, 12, 6, 10, 0, 0, 123456), datetime.datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
    datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-3))), datetime.date(2026, 2, 28),
    datetime.time(23, 59, 59, 5, tzinfo=datetime.timezone.utc), datetime.timedelta(days=-2, microseconds=9),
    decimal.Decimal("-1.2300"), uuid.UUID(int=2**127 + 5), pathlib.Path("rel/in.wav"), pathlib.PurePosixPath("/x"),
    bytearray(b"\x00\xff"), {(1, 2): "pair", frozenset({3}): "set", datetime.date(2026, 1, 1): "day", "k": [(), {()}]},
]


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type all the way down (and an aware datetime in the same zone, the same fold)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k, j) for k, j in zip(a, b)) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (datetime.datetime, datetime.time)):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_every_exact_type_round_trips_through_the_codec(value: Any) -> None:
    back = _decode_value(_encode_value(to_wire(value)))
    assert same(back, value), (back, value)


@pytest.mark.parametrize("tag, data, why", [
    (0, "ab", "list of its items"), (3, "12", "expected bytes"), (5, ["2026-13-01", ""], "month"),
    (5, ["2026-01-01", "Nowhere/Atlantis"], "unknown time zone"), (8, [1, 2], "days, seconds"),
    (9, "one", "Decimal"), (10, b"short", "16"), (4, [1, 2], "float"), (99, None, "unknown exact-value tag"),
    (1, [[1]], "unhashable")])
def test_a_malformed_exact_value_is_a_protocol_error_saying_what(tag: int, data: Any, why: str) -> None:
    blob = msgspec.msgpack.encode(msgspec.msgpack.Ext(EXT_VALUE, msgspec.msgpack.encode([tag, data])))
    with pytest.raises(ProtocolError, match="malformed exact value") as info:
        _decode_value(blob)
    assert why.lower() in str(info.value).lower()


def test_the_daemon_keeps_exact_values_as_they_came_and_sends_them_on_the_same() -> None:
    from actors import messages

    blob = _encode_value(to_wire([(1, 2), {datetime.date(2026, 1, 1): 2**70}]))
    saved = messages._KEEPS_EXACT[0]
    try:
        messages.keep_exact_values()  # this process, as the daemon does at start
        kept = _decode_value(blob)
        assert type(kept[0]) is Exact and type(kept[1]) is dict  # checked, not rebuilt
        again = _encode_value(kept)
    finally:
        messages._KEEPS_EXACT[0] = saved
    assert again == blob
    assert same(_decode_value(again), [(1, 2), {datetime.date(2026, 1, 1): 2**70}])


def test_the_daemon_checks_nested_sets_in_work_that_grows_with_the_frame_not_its_depth_times_its_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A set checks its items' hashes, and an Exact's hash rebuilt its value to see that it may be a key: each of
    D nested frozensets rebuilt every level below it, D x M rebuilds for M tuples at the bottom (a remote client's
    2 MB frame held the daemon's loop for 20 s).  The finding is kept: each value is rebuilt about twice."""
    from actors import _values, messages

    enc, ext = msgspec.msgpack.encode, msgspec.msgpack.Ext
    depth, size = 60, 2000
    node = ext(EXT_VALUE, enc([2, [ext(EXT_VALUE, enc([0, [i]])) for i in range(size)]]))  # frozenset of tuples
    for _ in range(depth):
        node = ext(EXT_VALUE, enc([2, [node]]))
    calls = [0]
    real = _values.rebuild

    def counted(tag: int, data: Any) -> Any:
        calls[0] += 1
        return real(tag, data)

    monkeypatch.setattr(_values, "rebuild", counted)
    saved = messages._KEEPS_EXACT[0]
    try:
        messages.keep_exact_values()
        kept = _decode_value(enc(node))
    finally:
        messages._KEEPS_EXACT[0] = saved
    assert type(kept) is Exact
    assert calls[0] <= 3 * (size + depth), calls[0]  # (D x M = 120,000 before)


def test_a_frame_from_another_host_holds_a_bounded_number_of_ext_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ext value costs the daemon's loop a call into Python and a small decode: a remote key's 64 MiB frame
    of ten million tuples would hold the loop for tens of seconds.  Over the bound, such a frame is refused saying
    why; a local peer's is not bounded, and the count starts again with each frame."""
    from actors import messages
    from actors.worker import _sendable_encoded

    monkeypatch.setattr(messages, "REMOTE_EXT_VALUES", 100)
    frame = messages.encode(messages.Submit([messages.JobSpec("m:f", args=to_wire([(i,) for i in range(101)]))]))
    with pytest.raises(ProtocolError, match=r"from another host may hold at most 100 ext values .*plain lists"):
        messages.decode(frame, handles=None)
    assert len(messages.decode(frame)[1].jobs[0].args) == 101  # a local client's
    small = messages.encode(messages.Submit([messages.JobSpec("m:f", args=to_wire([(i,) for i in range(100)]))]))
    for _ in range(2):
        assert len(messages.decode(small, handles=None)[1].jobs[0].args) == 100
    # a worker on another host checks its result as the daemon will read it: one over the bound fails its job
    done = messages.JobDone(7, True, to_wire([(i,) for i in range(101)]))
    failed, _, _ = _sendable_encoded(done, 1 << 20, remote=True)
    assert not failed.ok and "at most 100 ext values" in failed.error_message
    ok, cost, _ = _sendable_encoded(messages.JobDone(7, True, to_wire([(i,) for i in range(60)])), 1 << 20, True)
    assert ok.ok and cost > (1 << 20) // 2 * 60 // 100  # two such results never share a frame (half a frame each)


def test_rebuild_names_an_unknown_tag() -> None:
    with pytest.raises(ValueError, match="tag 42"):
        rebuild(42, [])


def test_a_client_job_gets_and_gives_back_every_value_as_it_was(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    handles = [c.submit("examples.jobs:echo", v) for v in VALUES]
    for value, h in zip(VALUES, handles):
        assert same(h.result(60), value), value
    got = c.submit("tests.jobs:type_names", (1,), {2}, 2**65, datetime.date(2026, 1, 1),
                   kwargs={"when": datetime.time(1), "path": pathlib.Path("a")}).result(60)
    assert got == ["tuple", "set", "int", "date", "PosixPath", "time"]  # as the job received them


def test_arrays_inside_exact_values_keep_the_shared_memory_path(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    big = np.arange(100_000, dtype=np.float64)  # 800 kB: through shared memory
    back = c.submit("examples.jobs:echo", ("meta", big, {1, 2})).result(60)
    assert type(back) is tuple and back[0] == "meta" and back[2] == {1, 2}
    assert np.array_equal(back[1], big)


_leaf = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=12)
         | st.binary(max_size=20))
_data = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.integers(-3, 20), _data, st.booleans())
def test_any_ext_4_payload_is_a_value_or_a_protocol_error(tag: int, data: Any, daemon: bool) -> None:
    """Generated ``[tag, data]`` payloads, read by a worker or client and by the daemon: the value, or one
    ProtocolError saying so; never another exception."""
    from actors import messages

    blob = msgspec.msgpack.encode(msgspec.msgpack.Ext(EXT_VALUE, msgspec.msgpack.encode([tag, data])))
    saved = messages._KEEPS_EXACT[0]
    try:
        if daemon:
            messages.keep_exact_values()
        try:
            value = _decode_value(blob)
        except ProtocolError:
            return
        if daemon:
            assert type(value) is Exact and _encode_value(value) == blob  # passed on as it came
    finally:
        messages._KEEPS_EXACT[0] = saved


def test_a_job_s_properties_are_read_back_as_the_job_set_them(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    values = [*VALUES, float("nan")]
    job = c.submit("tests.jobs:hold_properties", values)
    wait_for(lambda: len(job.properties) == len(values), 60, what="the job's properties while it runs")
    running = dict(job.properties)
    final = job.cancel(block=True)
    assert final is not None and final.state == "cancelled"
    listed = next(i for i in c.jobs(states=["cancelled"], limit=1000) if i.id == job.id)  # read from the journal
    for seen in (running, final.properties, listed.properties):
        for i, value in enumerate(VALUES):
            assert same(seen[f"v{i}"], value), (seen[f"v{i}"], value)
        assert math.isnan(seen[f"v{len(VALUES)}"])


def test_a_property_that_would_come_back_as_something_else_is_refused_in_the_job_saying_where() -> None:
    task = Task(1, 500)
    with pytest.raises(TypeError, match=r"property 'p'\['held'\]\[1\] is a tests\.jobs\.Offset, which a property "
                                        r"cannot hold .* a dict of its fields"):
        task.set_property("p", {"held": [1, jobs.Offset(2)]})
    with pytest.raises(TypeError, match=r"property 'q' is a signal\.Signals"):  # an IntEnum would come back an int
        task.set_property("q", signal.SIGTERM)
    task.set_property("r", collections.defaultdict(list, {"k": [(1, 2)]}))  # a dict and a tuple, as they compare
    assert task.get_property("r") == {"k": [(1, 2)]} and task.get_property("q") is None


LONG: list[Any] = [
    list(range(100)) + [2**64], [2**70] + list(range(100)), [float("nan"), *range(50), -(2**63) - 1],
    [1.5] * 40 + [2**65, "x"], tuple(range(40)) + (2**80,), tuple(range(40)), [True, False, None] * 20 + [(1, 2)],
    {str(i): i for i in range(40)} | {"big": 2**100}, {i: float(i) for i in range(40)} | {(1, 2): "pair"},
    [[0] * 30, [2**66] * 30, {"k": {1, 2}}], ["text"] * 40 + [datetime.date(2026, 1, 1)],
]


@pytest.mark.parametrize("value", LONG, ids=range(len(LONG)))
def test_a_long_value_s_fast_paths_keep_every_exact_item(value: Any) -> None:
    """Lists, tuples and dicts of more than a few items are looked at with C loops first (their types, the least
    and greatest int); a big int, a tuple or a date among many plain items must still cross exactly."""
    back = _decode_value(_encode_value(to_wire(value)))
    assert same(back, value), (back, value)
    from actors.shm import walk

    assert same(walk(back, lambda v: v), value)  # the client's and the worker's walks keep it too


def test_a_client_job_gives_back_a_long_list_with_a_big_int_as_it_was(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    value = [*range(100_000), 2**64, (1, 2), {3}]
    assert same(c.submit("examples.jobs:echo", value).result(60), value)
    plain = list(range(100_000))
    assert same(c.submit("examples.jobs:echo", plain).result(60), plain)

"""The pickled values of a local Executor: big arrays leave the pickle by reference, the rest stays exact."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from actors._exact import dumps, dumps_arguments, dumps_range_chunk, loads, loads_referencing, pickled_value, spill


def test_big_arrays_leave_the_pickle_and_small_or_odd_ones_stay_in_it() -> None:
    big, small = np.arange(10_000, dtype=np.float64), np.arange(3)
    strided, objects = big[::2], np.array([{"a": 1}], dtype=object)
    payload = dumps_arguments("m:f", (big, (small, strided)), {"o": objects}, 1024)
    blob, refs = payload[0], payload[1:]
    assert len(refs) == 1 and refs[0] is big and len(blob) < 1024 + strided.nbytes + 500
    args, kwargs = loads_referencing(blob, [big.copy()])
    assert type(args) is tuple and type(args[1]) is tuple and np.array_equal(args[0], big)
    assert np.array_equal(args[1][1], strided) and kwargs["o"][0] == {"a": 1}


def test_a_value_without_arrays_is_plain_bytes_as_before() -> None:
    value = [(1, "x"), {2: frozenset({3})}]
    out = dumps(value, "result", 1024)
    assert type(out) is bytes and pickle.loads(out) == value
    assert pickled_value(out) == (out, []) and pickled_value([out, 1]) == (out, [1]) and pickled_value([1]) is None


def test_a_reference_that_was_not_sent_is_an_error_not_a_wrong_value() -> None:
    blob, _ = dumps(np.zeros(1000), "result", 0)
    with pytest.raises(pickle.UnpicklingError, match="array reference 0 is not one of the 0 sent"):
        loads_referencing(blob, [])
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(blob)  # outside loads_referencing: no arrays to resolve against


@pytest.mark.parametrize("r", [range(64), range(10, -5, -1), range(-2**31, 2**31 - 1, 3)[5:70:2], range(0),
                               range(2**31 - 1, 2**31 + 1), range(2**40, 2**40 + 5), range(0, 2**31 - 1, 2**30)[:2]])
def test_a_range_chunk_pickled_by_hand_loads_the_same_by_hand_and_by_pickle(r: range) -> None:
    blob = dumps_range_chunk([r], pickle.HIGHEST_PROTOCOL)
    for load in (loads, pickle.loads):
        chunk = load(blob)
        assert chunk == [r] and type(chunk[0]) is range


def test_loads_reads_any_other_pickle_by_pickle() -> None:
    value = [(1, "x"), range(3), {2: frozenset({3})}]
    assert loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)) == value
    assert loads(pickle.dumps([range(3)], 2)) == [range(3)]


def test_big_bytes_leave_the_pickle_as_arrays_of_bytes_and_come_back_as_they_were() -> None:
    big, mutable, small = b"b" * 5000, bytearray(b"m" * 5000), b"s" * 10
    payload = dumps_arguments("m:f", (big, [b"n" * 5000], small), {"k": mutable}, 1024)
    blob, refs = payload[0], payload[1:]
    # each argument and keyword value over the limit leaves; one nested deeper stays inside (pickle calls no hook
    # for a bytes)
    assert len(refs) == 2 and all(r.dtype == np.uint8 for r in refs) and 5000 < len(blob) < 5000 + 500
    args, kwargs = loads_referencing(blob, [r.copy() for r in refs])
    assert args == (big, [b"n" * 5000], small) and type(args[0]) is bytes
    assert kwargs == {"k": mutable} and type(kwargs["k"]) is bytearray
    for value in (big, mutable, (1, big), [mutable, small]):  # a result: itself, or an item of a tuple or list
        out = dumps(value, "result", 1024)
        assert type(out) is list and len(out) == 2
        back = loads_referencing(out[0], out[1:])
        assert back == value and type(back) is type(value)
        if type(value) in (tuple, list):
            assert [type(v) for v in back] == [type(v) for v in value]
    assert type(dumps(small, "result", 1024)) is bytes  # under the limit: inside, as before


def test_a_big_bytearray_passed_twice_is_one_object_on_the_other_side_as_pickle_makes_it() -> None:
    shared = bytearray(b"m" * 5000)
    payload = dumps_arguments("m:f", (shared, shared), {"again": shared}, 1024)
    assert len(payload) == 2  # one array beside the pickle, not three
    args, kwargs = loads_referencing(payload[0], [payload[1].copy()])
    assert args[0] is args[1] is kwargs["again"] and args[0] == shared


def test_a_pickle_over_the_limit_is_spilled_beside_the_value_and_reads_back_the_same() -> None:
    """spill moves a pickle over ``most`` bytes into an array of bytes ahead of the value's own arrays; the
    empty head says so, and loads_referencing reads it from there (a small one stays as it was)."""
    arr = np.arange(100_000, dtype=np.float64)
    value = {"text": "t" * 5000, "deep": [[b"b" * 3000]], "arr": arr}
    payload = dumps(value, "value", 1000)
    assert type(payload) is list and len(payload) == 2  # the array left the pickle
    spilled = spill(payload, 1000)
    assert spilled[0] == b"" and spilled[1].dtype == np.uint8 and spilled[2] is arr
    blob, refs = pickled_value(spilled)
    back = loads_referencing(blob, refs)
    assert back["text"] == value["text"] and back["deep"] == value["deep"] and np.array_equal(back["arr"], arr)
    plain = dumps(["x" * 5000], "value")
    assert type(plain) is bytes and spill(plain, 10_000) is plain  # under the limit: untouched
    blob, refs = pickled_value(spill(plain, 1000))
    assert blob == b"" and loads_referencing(blob, refs) == ["x" * 5000]
    with pytest.raises(pickle.UnpicklingError, match="empty pickle"):
        loads_referencing(b"", [])

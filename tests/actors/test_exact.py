"""The pickled values of a local Executor: big arrays leave the pickle by reference, the rest stays exact."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from actors._exact import dumps, dumps_arguments, loads_referencing, pickled_value


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

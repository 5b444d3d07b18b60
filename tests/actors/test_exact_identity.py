"""A local Executor keeps each object's identity across processes, as ProcessPoolExecutor does: an object
referred to twice in a value is one object on the other side, a list that holds itself holds itself, also when
the value carries big bytes or arrays (they leave the pickle through shared memory: actors._exact)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from actors._exact import dumps, dumps_arguments, loads_referencing
from actors.client import Executor
from tests.conftest import Daemon

BIG = 70_000  # over jobs.inline_array_limit (64 KiB): such bytes and arrays leave the pickle


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.siblings: list[Any] | None = None


def graph(extra: Any = None) -> list[Any]:
    """A list whose nodes refer back to it (numpy in use in the worker: its results' arrays are looked for)."""
    import numpy  # noqa: F401

    nodes: list[Any] = [Node("a"), Node("b")]
    for node in nodes[:2]:
        node.siblings = nodes
    if extra is not None:
        nodes.append(extra)
    return nodes


def twice(kind: str) -> tuple[Any, list[Any]]:
    """One object over the limit, as the result's first item and inside its second."""
    one: Any = {"bytearray": bytearray(BIG), "bytes": b"x" * BIG, "array": np.zeros(BIG // 8)}[kind]
    return one, [one]


def same_object(first: Any, holder: list[Any], again: Any = None) -> list[bool]:
    return [first is holder[0], again is first]


@pytest.mark.parametrize("extra", [None, b"x" * BIG, bytearray(BIG)], ids=["numpy", "bytes", "bytearray"])
def test_a_returned_list_that_holds_itself_still_does_with_numpy_or_big_bytes_in_it(module_daemon: Daemon,
                                                                                    extra: Any) -> None:
    with Executor(config=module_daemon.config) as ex:
        nodes = ex.submit(graph, extra).result(60)
    assert nodes[0].siblings is nodes and nodes[1].siblings is nodes
    nodes.append(Node("c"))
    assert nodes[0].siblings[-1].name == "c"  # the list itself, not a copy taken before the append


@pytest.mark.parametrize("kind", ["bytearray", "bytes", "array"])
def test_big_bytes_or_an_array_returned_twice_is_one_object(module_daemon: Daemon, kind: str) -> None:
    with Executor(config=module_daemon.config) as ex:
        first, holder = ex.submit(twice, kind).result(60)
    assert first is holder[0] and len(first) == BIG // (8 if kind == "array" else 1)


@pytest.mark.parametrize("one", [bytearray(BIG), b"y" * BIG, np.ones(BIG // 8)], ids=["bytearray", "bytes", "array"])
def test_big_bytes_or_an_array_passed_twice_is_one_object_in_the_job(module_daemon: Daemon, one: Any) -> None:
    with Executor(config=module_daemon.config) as ex:
        assert ex.submit(same_object, one, [one], again=one).result(60) == [True, True]


def test_the_pickle_of_bytes_that_left_reads_back_with_pickle_s_own_readers_only_given_their_arrays() -> None:
    """Without processes: the pickle opens with pickle's own opcodes, which the C and the Python unpickler both
    read; without the arrays, pickle refuses it rather than giving a wrong value."""
    data = bytearray(b"m" * 5000)
    nodes: list[Any] = [Node("a"), data, b"b" * 5000]
    nodes[0].siblings = nodes
    out = dumps((nodes, [data, nodes[2]], data), "result", 1024)
    assert type(out) is list and len(out) == 2  # the bytearray at the top left; the bytes deeper stayed inside
    blob, refs = out[0], out[1:]
    for back in (loads_referencing(blob, [r.copy() for r in refs]), pickle._loads(blob, buffers=refs)):  # type: ignore[attr-defined]
        got, holder, again = back
        assert got[0].siblings is got and got[1] is holder[0] is again and got[2] is holder[1]
        assert type(again) is bytearray and again == data
    payload = dumps_arguments("m:f", (data, [data]), {"k": (data,)}, 1024)
    args, kwargs = loads_referencing(payload[0], [r.copy() for r in payload[1:]])
    assert args[0] is args[1][0] is kwargs["k"][0] and len(payload) == 2
    with pytest.raises(pickle.UnpicklingError, match="out-of-band data"):
        pickle.loads(blob)

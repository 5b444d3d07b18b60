"""Well-typed requests of every kind with awkward field values, on the local control socket: each is answered,
none as an internal error, and the daemon and its children stay up.

``test_fuzz`` sends frames most of which fail the codec's validation; these pass it (each field is generated from
its declared type, through ``msgspec.inspect``) and so reach the handlers, with edge values: the int64 limits,
NaN and the infinities, empty and 5,000-character strings, a NUL, path-like and job-path-like names.
A handler that lets an exception escape answers "internal error handling ..." (the daemon's last-resort catch):
that is a bug to fix with a clear error, as it was for a script path too long for the file system.
"""

from __future__ import annotations

import os
import random
from typing import Any

import msgspec
import zmq
from msgspec import inspect as mi

import actors.messages as M
from actors._rundir import RunDir
from tests.conftest import Daemon
from tests.reliability.history import full

N = 20_000 if full() else 2_000
_SKIP = ("Shutdown", "Scale")  # they stop the daemon under test, or start up to 1,024 workers on 2 cores
_INTS = [0, 1, -1, 2, 7, 64, 2**31, 2**63 - 1, -2**63, 10**9, -10**9]
_FLOATS = [0.0, -0.0, 0.5, -1.0, 86400.0, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 1e-300]
_STRS = ["", "a", "x" * 5000, "/" + "x" * 5000, "../../etc/passwd", "\x00", "é☃", "examples.jobs:add", "worker-1",
         "controller", "processor", "os:system", "builtins:eval", "volume", "*", "a:b", " "]


class _Values:
    """Field values generated from a message's declared types (seeded: a failure reproduces)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def of(self, t: Any, depth: int = 0) -> Any:
        r = self.r
        if isinstance(t, mi.Metadata):
            return self.of(t.type, depth)
        if isinstance(t, mi.IntType):
            return r.choice(_INTS)
        if isinstance(t, mi.FloatType):
            return r.choice(_FLOATS)
        if isinstance(t, mi.StrType):
            return r.choice(_STRS)
        if isinstance(t, mi.BoolType):
            return r.random() < 0.5
        if isinstance(t, (mi.BytesType, mi.ByteArrayType, mi.MemoryViewType)):
            return r.choice([b"", b"\x80\x04N.", os.urandom(r.choice([1, 100, 10_000]))])
        if isinstance(t, mi.NoneType):
            return None
        if isinstance(t, mi.UnionType):
            return self.of(r.choice(t.types), depth)
        if isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
            return [self.of(t.item_type, depth + 1) for _ in range(r.choice([0, 1, 2, 3, 50]) if depth < 3 else 0)]
        if isinstance(t, mi.TupleType):
            return [self.of(x, depth + 1) for x in t.item_types]
        if isinstance(t, mi.DictType):
            return {self.of(t.key_type, depth + 1): self.of(t.value_type, depth + 1)
                    for _ in range(r.choice([0, 1, 2, 5]) if depth < 3 else 0)}
        if isinstance(t, mi.LiteralType):
            return r.choice(t.values)
        if isinstance(t, mi.EnumType):
            return r.choice(list(t.cls)).value
        if isinstance(t, mi.StructType):
            return [self.of(f.type, depth + 1) for f in t.fields]
        return self.any(depth)

    def any(self, depth: int) -> Any:
        r = self.r
        pick = r.randrange(6)
        if pick == 0:
            return r.choice(_INTS)
        if pick == 1:
            return r.choice(_STRS)
        if pick == 2:
            return r.choice(_FLOATS)
        if pick == 3 and depth < 4:
            return [self.any(depth + 1) for _ in range(r.choice([0, 1, 3]))]
        if pick == 4 and depth < 4:
            return {r.choice(_STRS): self.any(depth + 1) for _ in range(r.choice([0, 1, 3]))}
        return None


def _answer(sock: zmq.Socket[bytes], corr: int) -> Any:
    while True:
        assert sock.poll(30_000), f"no answer to request {corr} within 30 s"
        got, msg = M.decode(sock.recv())
        if got == corr:
            return msg


def test_well_typed_requests_with_awkward_values_are_each_answered_never_as_an_internal_error(daemon: Daemon) -> None:
    import audio.messages  # noqa: F401 - the audio and script requests register their kinds
    import controller.messages  # noqa: F401

    before = {a.name: a.pid for a in daemon.status().actors}
    kinds = [(int(k), cls) for k, cls in M._REGISTRY.items() if cls.__name__ not in _SKIP]
    values = _Values(seed=20261204)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(RunDir(daemon.config.run_dir).control_endpoint)
    bugs: list[str] = []
    try:
        for corr in range(1, N + 1):
            kind, cls = values.r.choice(kinds)
            fields = [values.of(f.type) for f in mi.type_info(cls).fields]
            sock.send(msgspec.msgpack.encode([M.VERSION, kind, corr, [kind, *fields]]))
            reply = _answer(sock, corr)
            if isinstance(reply, M.Error) and "internal error" in reply.message:
                bugs.append(f"{cls.__name__}{fields!r:.200}: {reply.message[:200]}")
            if corr % 50 == 0:  # and the daemon still answers what it did before
                sock.send(M.encode(M.Ping(), 10**9 + corr))
                assert type(_answer(sock, 10**9 + corr)).__name__ == "Pong"
    finally:
        sock.close(0)
    assert not bugs, "\n".join(bugs)
    assert {a.name: a.pid for a in daemon.status().actors if a.name in before} == before  # nothing crashed

"""A local client's exact values: pickled between it and its workers, with errors that say what and where.

Used only between a local client and a local worker of the same user (the
daemon forwards the bytes and never unpickles them; nothing from tcp is ever
unpickled).  A value that cannot be pickled fails its own job at once, with
the type of the part that failed and where it sits in the value.

Numpy arrays keep their shared-memory path inside pickled values: a plain
numeric C-contiguous array larger than ``jobs.inline_array_limit``, and a
whole shared array (``client.empty()``, ``task.empty()``), leave the pickle
as a reference, an index into a list that travels beside the bytes
(``[blob, array, ...]``; :mod:`actors._arrays` turns those arrays into
handles and back).  A plain array comes back a plain ``numpy.ndarray``, a
shared one shared.  Everything around the arrays keeps its exact type; a
value with no such array is a bare ``bytes`` as before.

A ``bytes`` or ``bytearray`` over the same limit among a job's arguments (each
argument, each keyword's value) or as its result (the value itself, or an item
of a result tuple or list of up to 8) leaves the pickle the same way, as an
array of bytes, and comes back as the ``bytes`` or ``bytearray`` it was: a
value ``ProcessPoolExecutor`` carries through its pipe (200 MB, say) would
otherwise be over the daemon's frame limit.  The pickle rebuilds it first and
pickle's memo names it, so every other reference to that object in the value,
however deep, is that one object again on the other side, and the value around
it is pickled as it is (a list that holds itself still does): identities come
back as pickle makes them (:func:`dumps_referencing`).  (Pickle calls no hook
of ours for a ``bytes``, so other big ones nested deeper stay inside.)

A pickle that is itself over half the frame limit (a 100 MB ``str``, big bytes
nested in a dict, a long list of numbers: whatever is left in it) leaves the
frame too: :func:`spill` moves it beside the value as one more array of bytes
(``[b"", pickle, array, ...]``; no pickle is empty, so the empty head says
where it went), and it crosses through shared memory as the arrays do.  So
every value ``ProcessPoolExecutor`` carries crosses here too, whatever its
size; only what remains in the frame counts against the limit.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import struct
import sys
import threading
from typing import Any, Iterable, Sequence

_DEPTH = 32  # how deep the search for the failing part goes


def dumps(value: Any, path: str, limit: int | None = None) -> bytes | list[Any]:
    """``pickle.dumps(value)``, or raise :func:`unpicklable`'s error (``path`` names the value: ``"result"``).

    With ``limit``, arrays over ``limit`` bytes (and shared ones) are left out,
    and bytes over it that are the value or an item of a short tuple or list
    (see the module's doc): ``[blob, array, ...]`` when there are any.
    """
    try:
        if limit is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        leaving: list[bytes | bytearray] = []
        if type(value) in _BYTES:
            leaving = _over_once((value,), limit)
        elif type(value) in (tuple, list) and len(value) <= _SCANNED:
            leaving = _over_once(value, limit)
        blob, refs = dumps_referencing(value, limit, leaving)
        return [blob, *refs] if refs else blob
    except Exception as exc:  # noqa: BLE001 - PicklingError, TypeError, AttributeError (a local class)
        raise unpicklable(value, path, exc) from None


# A map chunk [range(start, stop, step)] (actors._map) pickled by hand, with the opcodes pickle.dumps(..., 5) writes
# for it less its frame and memo marks, and read back by hand: pickle's own reduction of a range took 3 us a chunk
# in the caller, a tenth of its time in a map at chunksize 64, and loading it 1.8-3 us in the worker (the lookup
# of builtins.range); by hand 0.35 us to write, 0.65 to read.  PROTO 5, EMPTY_LIST, 'builtins', 'range',
# STACK_GLOBAL ...
_RANGE_HEAD = b"\x80\x05]\x8c\x08builtins\x8c\x05range\x93"
_RANGE_TAIL = struct.Struct("<cicici4s")  # ... BININT start, stop, step, TUPLE3, REDUCE, APPEND, STOP
_RANGE_END = b"\x87Ra."
_RANGE_BYTES = len(_RANGE_HEAD) + _RANGE_TAIL.size


def dumps_range_chunk(chunk: list[range], protocol: int) -> bytes:
    """``pickle.dumps(chunk, protocol)`` of a map chunk ``[r]``: by hand when r's bounds fit 32 bits, else by
    pickle.  Either loads as the same list with :func:`loads` or :func:`pickle.loads`."""
    r = chunk[0]
    try:
        return _RANGE_HEAD + _RANGE_TAIL.pack(b"J", r.start, b"J", r.stop, b"J", r.step, _RANGE_END)
    except struct.error:
        return pickle.dumps(chunk, protocol)


def loads(blob: bytes) -> Any:
    """``pickle.loads(blob)``, with a map chunk of one range (:func:`dumps_range_chunk`) read by hand."""
    if len(blob) == _RANGE_BYTES and blob.startswith(_RANGE_HEAD):
        j1, start, j2, stop, j3, step, end = _RANGE_TAIL.unpack_from(blob, len(_RANGE_HEAD))
        if j1 == j2 == j3 == b"J" and end == _RANGE_END and step:
            return [range(start, stop, step)]
    return pickle.loads(blob)


def dumps_arguments(fn: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                    limit: int | None = None, head: bool = False) -> list[Any]:
    """A job's ``(args, kwargs)`` pickled, as it crosses: ``[blob]``, or ``[blob, array, ...]`` with ``limit``.

    Raises :func:`unpicklable`'s error, naming the argument that does not pickle.  ``head``: ``args[0]`` is
    the function itself (a callable job, :func:`actors.callables.head`), which the caller did not pass as an
    argument: the caller's arguments are named from ``args[0]`` as the caller counts them.
    """
    try:
        if limit is None:
            return [pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)]
        leaving = _over_once((*args, *kwargs.values()), limit)
        blob, refs = dumps_referencing((args, kwargs), limit, leaving)
        return [blob, *refs]
    except Exception as exc:  # noqa: BLE001
        own = args[1:] if head else args
        where, bad = culprit(own, f"{fn}: args")
        if bad is own:
            where, bad = culprit(kwargs, f"{fn}: kwargs")
        if bad is kwargs and head:
            where, bad = culprit(args[0], f"{fn}: the function")
        raise unpicklable(bad, where, exc) from None


_BYTES = (bytes, bytearray)
# a result tuple or list up to this long has its items looked at for bytes over the limit: a (meta, data) pair,
# a map chunk's results at chunksize 8 or less (at 64 the look would cost 3 us a chunk, every chunk)
_SCANNED = 8


def over(value: Any, limit: int) -> bool:
    """Whether ``value`` is a bytes or bytearray over ``limit``: one that leaves the pickle as an array of bytes."""
    return type(value) in _BYTES and len(value) > limit


def big_bytes(value: Any, limit: int) -> bool:
    """Whether ``value`` is, or (a tuple or list of up to :data:`_SCANNED`) holds, a bytes or bytearray over
    ``limit``: what :func:`dumps` with ``limit`` leaves out of the pickle."""
    if type(value) in (tuple, list):
        return len(value) <= _SCANNED and any(over(v, limit) for v in value)
    return over(value, limit)


def _over_once(values: Iterable[Any], limit: int) -> list[bytes | bytearray]:
    """The bytes and bytearrays over ``limit`` among ``values``, each object once (the same one twice is one
    object on the other side: :func:`dumps_referencing`)."""
    found: dict[int, bytes | bytearray] = {}
    for v in values:
        if type(v) in _BYTES and len(v) > limit:
            found.setdefault(id(v), v)
    return list(found.values())


def _rebuilding(cls: type[bytes | bytearray]) -> bytes:
    """Pickle's opcodes that push ``cls(buffer)`` of the next out-of-band buffer and memoize it (as pickle
    writes a ``cls(PickleBuffer)`` reduction), then drop it from the stack: it stays in the memo only."""
    names = b"".join(pickle.SHORT_BINUNICODE + bytes([len(n)]) + n for n in (b"builtins", cls.__name__.encode()))
    made = names + pickle.STACK_GLOBAL + pickle.NEXT_BUFFER + pickle.TUPLE1 + pickle.REDUCE
    return made + pickle.MEMOIZE + pickle.POP


_PROTO = pickle.PROTO + bytes([pickle.HIGHEST_PROTOCOL])
_REBUILT = {bytes: _rebuilding(bytes), bytearray: _rebuilding(bytearray)}


_loading = threading.local()  # the arrays of the value being unpickled on this thread (loads_referencing)


def _plain_ref(i: int) -> Any:
    """Unpickling: the plain array sent beside the bytes at ``i`` (plain again: it may arrive as a shared view)."""
    arr = _ref(i)
    np = sys.modules["numpy"]
    return arr if type(arr) is np.ndarray else arr.view(np.ndarray)


def _ref(i: int) -> Any:
    """Unpickling: the array sent beside the bytes at ``i`` (a shared one stays shared)."""
    refs = getattr(_loading, "refs", None)
    if refs is None or type(i) is not int or not 0 <= i < len(refs):
        raise pickle.UnpicklingError(f"array reference {i!r} is not one of the {len(refs or ())} sent with the value")
    return refs[i]


_dumping = threading.local()  # (limit, arrays) of the value being pickled on this thread (dumps_referencing)
_TABLE: dict[type, Any] = {}  # the pickler's dispatch table: numpy's array types added to copyreg's


def _reduce_plain(arr: Any) -> Any:
    limit, refs = _dumping.state
    if arr.dtype.kind in "biufc" and arr.nbytes > limit and arr.flags.c_contiguous:
        refs.append(arr)
        return _plain_ref, (len(refs) - 1,)
    return arr.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _reduce_shared(arr: Any) -> Any:
    if arr.shared_handle is None:  # a view of a shared one: a plain array
        return _reduce_plain(arr.view(sys.modules["numpy"].ndarray))
    refs = _dumping.state[1]
    refs.append(arr)
    return _ref, (len(refs) - 1,)


def _table() -> dict[type, Any]:
    from actors import shm

    global _TABLE
    shared = shm._SharedNDArray
    if not _TABLE or (shared is not None and shared not in _TABLE):  # built once (again when shared arrays appear)
        table = {**copyreg.dispatch_table, sys.modules["numpy"].ndarray: _reduce_plain}
        if shared is not None:
            table[shared] = _reduce_shared
        _TABLE = table
    return _TABLE


def dumps_referencing(value: Any, limit: int,
                      leaving: Sequence[bytes | bytearray] = ()) -> tuple[bytes, list[Any]]:
    """``(blob, arrays)``: ``value`` pickled with its arrays left out, by index: the plain numeric C-contiguous
    ones over ``limit`` bytes, and whole shared ones.

    Found through the pickler's ``dispatch_table``, looked up by exact type in
    C: only arrays cost a call into Python, so a result of 64 ints pickles
    almost as fast as with ``pickle.dumps``.

    ``leaving``: bytes and bytearrays of ``value`` (each object once) that leave
    too, as the first arrays, of bytes (no copy here).  The pickle opens by
    rebuilding each from its array, pickle's out-of-band buffer
    (:func:`loads_referencing` hands the arrays to pickle as its ``buffers``),
    and memoizing it; the pickler's memo is told so beforehand, and every
    reference to one of them in ``value`` is written as that memo entry: one
    object on the other side, wherever it sits.
    """
    refs: list[Any] = []
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = _table()
    if leaving:
        np = sys.modules["numpy"]
        buf.write(_PROTO)
        for data in leaving:
            refs.append(np.frombuffer(data, dtype=np.uint8))  # (the export copies it once, as an array)
            buf.write(_REBUILT[type(data)])
        p.memo = {id(data): (i, data) for i, data in enumerate(leaving)}  # (pickle numbers MEMOIZE from 0)
    _dumping.state = (limit, refs)
    try:
        p.dump(value)
    finally:
        _dumping.state = None
    return buf.getvalue(), refs


def spill(payload: Any, most: int) -> Any:
    """A pickled value as it crosses (``bytes``, or ``[blob, array, ...]``), its pickle moved beside it as an
    array of bytes when that is over ``most`` bytes: ``[b"", pickle, array, ...]`` (see the module's doc)."""
    blob = payload if type(payload) is bytes else payload[0]
    if len(blob) <= most:
        return payload
    import numpy as np

    return [b"", np.frombuffer(blob, dtype=np.uint8), *([] if type(payload) is bytes else payload[1:])]


def loads_referencing(blob: bytes, refs: list[Any]) -> Any:
    """The inverse of :func:`dumps_referencing`: ``refs`` are the arrays, mapped again on this side (the first
    ones, of bytes that left, are also pickle's out-of-band buffers); an empty ``blob`` says the pickle itself is
    the first of them (:func:`spill`)."""
    if not blob:
        if not refs:
            raise pickle.UnpicklingError("an empty pickle with no array of bytes beside it")
        blob, refs = refs[0], refs[1:]
    _loading.refs = refs
    try:
        return pickle.loads(blob, buffers=refs)
    finally:
        _loading.refs = None


def pickled_value(payload: Any) -> tuple[bytes, list[Any]] | None:
    """``(blob, arrays)`` of a pickled value as it crosses (bytes, or ``[blob, array, ...]``); None if not one."""
    if type(payload) is bytes:
        return payload, []
    if type(payload) is list and payload and type(payload[0]) is bytes:
        return payload[0], payload[1:]
    return None


def unpicklable(value: Any, path: str, exc: Exception) -> Exception:
    """The error for a value that does not pickle, as ``ProcessPoolExecutor`` raises it, saying where it failed.

    Pickle's own error (``TypeError`` for a lock, ``pickle.PicklingError`` for a lambda, ``AttributeError``
    for a local function, ``RecursionError`` for a value nested too deep; those of ``_PICKLES_OWN``) is
    raised again, of its class, its text naming the failing part's type and where it sits in ``value``.
    Any other exception came from the value's own pickling (a ``__reduce__`` of the user's that raised an
    exception class of its own): ``exc`` itself, as the pool raises it, its type and text untouched, with
    where it failed as a note (``add_note``: a traceback prints it under the message).
    """
    where, bad = culprit(value, path)
    what = f"{where} cannot cross to another process: a {type(bad).__module__}.{type(bad).__qualname__}"
    cls = type(exc)
    if cls not in _PICKLES_OWN:
        note = f"{what} raised this when it was pickled"
        if note not in getattr(exc, "__notes__", ()):  # the same instance raised again (a module-level one)
            exc.add_note(note)
        return exc
    if cls is RecursionError:  # the part pickles: it is nested deeper than pickle recurses
        return cls(f"{what} is nested too deep to pickle ({exc}); {_verb(path)} a flatter value")
    return cls(f"{what} does not pickle ({exc}); {_verb(path)} something picklable (a module-level class or "
               "function)")


def _verb(path: str) -> str:
    """What the one who made the value does about it: a job's result is returned, anything else passed."""
    return "return" if path.startswith("the job's result") else "pass"


_PICKLES_OWN = (TypeError, AttributeError, RecursionError, ValueError, pickle.PicklingError)  # raised by pickle itself
PICKLE_ERRORS = (Exception,)  # what unpicklable raises: pickle's own errors, or whatever a value's own pickling raised


def culprit(value: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """``(path, part)``: the innermost part of ``value`` that does not pickle (``value`` itself if none inside does)."""
    if depth >= _DEPTH:
        return path, value
    for sub_path, item in parts(value, path):
        try:
            pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001
            return culprit(item, sub_path, depth + 1)
    return path, value


def parts(value: Any, path: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        return ((f"{path}[{k!r}]", v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ((f"{path}[{i}]", v) for i, v in enumerate(value))
    if isinstance(value, (set, frozenset)):
        return ((f"an item of {path}", v) for v in value)
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, type):
        return ((f"{path}.{k}", v) for k, v in attrs.items())
    return ()

"""Exact values in MessagePack: the Python types it has no type of its own for, as one ext type (4).

MessagePack carries ``None``, bools, 64-bit ints, floats, text, bytes, arrays and
maps.  Packed as they are, a tuple or a set comes back a list, a ``datetime`` or
a ``Decimal`` a string, and a big int or a ``Path`` cannot be sent.  These
values travel instead as ``ext 4`` whose payload is MessagePack again, ``[tag,
data]`` (the tags below), so a :class:`~actors.client.Client` job gets back
what it sent, from any host: tuples stay tuples, and so do sets, frozensets,
ints of any size, complex numbers, ``datetime``/``date``/``time``/``timedelta``
(an aware one keeps its ``zoneinfo`` zone; another ``tzinfo`` comes back as the
fixed offset it had), ``Decimal``, ``UUID``, ``Path`` and ``bytearray``.  Each
is data only: nothing is imported or called by name to rebuild it, so ext 4 is
read from any peer, remote ones included.  Nested deeper than 64 levels, the
rest packs as MessagePack would (lists); a frame nesting ext 4 deeper than
the reader's recursion allows is refused as malformed.

:func:`to_wire` turns a value into what the encoder packs (:class:`Exact` for
each of those types, the leaves passed to ``leaf``: arrays become handles
there).  Reading, every process but the daemon rebuilds the value
(:func:`rebuild`, called by the decoder's ext hook); the daemon checks that it
rebuilds and keeps the :class:`Exact` (it never holds a user's values as
Python objects, and must send them on as they came: a tuple it rebuilt would
leave as a list).

What MessagePack cannot carry at all (a dataclass, a named tuple, an ``Enum``
member, a numpy scalar, a ``Fraction``, your own classes) a *local* client and
its workers pickle, one value at a time, as ``ext 5`` (:class:`Pickled`): it is
the same user on both ends, as under ``ProcessPoolExecutor``.  The daemon keeps
those bytes as they came and never unpickles them, and refuses them in any
frame that came over tcp (a worker of another host may receive them, as it
receives a local ``Executor``'s pickled jobs, but never sends any).  A
reader unpickles them when the value is asked for (:func:`unpickled`: a
worker once the job's import path is in place, a client in ``result()``), so
a listing of jobs never runs a user's code, and a value that cannot be rebuilt
fails only the call that asked for it.
"""

from __future__ import annotations

import datetime  # (msgspec imports these three anyway: no cost here)
import decimal
import pathlib
import pickle
import sys
import uuid
from typing import Any, Callable

TUPLE, SET, FROZENSET, BIGINT, COMPLEX, DATETIME, DATE, TIME, TIMEDELTA, DECIMAL, UUID, PATH, PURE_PATH, \
    BYTEARRAY = range(14)
_INT64, _UINT64 = -2**63, 2**64  # the ints MessagePack carries itself
_DEPTH = 64  # nesting a value may have here (the decoder refuses deeper ones too)
_PLAIN = frozenset({type(None), bool, float, str, bytes})
# the types msgspec cannot pack, so its hook meets them wherever they are (tuples, datetimes... it packs its way)
HOOKED = frozenset({complex, pathlib.PosixPath, pathlib.PurePosixPath})


class Exact:
    """A value of one of the module's types as it crosses: its tag and its data (MessagePack values, with
    :class:`Exact` inside for nested ones).  Equal by identity: one that was a dict key stays a distinct key.

    Hashed by identity too, as equality says, once the value it stands for has been found hashable: one that is
    no key where it is rebuilt (a tuple holding a list, a set) is refused as a dict key or a set item where it is
    read (the daemon), not in the worker that rebuilds it.  Not the value's own hash: a peer could send a set or
    a map of many values whose hashes collide (big ints ``k * (2**61 - 1)``, or one tuple sent N times, which
    are N distinct keys here), and each insert would compare with all before it: seconds of the daemon's loop
    for a frame of 100 KB.  The finding is kept (``hashed``): a set nested in a set checks its items' hashes,
    so each level found every level below it hashable again, and a frame of 150 frozensets nested around 200,000
    tuples (2 MB) held the daemon's loop for 20 s (a remote client key could send it).
    """

    __slots__ = ("tag", "data", "hashed")

    def __init__(self, tag: int, data: Any) -> None:
        self.tag = tag
        self.data = data
        self.hashed = False  # the value was found hashable (see __hash__)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        if not self.hashed:
            hash(rebuild(self.tag, self.data))  # TypeError (unhashable) for what may not be a key
            self.hashed = True
        return id(self) >> 4

    def __repr__(self) -> str:
        return f"Exact({self.tag}, {self.data!r})"


class Pickled:
    """A value only pickle carries, pickled by a local client or worker, as it crosses (ext 5): opaque bytes to
    every process until :func:`unpickled` is asked for its value.

    ``refs``: the big numpy arrays the value holds, left out of the pickle by index
    (:func:`actors._exact.dumps_referencing`), so they keep the shared-memory path: array handles on the
    wire (walked by :func:`actors.shm.walk` as any handle is), arrays once mapped.  Equal when the bytes are
    and neither holds arrays (a dict key)."""

    __slots__ = ("blob", "refs")
    made = 0  # how many this process has read from the wire: none, and nothing needs looking through

    def __init__(self, blob: bytes, refs: list[Any] | None = None) -> None:
        self.blob = blob
        self.refs = refs or []

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return type(other) is Pickled and not self.refs and not other.refs and other.blob == self.blob

    def __hash__(self) -> int:
        return hash(self.blob)

    def __repr__(self) -> str:
        return f"<pickled value, {len(self.blob)} bytes{f', {len(self.refs)} arrays' if self.refs else ''}>"


def pickled(value: Any, limit: int | None = None) -> Pickled:
    """``value`` pickled to cross (pickle's own error, raised as it is, when it does not pickle); with ``limit``,
    its numeric arrays over ``limit`` bytes and its shared ones left out as :attr:`Pickled.refs`."""
    if limit is not None and "numpy" in sys.modules:
        from actors._exact import dumps_referencing

        return Pickled(*dumps_referencing(value, limit))
    return Pickled(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _load(value: Pickled) -> Any:
    """What ``value`` pickled, its arrays put back (they must have been mapped: a handle left means the array's
    segment was gone)."""
    if not value.refs:
        return pickle.loads(value.blob)
    from actors._exact import loads_referencing
    from actors.messages import ArrayHandle

    for ref in value.refs:
        if type(ref) is ArrayHandle:
            raise LookupError(f"its array {ref.name} is no longer in shared memory (results there are handed over "
                              "once)")
    return loads_referencing(value.blob, value.refs)


def unpickled(value: Any, load: Callable[[Pickled], Any] = _load, depth: int = 0) -> Any:
    """``value`` with every :class:`Pickled` in it (in lists, tuples, dicts, their keys too, and sets) replaced by
    ``load(it)``; ``value`` itself when this process never read one.  Raises what ``load`` raised (for the
    default: a class that is gone, a module that does not import here)."""
    if not Pickled.made:
        return value
    cls = type(value)
    if cls is Pickled:
        return load(value)
    if depth > _DEPTH or cls in _PLAIN or cls is int:
        return value
    depth += 1
    if cls is list:
        return value if len(value) > MANY and scalars(value) else [unpickled(v, load, depth) for v in value]
    if cls is tuple:
        return tuple(unpickled(v, load, depth) for v in value)
    if cls is dict:
        return {unpickled(k, load, depth): unpickled(v, load, depth) for k, v in value.items()}
    if cls is set or cls is frozenset:
        return cls(unpickled(v, load, depth) for v in value)
    return value


def _zone(t: datetime.datetime | datetime.time) -> str:
    key = getattr(t.tzinfo, "key", None)  # a zoneinfo.ZoneInfo
    return key if type(key) is str and type(t.tzinfo).__name__ == "ZoneInfo" else ""


def plain(value: Any) -> bool:
    """Whether :func:`to_wire` leaves ``value`` as it is: MessagePack carries it itself (an int within 64 bits)."""
    cls = type(value)
    return cls in _PLAIN or cls is int and _INT64 <= value < _UINT64


_NUMBERS = frozenset({bool, int, float})


def flat(items: Any) -> bool:
    """Whether every item of ``items`` (a list, a tuple, a dict's values) is :func:`plain`: nothing to walk.

    Decided from the set of the items' types and, for ints, their least and
    greatest (C loops: a list of a million numbers in ~20 ms, where calling
    :func:`plain` on each took ~150 ms and walking them ~250 ms)."""
    types = set(map(type, items))
    if int not in types:
        return types <= _PLAIN
    if types <= _NUMBERS and _INT64 <= min(items) and max(items) < _UINT64:  # (every int among them is in range)
        return True
    return types <= _PLAIN_INT and all(map(plain, items))


def scalars(items: Any) -> bool:
    """Whether every item is None, a bool, an int (of any size), a float, text or bytes: no array, exact or
    pickled value among them (a walk for those has nothing to visit; one C loop)."""
    return set(map(type, items)) <= _PLAIN_INT


_PLAIN_INT = _PLAIN | {int}
MANY = 16  # a list, tuple or dict of more items than this is looked at with flat() or scalars() first


def to_wire(value: Any, leaf: Callable[[Any], Any] | None = None, depth: int = 0) -> Any:
    """``value`` as the encoder packs it: the types above as :class:`Exact`, lists and dicts (keys too) walked,
    everything else passed to ``leaf`` (or left as it is).  Deeper than the limit, the rest is left as it is."""
    cls = type(value)
    if cls in _PLAIN:
        return value
    if cls is int:
        if _INT64 <= value < _UINT64:
            return value
        return Exact(BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True))
    if depth > _DEPTH:
        return value
    depth += 1
    if cls is list:
        return value if len(value) > MANY and flat(value) else [to_wire(v, leaf, depth) for v in value]
    if cls is dict:
        if len(value) > MANY and flat(value) and flat(value.values()):
            return value
        return {to_wire(k, leaf, depth): to_wire(v, leaf, depth) for k, v in value.items()}
    if cls is tuple:
        return Exact(TUPLE, list(value) if len(value) > MANY and flat(value) else
                     [to_wire(v, leaf, depth) for v in value])
    if cls is set or cls is frozenset:
        return Exact(SET if cls is set else FROZENSET, [to_wire(v, leaf, depth) for v in value])
    if cls is bytearray:
        return Exact(BYTEARRAY, bytes(value))
    if cls is datetime.datetime:
        return Exact(DATETIME, [value.isoformat(), _zone(value)])
    if cls is datetime.date:
        return Exact(DATE, value.isoformat())
    if cls is datetime.time:
        return Exact(TIME, [value.isoformat(), _zone(value)])
    if cls is datetime.timedelta:
        return Exact(TIMEDELTA, [value.days, value.seconds, value.microseconds])
    if cls is decimal.Decimal:
        return Exact(DECIMAL, str(value))
    if cls is uuid.UUID:
        return Exact(UUID, value.bytes)
    if cls is complex:
        return Exact(COMPLEX, [value.real, value.imag])
    if cls is pathlib.PosixPath:
        return Exact(PATH, str(value))
    if cls is pathlib.PurePosixPath:
        return Exact(PURE_PATH, str(value))
    return leaf(value) if leaf is not None else value


def rebuild(tag: int, data: Any) -> Any:
    """The value ``[tag, data]`` stands for; ValueError or TypeError saying why when it is not one."""
    if tag == TUPLE:
        return tuple(_items(data))
    if tag == SET:
        return set(_items(data))
    if tag == FROZENSET:
        return frozenset(_items(data))
    if tag == BYTEARRAY:
        return bytearray(_of(data, bytes))
    if tag == BIGINT:
        return int.from_bytes(_of(data, bytes), "little", signed=True)
    if tag == DATETIME:
        text, zone = _pair(data, str, str)
        moment = datetime.datetime.fromisoformat(text)
        if not zone:
            return moment
        zoned = moment.replace(tzinfo=_zone_named(zone))
        # the second of a wall time that happens twice (clocks going back): the offset it was sent with says so
        return zoned.replace(fold=1) if moment.tzinfo is not None and zoned.utcoffset() != moment.utcoffset() else zoned
    if tag == DATE:
        return datetime.date.fromisoformat(_of(data, str))
    if tag == TIME:
        text, zone = _pair(data, str, str)
        clock = datetime.time.fromisoformat(text)
        return clock.replace(tzinfo=_zone_named(zone)) if zone else clock
    if tag == TIMEDELTA:
        if type(data) is not list or len(data) != 3 or any(type(v) is not int for v in data):
            raise TypeError("a timedelta is [days, seconds, microseconds], all ints")
        return datetime.timedelta(days=data[0], seconds=data[1], microseconds=data[2])
    if tag == DECIMAL:
        try:
            return decimal.Decimal(_of(data, str))
        except decimal.InvalidOperation:
            raise ValueError(f"{data[:40]!r} is not a Decimal") from None
    if tag == UUID:
        return uuid.UUID(bytes=_of(data, bytes))
    if tag == COMPLEX:
        real, imag = _pair(data, float, float)
        return complex(real, imag)
    if tag == PATH:
        return pathlib.Path(_of(data, str))
    if tag == PURE_PATH:
        return pathlib.PurePosixPath(_of(data, str))
    raise ValueError(f"unknown exact-value tag {tag!r}")


def _items(data: Any) -> list[Any]:
    if type(data) is not list:
        raise TypeError(f"a tuple or set is a list of its items, not a {type(data).__name__}")
    return data


def _of(data: Any, cls: type) -> Any:
    if type(data) is not cls:
        raise TypeError(f"expected {cls.__name__}, got {type(data).__name__}")
    return data


def _pair(data: Any, first: type, second: type) -> tuple[Any, Any]:
    if type(data) is not list or len(data) != 2 or type(data[0]) is not first or type(data[1]) is not second:
        raise TypeError(f"expected [{first.__name__}, {second.__name__}]")
    return data[0], data[1]


def _zone_named(key: str) -> Any:
    import zoneinfo

    if len(key) > 64:
        raise ValueError("a time zone's name is at most 64 characters")
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {key[:64]!r}") from exc

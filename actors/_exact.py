"""A local client's exact values: pickled between it and its workers, with errors that say what and where.

Used only between a local client and a local worker of the same user (the
daemon forwards the bytes and never unpickles them; nothing from tcp is ever
unpickled).  A value that cannot be pickled fails its own job at once, with
the type of the part that failed and where it sits in the value.

Numpy arrays keep their shared-memory path inside pickled values: a plain
numeric C-contiguous array larger than ``jobs.inline_array_limit``, and a
whole shared array (``client.empty()``, ``task.empty()``), leave the pickle
as a *persistent id*, an index into a list that travels beside the bytes
(``[blob, array, ...]``; :mod:`actors._arrays` turns those arrays into
handles and back).  The index is ``i`` for a plain array (it comes back a
plain ``numpy.ndarray``) and ``-1 - i`` for a shared one (it comes back
shared).  Everything around the arrays keeps its exact type; a value with no
such array is a bare ``bytes`` as before.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any, Callable, Iterable

_DEPTH = 32  # how deep the search for the failing part goes


def dumps(value: Any, path: str, keep: Callable[[Any], int] | None = None) -> bytes | list[Any]:
    """``pickle.dumps(value)``, or raise :func:`unpicklable`'s TypeError (``path`` names the value: ``"result"``).

    With ``keep``, the arrays it picks are left out: ``[blob, array, ...]`` when there are any.
    """
    try:
        if keep is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        blob, refs = dumps_referencing(value, keep)
        return [blob, *refs] if refs else blob
    except Exception as exc:  # noqa: BLE001 - PicklingError, TypeError, AttributeError (a local class)
        raise unpicklable(value, path, exc) from None


def dumps_arguments(fn: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                    keep: Callable[[Any], int] | None = None) -> list[Any]:
    """A job's ``(args, kwargs)`` pickled, as it crosses: ``[blob]``, or ``[blob, array, ...]`` with ``keep``.

    TypeError naming the argument that does not pickle.
    """
    try:
        if keep is None:
            return [pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)]
        blob, refs = dumps_referencing((args, kwargs), keep)
        return [blob, *refs]
    except Exception as exc:  # noqa: BLE001
        where, bad = culprit(args, f"{fn}: args")
        if bad is args:
            where, bad = culprit(kwargs, f"{fn}: kwargs")
        raise unpicklable(bad, where, exc) from None


def external(limit: int) -> Callable[[Any], int]:
    """Which objects leave the pickle by reference: 1 a big plain numeric array, 2 a whole shared array, 0 none."""
    def keep(obj: Any) -> int:
        t = type(obj)
        if t.__name__ == "SharedNDArray":
            return 2 if obj.shared_handle is not None else 0
        if t.__module__ != "numpy" or t.__name__ != "ndarray":
            return 0
        return 1 if obj.dtype.kind in "biufc" and obj.nbytes > limit and obj.flags.c_contiguous else 0

    return keep


class _Referencing(pickle.Pickler):
    """A pickler that leaves what ``keep`` picks out of the stream (see the module's docstring)."""

    def __init__(self, file: io.BytesIO, keep: Callable[[Any], int]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.keep = keep
        self.refs: list[Any] = []

    def persistent_id(self, obj: Any) -> int | None:
        kind = self.keep(obj)
        if not kind:
            return None
        self.refs.append(obj)
        return len(self.refs) - 1 if kind == 1 else -len(self.refs)


def dumps_referencing(value: Any, keep: Callable[[Any], int]) -> tuple[bytes, list[Any]]:
    """``(blob, arrays)``: ``value`` pickled with the arrays ``keep`` picks left out, by index."""
    buf = io.BytesIO()
    p = _Referencing(buf, keep)
    p.dump(value)
    return buf.getvalue(), p.refs


class _Resolving(pickle.Unpickler):
    def __init__(self, blob: bytes, refs: list[Any]) -> None:
        super().__init__(io.BytesIO(blob))
        self.refs = refs

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not int or not -len(self.refs) <= pid < len(self.refs):
            raise pickle.UnpicklingError(f"array reference {pid!r} is not one of the {len(self.refs)} sent")
        if pid >= 0:  # a plain array: plain again (it may arrive as a view of a shared segment)
            arr = self.refs[pid]
            np = sys.modules["numpy"]
            return arr if type(arr) is np.ndarray else arr.view(np.ndarray)
        return self.refs[-1 - pid]


def loads_referencing(blob: bytes, refs: list[Any]) -> Any:
    """The inverse of :func:`dumps_referencing`: ``refs`` are the arrays, mapped again on this side."""
    return _Resolving(blob, refs).load()


def pickled_value(payload: Any) -> tuple[bytes, list[Any]] | None:
    """``(blob, arrays)`` of a pickled value as it crosses (bytes, or ``[blob, array, ...]``); None if not one."""
    if type(payload) is bytes:
        return payload, []
    if type(payload) is list and payload and type(payload[0]) is bytes:
        return payload[0], payload[1:]
    return None


def unpicklable(value: Any, path: str, exc: BaseException) -> TypeError:
    """The error for a value that does not pickle: the failing part's type and where it sits in ``value``."""
    where, bad = culprit(value, path)
    return TypeError(f"{where} cannot cross to another process: a {type(bad).__module__}.{type(bad).__qualname__} "
                     f"does not pickle ({exc}); pass something picklable (a module-level class or function)")


def culprit(value: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """``(path, part)``: the innermost part of ``value`` that does not pickle (``value`` itself if none inside does)."""
    if depth >= _DEPTH:
        return path, value
    for sub_path, item in _parts(value, path):
        try:
            pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001
            return culprit(item, sub_path, depth + 1)
    return path, value


def _parts(value: Any, path: str) -> Iterable[tuple[str, Any]]:
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

"""A local client's exact values: pickled between it and its workers, with errors that say what and where.

Used only between a local client and a local worker of the same user (the
daemon forwards the bytes and never unpickles them; nothing from tcp is ever
unpickled).  A value that cannot be pickled fails its own job at once, with
the type of the part that failed and where it sits in the value.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable

_DEPTH = 32  # how deep the search for the failing part goes


def dumps(value: Any, path: str) -> bytes:
    """``pickle.dumps(value)``, or raise :func:`unpicklable`'s TypeError (``path`` names the value: ``"result"``)."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - PicklingError, TypeError, AttributeError (a local class)
        raise unpicklable(value, path, exc) from None


def dumps_arguments(fn: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A job's ``(args, kwargs)`` pickled, or TypeError naming the argument that does not pickle."""
    try:
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001
        where, bad = culprit(args, f"{fn}: args")
        if bad is args:
            where, bad = culprit(kwargs, f"{fn}: kwargs")
        raise unpicklable(bad, where, exc) from None


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

"""JSON of any value a job or a client holds: the one rendering every JSON the CLI prints and the panel sends.

JSON carries less than a job's values do (no tuple, set, ``datetime``, NaN...);
:func:`json_text` renders the rest instead of refusing it, and never writes
``NaN`` or ``Infinity``, which ``json`` allows and a browser's ``JSON.parse``
refuses (a page reading it would stop at that message).
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import json
import math
import uuid
from pathlib import PurePath
from typing import Any


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON, whatever it holds: the one rendering of every JSON the CLI prints.

    JSON carries str, int, finite float, bool, None, lists and dicts with
    such keys (int, float, bool and None keys become strings, as ``json``
    does).  The rest is rendered, never refused: an array (``tolist``) as a
    list, a tuple or a set as a list, a struct or a dataclass as an object, an
    ``Enum`` member as its value, a ``datetime``,
    ``date`` or ``time`` in ISO 8601, a ``Decimal``, ``UUID`` or path as its
    text; any other value, or key, as its Python ``repr`` string (``{b"k": 1}``
    -> ``{"b'k'": 1}``, a bytes value ``"b'...'"``, a ``(1, 2)`` key
    ``"(1, 2)"``, NaN ``"nan"``).
    """
    return json.dumps(_plain(value), indent=indent, allow_nan=False)


def _plain(value: Any) -> Any:
    """``value`` made of what JSON carries (see :func:`json_text`)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return _plain_dict(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):  # (a datetime is a date)
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID, PurePath)):
        return str(value)
    if hasattr(value, "__struct_fields__"):  # a msgspec Struct
        return {f: _plain(getattr(value, f)) for f in value.__struct_fields__}
    fields = getattr(type(value), "__dataclass_fields__", None)
    if isinstance(fields, dict):  # a dataclass (a local job's value comes back of its own class)
        return {name: _plain(getattr(value, name, None)) for name in fields}
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if hasattr(value, "tolist") and not isinstance(value, memoryview):  # numpy arrays and scalars
        return _plain(value.tolist())
    return repr(value)


def _plain_dict(value: dict[Any, Any]) -> dict[Any, Any]:
    """A dict's items under the keys JSON gives them; a key whose text another one has too (``1`` and ``"1"``,
    ``None`` and ``"null"``) told apart by its type (``"1 (int)"``): JSON keeps the last of two equal keys, so
    one value was lost to every reader."""
    keys = [_plain_key(k) for k in value]
    values = [_plain(v) for v in value.values()]
    texts = [k if type(k) is str else json.dumps(k) for k in keys]
    if len(set(texts)) == len(texts):
        return dict(zip(keys, values))
    twice = {t for t, n in collections.Counter(texts).items() if n > 1}
    return {(f"{t} ({type(k).__name__})" if t in twice and type(k) is not str else t): v
            for t, k, v in zip(texts, value, values)}


def _plain_key(key: Any) -> Any:
    if key is None or isinstance(key, (str, bool, int)) or (isinstance(key, float) and math.isfinite(key)):
        return key
    return repr(key)

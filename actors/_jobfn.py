"""Naming job functions: ``"package.module:function"`` import paths and the allow-list.

A job crosses the wire as the import path of a module-level function, never as
code.  The daemon checks the path against its allow-list (``jobs.allow``, glob
patterns) at submit; the worker imports and calls it.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import re
from typing import Any, Callable, Sequence

from actors._errors import JobRefused

_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Never runnable, whatever the allow-list says: they would hand a client a shell.
ALWAYS_DENIED = ("builtins", "os", "posix", "subprocess", "shutil", "sys", "importlib", "pickle", "marshal", "ctypes", "code", "runpy", "pty")


def path_of(fn: Callable[..., Any] | str) -> str:
    """The import path of a module-level function, or raise JobRefused saying why not."""
    if isinstance(fn, str):
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qualname:
        raise JobRefused(f"{fn!r} is not a function; pass a module-level function or its path 'module:function'")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise JobRefused(
            f"{qualname} is a lambda or a closure, which another process cannot import; "
            "define it at module level in an importable module and pass that function (or 'module:function')"
        )
    if module == "__main__":
        raise JobRefused(
            f"{qualname} is defined in __main__, which workers cannot import; "
            "move it into a module and pass 'module:function'"
        )
    return f"{module}:{qualname}"


def check_allowed(path: str, allow: Sequence[str]) -> None:
    """Raise JobRefused unless ``path`` is well-formed, allowed and its module exists."""
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise JobRefused(f"job function {path!r} is not an import path of the form 'package.module:function'")
    module = path.split(":", 1)[0]
    top = module.split(".", 1)[0]
    if top in ALWAYS_DENIED:
        raise JobRefused(f"job function {path!r} is refused: module {top!r} is never allowed to run as a job")
    if not any(fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(module, pat) for pat in allow):
        raise JobRefused(
            f"job function {path!r} is not in the daemon's allow-list ({', '.join(allow) or 'empty'}); "
            "add a pattern to [jobs] allow in the config"
        )
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise JobRefused(f"job function {path!r}: module {module!r} cannot be found on the daemon's path")


def resolve(path: str) -> Callable[..., Any]:
    """Import ``module`` and return the attribute named after the colon (``script:FILE:fn``: a script's function)."""
    if path.startswith("script:"):
        from controller._tasks import resolve_script_fn

        return resolve_script_fn(path)
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"job function {path!r}: module {module_name!r} cannot be imported: {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"job function {path!r}: {module_name!r} has no attribute {qualname!r}") from None
    if not callable(obj):
        raise LookupError(f"job function {path!r} is not callable")
    return obj  # type: ignore[no-any-return]

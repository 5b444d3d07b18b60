"""Naming job functions: ``"package.module:function"`` import paths and the allow-list.

A job crosses the wire as the import path of a module-level function, never as
code.  The rules, checked the same way at submit (by the daemon) and again in
the worker before the call:

* ``module:function`` where ``function`` is one identifier (no attribute walk:
  ``mod:Class.method`` or ``mod:os.system`` are refused);
* no part of the module path and not the function starts with ``_`` (private
  and internal code never runs as a job named by a peer);
* the object is a plain function or builtin whose own ``__module__`` is the
  named module (a name the module merely imported, such as ``subprocess.run``
  imported into ``examples.jobs``, is refused);
* modules in :data:`ALWAYS_DENIED` never run, whatever the allow-list says.

Remote clients are also bound by the allow-list (``jobs.allow``): each
pattern is ``module_glob[:function_glob]``, module and function matched
separately, and a ``*`` never crosses a ``.``.  A local client is the daemon's
own user and is trusted as that user: the allow-list does not apply to it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import types
from typing import Any, Callable, Sequence

from actors._errors import JobRefused

_IDENT = r"[A-Za-z][A-Za-z0-9_]*"
_PATH_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}$")
_MAX_PATH = 256
# Never runnable, whatever the allow-list says: they would hand a client a shell.
ALWAYS_DENIED = frozenset((
    "builtins", "os", "posix", "subprocess", "shutil", "sys", "importlib", "pickle", "marshal", "ctypes", "code",
    "codeop", "runpy", "pty", "socket", "multiprocessing", "concurrent", "asyncio", "signal", "tempfile", "io",
    "pathlib", "glob", "zipfile", "tarfile", "sqlite3", "webbrowser", "http", "urllib", "ftplib", "smtplib",
    "telnetlib", "pdb", "bdb", "inspect", "gc", "threading", "atexit", "resource", "fcntl", "mmap",
))
_FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType)
# Builtins a job may name (``builtins:pow``), as ``ProcessPoolExecutor`` runs them: pure functions of their
# arguments.  The rest of ``builtins`` (eval, exec, open, __import__, ...) stays denied with the module.
PURE_BUILTINS = frozenset((
    "abs", "all", "any", "ascii", "bin", "chr", "divmod", "format", "hash", "hex", "len", "max", "min", "oct",
    "ord", "pow", "print", "repr", "round", "sorted", "sum",
))
# Builtin classes whose call only builds a value (``ex.map(str, ...)``): a local Executor sends them pickled,
# as it sends any class (a class is no job function by path); the rest of builtins' classes stay denied.
PURE_BUILTIN_TYPES = frozenset((
    "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "range", "set", "slice",
    "str", "tuple",
))


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
            "move it into a module and pass 'module:function' (a client on the daemon's host takes it as it is: "
            "Client.submit, or Client.spec to build a spec for submit_many)"
        )
    return f"{module}:{qualname}"


def check_name(path: Any) -> tuple[str, str]:
    """``(module, function)`` of a well-formed job path, or raise JobRefused saying what is wrong."""
    if not isinstance(path, str) or len(path) > _MAX_PATH or not _PATH_RE.match(path):
        shown = path[:80] + "..." if isinstance(path, str) and len(path) > 80 else path
        raise JobRefused(
            f"job function {shown!r} is not a job path: give 'package.module:function', one identifier after "
            "the colon (no attribute walk), no part starting with '_'"
        )
    module, _, function = path.partition(":")
    if module == "builtins" and function in PURE_BUILTINS:
        return module, function
    if module.split(".", 1)[0] in ALWAYS_DENIED:
        raise JobRefused(f"job function {path!r} is refused: module {module.split('.', 1)[0]!r} never runs as a job")
    return module, function


def _glob_re(pattern: str) -> str:
    """A glob where ``*`` and ``?`` never cross a ``.``, as a regular expression."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(r"[^.]*")
        elif ch == "?":
            out.append(r"[^.]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def compile_allow(allow: Sequence[str]) -> re.Pattern[str]:
    """One regular expression matching every ``module:function`` the patterns allow.

    ``examples.*`` allows every public function of every direct submodule of
    ``examples``; ``examples.jobs:add`` exactly one function; ``pkg.*:run_*``
    the ``run_`` functions of ``pkg``'s submodules.
    """
    alts = []
    for pat in allow:
        module, sep, function = pat.partition(":")
        alts.append(f"{_glob_re(module)}:{_glob_re(function) if sep else '[^.]*'}")
    return re.compile("^(?:" + "|".join(alts) + ")$" if alts else "(?!)")


def check_allowed(path: Any, allow: Sequence[str] | re.Pattern[str]) -> None:
    """Raise JobRefused unless ``path`` is a well-formed job path that the allow-list admits (remote clients)."""
    check_name(path)
    pattern = allow if isinstance(allow, re.Pattern) else compile_allow(allow)
    if not pattern.match(path):
        shown = ", ".join(allow) if not isinstance(allow, re.Pattern) else "jobs.allow"
        raise JobRefused(
            f"job function {path!r} is not in the daemon's allow-list for remote clients ({shown or 'empty'}); "
            "the operator adds a pattern to [jobs] allow in the daemon's config"
        )


def resolve(path: str) -> Callable[..., Any]:
    """Import ``module`` and return its function named after the colon, checked by the rules above.

    Raises :class:`JobRefused` for a name that breaks the rules, ``LookupError``
    for a module or function that does not exist.
    """
    module_name, function = check_name(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"job function {path!r}: module {module_name!r} cannot be imported: {exc}") from exc
    obj = module.__dict__.get(function)
    if obj is None:
        raise LookupError(f"job function {path!r}: module {module_name!r} defines no function {function!r}")
    if not isinstance(obj, _FUNCTION_TYPES):
        kind = type(obj).__name__
        raise JobRefused(f"job function {path!r} is {'an' if kind[:1] in 'aeiou' else 'a'} {kind}, not a function")
    if getattr(obj, "__module__", None) != module_name:
        raise JobRefused(
            f"job function {path!r} is {getattr(obj, '__module__', '?')}.{function} imported into "
            f"{module_name!r}, not defined there; name the module that defines it"
        )
    return obj


@functools.lru_cache(maxsize=1024)
def takes_task(fn: Callable[..., Any]) -> bool:
    """Whether a job function receives the task handle as its first argument: the one calling convention.

    It does when its first parameter is named ``task`` or annotated ``Task``
    (``actors.Task``, or the string ``"Task"`` under ``from __future__ import
    annotations``); every other function is called with the job's arguments
    alone and reaches its handle through :func:`actors.current_task`.  The same
    rule holds for ``Client.submit``, ``Executor.submit`` and ``ensemble submit``.
    A builtin without a signature (``sorted``) takes none.  Decided once per
    function object (cached), in the worker.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a text signature
        return False
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return False
    first = params[0]
    if first.name == "task":
        return True
    ann = first.annotation
    if isinstance(ann, str):
        return ann.rpartition(".")[2] == "Task"
    return getattr(ann, "__name__", None) == "Task" and getattr(ann, "__module__", "").startswith("actors")


def resolve_internal(path: str) -> Callable[..., Any]:
    """The function of a job the controller submitted (``TaskSubmit``): internal, or a script's own.

    Only the supervisor hands a worker such a job, after checking the
    controller's token: ``script:FILE:name`` is a function the loaded script
    defines, ``package.module:name`` an internal job function.
    """
    kind, _, rest = path.partition(":")
    if "." not in kind and ":" in rest:  # KIND:...: resolved by the package that registered KIND
        from actors.extensions import internal_resolver

        resolver = internal_resolver(kind)
        if resolver is None:
            raise LookupError(f"internal job function {path!r}: no installed package resolves {kind!r} jobs")
        return resolver(path)
    module_name, _, function = path.partition(":")
    obj = getattr(importlib.import_module(module_name), function, None) if "." not in function else None
    if not isinstance(obj, _FUNCTION_TYPES):
        raise LookupError(f"internal job function {path!r} does not exist")
    return obj

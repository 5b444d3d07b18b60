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

import builtins
import functools
import importlib
import inspect
import re
import sys
import types
from typing import Any, Callable, Sequence

from actors._errors import JobRefused
from actors._task import Task

_IDENT = r"[A-Za-z][A-Za-z0-9_]*"
_PATH_RE = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")  # fullmatch: "$" also matches before a final newline
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
    if not isinstance(path, str) or len(path) > _MAX_PATH or not _PATH_RE.fullmatch(path):
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
    return re.compile("(?:" + "|".join(alts) + ")" if alts else "(?!)")  # (used with fullmatch)


def check_allowed(path: Any, allow: Sequence[str] | re.Pattern[str]) -> None:
    """Raise JobRefused unless ``path`` is a well-formed job path that the allow-list admits (remote clients)."""
    check_name(path)
    pattern = allow if isinstance(allow, re.Pattern) else compile_allow(allow)
    if not pattern.fullmatch(path):
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

    It does when its first parameter is annotated with ensemble's own
    :class:`~actors.Task` (``actors.Task``, re-exported as ``ensemble.Task``),
    also as a string under ``from __future__ import annotations``: the string
    is resolved as a dotted name (``"Task"``, ``"actors.Task"``) in the
    function's own module, so a class of the user's that is also called
    ``Task`` never matches.  A parameter's name decides nothing: ``def
    handle(task)`` gets its caller's first argument, as under
    ``ProcessPoolExecutor``.  Every other function is called with the job's
    arguments alone and reaches its handle through :func:`actors.current_task`.
    The same rule holds for ``Client.submit``, ``Executor.submit`` and
    ``ensemble submit``.  A builtin without a signature (``sorted``) takes none.
    Decided once per function object (cached), in the worker; never raises.
    """
    first = _first_parameter(fn)
    if first is None:
        return False
    ann = first.annotation
    if isinstance(ann, str):
        try:
            ann = _named(fn, ann)
        except Exception:  # noqa: BLE001 - an object whose attributes raise (a proxy): no handle
            return False
    return ann is Task


def _first_parameter(fn: Callable[..., Any]) -> inspect.Parameter | None:
    """The parameter a first positional argument binds to (``self`` of a bound method excluded), or None."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a text signature
        return None
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    return params[0]


def _function_of(fn: Any) -> Any:
    """The plain function behind a partial, a bound method or a decorator's ``functools.wraps``."""
    for _ in range(100):  # (a cycle of __wrapped__ must not hang the worker)
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif getattr(fn, "__wrapped__", None) is not None:
            fn = fn.__wrapped__
        else:
            break
    return fn


def _named(fn: Callable[..., Any], text: str) -> Any:
    """What a string annotation of ``fn`` names when it is a dotted name, looked up in ``fn``'s module (its
    ``__globals__``, then builtins); None for anything else (no code is evaluated)."""
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # "'Task'": a quoted one under the future import
        text = text[1:-1]
    parts = text.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    inner = _function_of(fn)
    scope = getattr(inner, "__globals__", None)
    if not isinstance(scope, dict):  # a callable object: its class's module
        module = sys.modules.get(str(getattr(inner, "__module__", None) or type(inner).__module__))
        scope = vars(module) if module is not None else {}
    missing = object()
    obj = scope.get(parts[0], missing)
    if obj is missing:
        obj = getattr(builtins, parts[0], None)
    for part in parts[1:]:
        obj = getattr(obj, part, None)
    return obj


_TASK_API = frozenset([*(name for name in dir(Task) if not name.startswith("_")), "job_id", "abort_reason", "started"])


def explain_task_parameter(exc: BaseException, fn: Callable[..., Any]) -> None:
    """Say, in ``exc``'s message, that ``fn`` got no task handle, when ``exc`` comes of expecting one there.

    For a job function written for the old rule (a first parameter named
    ``task``, unannotated, got the handle): a call whose arguments do not fit
    (``TypeError`` raised by the call itself), or an ``AttributeError`` for
    one of :class:`Task`'s names on the very object its ``task`` parameter
    holds.  Anything else is left as it is.  In the worker, after the job
    failed; cheap (no I/O); never raises.
    """
    try:
        if not _expects_handle(exc, fn):
            return
        name = getattr(_function_of(fn), "__name__", "the job function")
        exc.args = (f"{exc.args[0]} ({name}()'s first parameter `task` has no annotation, so it is given the "
                    "job's first argument: ensemble passes the task handle only to a first parameter annotated "
                    "Task (from ensemble import Task; def f(task: Task, ...)), or current_task() gives it)",)
    except Exception:  # noqa: BLE001 - a hint must never replace the job's own error
        return


def _expects_handle(exc: BaseException, fn: Callable[..., Any]) -> bool:
    """Whether ``exc`` is the failure :func:`explain_task_parameter` explains (see there)."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return False
    first = _first_parameter(fn)
    if first is None or first.name != "task" or first.annotation is not inspect.Parameter.empty:
        return False
    tb = exc.__traceback__
    if type(exc) is TypeError:  # the arguments did not bind (no frame of fn's ran), one short of its positionals
        return tb is not None and tb.tb_next is None and " missing 1 required positional argument" in exc.args[0]
    if not isinstance(exc, AttributeError) or exc.name not in _TASK_API:
        return False
    code = getattr(_function_of(fn), "__code__", None)
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return tb.tb_frame.f_locals.get("task", exc) is exc.obj
        tb = tb.tb_next
    return False


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

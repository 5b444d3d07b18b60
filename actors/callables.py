"""Callables a local Executor sends pickled: bound methods, callable objects, the script's own functions.

``ProcessPoolExecutor`` pickles the function it is given, so whatever pickles
runs.  A job here names its function by path (``module:function``), so that
the daemon, the journal and the allow-list can read it; a callable without
such a path (a bound method, a callable object, a static method, a method of
a builtin type, a function or class of the script being run) travels pickled
with the arguments instead, under the job function :data:`PATH`, with its
label (``module:qualname``) as the job's name.  Only a local client's jobs
are pickled (the daemon refuses pickled jobs from tcp and never unpickles
anything), and a worker runs :data:`PATH` only for a pickled job.

The first argument of such a job is its *head*: ``[callable]``, or
``[ScriptMarker(path), callable]`` when the callable belongs to the script
itself (``__main__``).  Unpickling the marker calls :func:`use_main` before
the callable is looked up: a worker forked from the caller has the script's
``__main__`` already; any other worker loads the script once as
``__mp_main__``, as multiprocessing's spawn does, so code under
``if __name__ == "__main__":`` does not run there (a script without that
guard that starts an Executor at import is refused with the fix).
"""

from __future__ import annotations

import functools
import os
import sys
import types
from typing import Any, Callable, Sequence

PATH = "actors.callables:pickled"
MAIN = "__main__ is the script"  # what use_main returns: the head's first item, dropped by the worker
LOADING: list[str] = []  # the script a worker is loading as __mp_main__ (an Executor started then is refused)
_loaded: dict[str, types.ModuleType] = {}


def pickled(*args: Any, **kwargs: Any) -> Any:
    """Stands for a callable sent pickled with its arguments (see the module's doc); never runs itself."""
    raise TypeError(f"{PATH} runs only a callable pickled by a local Executor, which sends it with its arguments")


def carried(args: Any, pickled: bool) -> tuple[Any, list[Any]]:
    """In a worker: ``(callable, its other arguments)`` from the arguments of a job or initializer named
    :data:`PATH`; JobRefused unless they were pickled by a local Executor with the head first."""
    if not pickled or not isinstance(args, (tuple, list)) or not args or type(args[0]) is not list:
        from actors._errors import JobRefused

        raise JobRefused(f"{PATH} runs only a callable pickled by a local Executor")
    return args[0][-1], list(args[1:])


def label(fn: Any) -> str:
    """``module:qualname`` of a callable, for people (the job's name): of its class for a callable object."""
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    module = (getattr(owner, "__module__", None) or getattr(getattr(fn, "__objclass__", None), "__module__", None)
              or type(getattr(fn, "__self__", None)).__module__)  # a method of a builtin type: its class's module
    return f"{module}:{getattr(owner, '__qualname__', type(fn).__name__)}"


class ScriptMarker:
    """Pickles as a call of :func:`use_main` with the script's path and command line (it must come before the
    callable)."""

    __slots__ = ("path", "argv")

    def __init__(self, path: str, argv: Sequence[str] = ()) -> None:
        self.path = path
        self.argv = list(argv)

    def __reduce__(self) -> tuple[Callable[[str, list[str]], str], tuple[str, list[str]]]:
        return use_main, (self.path, self.argv)


def _script() -> str | None:
    """The file of the script run as ``__main__`` (None in an interactive session)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path if isinstance(path, str) else None


def mentions_script(blob: bytes) -> bool:
    """Whether pickled bytes may name something of the script run as ``__main__`` (a class of its, say)."""
    return b"__main__" in blob and _script() is not None


_CONTAINERS = (tuple, list, dict, set, frozenset)
_LOOKED_INTO = 20_000  # values inside a map's items looked at, at most (see holds_script_objects)


def holds_script_objects(types: set[type], columns: "list[Sequence[Any]] | None" = None) -> bool:
    """Whether a map's items (their ``types``; ``columns``, the items themselves) include objects of the script's
    own classes, at their top or inside tuples, lists, dicts and sets (``map`` then sends them one by one, each
    job as :func:`mentions_script` decides).  The items are looked into only when they hold containers and the
    script defines classes of its own, and then only their first :data:`_LOOKED_INTO` values (a bound on the
    cost: 1M pairs took 0.6 s to walk whole); an object of the script's deeper than that in a long map still
    fails on a worker not forked from the script, with pickle's "Can't get attribute"."""
    if _script() is None:
        return False
    if any(t.__module__ == "__main__" for t in types):
        return True
    if columns is None or not any(issubclass(t, _CONTAINERS) for t in types) or not _script_has_classes():
        return False
    budget = _LOOKED_INTO
    seen: set[int] = set()  # a container holding itself is walked once
    for column in columns:
        for item in column:
            if not isinstance(item, _CONTAINERS):
                continue
            stack = [item]
            while stack:
                value = stack.pop()
                if id(value) in seen:
                    continue
                seen.add(id(value))
                for v in (value.items() if isinstance(value, dict) else value):
                    if type(v).__module__ == "__main__":
                        return True
                    if isinstance(v, _CONTAINERS):
                        stack.append(v)
                    budget -= 1
                    if budget <= 0:
                        return False
    return False


def _script_has_classes() -> bool:
    main = sys.modules.get("__main__")
    return any(isinstance(v, type) and v.__module__ == "__main__" for v in vars(main).values()) if main else False


def head(fn: Any, script: bool = False) -> list[Any]:
    """The first argument of a pickled-callable job: ``[fn]``, with a :class:`ScriptMarker` first if ``fn`` (its
    function, the object it is bound to, or its class) belongs to a script run as ``__main__``, or ``script``
    says the arguments hold something of it."""
    base = fn
    while isinstance(base, functools.partial):  # a partial: its function, and what it binds, decide
        script = script or any(type(v).__module__ == "__main__" for v in (*base.args, *base.keywords.values()))
        base = base.func
    owners = (base, getattr(base, "__self__", None), type(getattr(base, "__self__", None)), type(base))
    if script or any(getattr(o, "__module__", None) == "__main__" for o in owners if o is not None):
        path = _script()
        if path:
            # results of the script's own classes come back named __mp_main__ from a worker that loaded it
            sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
            return [ScriptMarker(os.path.abspath(path), sys.argv), fn]
    return [fn]


def use_main(path: str, argv: Sequence[str] = ()) -> str:
    """Unpickling in a worker: make the script at ``path`` this process's ``__main__`` (loaded once), with the
    caller's command line ``argv`` as ``sys.argv``, as multiprocessing's fork and spawn give their children the
    parent's:
    a script that parses its arguments at import (``args = parser.parse_args()`` outside the ``__main__``
    guard) finds its own, not the worker's (which hold the daemon's configuration)."""
    if argv and sys.argv != argv:  # a worker forked from the caller has its script but the worker's argv
        sys.argv = list(argv)
    mine = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(mine, str) and os.path.abspath(mine) == path:
        return MAIN  # forked from the caller: its own
    module = _loaded.get(path)
    if module is None:
        import runpy

        module = types.ModuleType("__mp_main__")
        module.__file__ = path
        LOADING.append(path)
        try:
            module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
        finally:
            LOADING.remove(path)
        _loaded[path] = module
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    return MAIN

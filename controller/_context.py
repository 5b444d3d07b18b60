"""Where script code runs, and the check every script function makes.

A script function is declared with :func:`available_in`; calling it anywhere
else raises :class:`~actors.WrongContextError` naming the function, where it is
available, where it was called (context, script file and line) and the way out
(``run_sync`` from the controller, ``run_async`` from the processor; in a
background task, which has neither, its handle and its finish callback).
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any, Callable, TypeVar

from actors import WrongContextError

CONTROLLER = "Controller"
PROCESSOR = "Processor"
BACKGROUND = "Background task"  # a script function running as a background task's job on a worker
_context = {"name": ""}  # set once per process by the actor that hosts the script
_thread = threading.local()  # a thread's own context (offline render hosts both sides), whether it loads


def loading_here() -> bool:
    """Whether this thread is running a script's module code (another thread's load allows this one nothing)."""
    return getattr(_thread, "loading", False)


class loading_module:  # noqa: N801 - used as a statement: ``with loading_module():``
    """While the block runs, this thread runs a script's module code (:func:`loading_here`)."""

    def __enter__(self) -> None:
        _thread.loading = True

    def __exit__(self, *exc: object) -> None:
        _thread.loading = False


REGISTRY: dict[str, tuple[str, ...]] = {}  # function name -> contexts, for the docs table

F = TypeVar("F", bound=Callable[..., Any])


def set_context(name: str) -> None:
    """Name this process's script context (``Controller`` or ``Processor``)."""
    _context["name"] = name


def set_thread_context(name: str) -> str:
    """Name the calling thread's script context, overriding the process's ("": none); returns the name before."""
    previous: str = getattr(_thread, "name", "")
    _thread.name = name
    return previous


def get_context() -> str:
    """The context the calling code runs in: ``"Controller"``, ``"Processor"``, ``"Background task"`` or ``""``.

    ``"Background task"``: a function a background task runs on a worker
    (``call_on_background_thread``, ``run_process``'s log function,
    ``kill_voices_and_call``); ``""``: outside ensemble, or a worker's copy
    of the script's module code.

    **Available in:** Controller, Processor.
    """
    return getattr(_thread, "name", "") or _context["name"]


REGISTRY["get_context"] = (CONTROLLER, PROCESSOR)


def _caller() -> str:
    return caller_location() or "unknown location"


def caller_location() -> str:
    """The line of script code that called into the runtime (``file:line in name``), "" if none is on the stack.

    The first frame outside ``controller/``; costs a walk of the stack.  For
    a report of a failure found after the call returned (a value the
    controller refuses when it applies it), which has no script line of its own.
    """
    frame: Any = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS):
        frame = frame.f_back
    if frame is None:
        return ""
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def available_in(*contexts: str, during_load: bool = False, load_only: bool = False,
                 fix: str = "") -> Callable[[F], F]:
    """Declare where a script function may run; the wrapper raises WrongContextError elsewhere.

    ``during_load``: also allowed while a script's module code runs in any
    context (definitions such as ``define_parameter`` are recorded on both sides).
    ``load_only``: allowed *only* while module code runs (HALion defines
    parameters when the script loads): a callback of ``contexts`` calling it
    after the load gets the error too, naming when it may be called.
    ``fix``: the way out the error names, when no bridge leads there (see :func:`way_out`).
    """

    def wrap(fn: F) -> F:
        REGISTRY[fn.__name__] = contexts
        where = ", ".join(contexts)
        when = " (while the script loads: its module code)" if load_only else ""
        fn.__doc__ = (fn.__doc__ or "").rstrip() + f"\n\n    **Available in:** {where}{when}.\n"

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            here = get_context()
            loading = loading_here()
            if here not in contexts and not (during_load and loading):
                raise WrongContextError(
                    f"{fn.__name__}() is available in: {where}; it was called in: {here or 'no script context'} "
                    f"at {_caller()}; {fix or way_out(contexts, here)}"
                )
            if load_only and not loading:
                raise WrongContextError(
                    f"{fn.__name__}() may be called only while the script loads, in its module code; it was "
                    f"called in: {here} at {_caller()}, after the script loaded; {fix or 'call it at the top level'}"
                )
            return fn(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap


def way_out(contexts: tuple[str, ...], here: str) -> str:
    """What a WrongContextError advises: the bridge from ``here`` to one of ``contexts``, one that ``here`` has.

    The controller reaches the processor with ``run_sync`` and the processor
    the controller with ``await run_async``.  A background task has neither
    (both are refused on a worker): it hands its result to the controller
    through its handle, and the task's finish callback, which runs in the
    controller, acts on it (and from there ``run_sync`` reaches the processor).
    """
    if here == BACKGROUND:
        then = ("; from there run_sync(fn) reaches the Processor" if CONTROLLER not in contexts else "")
        return ("a background task has neither bridge (run_sync and run_async are not available in it): hand the "
                "result over with task.set_property(key, value) or task.set_status_message(text), and call it in "
                "the finish callback (set_finish_callback on the handle create_background_task returned), which "
                f"runs in the Controller when the task stops and reads the result with get_property(key){then}")
    if PROCESSOR in contexts:
        return "call it from a function passed to run_sync(fn) (Controller -> Processor)"
    return "call it from a function passed to `await run_async(fn)` (Processor -> Controller)"


def contexts_table() -> str:
    """A Markdown table of every script function and where it is available."""
    lines = ["| function | Controller | Processor |", "|---|:-:|:-:|"]
    for name in sorted(REGISTRY):
        ctx = REGISTRY[name]
        lines.append(f"| `{name}` | {'yes' if CONTROLLER in ctx else ''} | {'yes' if PROCESSOR in ctx else ''} |")
    return "\n".join(lines)


import os as _os  # noqa: E402

_OWN_DIRS = (_os.path.dirname(__file__) + _os.sep,)

"""Stopping a script callback that overran its budget, and the hard deadline behind it.

Two stages, both watched from the controller's main thread (never the
script thread, which is the one that is stuck):

1. At the budget, an exception is raised in the script thread: CPython's
   ``PyThreadState_SetAsyncExc`` makes it raise at its next bytecode
   boundary, so a pure-Python loop is stopped and reported as an overrun.
2. A call blocked in C (a long ``time.sleep``, a socket read, a lock) sees
   that exception only when it returns, which may be never.  If the same step
   still runs :data:`GRACE_S` after the interrupt, the controller process
   leaves with :data:`WEDGED_EXIT`; the supervisor restarts it as it restarts
   any child that died, and the new controller reloads the script with its
   saved parameters.  A thread cannot be killed safely; a process can.

A process that does not even get to run its main thread (a C call holding
the GIL) stops heartbeating and is replaced by the supervisor's heartbeat
timeout instead (``[supervision] heartbeat_timeout``).
"""

from __future__ import annotations

import ctypes
import sys
import traceback

from actors import EnsembleError

BUDGET_S = 5.0  # a controller callback step's execution budget (HALion's controller: 5000 ms)
GRACE_S = 3.0  # how long a step may go on after its budget's interrupt before the controller is restarted
WEDGED_EXIT = 87  # the controller's exit code when its script thread stayed blocked past budget + grace


class ScriptTimeout(EnsembleError):
    """Raised inside a script callback that ran past its context's execution budget."""


def interrupt(thread_id: int, exc: type[BaseException] = ScriptTimeout) -> bool:
    """Raise ``exc`` in the thread ``thread_id``; returns whether a thread was hit."""
    n: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))
    if n > 1:  # should not happen; undo to be safe
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return n == 1


def wedged_text(step: str, budget_s: float = BUDGET_S, grace_s: float = GRACE_S) -> str:
    """Why a controller restarts under a blocked ``step`` (``on_change(gain)``, ``module code``): one line."""
    return (f"{step} blocked past the controller's budget of {budget_s * 1000:.0f} ms (and {grace_s:g} s of grace) "
            "in code that cannot be interrupted: a call into C, such as a long time.sleep")


def where_blocked(thread_id: int, files: tuple[str, ...]) -> str:
    """``FILE:LINE in FUNCTION`` of the innermost frame of thread ``thread_id`` in one of ``files`` ("" if none).

    Any thread; reads a snapshot of the thread's stack (``sys._current_frames``).
    """
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    stack = traceback.extract_stack(frame)
    return next((f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(stack) if f.filename in files), "")

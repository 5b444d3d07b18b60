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

The processor runs the same two stages (:class:`Deadline`) on its script
callbacks, with its hard limit and a grace of its own: there the blocked thread
is the audio thread (see :mod:`controller._processor_side`).

A process that does not even get to run its main thread (a C call holding
the GIL) stops heartbeating and is replaced by the supervisor's heartbeat
timeout instead (``[supervision] heartbeat_timeout``).
"""

from __future__ import annotations

import ctypes
import sys
import time
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


class Deadline:
    """The two stages for one script thread: interrupt a step at ``budget_s``, call it wedged ``grace_s`` later.

    Main thread, every tick: :meth:`check` costs a clock read and a few
    attribute reads.  Pure bookkeeping apart from the interrupt it sends; what
    a wedge costs (leaving the process) is the caller's to decide.
    """

    def __init__(self, budget_s: float, grace_s: float) -> None:
        self.budget_s = budget_s
        self.grace_s = grace_s  # after the budget's interrupt, before the step counts as wedged
        self._interrupted = (0.0, 0.0)  # (start of the step interrupted last, when it was interrupted)

    def check(self, since: float, thread_id: int) -> bool:
        """Whether the step that began at ``since`` (monotonic; 0: none runs) in ``thread_id`` is wedged.

        Interrupts it with :class:`ScriptTimeout` once it has run past the
        budget; wedged means it still runs ``grace_s`` after that interrupt.
        A step's start time is its identity: a new step starts the count again.
        """
        if not since or not thread_id:
            return False
        now = time.monotonic()
        interrupted, at = self._interrupted
        if since != interrupted:  # a step the interrupt has not been sent to yet
            if now - since > self.budget_s:
                self._interrupted = (since, now)
                interrupt(thread_id, ScriptTimeout)
            return False
        return now - at > self.grace_s


def wedged_text(step: str, budget_s: float = BUDGET_S, grace_s: float = GRACE_S,
                limit: str = "the controller's budget") -> str:
    """Why a process restarts under a blocked ``step`` (``on_change(gain)``, ``module code``): one line.

    ``limit`` names what the step ran past (the processor's: "the processor's hard limit").
    """
    return (f"{step} blocked past {limit} of {budget_s * 1000:.0f} ms (and {grace_s:g} s of grace) "
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

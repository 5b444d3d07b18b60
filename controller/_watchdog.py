"""Stopping a script callback that overran its budget: an exception raised in its thread.

CPython's ``PyThreadState_SetAsyncExc`` makes the target thread raise at its
next bytecode boundary, so a pure-Python loop is stopped; a call blocked in C
(a long ``time.sleep``) is stopped when it returns.
"""

from __future__ import annotations

import ctypes

from actors import EnsembleError


class ScriptTimeout(EnsembleError):
    """Raised inside a script callback that ran past its context's execution budget."""


def interrupt(thread_id: int, exc: type[BaseException] = ScriptTimeout) -> bool:
    """Raise ``exc`` in the thread ``thread_id``; returns whether a thread was hit."""
    n: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))
    if n > 1:  # should not happen; undo to be safe
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return n == 1

"""Making a rendering thread realtime: scheduler priority and garbage collection.

Garbage collection policy.  A collection of the whole heap can stop every
thread for milliseconds, longer than a block.  So while a realtime backend
runs, :class:`GcPause` freezes everything allocated during setup
(``gc.freeze()``: the collector never scans it again) and disables automatic
collection (``gc.disable()``).  Reference counting still frees acyclic
garbage at once; only reference cycles wait.  Collection runs again:

* when the backend stops (``gc.unfreeze()`` and ``gc.enable()`` restore the
  previous state), and
* where the non-realtime side of the processor calls :func:`collect_young`
  at an idle point of its own choosing (between control messages, say),
  knowing that a young-generation pass holds the GIL for tens of
  microseconds — a fraction of a block, unlike a full collection.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

__all__ = ["GcPause", "SwitchInterval", "collect_young", "promote_control_thread", "promote_current_thread", "thread_policy"]

DEFAULT_PRIORITY = 70
"""SCHED_FIFO priority asked for a rendering thread (JACK's own clients run near 70-80)."""

CONTROL_PRIORITY = 1
"""SCHED_FIFO priority of the threads that share the GIL with the audio callback (below every audio thread)."""


def promote_current_thread(priority: int = DEFAULT_PRIORITY) -> str:
    """Move the calling thread to SCHED_FIFO at ``priority``; returns a notice, '' on success.

    Context: the thread to promote, before it starts rendering (a syscall).
    Never raises: where the OS refuses (no CAP_SYS_NICE, RLIMIT_RTPRIO 0, a
    non-Linux system) the thread keeps its normal priority and the one-line
    notice says why.
    """
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None or not hasattr(os, "SCHED_FIFO"):
        return "realtime priority unavailable on this OS; rendering at normal priority"
    try:
        top = os.sched_get_priority_max(os.SCHED_FIFO)
        setter(0, os.SCHED_FIFO, os.sched_param(min(priority, top)))
    except PermissionError:
        return ("realtime priority refused (needs CAP_SYS_NICE or an rtprio limit in "
                "/etc/security/limits.conf); rendering at normal priority")
    except OSError as exc:
        return f"realtime priority failed ({exc.strerror}); rendering at normal priority"
    return ""


def promote_control_thread(priority: int = CONTROL_PRIORITY) -> str:
    """Make the calling (non-audio) thread SCHED_FIFO at ``priority``; returns a notice, '' on success.

    The audio callback needs the GIL.  When another thread of the process
    holds it and the kernel preempts that thread for an ordinary process (a
    busy worker, anything at normal priority), the callback waits for a whole
    scheduler slice however short the switch interval is: priority inversion
    through the GIL.  At SCHED_FIFO 1 the thread still yields to every audio
    thread but is never preempted by ordinary processes, so the GIL comes back
    within the switch interval.  The thread must block (poll, sleep) when idle:
    it is not time-sliced against normal processes.  Threads it starts inherit
    the policy.  Context: the thread itself, at start-up.  Never raises.
    """
    return promote_current_thread(priority).replace("rendering at normal priority", "running at normal priority")


def thread_policy() -> str:
    """Name the calling thread's scheduling policy and priority, e.g. ``'SCHED_FIFO/70'``.

    Context: any thread.  Cost: two syscalls.  Never raises (``'unknown'``).
    """
    try:
        policy = os.sched_getscheduler(0)
        priority = os.sched_getparam(0).sched_priority
    except (AttributeError, OSError):
        return "unknown"
    names = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE") if hasattr(os, n)}
    return f"{names.get(policy, str(policy))}/{priority}"


def collect_young() -> int:
    """Collect generation 0 only; returns the number of objects freed.

    Context: the non-realtime side, at an idle point.  Cost: holds the GIL
    for the pass (tens of microseconds on a frozen heap).
    """
    return gc.collect(0)


class GcPause:
    """Freeze the heap and stop automatic garbage collection; nestable.

    ``enter()`` on the first holder runs one full collection, then
    ``gc.freeze()`` and ``gc.disable()``; ``exit()`` on the last holder
    unfreezes and re-enables collection if it was enabled before.  Context:
    non-realtime (backend start/stop).  Cost of ``enter``: one full
    collection.
    """

    _lock = threading.Lock()
    _holders = 0
    _was_enabled = True

    @classmethod
    def enter(cls) -> None:
        """Take a hold (see the class docstring)."""
        with cls._lock:
            if cls._holders == 0:
                cls._was_enabled = gc.isenabled()
                gc.collect()
                gc.freeze()
                gc.disable()
            cls._holders += 1

    @classmethod
    def exit(cls) -> None:
        """Release a hold taken with :meth:`enter`.  Raises :class:`RuntimeError` if none is held."""
        with cls._lock:
            if cls._holders == 0:
                raise RuntimeError("GcPause.exit() without a matching enter()")
            cls._holders -= 1
            if cls._holders == 0:
                gc.unfreeze()
                if cls._was_enabled:
                    gc.enable()


class SwitchInterval:
    """Shorten the interpreter's GIL switch interval while a realtime backend runs; nestable.

    A thread that wants the GIL waits up to ``sys.getswitchinterval()``
    (5 ms by default) before it may ask the holder to let go.  5 ms is
    nearly a whole 256-frame period at 48 kHz (5.33 ms) and twice a 128-frame
    one, so an audio callback that arrives while the processor's main thread
    runs Python code can miss its cycle without its own render time showing
    it.  ``enter()`` on the first holder sets :attr:`SECONDS`; ``exit()`` on
    the last restores the previous value.  See audio/README.md ("Xruns and
    the GIL") for the measurements behind the value.  Context: non-realtime
    (backend start/stop).
    """

    SECONDS = 0.0002
    _lock = threading.Lock()
    _holders = 0
    _previous = 0.005

    @classmethod
    def enter(cls) -> None:
        """Take a hold (see the class docstring)."""
        with cls._lock:
            if cls._holders == 0:
                cls._previous = sys.getswitchinterval()
                sys.setswitchinterval(min(cls.SECONDS, cls._previous))
            cls._holders += 1

    @classmethod
    def exit(cls) -> None:
        """Release a hold taken with :meth:`enter`.  Raises :class:`RuntimeError` if none is held."""
        with cls._lock:
            if cls._holders == 0:
                raise RuntimeError("SwitchInterval.exit() without a matching enter()")
            cls._holders -= 1
            if cls._holders == 0:
                sys.setswitchinterval(cls._previous)

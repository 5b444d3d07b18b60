"""Signals for a supervision loop that does not run on the main thread (a worker's, see :mod:`actors.worker`).

Python runs signal handlers on the main thread only, between two bytecodes
of it.  A worker's main thread runs jobs (as a ``ProcessPoolExecutor``
worker's does), so it may be deep in a C call when SIGTERM comes, and its
supervision loop, on a thread of its own, must learn of the signal without it:
:class:`SignalPipe` is the wake-up fd of Python's signal handling
(``signal.set_wakeup_fd``), which the C-level handler writes one byte per
signal to, in whatever thread the signal landed, before any Python handler runs.
:func:`start_unsignalled` starts the loop's thread with the asynchronous
signals blocked in it, so that they land on the main thread, where a job's
``signal.alarm`` or ``SIGUSR1`` handler expects to be interrupted.
"""

from __future__ import annotations

import os
import signal
import threading

# raised by a thread's own fault, in that thread: never blocked (the kernel would kill the process for it anyway)
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS}
_BLOCKED = signal.valid_signals() - _SYNCHRONOUS - {signal.SIGKILL, signal.SIGSTOP}
POKE = 0  # the byte :meth:`SignalPipe.poke` writes (no signal has number 0)


class SignalPipe:
    """A non-blocking pipe: one byte per signal caught (its number), for a loop on another thread to poll.

    Made on any thread; :meth:`install` on the main thread.  Neither end is
    ever closed: the process ends with ``os._exit`` and a signal handler may
    write here until then.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        """Make this pipe the wake-up fd of Python's signal handling (main thread; raises ValueError elsewhere)."""
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)

    def poke(self) -> None:
        """Wake the loop without a signal (any thread, a signal handler included: one system call, never blocks)."""
        try:
            os.write(self.write_fd, bytes([POKE]))
        except BlockingIOError:  # full: the loop has bytes to read already
            pass

    def caught(self) -> bytes:
        """The signal numbers written since the last call (and :data:`POKE` bytes), emptying the pipe (the loop)."""
        got = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 512)
            except BlockingIOError:
                return got
            got += chunk
            if len(chunk) < 512:
                return got


def start_unsignalled(thread: threading.Thread) -> None:
    """Start ``thread`` with every asynchronous signal blocked in it (and in the threads it starts).

    The kernel then delivers a signal sent to the process to a thread that
    takes it, the main thread first: a handler runs at once there, and a
    blocking call it makes (``time.sleep``, a read) is interrupted by it.
    Two system calls around the start; the caller's mask is as it was after.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

"""A remote worker's keeper: the process ``ensemble worker`` starts as, which leaves no process of its jobs behind.

A local worker's jobs' processes die with its process group (the daemon kills
the group when it reaps the worker, a sentinel when the worker dies).  A
remote worker cannot use its group: it may share one it did not make
(``ensemble worker ... | tee log`` in a shell shares it with ``tee``), and a
process a job started may leave it (``setsid``).  So :func:`fork_keeper`
forks first: the child goes on to be the worker, and the parent stays behind
as its keeper, a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process the
worker's jobs orphan (a daemonized helper, ``sh -c 'cmd &'``) becomes the
keeper's child instead of init's.  The keeper reaps those as they end, passes
the signals it gets on to the worker, and once the worker has ended, however
it ended, SIGKILLs every process left below it (found in ``/proc``), reaps
them, and exits with the worker's code.  The worker dies with its keeper
(parent-death signal).

The keeper, not the worker, is the subreaper: a worker reaping orphans would
take the exit status of a process its job still waits on, which it cannot
tell apart from an orphan (``subprocess`` then reports it as exit 0).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from typing import NoReturn

from actors._procs import descendants, stat
from actors._spawn import set_parent_death_signal

log = logging.getLogger("ensemble.keeper")
_PR_SET_CHILD_SUBREAPER = 36
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_SWEEP_FOR = 10.0  # seconds the keeper goes on killing what is left below it before it gives up (and says so)


def fork_keeper() -> None:
    """Fork: return in the child, which goes on to be the worker; the parent keeps it and never returns.

    Call before any thread starts (ZeroMQ's): the keeper is a copy of this
    process.  The child dies with the keeper (SIGKILL, parent-death signal);
    the keeper exits with the worker's exit code (128 + the signal's number
    when a signal ended it), after the sweep of :func:`_sweep`.  Raises
    ``OSError`` if the system refuses the fork or the subreaper attribute.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:  # (not inherited by the child)
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
    keeper = os.getpid()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)  # until each side has its handlers
    worker = os.fork()
    if worker == 0:
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != keeper:  # the keeper died before prctl took effect
            os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return
    _keep(worker, held)


def _keep(worker: int, held: set[int | signal.Signals]) -> NoReturn:
    """The keeper's life: pass signals on to ``worker``, reap orphans until it ends, sweep, exit with its code."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the worker's (its key pipes, a Ray link): not ours to hold open

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(worker, signum)
        except ProcessLookupError:  # it has ended: the wait below returns
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    while True:
        pid, status = os.waitpid(-1, 0)  # the worker, or an orphan of its jobs (the worker lives: never ECHILD)
        if pid == worker:
            break
    code = os.waitstatus_to_exitcode(status)
    _sweep(time.monotonic() + _SWEEP_FOR)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code if code >= 0 else 128 - code)


def _sweep(deadline: float) -> None:
    """SIGKILL every process below this one and reap those that become its children, until none is left.

    Each kill goes through a pidfd opened before the process's parent is
    checked again, so a pid reused meanwhile by a process that is not ours is
    never signalled.  Gives up at ``deadline`` (monotonic), saying so in the log.
    """
    me = os.getpid()
    killed: set[int] = set()
    while True:
        _reap()
        below = descendants(me)
        if not below and not _has_children():
            break
        if time.monotonic() > deadline:
            log.error("event=keeper-gave-up left=%s", ",".join(map(str, sorted(below))))
            break
        for pid in below:
            if _kill_if_below(pid, below | {me}):
                killed.add(pid)
        time.sleep(0.01)  # (SIGKILLed processes end in microseconds; their children then become ours)
    if killed:
        log.warning("event=keeper-killed count=%d pids=%s", len(killed), ",".join(map(str, sorted(killed))))


def _reap() -> None:
    """Reap every child of the keeper that has ended (never blocks)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _has_children() -> bool:
    """Whether the keeper has a child, ended or not."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _kill_if_below(pid: int, parents: set[int]) -> bool:
    """SIGKILL ``pid`` if its parent is still one of ``parents``; whether it was signalled."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        st = stat(pid)  # read after the pidfd pinned the process: a reused pid fails the send below
        if st is None or int(st[1]) not in parents:
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)

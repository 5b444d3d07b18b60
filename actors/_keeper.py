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

import logging
import os
import signal
import sys
from typing import NoReturn

from actors._subreaper import become_subreaper, sweep
from actors._spawn import set_parent_death_signal

log = logging.getLogger("ensemble.keeper")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def fork_keeper() -> None:
    """Fork: return in the child, which goes on to be the worker; the parent keeps it and never returns.

    Call before any thread starts (ZeroMQ's): the keeper is a copy of this
    process.  The child dies with the keeper (SIGKILL, parent-death signal);
    the keeper exits with the worker's exit code (128 + the signal's number
    when a signal ended it), after the sweep of :func:`actors._subreaper.sweep`.  Raises
    ``OSError`` if the system refuses the fork or the subreaper attribute.
    """
    become_subreaper()  # (not inherited by the child)
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
    sweep("keeper")
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code if code >= 0 else 128 - code)

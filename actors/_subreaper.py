"""A child subreaper: the process that a job's processes fall back to when they leave their group and lose their parent.

A worker's jobs' processes die with its process group, but a process can
leave the group (``setsid``, ``start_new_session=True``, a daemonizing
helper), and once its parent ends Linux gives it to init, beyond anyone's
reach: it outlived ``ensemble down``.  A *child subreaper*
(``PR_SET_CHILD_SUBREAPER``) gets such orphans of its descendants instead of
init.  Two kinds of process here are subreapers:

- a remote worker's keeper (:mod:`actors._keeper`), which reaps every child
  but the worker as it ends and, once the worker has ended, sweeps what is
  left below it (:func:`sweep`);
- the daemon (:func:`actors.supervisor.serve`), whose own children are
  waited on by whoever started them (a slot's process through its pidfd, the
  Ray driver by its ``Popen``): it must reap the orphans it adopts and only
  them, or their owners would read ``ECHILD`` for an exit status
  (``subprocess`` then says the child exited 0).  So each process it starts
  is recorded (:func:`started`) and :func:`reap_adopted` reaps only ended
  children that are not; the daemon's last step, once its own children are
  gone, is :func:`sweep`.

An orphan that is still running stays, as a remote worker's stay until its
worker ends: a job may start a helper meant to outlive it.  It ends with the
daemon (or the keeper) at the latest, and with the job when the daemon kills
its worker (an abort ignored, a heartbeat missed): :func:`kill_below`, or
when its worker died under it: :func:`kill_marked`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time

from actors._procs import descendants, each, stat, tree, zombies_of

log = logging.getLogger("ensemble.subreaper")

# set by a local worker in its environment for its jobs' processes: its pid (see kill_marked)
WORKER_ENV = "ENSEMBLE_WORKER_PID"
# set beside it: the daemon's shared-memory key, the same for every start of one daemon (see kill_left_by_daemon)
DAEMON_ENV = "ENSEMBLE_WORKER_DAEMON"
_PR_SET_CHILD_SUBREAPER = 36
_started: dict[int, str] = {}  # pid -> its start time ("" unknown): children this process waits on itself
_PRUNE_AT = 256  # records kept before those of processes that are gone are dropped
SWEEP_FOR = 10.0  # seconds a sweep goes on killing what is left below before it gives up (and says so)


def become_subreaper() -> None:
    """Make this process a child subreaper (not inherited by its children); ``OSError`` if the system refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def started(pid: int) -> None:
    """Record ``pid`` as a child this process started and waits on itself (:func:`reap_adopted` leaves it)."""
    try:
        born = _born(pid)
    except OSError:  # unreadable (no descriptor left): kept as ours while the pid lives, whatever its start time
        born = ""
    if born is None:  # it is gone, reaped already: nothing of it can be mistaken for an orphan
        return
    if len(_started) >= _PRUNE_AT:
        for old, was in list(_started.items()):
            try:
                now = _born(old)
            except OSError:
                continue
            if now is None or (was and now != was):
                del _started[old]
    _started[pid] = born


def _born(pid: int) -> str | None:
    """The start time of process ``pid`` (``stat`` field [19]), or None if it is gone; OSError if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _mine(pid: int) -> bool:
    """Whether ``pid`` is a child this process started; when that cannot be read (no descriptor left), it is
    taken for one: an orphan reaped a tick later costs nothing, another's exit status taken loses it."""
    if pid not in _started:
        return False
    born = _started[pid]
    try:
        now = _born(pid)
    except OSError:
        return True
    return now is not None and (not born or now == born)  # (a pid used again by an orphan is not ours)


def reap_adopted() -> int:
    """Reap the children that ended and that this process did not start (orphans it adopted); never blocks.

    Peeks at an ended child without reaping it (``waitid`` with
    ``WNOWAIT``, one system call when there is none); when that one is this
    process's own, waiting for its owner, the ended children are found in
    ``/proc`` instead.  Returns how many were reaped.
    """
    reaped = 0
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if found is None:
            return reaped
        if not _mine(found.si_pid):
            reaped += _reap(found.si_pid)
            continue
        try:
            ended = zombies_of(os.getpid())
        except OSError:  # /proc unreadable now (no descriptor left): the next tick tries again
            return reaped
        return reaped + sum(_reap(pid) for pid in ended if not _mine(pid))


def _reap(pid: int) -> int:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return 1 if done else 0


def sweep(who: str, within: float = SWEEP_FOR) -> None:
    """SIGKILL every process below this one and reap every child that ends, until none is left.

    For the end of a process none of whose own children still runs, or whose
    own are waited on by now (each reap here may take any child's status).
    Each kill goes through a pidfd opened before the process's parent is
    checked again, so a pid reused meanwhile by a process that is not ours is
    never signalled.  Gives up after ``within`` seconds, saying so in the log
    as ``event=<who>-gave-up``.
    """
    deadline = time.monotonic() + within
    me = os.getpid()
    killed: set[int] = set()
    while True:
        _reap_all()
        below = descendants(me)
        if not below and not _has_children():
            break
        if time.monotonic() > deadline:
            log.error("event=%s-gave-up left=%s", who, ",".join(map(str, sorted(below))))
            break
        for pid in below:
            if _kill_if_below(pid, below | {me}):
                killed.add(pid)
        time.sleep(0.01)  # (SIGKILLed processes end in microseconds; their children then become ours)
    if killed:
        log.warning("event=%s-killed count=%d pids=%s", who, len(killed), ",".join(map(str, sorted(killed))))


def kill_below(root: int, since_ns: int | None = None) -> list[int]:
    """SIGKILL the processes below ``root`` (a child about to be killed) that left its process group; their pids.

    Read while ``root`` lives, so the tree says whose they are: a process
    its jobs started in a session of their own (``start_new_session``, a
    ``setsid`` helper still below it) goes with the job that is killed,
    instead of living on as this process's adopted orphan until the daemon
    stops.  ``since_ns``, for a worker: when the job it runs started
    (``CLOCK_BOOTTIME``; 0: it runs none): only what started since goes, and
    a helper an earlier job left running stays, as :func:`kill_marked` has
    it (None: all of them).  One scan of ``/proc``, for a kill, not for each
    tick.  Each is signalled through a pidfd and only while its parent is
    still in the tree (or is this process, which adopts them as ``root`` dies).
    """
    if since_ns == 0:
        return []
    try:
        group = os.getpgid(root)
        below = tree(root)
    except OSError:  # gone already, or /proc unreadable (no descriptor left): the group's kill does what it can
        return []
    since = 0 if since_ns is None else _ticks(since_ns)
    parents = below.keys() | {root, os.getpid()}
    outside = [pid for pid, st in below.items() if int(st[2]) != group and int(st[19]) >= since]
    return [pid for pid in outside if _kill_if_below(pid, parents)]


def _ticks(ns: int) -> int:
    """``CLOCK_BOOTTIME`` nanoseconds as the clock ticks ``/proc/PID/stat`` counts processes' start times in."""
    return ns * os.sysconf("SC_CLK_TCK") // 1_000_000_000


def kill_marked(worker: int, since_ns: int) -> list[int]:
    """SIGKILL the processes below this one that the job a worker (process ``worker``, ended) was running
    started and that left its tree; their pids.

    For a worker that died under a job (killed, or crashed on its own):
    what that job started in a session of its own and left (its launcher
    exited, or the worker's death reparented it) is an orphan of this
    process by now, which :func:`kill_below` cannot place.  Such a process
    carries the worker's pid in its environment (:data:`WORKER_ENV`, set by
    the worker at its start and inherited) and started no earlier than the
    job (``since_ns``, ``CLOCK_BOOTTIME``; ``/proc`` counts start times in
    clock ticks, so one started in the same tick before the job counts
    too); what an earlier job left, a helper meant to outlive it, stays.
    Processes below a marked one go with it.  A process whose environment
    was replaced without the mark is not found.  One scan of ``/proc``, and
    an ``environ`` read per process of this tree started since the job.
    """
    me = os.getpid()
    try:
        below = tree(me)
    except OSError:
        return []
    since = _ticks(since_ns)
    fields = {pid: st for pid, st in below.items() if int(st[19]) >= since}
    # (a child of a marked process started after it: in ``fields`` too)
    marked = _carrying(fields, f"\0{WORKER_ENV}={worker}\0".encode())
    parents = below.keys() | {me}
    return sorted(pid for pid in marked if _kill_if_below(pid, parents))


def kill_left_by_daemon(key: str) -> list[int]:
    """SIGKILL what the jobs of an earlier start of this daemon (``key``: its shared-memory key) left running,
    with what is below it; their pids.  For a daemon's start-up, before it starts a worker.

    A daemon that stops in order ends its jobs' helpers (the processes a job
    moved into a session or group of its own are below it: :func:`sweep`);
    one killed (``kill -9``, a crash, the machine's OOM killer) cannot, and
    they were adopted by init and ran for ever (the next daemon's ``down``
    did not see them either).  They carry the daemon's key in their
    environment (:data:`DAEMON_ENV`, set by each local worker for what its
    jobs start, as :data:`WORKER_ENV`), and no job of this start has run
    yet, so each process of this user that carries it is a dead daemon's.
    A process whose environment was replaced without the mark is not found,
    as :func:`kill_marked` does not find it.  One scan of ``/proc`` and an
    ``environ`` read a process of this user; each is signalled through a
    pidfd while its start time is still the one that was read.
    """
    fields = dict(each())
    marked = _carrying(fields, f"\0{DAEMON_ENV}={key}\0".encode(), os.getuid())
    killed = []
    for pid in sorted(marked):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            now = stat(pid)  # read after the pidfd pinned it: another process given the pid since is not signalled
            if now is None or now[19] != fields[pid][19] or now[0] == "Z":
                continue
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
        finally:
            os.close(fd)
    return killed


def _carrying(fields: dict[int, list[str]], mark: bytes, uid: int | None = None) -> set[int]:
    """The processes of ``fields`` (pid -> stat fields) but this one whose environment holds ``mark`` (of user
    ``uid`` only, when given), with every process of ``fields`` below them: what they started, its environment
    replaced or not.  An ``environ`` read a process (one of another user cannot be read, but as root)."""
    me = os.getpid()
    marked: set[int] = set()
    for pid in fields:
        if pid == me:
            continue
        try:
            if uid is not None and os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in b"\0" + f.read():
                    marked.add(pid)
        except OSError:
            continue
    children: dict[int, list[int]] = {}
    for pid, st in fields.items():
        children.setdefault(int(st[1]), []).append(pid)
    todo = list(marked)
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in marked and pid != me:
                marked.add(pid)
                todo.append(pid)
    return marked


def _reap_all() -> None:
    """Reap every child that has ended (never blocks)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _has_children() -> bool:
    """Whether this process has a child, ended or not."""
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

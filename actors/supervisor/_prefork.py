"""Workers forked from the supervisor before it opens anything, instead of spawned as fresh interpreters.

A spawned worker is a new Python: about 45 ms to start the interpreter and
80 ms to import ensemble's modules before it says hello (measured on the
2-core VM; twice that under load).  The supervisor's first workers are
forked instead: first thing in :func:`~actors.supervisor.serve`, while the
process is single-threaded and holds no ZeroMQ context, socket, journal,
lock or log file, it forks one *blank* per initial worker, with
``actors.worker`` already imported.  A blank waits on a pipe.  When the
supervisor starts a worker (:meth:`~actors.supervisor._children.ChildrenMixin._spawn`)
it hands a blank the worker's arguments, log file, niceness and environment;
the blank applies them as :func:`actors._spawn.spawn` would (its own process
group, the user's umask, ``/`` as working directory, stdout and stderr to a
pipe the supervisor reads, made at the fork: :mod:`actors._childoutput`) and
runs the worker's ``child_main`` (:mod:`actors._blank`, which the standby
spawned for later restarts and scale-ups shares).  Blanks left over
when the daemon stops read end-of-file and exit 0.

A blank is a real child of the supervisor (reaped with ``waitpid``, watched
through a pidfd) and dies with it (parent-death signal, set at fork).  Set
``ENSEMBLE_PREFORK=0`` to spawn every worker.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import msgspec

from actors import _childoutput
from actors._blank import become_worker, encode_orders, read_orders
from actors._logging import LOG_FILE_ENV
from actors._spawn import ForkedProc, set_parent_death_signal
from actors._subreaper import started


class Blank(msgspec.Struct):
    """A forked process waiting for its worker's arguments on ``fd``; ``out`` reads what it prints once a worker."""

    pid: int
    fd: int
    out: int = -1  # the read end of its stdout and stderr, until handed to the daemon's reader (assign)


def enabled() -> bool:
    """Whether workers are forked (not with ``ENSEMBLE_PREFORK=0``)."""
    return os.environ.get("ENSEMBLE_PREFORK", "1") != "0"


def prefork(count: int, keep_out: tuple[int, ...] = ()) -> list[Blank]:
    """Fork ``count`` blanks (call while single-threaded, before any socket or file of the daemon is open).

    ``keep_out``: descriptors a blank closes at once (the daemon's readiness
    pipe: a worker holding it would hide the daemon's exit from its starter).
    """
    import actors.worker  # noqa: F401 - imported once here, shared by every blank

    blanks: list[Blank] = []
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    for _ in range(count):
        read_end, write_end = os.pipe()
        out_read, out_write = os.pipe()  # its stdout and stderr once it is a worker
        pid = os.fork()
        if pid == 0:  # the blank
            os.close(write_end)
            os.close(out_read)
            for fd in (*keep_out, *(b.fd for b in blanks), *(b.out for b in blanks)):
                os.close(fd)
            _blank_main(read_end, out_write, parent)  # never returns
        started(pid)  # (see actors._subreaper)
        os.close(read_end)
        os.close(out_write)
        try:
            os.setpgid(pid, pid)  # as the blank does itself: a kill of its group works whichever runs first
        except (PermissionError, ProcessLookupError):
            pass
        blanks.append(Blank(pid, write_end, out_read))
    return blanks


def assign(blank: Blank, argv: list[str], nice: int, log_path: Path | None, env: dict[str, str]) -> ForkedProc:
    """Make ``blank`` the worker ``python -m actors.worker ARGV`` would be; OSError if it is gone.

    What it prints goes through the pipe made at its fork to the daemon's
    reader (:mod:`actors._childoutput`), which takes the pipe here; in a
    process without one, to ``log_path``.
    """
    output = _childoutput.current() if log_path else None
    if output is not None and blank.out >= 0:
        output.attach(blank.out, blank.pid, "actors.worker")
        blank.out = -1
    fd, blank.fd = blank.fd, -1  # closed by give_orders, gone or not: release must not close it again (by then
    give_orders(fd, argv, nice, log_path, env)  # the number may be another descriptor's)
    return ForkedProc(blank.pid)


def give_orders(fd: int, argv: list[str], nice: int, log_path: Path | None, env: dict[str, str]) -> None:
    """Write a waiting process its orders (:mod:`actors._blank`) and close ``fd``; OSError if it is gone.

    ``nice`` is the increment over the daemon's own niceness, as for a spawned worker.  In the daemon (which
    reads its children's output) the process keeps the pipe it has as stdout and stderr and appends its own
    records to ``log_path``; elsewhere both go to ``log_path``.
    """
    piped = log_path is not None and _childoutput.current() is not None
    if piped:
        env = {**env, LOG_FILE_ENV: str(log_path)}
    data = encode_orders(argv, os.nice(0) + nice, str(log_path) if log_path else "", env, piped=piped)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def release(blanks: list[Blank]) -> None:
    """Let unused blanks exit (end of file on their pipe) and reap them."""
    for blank in blanks:
        for fd in (blank.fd, blank.out):
            try:
                os.close(fd)
            except OSError:  # (-1, or closed by give_orders)
                pass
        blank.out = -1
    for blank in blanks:
        try:
            os.waitpid(blank.pid, 0)
        except ChildProcessError:
            pass
    blanks.clear()


def _blank_main(fd: int, output: int, parent: int) -> None:
    try:
        os.setpgid(0, 0)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before the signal was armed
            os._exit(1)
        order = read_orders(fd)
        if order is None:  # the supervisor stopped without needing this blank
            os._exit(0)
        become_worker(order, output)  # never returns
    except BaseException:  # noqa: BLE001 - report, never return into the supervisor's code
        import traceback

        traceback.print_exc()
    finally:
        os._exit(1)

"""Starting supervised children: own process group, parent-death signal, pidfd.

A child is ``python -m <module> <config-json> <name> <role>``.  Before ``exec``
it moves into its own process group (so a kill of the group takes the
subprocesses a job started) and asks Linux to SIGKILL it when the daemon dies
(``prctl(PR_SET_PDEATHSIG)``), so no child outlives the supervisor.  Each
child then starts a sentinel (:func:`guard_process_group`) so that its group,
and with it every subprocess of its jobs, dies with it too.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from actors import _childoutput
from actors._logging import LOG_FILE_ENV
from actors._subreaper import started

_PR_SET_PDEATHSIG = 1
_USER_UMASK = os.umask(0o022)  # read once at import (umask has no getter), restored at once below
os.umask(_USER_UMASK)
_libc = ctypes.CDLL(None, use_errno=True)
_USER_FILES = resource.getrlimit(resource.RLIMIT_NOFILE)  # the open-files limits its children get back
_ROOT = str(Path(__file__).resolve().parent.parent)


def _child_setup(parent_pid: int, nice: int) -> None:
    # Runs in the forked child before exec: async-signal-safe work only.
    os.setpgid(0, 0)
    os.umask(_USER_UMASK)  # the daemon writes its own files 0600; jobs write files as the user would
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the daemon died before prctl took effect
        os._exit(1)
    if nice:
        os.nice(nice)
    restore_user_limits()


def raise_open_files() -> int:
    """Raise this process's soft limit of open files to its hard limit (the daemon, once its blanks are forked).

    Each client connection is a descriptor in the daemon, and libzmq aborts
    the whole process when accepting one on the ipc socket fails for want of
    descriptors (EMFILE): at the usual soft limit of 1,024 a program opening
    clients in a loop took the daemon down.  The children the daemon starts
    get the user's limits back (:func:`restore_user_limits`).  Returns the
    limit now in force.
    """
    soft, hard = _USER_FILES
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = 1 << 20
    want = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError):
            pass
    return soft


def restore_user_limits() -> None:
    """Give this process the open-files limits of the user who started the daemon (see :func:`raise_open_files`)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE) != _USER_FILES:
        resource.setrlimit(resource.RLIMIT_NOFILE, _USER_FILES)


def restore_user_umask() -> None:
    """Give this process the umask of the user who started the daemon (the daemon itself runs with 077)."""
    os.umask(_USER_UMASK)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


# Where daemon processes run: never the directory `ensemble up` was typed in, so that nothing planted
# there (an ``actors/`` or ``examples/`` of someone else's) can shadow the daemon's own code.
NEUTRAL_CWD = "/"


# A private daemon holds its owner's stdout and stderr (duplicated descriptors, named here) for its workers:
# a job's print() and tracebacks reach the owner's terminal, as a ProcessPoolExecutor worker's do.
JOB_OUTPUT_ENV = "ENSEMBLE_JOB_OUTPUT"


def hold_output(env: Any) -> tuple[int, int] | None:
    """Duplicates of this process's stdout and stderr above the stdio numbers, named in ``env`` (a mapping:
    the environment a private daemon gets) as :data:`JOB_OUTPUT_ENV`; None if either is closed."""
    import fcntl

    held: list[int] = []
    try:
        for fd in (1, 2):
            held.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
    except OSError:
        for fd in held:
            os.close(fd)
        return None
    env[JOB_OUTPUT_ENV] = f"{held[0]},{held[1]}"
    return held[0], held[1]


def job_output_fds() -> tuple[int, int] | None:
    """The owner's stdout and stderr a private daemon holds (``ENSEMBLE_JOB_OUTPUT``), if named and open."""
    value = os.environ.get(JOB_OUTPUT_ENV)
    if not value:
        return None
    try:
        out, err = (int(v) for v in value.split(","))
        os.fstat(out)
        os.fstat(err)
    except (ValueError, OSError):
        return None
    return out, err


def take_job_output() -> Any:
    """In a private daemon's worker: stdout and stderr become the owner's, so the jobs' output reaches the
    owner's terminal; returns a text stream on what stderr was (the pipe to the daemon's log), for the worker's
    own records (which go to the log file itself when the daemon named it: :func:`actors._logging.setup`).

    None (and nothing changed) when there is no owner's output to take (a shared daemon's worker).
    """
    fds = job_output_fds()
    os.environ.pop(JOB_OUTPUT_ENV, None)  # not for the jobs' own subprocesses: they inherit 1 and 2
    if fds is None:
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log_fd = os.dup(2)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    os.close(fds[0])
    os.close(fds[1])
    return open(log_fd, "w", buffering=1, errors="backslashreplace")


# What child_env changes, as the user had it (JSON, None for unset), for a worker to put back for its jobs.
# Not ENSEMBLE_*: those name configuration keys.
USER_ENV = "_ENSEMBLE_USER_ENV"
_CHANGED = ("PYTHONSAFEPATH", "PYTHONPATH", "PYTHONSTARTUP")
# The owner's multiprocessing key (hex), for a private daemon's workers: a Manager proxy passed to a job connects
# back to its manager with the key of the process that unpickles it, as in ProcessPoolExecutor's workers.
AUTHKEY_ENV = "_ENSEMBLE_AUTHKEY"
_DAEMON_ONLY = ("ENSEMBLE_OWNER_PID", "ENSEMBLE_PRIVATE_DIR", AUTHKEY_ENV)  # a private daemon's own: never a job's


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a daemon process: ours, with this installation's root first on the import path.

    The user's own values of what changes are kept in :data:`USER_ENV` (by the
    first of our processes to change them), for :func:`restore_user_env`.
    """
    env = dict(os.environ)
    if USER_ENV not in env:
        import json

        env[USER_ENV] = json.dumps({name: env.get(name) for name in _CHANGED})
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONSAFEPATH"] = "1"
    path = env.get("PYTHONPATH", "")
    if path.split(os.pathsep)[0] != _ROOT:  # (once: a worker's daemon was started this way too)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def restore_user_env() -> None:
    """In a worker, before its first job: the environment as the user had it, as ``ProcessPoolExecutor``'s
    workers have it, so that a job's own subprocesses see it too (``PYTHONSAFEPATH`` would keep a script's
    directory off its import path); the private daemon's variables go, its owner's multiprocessing key taken."""
    key = os.environ.get(AUTHKEY_ENV)
    if key:
        import multiprocessing.process

        multiprocessing.process.current_process().authkey = bytes.fromhex(key)
    for name in _DAEMON_ONLY:
        os.environ.pop(name, None)
    saved = os.environ.pop(USER_ENV, None)
    if saved is None:  # not started by a daemon (a remote worker): nothing was changed
        return
    import json

    for name, value in json.loads(saved).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def python_argv(module: str, *argv: str) -> list[str]:
    """``python -P -m module ARGV``: ``-P`` keeps the working directory off the import path."""
    return [sys.executable, "-P", "-m", module, *argv]


def spawn(module: str, argv: list[str], *, nice: int = 0, log_path: Path | None = None,
          env: dict[str, str] | None = None, stdin: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -P -m module *argv`` as a supervised child (in :data:`NEUTRAL_CWD`) and return its Popen.

    ``log_path``: the daemon's log.  In the daemon (which reads its children's
    output: :mod:`actors._childoutput`) the child's stdout and stderr are a
    pipe to it, each line logged marked as that child's output, and the child
    appends its own records to ``log_path`` (:data:`actors._logging.LOG_FILE_ENV`);
    elsewhere both are appended to ``log_path`` as they are.  Without it: ``/dev/null``.
    ``stdin``: a descriptor to give it as its standard input (by default ``/dev/null``).
    """
    parent = os.getpid()
    output = _childoutput.current() if log_path else None
    env = dict(env or {})
    read_end = -1
    if output is not None:
        read_end, out = os.pipe()  # (both non-inheritable: Popen makes ``out`` the child's 1 and 2 only)
        env[LOG_FILE_ENV] = str(log_path)
    elif log_path:
        out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    else:
        out = subprocess.DEVNULL
    held = job_output_fds() if module == "actors.worker" else None  # a private daemon's: its jobs print there
    try:
        proc = subprocess.Popen(
            python_argv(module, *argv),
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=out,
            stderr=out,
            close_fds=True,
            pass_fds=held or (),
            cwd=NEUTRAL_CWD,
            env=child_env(env),
            preexec_fn=lambda: _child_setup(parent, nice),
        )
    except BaseException:
        if read_end >= 0:
            os.close(read_end)
        raise
    finally:
        if out != subprocess.DEVNULL:
            os.close(out)
    started(proc.pid)  # waited on by its owner: the daemon, a subreaper, must not reap it as an orphan
    if output is not None:
        output.attach(read_end, proc.pid, module)
    return proc


# The sentinel: wakes when its parent (a child of the daemon) is gone, by end of file on the pipe
# only the parent writes to or by its own parent-death signal, and SIGKILLs the whole group.
_SENTINEL = 'trap "kill -KILL 0" TERM HUP; read -r _; kill -KILL 0'


def _sentinel_setup(parent_pid: int) -> None:
    # Runs in the forked sentinel before exec: async-signal-safe work only.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.killpg(0, signal.SIGKILL)


def guard_process_group() -> int:
    """Make sure this process's group dies with it, subprocesses of its jobs included.

    The parent-death signal SIGKILLs a child when the daemon dies, but then
    nobody signals the child's process group, and whatever a job started would
    live on as an orphan.  This starts a tiny ``sh`` in the same group that
    SIGKILLs the group once this process is gone (however it died).  Call it
    once, early, in a process that leads its own group; keep the returned file
    descriptor open for the life of the process (closing it fires the sentinel).
    Costs one fork/exec and about 1 MiB.
    """
    parent = os.getpid()
    read_end, write_end = os.pipe()  # both non-inheritable: job subprocesses do not hold them
    try:
        subprocess.Popen(
            ["/bin/sh", "-c", _SENTINEL],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            preexec_fn=lambda: _sentinel_setup(parent),
        )
    except OSError:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return write_end


class ForkedProc:
    """What the supervisor uses of a ``subprocess.Popen``, for a process it forked itself (a worker, a private daemon).

    ``wait`` with a timeout polls every 5 ms.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None and self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a child's whole process group (the child and everything it started)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

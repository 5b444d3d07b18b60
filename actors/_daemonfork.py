"""Starting a daemon by forking the calling process instead of a new interpreter (a private daemon's default).

Why: ``python -P -m actors.supervisor`` costs a new interpreter (45 ms on the
2-core VM) and importing the runtime again (70 ms), before the daemon does
anything.  A fork of the caller, which has imported most of the runtime
already, starts serving about 100 ms sooner.  ``ProcessPoolExecutor`` on
Linux with Python 3.11 forks its workers the same way, so the risks are the
ones its users already take; ``ENSEMBLE_PRIVATE_START=spawn`` starts a new
interpreter instead (:func:`actors._launch.start_daemon`).

What the child does, and why (the hazards of forking a program we do not own):

* **Only the forking thread survives.**  A lock another thread held at the
  instant of the fork stays held in the child.  The child therefore touches
  none of the caller's objects: it writes through fresh ``sys.std*`` objects,
  detaches (without closing) every logging handler the caller installed, and
  creates its own ZeroMQ context (pyzmq ignores a context or socket of the
  parent that is freed in a child).  A C library another thread of the caller
  was inside at that instant (OpenSSL, a BLAS or OpenMP thread pool, CUDA)
  can still hang or break the child, as it can a forked ``ProcessPoolExecutor``
  worker: use ``ENSEMBLE_PRIVATE_START=spawn`` for such programs.  The private
  daemon must be forked before the executor's own client connects (it is: see
  :class:`actors._private.PrivateDaemon`).
* **Never return into the caller's code.**  The child ends with
  ``os._exit`` whatever happens: no ``atexit`` handler, no ``finally`` of the
  caller, no flush of its buffers runs there.  Signal handlers the caller
  installed are reset to the defaults a fresh interpreter has, and so are the
  signal mask and a wakeup fd (asyncio's).
* **Nothing of the caller's is finalised in the child.**  ``gc.freeze()``
  first, and every caller object the child unhooks is kept referenced, so no
  destructor of the caller's closes a file descriptor number the child has
  reused.
* **The environment ``start_daemon`` gives.**  A new session (no controlling
  terminal, out of the caller's process group), ``/`` as working directory
  (and the caller's working directory, ``""`` included, off ``sys.path``, as
  ``-P`` keeps it off a spawned daemon's), stdin and stdout on
  ``/dev/null``, stderr to ``err_path``, every other inherited descriptor
  closed (a pipe of the caller's held open by the daemon would never read end
  of file) but duplicates of the caller's stdout and stderr, which its
  workers' jobs print to (``actors._spawn.JOB_OUTPUT_ENV``, as a spawned
  private daemon is given them; the daemon ends with its owner, so a pipe
  reading them sees its end then), and ``os.environ`` as :func:`actors._spawn.child_env` makes it,
  with ``ENSEMBLE_OWNER_PID`` and ``ENSEMBLE_PRIVATE_DIR``: the daemon watches
  its owner and removes its directory when the owner dies (kill -9 included).

What differs from a spawned daemon, by design: the daemon and its first
workers (forked from it in turn, see :mod:`actors.supervisor._prefork`)
start with the modules the caller had imported, except the user's own code
(:func:`_forget_user_modules`: the workers import it from disk, unless its file is
older than the caller, which then imported what is on disk), and the caller's memory
shared copy-on-write; ``ps`` shows them under the caller's command line.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path

from actors import _childoutput
from actors._errors import EnsembleError
from actors._spawn import NEUTRAL_CWD, ForkedProc, child_env, hold_output
from actors.config import Config
from actors.messages import warm

# what the child unhooked from the caller: kept referenced, so that it is never finalised in the child
_KEPT: list[object] = []
# the caller's own modules the daemon keeps (their files older than the caller: what it imported is what is on
# disk): name -> (real file, mtime_ns); its first workers, forked from it, watch them (actors._freshness)
FORKED_USER: dict[str, tuple[str, int]] = {}
_SAFE_NS = 1_000_000_000  # a file written this close before the caller started may be newer than its import


def fork_daemon(cfg: Config, err_path: Path, env: dict[str, str], ready_fd: int) -> ForkedProc:
    """Fork this process into a daemon serving ``cfg``; returns at once in the caller, never in the child.

    ``env``: variables added to the daemon's environment (its owner);
    ``ready_fd``: the write end of its readiness pipe (the caller closes its
    own copy; wait with :func:`actors._launch.wait_signal`).  The child's
    stderr goes to ``err_path``.  Costs one fork of the caller (page tables
    only: memory is shared copy-on-write).  Raises OSError if the fork fails.
    """
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for stream in (sys.stdout, sys.stderr):  # or the child would inherit, and could repeat, unwritten text
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        warm()  # the messages' type information, built once here for the daemon and its workers to inherit
        since = _started_ns() - _SAFE_NS
        pid = os.fork()
        if pid == 0:
            _child(cfg, env, ready_fd, err, since)  # never returns
    finally:
        os.close(err)
    return ForkedProc(pid)


def _started_ns() -> int:
    """When this process started (``time.time_ns()``'s clock, to a clock tick), or 0 if /proc cannot say."""
    import time

    from actors._procs import stat

    fields = stat(os.getpid())
    if fields is None:
        return 0
    age_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return time.time_ns() - age_ns


def _child(cfg: Config, env: dict[str, str], ready_fd: int, err: int, since: int) -> None:
    code = 1
    try:
        gc.freeze()
        ready_fd = _become_daemon(env, ready_fd, err, since)
        from actors.supervisor import serve

        try:
            code = serve(cfg, ready_fd=ready_fd)
        except EnsembleError as exc:
            sys.stderr.write(f"ensemble: error: {exc}\n")
    except BaseException:  # noqa: BLE001 - report it, and never return into the caller's code
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            _childoutput.stop()  # what its children printed last, into its log (os._exit runs no atexit handler)
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def _become_daemon(env: dict[str, str], ready_fd: int, err: int, since: int = 0) -> int:
    """Make this fork what ``start_daemon`` would have spawned (see the module docstring).

    ``since``: the caller's own modules whose files are older are kept (see
    :func:`_forget_user_modules`).  Returns ``ready_fd``'s new number.
    """
    import fcntl

    if ready_fd < 3:  # a caller that had closed its stdin: keep the pipe clear of the stdio numbers
        ready_fd = fcntl.fcntl(ready_fd, fcntl.F_DUPFD, 3)
    if err < 3:
        err = fcntl.fcntl(err, fcntl.F_DUPFD, 3)
    os.setsid()
    _reset_signals()
    _detach_logging()
    try:
        caller_cwd = os.getcwd()
    except OSError:  # removed under the caller
        caller_cwd = ""
    _forget_user_modules(since)
    os.chdir(NEUTRAL_CWD)
    sys.path[:] = [p for p in sys.path if p not in ("", caller_cwd)]
    sys.argv = ["actors.supervisor"]
    environ = child_env(env)  # made from the caller's environment: read before it is cleared
    os.environ.clear()
    os.environ.update(environ)
    held = hold_output(os.environ)  # the caller's stdout and stderr, for the workers' jobs to print to
    # stdio: the caller's stream objects are kept (never closed here); fresh ones over fds 0-2
    _KEPT.extend([sys.stdin, sys.stdout, sys.stderr])
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    import faulthandler

    tracebacks = faulthandler.is_enabled()
    if tracebacks:  # its file may be one of the caller's descriptors: it will write to stderr instead
        faulthandler.disable()
    # every other inherited descriptor: closed last, once nothing of the caller's can be finalised any more
    low = 3
    for keep in sorted({ready_fd, *(held or ())}):
        os.closerange(low, keep)
        low = keep + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    # (sys.__std*__ stay: the interpreter's own objects over fds 0-2, which now lead where they should)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
    if tracebacks:
        faulthandler.enable(sys.stderr)
    return ready_fd


def _forget_user_modules(kept_before_ns: int = 0) -> None:
    """Drop the caller's own modules from ``sys.modules`` (kept referenced, never finalised), but those whose
    files are older than ``kept_before_ns``.

    Those are the modules whose files are not in the standard library,
    site-packages or ensemble's own packages: the user's code.  The daemon
    never imports from the user's paths, and its workers, forked from it,
    import that code from disk at their first job, so a module edited after
    the caller imported it is run as it is on disk (the rule of
    :mod:`actors._freshness`), as under a spawned daemon.  ``__main__`` stays.

    A module whose file is older than the caller (``kept_before_ns``: its
    start, less a second) is what is on disk: it stays, as in a forked pool's
    workers, so the script's own functions (``__main__``, which stays) and
    the jobs use one module, its classes one class (a result of ``mywork.DC``
    made by a function of the script did not pickle: "not the same object").
    :data:`FORKED_USER` lists them; the workers retire once one changes.
    """
    from actors._freshness import _SYSTEM

    files = [getattr(sys.modules.get(n), "__file__", None) for n in ("actors", "audio", "controller", "ensemble")]
    own = tuple(os.path.realpath(os.path.dirname(f)) + os.sep for f in files if isinstance(f, str))
    dirs: dict[str, str] = {}  # a directory's real path, resolved once (most modules share a few directories)
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if name == "__main__" or not isinstance(file, str):
            continue
        if os.path.islink(file):  # a module file that is itself a link: where it points decides
            real = os.path.realpath(file)
        else:
            head, tail = os.path.split(file)
            real_dir = dirs.get(head)
            if real_dir is None:
                real_dir = dirs[head] = os.path.realpath(head)
            real = os.path.join(real_dir, tail)
        if not real.startswith(_SYSTEM) and not real.startswith(own):
            try:
                mtime = os.stat(real).st_mtime_ns
            except OSError:
                mtime = kept_before_ns
            if mtime < kept_before_ns:
                FORKED_USER[name] = (real, mtime)
            else:
                _KEPT.append(sys.modules.pop(name))


def _reset_signals() -> None:
    """The signal dispositions, mask and wakeup fd of a fresh interpreter (the caller's handlers are its code)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):  # SIGCHLD ignored would break waitpid on children
        signal.signal(sig, signal.SIG_DFL)


def _detach_logging() -> None:
    """No handler, level or filter the caller configured applies in the daemon (it sets up its own)."""
    manager = logging.Logger.manager
    for logger in [logging.root, *manager.loggerDict.values()]:
        if not isinstance(logger, logging.Logger):
            continue
        _KEPT.append((logger.handlers, logger.filters))
        logger.handlers = []
        logger.filters = []
        logger.propagate = True
        logger.disabled = False
        if logger is not logging.root:
            logger.setLevel(logging.NOTSET)
    logging.disable(logging.NOTSET)

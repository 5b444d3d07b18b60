"""A private daemon: started for one Executor (or Client) when none is running, stopped with it.

Like ``ray.init()`` or Dask's ``LocalCluster``: jobs only (no controller, no
processor), in a private run directory, sized by ``max_workers``.  The daemon
is an ordinary one (journal, supervision, leak checks), just owned by its
creator: it is stopped, and its directories removed, when the creator closes.
Its workers' jobs print to the creator's stdout and stderr, as a
``ProcessPoolExecutor``'s workers do (a shared daemon's write to its log).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import msgspec

from actors._daemonfork import fork_daemon
from actors._errors import ConfigError, DaemonError, EnsembleError
from actors._launch import start_daemon, wait_signal
from actors._spawn import AUTHKEY_ENV, ForkedProc
from actors.shm import sweep_segments
from actors.config import Config, load_config

log = logging.getLogger("ensemble.client")
_START_TIMEOUT = 60.0
_STARTS = ("fork", "spawn")


_PARENT_MAX = 64  # a longer temporary directory would leave too little of a unix socket path (100) for run/internal


def private_parent() -> str:
    """Where a private daemon's directory is made: the temporary directory (``$TMPDIR``, as ``tempfile`` finds it)
    when its path leaves room for the daemon's unix sockets, else ``/tmp``."""
    parent = tempfile.gettempdir()
    return parent if len(parent) <= _PARENT_MAX else "/tmp"


def start_method() -> str:
    """How private daemons start: ``$ENSEMBLE_PRIVATE_START``, ``fork`` (the default) or ``spawn``.

    ``fork``: a fork of the calling process (:mod:`actors._daemonfork`, about
    100 ms sooner to the first result); ``spawn``: a new interpreter, for
    programs that must not be forked (CUDA, OpenMP thread pools).  Raises
    ConfigError for another value.
    """
    method = os.environ.get("ENSEMBLE_PRIVATE_START", "fork")
    if method not in _STARTS:
        raise ConfigError(f"ENSEMBLE_PRIVATE_START={method!r} is invalid: use fork (the default) or spawn")
    return method


class PrivateDaemon:
    """A daemon of this process's own; ``config`` reaches it.  Close it with :meth:`stop` (or ``with``)."""

    def __init__(self, max_workers: int | None = None, base: Config | None = None, start: bool = True) -> None:
        """``start=False``: only choose its directory and config; :meth:`start` starts it (an Executor's, at its
        first submit, as ProcessPoolExecutor starts its processes)."""
        base = base or load_config()
        workers = max_workers if max_workers is not None else base.worker_count
        if workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {workers}")
        self.workers = workers
        self.method = start_method()  # checked now: a wrong one is refused at once, not at the first submit
        self.dir = Path(tempfile.mkdtemp(prefix="ens-", dir=private_parent()))
        self.config = msgspec.structs.replace(
            base,
            daemon=msgspec.structs.replace(base.daemon, name=f"private-{os.getpid()}", workers=str(workers),
                                       run_dir=str(self.dir / "run"), state_dir=str(self.dir / "state"),
                                       tcp="", client_tcp="", metrics_port=0, extensions=()),
        )
        self.proc: subprocess.Popen[bytes] | ForkedProc | None = None
        self._stopping = threading.Lock()  # one stop at a time: a second caller waits for the first to end
        self.started = False
        if start:
            self.start()

    def start(self) -> None:
        """Start the daemon and wait until it serves (once; DaemonError if it cannot, its directory removed)."""
        if self.started:
            return
        self.started = True
        try:
            self._start(self.workers)
        except BaseException:
            self.stop()
            raise

    def _start(self, workers: int) -> None:
        err_path = self.dir / "daemon.err"
        # the daemon watches its owner: if this process dies without stopping it (kill -9), it stops itself
        # and removes this directory, so a killed program leaves no daemon, socket or segment behind
        env = {"ENSEMBLE_OWNER_PID": str(os.getpid()), "ENSEMBLE_PRIVATE_DIR": str(self.dir)}
        mp = sys.modules.get("multiprocessing.process")
        if mp is not None:  # its workers take this process's key, so a Manager proxy passed to a job connects
            env[AUTHKEY_ENV] = bytes(mp.current_process().authkey).hex()  # (a spawned one would have its own)
        method = self.method
        read_end, write_end = os.pipe()  # the daemon's readiness pipe: one byte once it serves
        try:
            if method == "fork":  # the fork holds its caller's stdout and stderr for the jobs' output
                self.proc = fork_daemon(self.config, err_path, env, write_end)
            else:
                self.proc = start_daemon(self.config, err_path, env, write_end, output=True)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        try:
            wait_signal(self.proc, read_end, _START_TIMEOUT, err_path)  # jobs queue until a worker is up
        except DaemonError as exc:
            raise DaemonError(f"the private daemon did not start: {exc}") from None
        log.info("event=private-daemon pid=%d workers=%d start=%s detail=started for this process; it stops with it",
                 self.proc.pid, workers, method)

    def stop(self) -> None:
        """Stop the daemon in order (SIGKILL after a grace) and remove its directories; safe to call twice.

        Serialised: an executor's last future (its close thread) and the
        interpreter's exit may both stop it, and a second stop that removed
        the directories while the first still talked to the daemon took the
        first's socket away (its shutdown then waited 5 s for no answer).
        """
        with self._stopping:
            self._stop()

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            from actors.client import Client

            try:
                with Client(config=self.config, timeout=5.0) as c:
                    c.shutdown()
            except EnsembleError:
                proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc is not None:  # a daemon that was killed cleaned nothing up: its segments go with its directories
            sweep_segments(self.config.shm_key)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PrivateDaemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

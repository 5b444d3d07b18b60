"""Starting a daemon in the background and waiting until it is ready (``ensemble up``, private daemons)."""

from __future__ import annotations

import os
import shutil
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from actors._errors import DaemonError, DaemonNotRunning, EnsembleError
from actors._spawn import NEUTRAL_CWD, ForkedProc, child_env, hold_output, python_argv
from actors.config import Config

# what the daemon writes to its readiness pipe once it serves (see actors.supervisor.serve)
READY = b"R"
_STATUS_WAIT = 0.5  # seconds wait_ready waits for one status answer before it looks at the process and asks again


def start_daemon(cfg: Config, err_path: Path, env: dict[str, str] | None = None,
                 ready_fd: int | None = None, output: bool = False) -> subprocess.Popen[bytes]:
    """``python -P -m actors.supervisor`` in a session of its own, in ``/``; its stderr goes to ``err_path``.

    ``env``: variables added to the daemon's environment (a private daemon's owner).
    ``ready_fd``: the write end of a pipe the daemon inherits and writes
    :data:`READY` to once its sockets are bound and its workers started
    (wait for it with :func:`wait_signal`); the caller closes its own copy
    after this returns.  ``output``: the daemon holds this process's stdout and
    stderr for its workers' jobs (a private daemon: see ``actors._spawn.JOB_OUTPUT_ENV``).
    """
    argv = python_argv("actors.supervisor", cfg.to_json())
    if ready_fd is not None:
        argv.append(f"--ready-fd={ready_fd}")
    env = dict(env or {})
    held = hold_output(env) if output else None
    try:
        with open(err_path, "wb") as err:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, env=child_env(env), cwd=NEUTRAL_CWD,
                                    pass_fds=(*(() if ready_fd is None else (ready_fd,)), *(held or ())))
    finally:
        for fd in held or ():
            os.close(fd)


def exit_reason(proc: subprocess.Popen[bytes] | ForkedProc, err_path: Path) -> str:
    """Why a daemon that exited did: its own last line on stderr, else its exit code."""
    text = err_path.read_text(errors="replace").strip().splitlines() if err_path.exists() else []
    if text:
        return text[-1].removeprefix("ensemble: error: ")
    try:  # nothing written: a full disk takes the daemon's stderr (and its journal) with it
        full = shutil.disk_usage(err_path.parent).free == 0
    except OSError:
        full = False
    if full:
        return (f"the daemon exited with code {proc.poll()}, and the disk of {err_path.parent} is full (the reason "
                "could not be written there either): free some space, or point [daemon] state_dir elsewhere")
    code = proc.poll()
    if code == 0:  # an orderly stop, asked for while it started: `ensemble down` from another shell, a SIGTERM
        return ("the daemon was stopped before it was ready (exit code 0: `ensemble down`, or a stop signal, "
                "while it started)")
    return f"the daemon exited with code {code}"


def wait_signal(proc: subprocess.Popen[bytes] | ForkedProc, ready_fd: int, timeout: float, err_path: Path) -> None:
    """Block until the daemon writes :data:`READY` to the read end ``ready_fd`` of its readiness pipe; closes it.

    Exact and cheap: no polling, no client (one ``poll(2)`` on the pipe).  The
    caller must have closed its copy of the write end, so that the daemon's
    exit before it was ready reads as end of file: then DaemonError with the
    daemon's own last line (``err_path``); DaemonError too when ``timeout``
    seconds pass first.
    """
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(ready_fd, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonError(f"the daemon was not ready within {timeout:g}s (its stderr: {err_path})")
            if not poller.poll(left * 1000):
                continue
            if os.read(ready_fd, len(READY)) == READY:
                return
            try:  # end of file: it exited (or is exiting) before it was ready
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            raise DaemonError(exit_reason(proc, err_path))
    finally:
        os.close(ready_fd)


def wait_ready(cfg: Config, proc: subprocess.Popen[bytes], timeout: float, err_path: Path,
               actors: bool = True) -> Any:
    """The daemon's status once every actor runs (or failed); DaemonError if it exits or is not ready in time.

    ``actors=False``: as soon as the daemon answers.  Polls every 5 ms for the
    first second, then every 20 ms, through one client, each status waited
    for :data:`_STATUS_WAIT` at most (a daemon that exits after it binds is
    seen within that, not the client's 2 s); the error says the daemon's own
    last line when it exited.  (A private daemon waits on its
    readiness pipe instead: :func:`wait_signal`.)
    """
    from actors.client import Client

    start = time.monotonic()
    deadline = start + timeout
    client = None
    try:
        while time.monotonic() < deadline:
            pause = 0.005 if time.monotonic() - start < 1.0 else 0.02
            if proc.poll() is not None:
                raise DaemonError(exit_reason(proc, err_path))
            if client is None:
                try:
                    client = Client(config=cfg, timeout=_STATUS_WAIT)
                except DaemonNotRunning:
                    time.sleep(pause)
                    continue
            try:  # asked again after _STATUS_WAIT, so that a daemon that exits meanwhile is seen within it
                status = client.status()
            except EnsembleError:
                continue
            # (no actors at all is ready too: a jobs-only daemon scaled to 0 workers, which `up` waited out before)
            if not actors or (status.actors or not status.daemon.workers_wanted) and all(
                    a.state in ("running", "failed") for a in status.actors) and all(
                    a.stats for a in status.actors if a.state == "running" and a.role == "processor"):
                return status
            time.sleep(pause)
        raise DaemonError(f"the daemon did not get ready within {timeout:g}s; see {cfg.state_dir / 'daemon.log'}")
    finally:
        if client is not None:
            client.close()

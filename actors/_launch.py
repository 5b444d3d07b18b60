"""Starting a daemon in the background and waiting until it is ready (``ensemble up``, private daemons)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from actors._errors import DaemonError, DaemonNotRunning, EnsembleError
from actors._spawn import NEUTRAL_CWD, child_env, python_argv
from actors.config import Config


def start_daemon(cfg: Config, err_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -P -m actors.supervisor`` in a session of its own, in ``/``; its stderr goes to ``err_path``.

    ``env``: variables added to the daemon's environment (a private daemon's owner).
    """
    with open(err_path, "wb") as err:
        return subprocess.Popen(python_argv("actors.supervisor", cfg.to_json()), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=child_env(env),
                                cwd=NEUTRAL_CWD)


def wait_ready(cfg: Config, proc: subprocess.Popen[bytes], timeout: float, err_path: Path,
               actors: bool = True) -> Any:
    """The daemon's status once every actor runs (or failed); DaemonError if it exits or is not ready in time.

    ``actors=False``: as soon as the daemon answers (a private daemon's jobs
    wait in its queue until a worker is up).  Polls every 5 ms for the first
    second, then every 20 ms, through one client; the error says the daemon's
    own last line when it exited.
    """
    from actors.client import Client

    start = time.monotonic()
    deadline = start + timeout
    client = None
    try:
        while time.monotonic() < deadline:
            pause = 0.005 if time.monotonic() - start < 1.0 else 0.02
            if proc.poll() is not None:
                text = err_path.read_text(errors="replace").strip().splitlines()
                raise DaemonError(text[-1].removeprefix("ensemble: error: ") if text
                                  else f"the daemon exited with code {proc.returncode}")
            if client is None:
                try:
                    client = Client(config=cfg, timeout=2.0)
                except DaemonNotRunning:
                    time.sleep(pause)
                    continue
            try:
                status = client.status()
            except EnsembleError:
                continue
            if not actors or status.actors and all(a.state in ("running", "failed") for a in status.actors) and all(
                    a.stats for a in status.actors if a.state == "running" and a.role == "processor"):
                return status
            time.sleep(pause)
        raise DaemonError(f"the daemon did not get ready within {timeout:g}s; see {cfg.state_dir / 'daemon.log'}")
    finally:
        if client is not None:
            client.close()

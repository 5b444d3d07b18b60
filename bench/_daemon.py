"""A private daemon for one benchmark case (started and stopped through the real CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class BenchDaemon:
    """``with BenchDaemon(workers=2) as d: c = d.client()`` — everything is stopped and removed on exit."""

    def __init__(self, workers: int = 2, **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ens-b-", dir="/tmp"))
        self.env = dict(os.environ)
        self.env.update({
            "ENSEMBLE_NAME": f"bench{os.getpid()}",
            "ENSEMBLE_RUN_DIR": str(self.dir / "run"),
            "ENSEMBLE_STATE_DIR": str(self.dir / "state"),
            "ENSEMBLE_WORKERS": str(workers),
            "ENSEMBLE_AUDIO_BACKEND": "null",
            "PYTHONPATH": str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", ""),
        })
        self.env.update(env)
        self.clients: list[Any] = []
        self.up_seconds = 0.0

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "actors", *args], env=self.env, capture_output=True, text=True,
                              timeout=120, check=True)

    def __enter__(self) -> "BenchDaemon":
        t = time.perf_counter()
        self.cli("up")
        self.up_seconds = time.perf_counter() - t
        self.pid = int((self.dir / "run" / "daemon.pid").read_text())
        return self

    def config(self) -> Any:
        from actors.config import load_config

        return load_config(env=self.env)

    def client(self, **kw: Any) -> Any:
        from actors.client import Client

        c = Client(config=self.config(), **kw)
        self.clients.append(c)
        return c

    def actor(self, name: str) -> Any:
        from actors.client import Client

        with Client(config=self.config()) as c:
            return next(a for a in c.status().actors if a.name == name)

    def __exit__(self, *exc: object) -> None:
        for c in self.clients:
            c.close()
        try:
            self.cli("down")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def rss(pid: int) -> int:
    """Resident set size of a process in bytes."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

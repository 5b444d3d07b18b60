"""A private daemon for one benchmark case, started and stopped through the real CLI.

The same approach as the test suite's fixture (a short private run directory
under /tmp, ``ENSEMBLE_*`` variables, the null audio backend), written again
here because the benchmarks do not import from ``tests/``.

Everything a :class:`BenchDaemon` starts is stopped on exit: ``ensemble down``
first; if that fails, SIGKILL of the daemon's pid and then of any process whose
command line names this daemon's private directory (only ours can).  The
directory is removed.  :func:`leftovers` is the suite's final check.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from actors._procs import alive, children, processes_mentioning

ROOT = Path(__file__).resolve().parent.parent


def pythonpath() -> str:
    """``PYTHONPATH`` for a child that imports the bench and ensemble from this tree: the tree first, then the
    caller's own ``PYTHONPATH``, if any."""
    return str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")


_STARTED: list["BenchDaemon"] = []  # every daemon of this run, for the final leak check


class BenchDaemon:
    """``with BenchDaemon(workers=2) as d: c = d.client()``: everything is stopped and removed on exit."""

    def __init__(self, workers: int = 2, **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ens-b-", dir="/tmp"))
        self.env = dict(os.environ)
        self.env.update({
            "ENSEMBLE_NAME": f"b{os.getpid()}x{len(_STARTED)}",
            "ENSEMBLE_RUN_DIR": str(self.dir / "run"),
            "ENSEMBLE_STATE_DIR": str(self.dir / "state"),
            "ENSEMBLE_WORKERS": str(workers),
            "ENSEMBLE_AUDIO_BACKEND": "null",
            "PYTHONPATH": pythonpath(),
        })
        self.env.pop("ENSEMBLE_CONFIG", None)
        self.env.update(env)
        self.clients: list[Any] = []
        self.up_seconds = 0.0
        self.pid = 0
        self.shm_key = ""
        _STARTED.append(self)

    # -- lifecycle
    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ensemble ARGS`` against this daemon; raises with its output when it fails."""
        proc = subprocess.run([sys.executable, "-m", "actors", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"ensemble {' '.join(args)} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def __enter__(self) -> "BenchDaemon":
        try:
            t = time.perf_counter()
            self.cli("up")
            self.up_seconds = time.perf_counter() - t
            self.pid = int((self.dir / "run" / "daemon.pid").read_text())
            self.shm_key = self.config().shm_key
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for c in self.clients:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing what is left, best effort
                    pass
            self.clients.clear()
            if (self.dir / "run" / "daemon.lock").exists() or (self.pid and alive(self.pid)):
                try:
                    self.cli("down", timeout=60)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    print(f"[bench] ensemble down failed ({err}); killing daemon pid {self.pid}", file=sys.stderr)
        finally:
            self._kill_leftovers()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        if self.pid and alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and self.processes():
            time.sleep(0.05)
        for pid in self.processes():  # children die with the daemon (parent-death signal); this is a fallback
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def processes(self) -> list[int]:
        """Live processes started for this daemon (their command line names its private directory)."""
        return processes_mentioning(str(self.dir))

    # -- access
    def config(self) -> Any:
        from actors.config import load_config

        return load_config(env=self.env)

    def client(self, **kw: Any) -> Any:
        from ensemble import Client

        c = Client(config=self.config(), **kw)
        self.clients.append(c)
        return c

    def actor(self, name: str) -> Any:
        from ensemble import Client

        with Client(config=self.config()) as c:
            return next(a for a in c.status().actors if a.name == name)

    @property
    def log_path(self) -> Path:
        return self.dir / "state" / "daemon.log"

    def log_events(self, event: str | None = None) -> list[tuple[float, dict[str, str]]]:
        """The supervisor's ``event=...`` log lines as (unix time, fields), oldest first (1 ms resolution)."""
        out: list[tuple[float, dict[str, str]]] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            m = _LOG_LINE.match(line)
            if not m:
                continue
            fields = dict(_FIELD.findall(m.group(2)))
            if event is None or fields.get("event") == event:
                out.append((_parse_time(m.group(1)), fields))
        return out


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ supervisor pid=\d+ (.*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")


def _parse_time(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logging writes it


def leftovers() -> dict[str, list[str]]:
    """What this run's daemons left behind: processes, run directories (sockets), shared-memory segments."""
    procs, dirs, segs = [], [], []
    for d in _STARTED:
        procs += [f"{pid} ({d.env['ENSEMBLE_NAME']})" for pid in d.processes()]
        if d.dir.exists():
            dirs.append(str(d.dir))
        if d.shm_key:
            try:
                segs += [s for s in os.listdir("/dev/shm") if s.startswith(f"ensemble.{d.shm_key}.")]
            except FileNotFoundError:
                pass
    procs += [f"{pid} (child of the bench)" for pid in children(os.getpid())]
    return {"processes": procs, "directories": dirs, "shm_segments": segs}


def rss(pid: int) -> int:
    """Resident set size of a process in bytes."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cancel_to_killed(client: Any, grace: float) -> tuple[float, Any]:
    """Submit a job that ignores its abort, cancel it once running; ``(seconds cancel(block=True) took, handle)``.

    Raises RuntimeError when the job does not end ``killed`` (or never runs within 60 s).
    """
    h = client.submit("bench.jobs:ignore_abort", 60.0, grace=grace)
    end = time.monotonic() + 60
    while h.refresh().state != "running":
        if time.monotonic() > end:
            raise RuntimeError("benchmark: the job to cancel did not start within 60 s")
        time.sleep(0.005)
    time.sleep(0.05)
    t = time.perf_counter()
    info = h.cancel(block=True)
    took = time.perf_counter() - t
    if info is None or info.state != "killed":
        raise RuntimeError(f"expected the job to be killed, got {info}")
    return took, h

"""Peers and floors that need setting up: Ray, the raw pyzmq echo server, and feature detection.

A peer that is not installed (or too slow to start for ``--quick``) is
reported as skipped with the reason, never replaced by a made-up number.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from typing import Any, Iterator

RAY_CPUS = 2  # the peer runs with as many CPUs as ensemble has workers in the comparisons


class RaySession:
    """Ray (``ray.init(num_cpus=2, include_dashboard=False)``), started for a case's Ray peers and stopped after
    them with :meth:`release` (:meth:`running` does both).

    Only the Ray peers are measured with Ray running: its driver's threads live
    in this process (26 threads against 12 after ``ray.shutdown()``) and its
    raylet, GCS and workers share the two cores, which slowed ensemble's
    ``Executor.submit`` by a fifth and ``ProcessPoolExecutor``'s by a tenth
    when they ran beside it.  A case measures its other contenders first, then
    measures Ray inside ``with ctx.ray.running() as ray:``.
    """

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.ray: Any = None
        self.reason = ""  # set once Ray cannot be used here; get() returns None from then on
        self.starts = 0
        self.init_seconds = 0.0  # over every start
        self.settle_seconds = 0.0  # after each start: Ray's first tasks, then the machine quiet again (see _settle)
        self.quiet_seconds = 0.0  # after each release: the machine quiet again

    def get(self) -> Any:
        """The ``ray`` module, initialised; None with :attr:`reason` set when it is not available here."""
        if self.ray is not None or self.reason:
            return self.ray
        try:
            import ray
        except ImportError:
            self.reason = "Ray not installed (pip install -e '.[bench]')"
            return None
        if self.quick:
            self.reason = "Ray's startup (~8 s on 2 cores) does not fit --quick; it runs in full mode"
            return None
        t = time.perf_counter()
        try:
            ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot start is skipped, with why
            self.reason = f"ray.init failed: {type(exc).__name__}: {exc}"[:200]
            return None
        self.starts += 1
        self.init_seconds += time.perf_counter() - t
        self.settle_seconds += _settle(ray)
        self.ray = ray
        return ray

    @contextmanager
    def running(self) -> Iterator[Any]:
        """``with session.running() as ray:`` the module, started (None when Ray is not available here), released
        on leaving (see :meth:`release`)."""
        try:
            yield self.get()
        finally:
            self.release()

    def release(self) -> None:
        """Stop Ray, if it runs, and wait until the machine is quiet again (at most 30 s); :meth:`get` starts it
        again."""
        if self.ray is None:
            return
        self.shutdown()
        self.quiet_seconds += _quiet()

    def shutdown(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()
            self.ray = None


def _busy_cores(seconds: float) -> float:
    """Cores this machine kept busy (all processes, from ``/proc/stat``) over the next ``seconds``."""
    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    a0, i0 = ticks()
    time.sleep(seconds)
    a1, i1 = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return ((a1 - a0) - (i1 - i0)) / hz / seconds


def _settle(ray: Any, quiet: float = 0.25, limit: float = 30.0) -> float:
    """Seconds until Ray is ready and the machine quiet: what follows ``ray.init`` is not measured beside it.

    ``ray.init`` returns while Ray still starts its worker processes, each
    importing Ray for a second or more of CPU on this 2-core machine; a case
    measured then shares the cores with that.  Run two tasks per CPU, then wait
    (at most ``limit`` s) until every process together keeps under ``quiet``
    of a core busy over half a second.
    """
    t = time.perf_counter()

    @ray.remote
    def nop() -> None:
        return None

    ray.get([nop.remote() for _ in range(2 * RAY_CPUS)])
    _quiet(quiet, max(0.0, limit - (time.perf_counter() - t)))
    return time.perf_counter() - t


def _quiet(quiet: float = 0.25, limit: float = 30.0) -> float:
    """Seconds until every process together keeps under ``quiet`` of a core busy over half a second (at most
    ``limit`` s)."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit and _busy_cores(0.5) > quiet:
        pass
    return time.perf_counter() - t


# The floor of the ping case: the same envelope ([version, kind, corr, fields]) decoded and answered
# with msgpack, one recv/send pair per message, nothing else in the loop.
FLOOR_SERVER = textwrap.dedent("""
    import sys, msgpack, zmq
    ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
    print("ready", flush=True)
    while True:
        ident, frame = s.recv_multipart()
        if frame == b"stop":
            break
        env = msgpack.unpackb(frame)
        s.send_multipart([ident, msgpack.packb([env[0], 3, env[2], ["0.1.0", 1]])])
    s.close(linger=0); ctx.term()
""")


def start_floor_server(endpoint: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, endpoint], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError("the raw pyzmq echo server did not start")
    return proc


# ------------------------------------------------------------------ features still being built
def feature_arrays() -> str:
    """'' when shared-memory arrays (``Client.empty``/``free``) exist, else why not."""
    from actors.client import Client

    missing = [m for m in ("empty", "free") if not hasattr(Client, m)]
    return f"feature not available yet (actors.Client has no {', '.join(missing)})" if missing else ""


def feature_audio() -> str:
    """'' when the processor can run on a real audio backend here, else why not."""
    from ensemble import Client

    missing = [m for m in ("note_on", "upload_sample") if not hasattr(Client, m)]
    if missing:
        return f"feature not available yet (ensemble.Client has no {', '.join(missing)})"
    try:
        import audio
    except ImportError as exc:
        return f"feature not available yet (audio: {exc})"
    lacking = [n for n in ("Engine", "SoundDeviceBackend", "load_sounddevice") if not hasattr(audio, n)]
    if lacking:
        return f"feature not available yet (audio has no {', '.join(lacking)})"
    try:
        ok = subprocess.run(["jack_lsp"], capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        return "no JACK server here (start one: jackd -R -d dummy -r 48000 -p 256 &)"
    return ""


def feature_bridges() -> str:
    """'' when instrument scripts with run_sync/run_async can be loaded into a daemon, else why not."""
    from ensemble import Client

    try:
        from controller import script
    except ImportError as exc:
        return f"feature not available yet (controller.script: {exc})"
    missing = [f"controller.script.{m}" for m in ("run_sync", "run_async", "get_time", "set_parameter")
               if not hasattr(script, m)]
    missing += [f"Client.{m}" for m in ("load_script", "get_param", "set_param") if not hasattr(Client, m)]
    return f"feature not available yet (no {', '.join(missing)})" if missing else ""

"""Peers and floors that need setting up: Ray, the raw pyzmq echo server, and feature detection.

A peer that is not installed (or too slow to start for ``--quick``) is
reported as skipped with the reason, never replaced by a made-up number.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

from bench._daemon import ROOT, pythonpath

RAY_CPUS = 2  # the peer runs with as many CPUs as ensemble has workers in the comparisons


class RaySession:
    """Ray (``ray.init(num_cpus=2, include_dashboard=False)``) for a case's Ray peer, in a child process of its
    own (``bench._ray_peer``): :meth:`measure` starts it, reads the samples back and waits for the machine to be
    quiet again.

    The bench's own process never imports Ray.  Ray's driver puts 26 threads
    in the process that starts it (12 stay after ``ray.shutdown()``) and its
    raylet, GCS and workers share the two cores: in the bench's process they
    slowed the contenders measured after them (``Executor.submit`` 18.2k
    jobs/s in full run C against 30.4k in a Ray-free copy of the same case).
    A case measures its other contenders first, then its Ray peer.
    """

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.reason = ""  # set once Ray cannot be used here; measure() returns None from then on
        self.starts = 0
        self.init_seconds = 0.0  # over every start
        self.settle_seconds = 0.0  # after each start: Ray's first tasks, then the machine quiet again
        self.quiet_seconds = 0.0  # after each child: the machine quiet again

    def measure(self, kind: str, timeout: float = 900.0, **params: Any) -> Any:
        """The samples of ``bench._ray_peer``'s ``kind`` measured with ``params`` in a child process; None with
        :attr:`reason` set when Ray is not available here (or failed: the reason says how)."""
        if self.reason:
            return None
        if importlib.util.find_spec("ray") is None:
            self.reason = "Ray not installed (pip install -e '.[bench]')"
            return None
        if self.quick:
            self.reason = "Ray's startup (~8 s on 2 cores) does not fit --quick; it runs in full mode"
            return None
        env = dict(os.environ, PYTHONPATH=pythonpath())
        try:
            proc = subprocess.run([sys.executable, "-m", "bench._ray_peer", kind, json.dumps(params)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:  # run() has killed and reaped the child
            self.reason = f"the Ray peer ({kind}) did not finish within {timeout:g} s"
            return None
        finally:
            self.quiet_seconds += quiet_machine()
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            self.reason = f"the Ray peer ({kind}) exited {proc.returncode}: {tail}"[:200]
            return None
        out = json.loads(lines[-1])
        self.starts += 1
        self.init_seconds += out["init_seconds"]
        self.settle_seconds += out["settle_seconds"]
        return out["samples"]


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


def quiet_machine(quiet: float = 0.25, limit: float = 30.0) -> float:
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

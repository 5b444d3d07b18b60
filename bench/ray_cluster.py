"""Case ``ray_cluster``: ensemble workers placed on a Ray cluster against Ray's own tasks and actors, same cluster.

One cluster for the case (``ray.cluster_utils.Cluster``: a head with no CPUs,
two nodes of two logical CPUs each, 80 MB object stores, no dashboard).  A
daemon with no local workers places two workers there (``[cluster] ray``,
``workers = 2``, one CPU each); this process joins the same cluster as a Ray
driver for the peers, which get the other two CPUs:

* throughput of no-op and 10 ms (CPU-bound) jobs: ``Client.submit_many``
  through the Ray-placed workers, against Ray tasks (``f.remote()`` then
  ``ray.get``) and two Ray actors (calls spread over both), in rotating order;
* submit-to-result p50, one job at a time, interleaved with the same through
  a Ray task and a Ray actor;
* cancel-to-killed of a job that ignores its abort (grace 100 ms), against
  ``ray.cancel(ref, force=True)`` of a task that never returns, until
  ``ray.get`` raises.

Full mode only (Ray's cluster start does not fit ``--quick``); skipped with
one line when Ray is not installed.  The cluster and the daemon are stopped at
the end; the run's shared Ray session is shut down first (one driver per
process) and may start again for later cases.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable

from bench import jobs as bj
from bench._daemon import BenchDaemon, cancel_to_killed, pythonpath
from bench._stats import Row, median, pct, row, skipped

CASE = "Ray cluster: ensemble workers placed by Ray vs Ray tasks/actors"
STORE = 80 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - polled again until the deadline
            pass
        time.sleep(0.05)
    raise TimeoutError(f"benchmark: {what} not reached within {timeout:g}s")


def _start_cluster(cluster_cls: Any, store: int) -> Any:
    """A head with no CPUs and two 2-CPU nodes, ``store`` bytes of object store each."""
    os.environ["PYTHONPATH"] = pythonpath()
    cluster = cluster_cls(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store,
                                                                "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, object_store_memory=store)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def case_ray_cluster(ctx: Any) -> list[Row]:
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return [skipped(CASE, "-", "Ray not installed (pip install -e '.[ray]')")]
    if ctx.quick:
        return [skipped(CASE, "-", "a Ray cluster's start (~15 s on 2 cores) does not fit --quick; full mode runs it")]
    t = time.perf_counter()
    cluster = _start_cluster(Cluster, STORE)
    try:
        ctx.notes.append(f"ray_cluster: a head and two 2-CPU nodes started in {time.perf_counter() - t:.1f} s "
                         "(not measured)")
        d = BenchDaemon(workers=0, ENSEMBLE_TCP=f"tcp://127.0.0.1:{_free_port()}", ENSEMBLE_CLUSTER_RAY=cluster.address,
                        ENSEMBLE_CLUSTER_WORKERS="2", ENSEMBLE_EXTENSIONS="")
        d.cli("keys", "init")
        with d:
            c = d.client(timeout=120)
            _wait(lambda: sum(a.name.startswith("remote:ray-") for a in c.status().actors) == 2, 120,
                  "two Ray-placed workers to join")
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            try:
                return _measure(ctx, ray, c)
            finally:
                ray.shutdown()
    finally:
        cluster.shutdown()


def _measure(ctx: Any, ray: Any, c: Any) -> list[Row]:
    from actors.client import make_spec

    task_noop = ray.remote(num_cpus=1)(bj.plain_noop)
    task_burn = ray.remote(num_cpus=1)(bj.plain_burn)

    @ray.remote(num_cpus=0)
    class Peer:
        def noop(self) -> None:
            return None

        def burn(self, seconds: float) -> int:
            return bj.plain_burn(seconds)

    actors = [Peer.remote() for _ in range(2)]
    ray.get([a.noop.remote() for a in actors])

    def ens(fn: str, args: list[Any], k: int) -> None:
        handles = c.submit_many([make_spec(fn, args, {}) for _ in range(k)])
        for h in handles:
            if h.wait(300).state != "done":
                raise RuntimeError(f"{fn} ended {h.info.state}: {h.info.error_message}")

    n_noop, n_burn, rounds = 2000, 200, 3
    contenders: dict[str, dict[str, Callable[[int], Any]]] = {
        "no-op": {
            "ensemble": lambda k: ens("bench.jobs:noop", [], k),
            "Ray tasks": lambda k: ray.get([task_noop.remote() for _ in range(k)]),
            "Ray actors": lambda k: ray.get([actors[i % 2].noop.remote() for i in range(k)]),
        },
        "10 ms": {
            "ensemble": lambda k: ens("bench.jobs:burn", [0.01], k),
            "Ray tasks": lambda k: ray.get([task_burn.remote(0.01) for _ in range(k)]),
            "Ray actors": lambda k: ray.get([actors[i % 2].burn.remote(0.01) for i in range(k)]),
        },
    }
    rows: list[Row] = []
    for kind, sides in contenders.items():
        n = n_noop if kind == "no-op" else n_burn
        rates: dict[str, list[float]] = {name: [] for name in sides}
        items = list(sides.items())
        for name, fn in items:
            fn(max(20, n // 10))  # warm-up, discarded
        for r in range(rounds):
            for name, fn in items[r % 3:] + items[:r % 3]:
                t = time.perf_counter()
                fn(n)
                rates[name].append(n / (time.perf_counter() - t))
        m = {k: median(v) for k, v in rates.items()}
        note = f"median of {rounds} rounds x {n} jobs, rotating order; 2 ensemble workers vs 2 CPUs for Ray"
        rows.append(row(CASE, f"{kind} throughput", m["ensemble"], "jobs/s", "Ray tasks", m["Ray tasks"], ">= 1.0x",
                        m["ensemble"] >= m["Ray tasks"], note))
        rows.append(row(CASE, f"{kind} throughput", m["ensemble"], "jobs/s", "Ray actors (2)", m["Ray actors"],
                        "(reported)"))
    rows += _latency(ray, c, task_noop, actors)
    rows += _cancel(ray, c)
    return rows


def _latency(ray: Any, c: Any, task_noop: Any, actors: list[Any]) -> list[Row]:
    ens, rt, ra = [], [], []
    perf = time.perf_counter
    for i in range(220):  # interleaved job by job; the first 20 are warm-up
        t0 = perf()
        info = c.submit("bench.jobs:noop").wait(60)
        t1 = perf()
        ray.get(task_noop.remote())
        t2 = perf()
        ray.get(actors[0].noop.remote())
        t3 = perf()
        if info.state != "done":
            raise RuntimeError(f"no-op job ended {info.state}")
        if i >= 20:
            ens.append(t1 - t0)
            rt.append(t2 - t1)
            ra.append(t3 - t2)
    ms = 1e3
    return [
        row(CASE, "submit-to-result p50", pct(ens, 50) * ms, "ms", "Ray task (ray.get(f.remote()))", pct(rt, 50) * ms,
            "<= 1.0x", pct(ens, 50) <= pct(rt, 50), f"200 each, interleaved; p99 ensemble {pct(ens, 99) * ms:.2f} ms, "
            f"Ray task {pct(rt, 99) * ms:.2f} ms"),
        row(CASE, "submit-to-result p50", pct(ens, 50) * ms, "ms", "Ray actor call", pct(ra, 50) * ms, "(reported)"),
    ]


def _cancel(ray: Any, c: Any) -> list[Row]:
    grace = 0.1
    ens: list[float] = []
    rc: list[float] = []
    hang = ray.remote(num_cpus=1, max_retries=0)(bj.plain_hang_marked)
    marks = tempfile.mkdtemp(prefix="ens-b-ray-")
    for i in range(5):
        ens.append(cancel_to_killed(c, grace)[0])
        mark = os.path.join(marks, str(i))
        ref = hang.remote(mark)
        _wait(lambda: os.path.exists(mark), 60, "the Ray task to run")
        t = time.perf_counter()
        ray.cancel(ref, force=True)
        try:
            ray.get(ref, timeout=60)
        except Exception:  # noqa: BLE001 - TaskCancelledError or WorkerCrashedError: it is gone
            pass
        rc.append(time.perf_counter() - t)
    shutil.rmtree(marks, ignore_errors=True)
    worst = max(ens)
    return [row(CASE, "cancel-to-killed max", worst * 1e3, "ms", "ray.cancel(force=True) until ray.get raises",
                max(rc) * 1e3, "<= grace + 50 ms", worst <= grace + 0.05,
                f"5 each; job ignores its abort, grace {grace * 1e3:.0f} ms; p50 ensemble {pct(ens, 50) * 1e3:.1f} ms, "
                f"Ray {pct(rc, 50) * 1e3:.1f} ms")]



# ================================================================== arrays: the frame vs Ray's object store
ARRAYS_CASE = "Ray cluster: array jobs through the frame vs Ray's object store"
ARRAY_STORE = 400 * 1024 * 1024  # per node: a 64 MB argument and result, and their copies on the way, fit


def case_ray_arrays(ctx: Any) -> list[Row]:
    """An array job (``bench.jobs:echo``: the argument back as the result) of 1, 2, 4, 8 and 64 MiB each way.

    Two daemons on one cluster, the same run, jobs interleaved one at a
    time: one with ``[cluster] object_store_min_bytes = 1 MiB`` (every
    size here goes through Ray's object store; the default is 2 MiB) and one with ``0``
    (every array in the frame, over CURVE tcp, as before).  Both with
    ``max_frame = 256 MiB`` so that 64 MiB fits the frame at all.  A Ray task
    returning its argument (``ray.get(f.remote(a))``) is reported beside.
    """
    try:
        import numpy as np
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return [skipped(ARRAYS_CASE, "-", "Ray not installed (pip install -e '.[ray]')")]
    if ctx.quick:
        return [skipped(ARRAYS_CASE, "-", "a Ray cluster's start does not fit --quick; full mode runs it")]
    cluster = _start_cluster(Cluster, ARRAY_STORE)
    try:
        common = {"ENSEMBLE_CLUSTER_RAY": cluster.address, "ENSEMBLE_CLUSTER_WORKERS": "2",
                  "ENSEMBLE_EXTENSIONS": "", "ENSEMBLE_DAEMON_MAX_FRAME": str(256 * 1024 * 1024)}
        store = BenchDaemon(workers=0, ENSEMBLE_TCP=f"tcp://127.0.0.1:{_free_port()}",
                            ENSEMBLE_CLUSTER_OBJECT_STORE_MIN_BYTES=str(1 << 20), **common)
        frame = BenchDaemon(workers=0, ENSEMBLE_TCP=f"tcp://127.0.0.1:{_free_port()}",
                            ENSEMBLE_CLUSTER_OBJECT_STORE_MIN_BYTES="0", **common)
        store.cli("keys", "init")
        frame.cli("keys", "init")
        with store, frame:
            cs, cf = store.client(timeout=300), frame.client(timeout=300)
            for c in (cs, cf):
                _wait(lambda c=c: sum(a.name.startswith("remote:ray-") for a in c.status().actors) == 2, 120,
                      "two Ray-placed workers to join")
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            try:
                return _arrays(np, ray, cs, cf)
            finally:
                ray.shutdown()
    finally:
        cluster.shutdown()


def _arrays(np: Any, ray: Any, cs: Any, cf: Any) -> list[Row]:
    echo = ray.remote(num_cpus=0)(bj.plain_echo)
    perf = time.perf_counter
    rows: list[Row] = []
    before = cs.status().daemon.counters.get("ray_store_bytes", 0)
    for mb, n in ((1, 15), (2, 11), (4, 11), (8, 9), (64, 5)):  # MiB
        a = np.random.default_rng(mb).integers(0, 255, mb << 20, dtype="u1")
        times: dict[str, list[float]] = {"store": [], "frame": [], "ray": []}
        for i in range(n + 1):  # the first round is warm-up; then interleaved, the order rotating
            sides = [("store", lambda: cs.submit("bench.jobs:echo", a).result(300)),
                     ("frame", lambda: cf.submit("bench.jobs:echo", a).result(300)),
                     ("ray", lambda: ray.get(echo.remote(a)))]
            for name, fn in sides[i % 3:] + sides[:i % 3]:
                t = perf()
                back = fn()
                took = perf() - t
                if back.shape != a.shape or back[-1] != a[-1]:
                    raise RuntimeError(f"{name}: the {mb} MiB array did not come back")
                del back
                if i:
                    times[name].append(took)
        s, f, r = (median(times[k]) * 1e3 for k in ("store", "frame", "ray"))
        note = (f"{n} jobs each, interleaved; argument and result {mb} MiB each way; "
                f"{2 * mb / (s / 1e3):.0f} MiB/s through the store, {2 * mb / (f / 1e3):.0f} MiB/s through the frame")
        rows.append(row(ARRAYS_CASE, f"{mb} MiB array job, submit-to-result p50", s, "ms",
                        "the same job through the frame (object_store_min_bytes = 0)", f, "(reported)", note=note))
        rows.append(row(ARRAYS_CASE, f"{mb} MiB array job, submit-to-result p50", s, "ms",
                        "Ray task returning its argument (ray.get(f.remote(a)))", r, "(reported)"))
    moved = cs.status().daemon.counters.get("ray_store_bytes", 0) - before
    if moved <= 0:
        raise RuntimeError("the store daemon moved nothing through Ray's object store")
    return rows

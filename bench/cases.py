"""The benchmark cases.  Each measures ensemble and its floor or peer in the same run.

Where both sides can run at once they are interleaved (blocks of samples or
whole rounds in turn, rotating the order), so a noisy neighbour slows both
alike; otherwise they run back to back.  Ray is the exception: its driver
lives in this process and its processes share the cores, so it runs only
while a Ray peer is measured, after a case's other contenders
(:class:`~bench._peers.RaySession`).  Peers run in pools made with the
``spawn`` start method: the per-task cost is the same as with ``fork``, and no
process is forked from one that already runs ZeroMQ or Ray threads.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import jobs as bj
from bench._daemon import ROOT, BenchDaemon, cancel_to_killed, rss
from bench._peers import RaySession, feature_arrays, feature_audio, feature_bridges, start_floor_server
from bench._stats import Row, median, pct, row, skipped
from bench.audio_jack import case_audio_jack
from bench.panel import case_panel
from bench.ray_cluster import case_ray_arrays, case_ray_cluster
from bench.remote import case_remote

CORES = len(os.sched_getaffinity(0))
SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Ctx:
    """What every case gets: the mode and the shared Ray session."""

    quick: bool
    ray: RaySession
    notes: list[str] = field(default_factory=list)

    def size(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def _ppe(n: int) -> concurrent.futures.ProcessPoolExecutor:
    ex = concurrent.futures.ProcessPoolExecutor(n, mp_context=SPAWN)
    list(ex.map(bj.plain_noop, range(4 * n)))  # every worker process started and warm
    return ex


def _wait(cond: Callable[[], Any], timeout: float = 60.0, interval: float = 0.01, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = cond()
        except Exception:  # noqa: BLE001 - polled again until the deadline
            v = None
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"benchmark: {what} not reached within {timeout:g}s")


def _rotate(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


# ================================================================== 1. ping
# The job path's cases (throughput, latency) run a jobs-only daemon, as a private ``Executor()`` starts one:
# no processor rendering on the null clock (at SCHED_FIFO 70) and no controller beside the jobs.
JOBS_ONLY = ""


def case_ping(ctx: Ctx) -> list[Row]:
    import msgpack
    import zmq

    case = "ping round trip"
    blocks, per = ctx.size((10, 50), (25, 200))
    ens: list[float] = []
    floor: list[float] = []
    with BenchDaemon(workers=0) as d:
        c = d.client()
        server = start_floor_server(f"ipc://{d.dir}/floor")
        zctx = zmq.Context()
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{d.dir}/floor")
        pack, unpack, perf = msgpack.packb, msgpack.unpackb, time.perf_counter
        try:
            def floor_block(out: list[float], k: int) -> None:
                for i in range(k):
                    t = perf()
                    sock.send(pack([1, 20, i + 1, []]))
                    unpack(sock.recv())
                    out.append(perf() - t)

            def ens_block(out: list[float], k: int) -> None:
                for _ in range(k):
                    t = perf()
                    c.ping()
                    out.append(perf() - t)

            sides: list[tuple[Callable[[list[float], int], None], list[float], int]] = [
                (floor_block, floor, per), (ens_block, ens, per)]
            for fn, _, k in sides:  # warm-up, discarded
                fn([], 20)
            for b in range(blocks):
                for fn, out, k in _rotate(sides, b):
                    fn(out, k)
        finally:
            try:
                sock.send(b"stop")
                server.wait(5)
            except (zmq.ZMQError, subprocess.TimeoutExpired):
                server.kill()
                server.wait()
            sock.close(linger=0)
            zctx.term()
    # after the others, in a child process of its own (see RaySession)
    rt = ctx.ray.measure("ping", blocks=blocks, per=per) or []
    us = 1e6
    rows = [
        row(case, "p50", pct(ens, 50) * us, "us", "raw pyzmq DEALER/ROUTER + msgpack", pct(floor, 50) * us,
            "<= 1.3x floor", pct(ens, 50) <= 1.3 * pct(floor, 50), f"{len(ens)} round trips each, interleaved in blocks",
            samples={"ensemble Client.ping": ens, "raw pyzmq + msgpack": floor, **({"Ray actor call": rt} if rt else {})}),
        row(case, "p99", pct(ens, 99) * us, "us", "raw pyzmq DEALER/ROUTER + msgpack", pct(floor, 99) * us,
            "(reported)"),
    ]
    if rt:
        rows.append(row(case, "p50 vs Ray", pct(ens, 50) * us, "us", "Ray actor call (ray.get(a.ping.remote()))",
                        pct(rt, 50) * us, "<= 0.2x (>= 5x faster than Ray)", pct(ens, 50) * 5 <= pct(rt, 50),
                        f"Ray p99 {pct(rt, 99) * us:,.0f} us; {len(rt)} calls, after the others, in a process of its "
                        "own"))
    else:
        rows.append(skipped(case, "p50 vs Ray", ctx.ray.reason, "<= 0.2x (>= 5x faster than Ray)", "Ray actor call"))
    return rows


# ================================================================== 2. codec
def case_codec(ctx: Ctx) -> list[Row]:
    import msgpack

    from actors.messages import Heartbeat, JobInfo, JobInfos, JobSpec, Submit, decode, encode

    case = "message encode+decode"
    specs = [JobSpec("examples.jobs:add", [i, 2.5], {"scale": 1.0}, f"job-{i}", 0, 500, 0.0, 0, True) for i in range(3)]
    now = 1.7e9
    infos = [JobInfo(100 + i, "examples.jobs:add", f"job-{i}", "done", 1.0, "finished", {"frames": 48000}, 3.5,
                     "", "", "", [], now, now + 0.001, now + 0.002, 1, "worker-1", 0) for i in range(3)]
    messages = [
        ("Submit (3 JobSpecs)", Submit(specs, True)),
        ("JobInfos (3 results)", JobInfos(infos)),
        ("Heartbeat (worker stats)", Heartbeat({"done": 1234, "pending": 3, "busy": True})),
    ]
    rounds, n = ctx.size((5, 2000), (15, 10000))
    rows = []
    tot_ens = tot_raw = 0.0
    for label, msg in messages:
        frame = encode(msg, 7)
        raw = msgpack.unpackb(frame)  # the very lists the envelope carries
        assert msgpack.packb(raw) == frame, "raw payload differs from ensemble's frame"
        loop = range(n)

        def ens_run() -> float:
            enc, dec, m = encode, decode, msg
            t = time.perf_counter()
            for _ in loop:
                dec(enc(m, 7))
            return float((time.perf_counter() - t) / n)

        def raw_run() -> float:
            pk, up, p = msgpack.packb, msgpack.unpackb, raw
            t = time.perf_counter()
            for _ in loop:
                up(pk(p))
            return float((time.perf_counter() - t) / n)

        e_t: list[float] = []
        r_t: list[float] = []
        for r in range(rounds):  # alternate which goes first; keep each side's best round
            for fn, out in _rotate([(ens_run, e_t), (raw_run, r_t)], r):
                out.append(fn())
        e, f = min(e_t), min(r_t)
        tot_ens += e
        tot_raw += f
        rows.append(row(case, label, e * 1e6, "us", "msgpack.packb/unpackb of the same lists", f * 1e6, "<= 1.0x",
                        e <= f, f"{len(frame)} bytes; best of {rounds} rounds x {n}"))
    rows.insert(0, row(case, "all three", tot_ens * 1e6, "us", "msgpack.packb/unpackb of the same lists", tot_raw * 1e6,
                       "<= 1.0x", tot_ens <= tot_raw, "sum of the three messages below"))
    return rows


# ================================================================== 3. throughput
def case_throughput(ctx: Ctx) -> list[Row]:
    from actors.client import Executor, make_spec

    case = "no-op job throughput (journal on, 2 workers)"
    # five rounds in full mode: multiprocessing.Pool.map's own rate moves 1.5-2x between rounds here (2.4-5.5M
    # items/s at chunksize 64 in one run), so a median of three could turn on one lucky or unlucky round
    rounds, n = ctx.size((2, 2000), (5, 20000))
    n_ray = min(n, 5000)  # Ray is ~10x slower: fewer tasks measure its rate as well and save a minute
    rates: dict[str, list[float]] = {}
    ppe = _ppe(2)
    pool = SPAWN.Pool(2)
    try:
        pool.map(bj.plain_noop, range(8), chunksize=1)
        with BenchDaemon(workers=2, ENSEMBLE_EXTENSIONS=JOBS_ONLY) as d:
            c = d.client()
            ex = Executor(config=d.config())
            capped = Executor(2, config=d.config())  # max_workers on a shared daemon: the daemon holds the cap
            try:
                def ens_many(k: int) -> None:
                    handles = []
                    for i in range(0, k, 5000):
                        handles += c.submit_many([make_spec("bench.jobs:noop", [], {}) for _ in range(min(5000, k - i))])
                    for h in handles:
                        h.wait(300)

                contenders: dict[str, tuple[int, Callable[[int], Any]]] = {
                    "Client.submit_many": (n, ens_many),
                    "Executor.map": (n, lambda k: list(ex.map(bj.plain_noop, range(k)))),
                    # 64 items a chunk: n items would be n / 64 chunks, over in 20-30 ms and mostly start-up; 16 n
                    # items (5,000 chunks in full mode) measure the steady rate
                    "Executor.map (chunksize=64)": (16 * n, lambda k: list(ex.map(bj.plain_noop, range(k),
                                                                                  chunksize=64))),
                    "Executor.submit": (n, lambda k: [f.result() for f in [ex.submit(bj.plain_noop) for _ in range(k)]]),
                    # a cap is one job a slot at a time, round trips through the daemon: fewer jobs a round
                    "Executor(2).submit, capped": (n // 4, lambda k: [f.result() for f in [
                        capped.submit(bj.plain_noop) for _ in range(k)]]),
                    "ProcessPoolExecutor.submit": (n, lambda k: [f.result() for f in [ppe.submit(bj.plain_noop)
                                                                                    for _ in range(k)]]),
                    "ProcessPoolExecutor.map": (n, lambda k: list(ppe.map(bj.plain_noop, range(k)))),
                    "multiprocessing.Pool.apply_async": (n, lambda k: [r.get() for r in [pool.apply_async(bj.plain_noop)
                                                                                          for _ in range(k)]]),
                    "multiprocessing.Pool.map (chunksize=1)": (n, lambda k: pool.map(bj.plain_noop, range(k), chunksize=1)),
                    "multiprocessing.Pool.map (chunksize=64)": (16 * n, lambda k: pool.map(bj.plain_noop, range(k),
                                                                                           chunksize=64)),
                }
                items = list(contenders.items())
                for name, (_, fn) in items:  # warm-up, discarded
                    fn(500)
                    rates[name] = []
                for r in range(rounds):
                    for name, (k, fn) in _rotate(items, r):
                        t = time.perf_counter()
                        fn(k)
                        rates[name].append(k / (time.perf_counter() - t))
            finally:
                ex.shutdown()
                capped.shutdown()
    finally:
        pool.close()
        pool.join()
        ppe.shutdown()
    ray_rates = ctx.ray.measure("throughput", rounds=rounds, n=n_ray)  # after the others, in a child (RaySession)
    if ray_rates:
        rates["Ray tasks"] = ray_rates
    m = {k: median(v) for k, v in rates.items()}
    note = f"median of {rounds} rounds x {n} jobs, contenders in rotating order"
    rows = [
        row(case, "Client.submit_many", m["Client.submit_many"], "jobs/s", "ProcessPoolExecutor(2).submit",
            m["ProcessPoolExecutor.submit"], ">= 1.0x", m["Client.submit_many"] >= m["ProcessPoolExecutor.submit"], note),
        row(case, "Client.submit_many", m["Client.submit_many"], "jobs/s", "multiprocessing.Pool(2).apply_async",
            m["multiprocessing.Pool.apply_async"], ">= 1.5x",
            m["Client.submit_many"] >= 1.5 * m["multiprocessing.Pool.apply_async"]),
        row(case, "Executor.submit loop", m["Executor.submit"], "jobs/s", "ProcessPoolExecutor(2).submit",
            m["ProcessPoolExecutor.submit"], ">= 1.5x", m["Executor.submit"] >= 1.5 * m["ProcessPoolExecutor.submit"]),
        row(case, "Executor.map", m["Executor.map"], "jobs/s", "ProcessPoolExecutor(2).map", m["ProcessPoolExecutor.map"],
            ">= 1.0x", m["Executor.map"] >= m["ProcessPoolExecutor.map"]),
        row(case, "Executor.map", m["Executor.map"], "jobs/s", "multiprocessing.Pool(2).map (chunksize=1)",
            m["multiprocessing.Pool.map (chunksize=1)"], ">= 1.0x",
            m["Executor.map"] >= m["multiprocessing.Pool.map (chunksize=1)"]),
        row(case, "Executor.map (chunksize=64)", m["Executor.map (chunksize=64)"], "items/s",
            "multiprocessing.Pool(2).map (chunksize=64)", m["multiprocessing.Pool.map (chunksize=64)"], ">= 1.0x",
            m["Executor.map (chunksize=64)"] >= m["multiprocessing.Pool.map (chunksize=64)"],
            f"{16 * n} items a round ({16 * n // 64} chunks)"),
    ]
    rows.append(row(case, "Executor(max_workers=2).submit loop, attached to the daemon (cap held there)",
                    m["Executor(2).submit, capped"], "jobs/s", "ProcessPoolExecutor(2).submit",
                    m["ProcessPoolExecutor.submit"], "(reported)",
                    note=f"{n // 4} jobs a round: held by at most 2 workers at once, each running one at a time"))
    if ray_rates:
        rows.append(row(case, "Client.submit_many", m["Client.submit_many"], "jobs/s", "Ray tasks (num_cpus=2)",
                        m["Ray tasks"], "(reported)",
                        note=f"Ray: {n_ray} tasks a round, its rounds after the others, in a process of its own"))
    else:
        rows.append(skipped(case, "Client.submit_many", ctx.ray.reason, "(reported)", "Ray tasks"))
    return rows


# ================================================================== 4. latency
def case_latency(ctx: Ctx) -> list[Row]:
    case = "submit-to-result latency (one job at a time)"
    n = ctx.size(150, 1000)
    ens: list[float] = []
    ppe_t: list[float] = []
    ppe = _ppe(2)
    try:
        with BenchDaemon(workers=2, ENSEMBLE_EXTENSIONS=JOBS_ONLY) as d:
            c = d.client()
            perf = time.perf_counter
            hops: list[tuple[float, float, float, float]] = []
            for i in range(n + 20):  # interleaved job by job; the first 20 are warm-up
                w0 = time.time()
                t = perf()
                info = c.submit("bench.jobs:noop").wait(30)
                t1 = perf()
                w1 = time.time()
                if info.state != "done":
                    raise RuntimeError(f"no-op job ended {info.state}: {info.error_message}")
                ppe.submit(bj.plain_noop).result(30)
                t2 = perf()
                if i >= 20:
                    hops.append((info.submitted - w0, info.started - info.submitted, info.finished - info.started,
                                 w1 - info.finished))
                    ens.append(t1 - t)
                    ppe_t.append(t2 - t1)
    finally:
        ppe.shutdown()
    rt = ctx.ray.measure("latency", n=n) or []  # after the others, in a child process of its own (see RaySession)
    ms = 1e3
    samples = {"ensemble Client.submit().result()": ens, "ProcessPoolExecutor(2)": ppe_t}
    if rt:
        samples["Ray task"] = rt
    h = [pct([x[k] for x in hops], 50) * 1e6 for k in range(4)]
    hop_note = (f"{n} jobs each, ensemble and PPE interleaved; hops (p50, from the job's timestamps): "
                f"client->daemon accepted {h[0]:.0f} us, ->worker started {h[1]:.0f} us, ->daemon finished "
                f"{h[2]:.0f} us, ->client result {h[3]:.0f} us")
    rows = [row(case, f"p{p}", pct(ens, p) * ms, "ms", "ProcessPoolExecutor(2).submit().result()", pct(ppe_t, p) * ms,
                "<= 1.0x", pct(ens, p) <= pct(ppe_t, p), hop_note if p == 50 else "",
                samples=samples if p == 50 else None) for p in (50, 99)]
    if rt:
        rows.append(row(case, "p50", pct(ens, 50) * ms, "ms", "Ray task (ray.get(f.remote()))", pct(rt, 50) * ms,
                        "(reported)", note=f"Ray p99 {pct(rt, 99) * ms:.2f} ms; after the others, in a process of "
                                           "its own"))
    else:
        rows.append(skipped(case, "p50", ctx.ray.reason, "(reported)", "Ray task"))
    return rows


# ================================================================== 4b. a private Executor from cold
_COLD = """
import sys, time
t0 = time.perf_counter()
KIND = sys.argv[1]
from bench import jobs
if KIND == "ensemble":
    from ensemble import Executor
    ex = Executor(2)
else:
    import concurrent.futures
    ex = concurrent.futures.ProcessPoolExecutor(2)
ex.submit(jobs.plain_noop).result(120)
t1 = time.perf_counter()
ex.shutdown()
print(t1 - t0)
"""


def case_cold(ctx: Ctx) -> list[Row]:
    """Time to the first result of a fresh ``Executor()`` (a private daemon: nothing else runs) vs a fresh pool."""
    case = "first result from cold (private Executor(2))"
    rounds = ctx.size(3, 7)
    with tempfile.TemporaryDirectory(prefix="ens-cold-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ENSEMBLE_NAME": "cold", "ENSEMBLE_RUN_DIR": f"{tmp}/run",
               "ENSEMBLE_STATE_DIR": f"{tmp}/state"}
        env.pop("ENSEMBLE_CONFIG", None)

        def once(kind: str) -> float:
            out = subprocess.run([sys.executable, "-c", _COLD, kind], env=env, capture_output=True, text=True,
                                 timeout=180, cwd=str(ROOT))
            if out.returncode != 0:
                raise RuntimeError(f"{kind} cold start failed: {out.stderr.strip()[-400:]}")
            return float(out.stdout.strip().splitlines()[-1])

        def interpreter() -> float:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
            return time.perf_counter() - t

        times: dict[str, list[float]] = {"ensemble": [], "ppe": [], "python": []}
        for r in range(rounds):
            for kind in (("ensemble", "ppe") if r % 2 == 0 else ("ppe", "ensemble")):
                times[kind].append(once(kind))
            times["python"].append(interpreter())
    ens, ppe, py = (median(times[k]) for k in ("ensemble", "ppe", "python"))
    budget = 1.5 * ppe + py
    return [row(case, "to first result", ens * 1e3, "ms", "ProcessPoolExecutor(2), to first result", ppe * 1e3,
                "<= 1.5x + one interpreter start", ens <= budget,
                f"median of {rounds} fresh processes each; one interpreter start (python -c pass) = {py * 1e3:.0f} ms, "
                f"so the budget is {budget * 1e3:.0f} ms; the private daemon starts a supervisor and 2 workers")]


# ================================================================== 5. scaling
def _spin_iterations(seconds: float) -> int:
    k = 200_000
    best = min(_time(lambda: bj.plain_spin(k)) for _ in range(3))
    return max(1000, int(k * seconds / best))


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def case_scaling(ctx: Ctx) -> list[Row]:
    from actors.client import make_spec

    case = "CPU-bound scaling (fixed CPU work per job)"
    job_s, per_worker, rounds = ctx.size((0.05, 4, 1), (0.12, 8, 2))
    iters = _spin_iterations(job_s)
    jobs = per_worker * CORES
    ens_t: dict[int, list[float]] = {n: [] for n in range(1, CORES + 1)}
    ppe_t: dict[int, list[float]] = {n: [] for n in range(1, CORES + 1)}
    with BenchDaemon(workers=1) as d:
        c = d.client()
        c.submit_many([make_spec("bench.jobs:spin", [iters], {}) for _ in range(2)])[-1].wait(60)  # warm
        for n in range(1, CORES + 1):
            c.scale(n)
            _wait(lambda: sum(a.role == "worker" and a.state == "running" for a in c.status().actors) == n,
                  what=f"{n} workers running")
            with _ppe(n) as ppe:
                for r in range(rounds):
                    for side in _rotate(["ens", "ppe"], r):
                        t = time.perf_counter()
                        if side == "ens":
                            for h in c.submit_many([make_spec("bench.jobs:spin", [iters], {}) for _ in range(jobs)]):
                                h.wait(300)
                            ens_t[n].append(time.perf_counter() - t)
                        else:
                            list(ppe.map(bj.plain_spin, [iters] * jobs))
                            ppe_t[n].append(time.perf_counter() - t)
    rows = []
    e1, p1 = min(ens_t[1]), min(ppe_t[1])
    for n in range(1, CORES + 1):
        e, p = e1 / (n * min(ens_t[n])), p1 / (n * min(ppe_t[n]))
        last = n == CORES
        rows.append(row(case, f"{n} worker(s)", e, "efficiency", f"ProcessPoolExecutor({n}), same jobs", p,
                        ">= 0.9 at N = cores" if last else "(reported)", e >= 0.9 if last else None,
                        f"{jobs} jobs x ~{job_s * 1000:.0f} ms CPU: {min(ens_t[n]):.2f}s vs {min(ppe_t[n]):.2f}s"
                        + (" (workers run at nice 5)" if n == 1 else ""),
                        samples={"ensemble": [e], "ProcessPoolExecutor": [p]}))
    return rows


# ================================================================== 6. cancel
def case_cancel(ctx: Ctx) -> list[Row]:
    case = "cancel to killed (job ignores abort, timeout 100 ms)"
    timeout = 0.1
    out: list[float] = []
    daemon_side: list[float] = []
    with BenchDaemon(workers=1) as d:
        c = d.client()
        for _ in range(ctx.size(3, 10)):
            _wait(lambda: any(a.role == "worker" and a.state == "running" for a in c.status().actors),
                  what="a running worker")
            took, h = cancel_to_killed(c, timeout)
            out.append(took)
            ev = {kind: ts for ts, kind, _ in h.events()}
            if "abort" in ev and "killed" in ev:
                daemon_side.append(ev["killed"] - ev["abort"])
    worst = max(out)
    return [row(case, "max", worst * 1e3, "ms", "the job's timeout", timeout * 1e3, "<= timeout + 20 ms",
                worst <= timeout + 0.02,
                f"{len(out)} cancels: p50 {pct(out, 50) * 1e3:.1f} ms (client cancel(block=True) until it returns); "
                f"daemon abort->killed p50 {pct(daemon_side, 50) * 1e3:.1f} ms")]


# ================================================================== 7. worker replacement
def case_replacement(ctx: Ctx) -> list[Row]:
    case = "worker replacement after kill -9"
    polled: list[float] = []
    floor: list[float] = []
    kills: list[tuple[float, int]] = []
    # each kill counts against the restart intensity: lift it, or the slot is marked failed mid-measurement
    with BenchDaemon(workers=2, ENSEMBLE_SUPERVISION_MAX_RESTARTS="100000") as d:
        c = d.client()
        worker_env = {**d.env}
        for _ in range(ctx.size(3, 12)):
            w = next(a for a in c.status().actors if a.name == "worker-1")
            time.sleep(0.2)
            wall, t = time.time(), time.perf_counter()
            os.kill(w.pid, signal.SIGKILL)
            _wait(lambda: (a := next(x for x in c.status().actors if x.name == "worker-1")).pid != w.pid
                  and a.state == "running", interval=0.005, what="the new worker-1")
            polled.append(time.perf_counter() - t)
            kills.append((wall, w.pid))
            # floor, interleaved: what any fresh worker costs here (interpreter + imports), at the workers' nice
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import os; os.nice(5); import actors.worker"], env=worker_env,
                           check=True)
            floor.append(time.perf_counter() - t)
        events = d.log_events()
    from_log, detect, start = [], [], []
    used = sum(1 for _, f in events if f.get("event") == "standby-used")
    for wall, pid in kills:
        exit_t = next((ts for ts, f in events if ts >= wall - 0.002 and f.get("event") == "exit"
                       and f.get("pid") == str(pid)), None)
        spawn = next(((ts, f) for ts, f in events if ts >= wall - 0.002 and f.get("event") == "spawn"
                      and f.get("name") == "worker-1"), None)
        if exit_t is None or spawn is None:
            continue
        ready = next((ts for ts, f in events if f.get("event") == "ready" and f.get("pid") == spawn[1].get("pid")), None)
        if ready is None:
            continue
        from_log.append(ready - wall)
        detect.append(exit_t - wall)
        start.append(ready - spawn[0])
    ms = 1e3
    rows = []
    if from_log:
        rows.append(row(case, "p50, daemon log", pct(from_log, 50) * ms, "ms",
                        "fresh python + import actors.worker", pct(floor, 50) * ms, "< 100 ms",
                        pct(from_log, 50) < 0.1,
                        f"kill -> new worker's ready (its first message) in the log; max {max(from_log) * ms:.0f} ms; "
                        f"kill -> reaped {pct(detect, 50) * ms:.0f} ms, spawn -> ready {pct(start, 50) * ms:.0f} ms; "
                        f"{used} of {len(kills)} replacements were the daemon's standby worker (it keeps one once it "
                        "had to replace a worker: the first replacement is a fresh interpreter)",
                        samples={"kill -> ready (log)": from_log, "fresh python + imports": floor}))
    rows.append(row(case, "p50, polled status", pct(polled, 50) * ms, "ms", "fresh python + import actors.worker",
                    pct(floor, 50) * ms, "< 100 ms", pct(polled, 50) < 0.1,
                    f"kill -> status shows the new pid running (5 ms polls); max {max(polled) * ms:.0f} ms"))
    return rows


# ================================================================== 8. ensemble up
_TREE_FLOOR = textwrap.dedent("""
    import subprocess, sys
    import actors.cli
    child = '''
    import subprocess, sys
    import actors.supervisor
    ps = [subprocess.Popen([sys.executable, "-c", "import " + m]) for m in sys.argv[1:]]
    for p in ps:
        p.wait()
    '''
    subprocess.run([sys.executable, "-c", child, "controller.actor", "audio.processor", "actors.worker", "actors.worker"],
                   check=True)
""")


def case_up(ctx: Ctx) -> list[Row]:
    case = "ensemble up until every actor is ready (2 workers)"
    ups: list[float] = []
    downs: list[float] = []
    floor: list[float] = []
    daemon_side: list[float] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(ctx.size(2, 5)):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _TREE_FLOOR], env=env, check=True)
        floor.append(time.perf_counter() - t)
        d = BenchDaemon(workers=2)
        with d:
            ups.append(d.up_seconds)
            ev = d.log_events()
            start = next(ts for ts, f in ev if f.get("event") == "start")
            readies = [ts for ts, f in ev if f.get("event") == "ready"]
            if len(readies) >= 4:
                daemon_side.append(max(readies[:4]) - start)
            t = time.perf_counter()
        downs.append(time.perf_counter() - t)  # includes `ensemble down` in __exit__
    ms = 1e3
    return [row(case, "p50", pct(ups, 50) * ms, "ms", "same process tree, imports only", pct(floor, 50) * ms, "< 1 s",
                pct(ups, 50) < 1.0,
                f"wall time of `ensemble up`; max {max(ups) * ms:.0f} ms; daemon start -> last actor ready "
                f"{pct(daemon_side, 50) * ms:.0f} ms (log); `ensemble down` {pct(downs, 50) * ms:.0f} ms")]


# ================================================================== 9. concurrent clients
def _client_proc(env: dict[str, str], cmds: Any, results: Any) -> None:
    from actors.client import Client, make_spec
    from actors.config import load_config

    with Client(config=load_config(env=env)) as c:
        c.ping()
        results.put("ready")
        while True:
            n = cmds.get()
            if n is None:
                return
            handles = []
            for i in range(0, n, 5000):
                handles += c.submit_many([make_spec("bench.jobs:noop", [], {}) for _ in range(min(5000, n - i))])
            for h in handles:
                h.wait(300)
            results.put("done")


def case_clients(ctx: Ctx) -> list[Row]:
    case = "4 concurrent clients (separate processes)"
    rounds, n = ctx.size((1, 4000), (3, 20000))
    one: list[float] = []
    four: list[float] = []
    with BenchDaemon(workers=2) as d:
        results = SPAWN.Queue()
        cmds = [SPAWN.Queue() for _ in range(4)]
        procs = [SPAWN.Process(target=_client_proc, args=(d.env, q, results), daemon=True) for q in cmds]
        try:
            for p in procs:
                p.start()
            for _ in procs:
                if results.get(timeout=60) != "ready":
                    raise RuntimeError("a client process did not start")

            def run(k: int) -> float:
                t = time.perf_counter()
                for q in cmds[:k]:
                    q.put(n // k)
                for _ in range(k):
                    results.get(timeout=300)
                return float(n / (time.perf_counter() - t))

            run(4)  # warm-up
            for r in range(rounds):
                for k in _rotate([1, 4], r):
                    (one if k == 1 else four).append(run(k))
        finally:
            for q in cmds:
                q.put(None)
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
    o, f = median(one), median(four)
    return [row(case, "throughput", f, "jobs/s", "1 client process, same total", o, ">= 0.9x", f >= 0.9 * o,
                f"{n} no-op jobs per round (4 x {n // 4} vs 1 x {n}), median of {rounds} rounds; clients connected "
                "before the clock starts")]


# ================================================================== 10. memory
def case_memory(ctx: Ctx) -> list[Row]:
    from actors.client import make_spec

    n = ctx.size(10_000, 100_000)
    case = f"daemon memory, {n:,} queued jobs (0 workers)"
    with BenchDaemon(workers=0) as d:
        c = d.client()
        c.submit_many([make_spec("bench.jobs:noop", [], {}) for _ in range(2000)])  # allocator and journal warm
        time.sleep(0.2)
        before = rss(d.pid)
        for _ in range(n // 10_000):
            c.submit_many([make_spec("bench.jobs:noop", [], {}) for _ in range(10_000)])
        time.sleep(0.2)
        after = rss(d.pid)
        queued = c.status().daemon.queued
        journal = sum(p.stat().st_size for p in (d.dir / "state").glob("jobs.sqlite3*"))
    per = (after - before) / n
    return [row(case, "RSS per queued job", per, "bytes", "", None, "<= 1024 bytes", per <= 1024,
                f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB; {queued:,} queued; journal on disk "
                f"{journal / 2**20:.1f} MiB")]


# ================================================================== 11. arrays
def case_arrays(ctx: Ctx) -> list[Row]:
    why = feature_arrays()
    case = "array in and out of a job"
    if why:
        return [skipped(f"100 MB {case}", "client.empty() array", why, "< 1 ms, flat in size"),
                skipped(f"100 MB {case}", "ordinary array", why, "one warm copy")]
    import numpy as np

    from actors.client import Executor

    sizes = ctx.size([10], [10, 100])
    reps = ctx.size(3, 5)
    rows = []
    shared_transfer: dict[int, float] = {}
    shared_total: dict[int, float] = {}  # the client.empty() job's whole round trip, beside Ray's
    with BenchDaemon(workers=1) as d, concurrent.futures.ProcessPoolExecutor(1, mp_context=SPAWN) as ppe, \
            Executor(config=d.config()) as ex:
        c = d.client()
        ppe.submit(bj.plain_noop).result()
        for mb in sizes:
            count = mb * 2**20 // 8
            shared = c.empty(count)
            shared[:] = 1.0
            ordinary = np.ones(count)
            warm = np.empty(count)
            warm[:] = 0.0
            blob = ordinary.tobytes()
            # each pattern in a run of its own, so each is in its steady state: a job that returns its
            # (copied) argument hands the pooled segment to the caller, and the next one needs a new segment
            patterns: list[tuple[str, int, Callable[[], Any]]] = [
                ("noop", reps * 4, lambda: c.submit("bench.jobs:echo", None).result(60)),
                ("shared", reps * 4, lambda: c.submit("bench.jobs:echo", shared).result(60)),
                ("ord_in", reps, lambda: c.submit("bench.jobs:nbytes", ordinary).result(60)),
                ("ord_io", reps, lambda: c.submit("bench.jobs:echo", ordinary).result(60)),
                ("copy_warm", reps, lambda: np.copyto(warm, ordinary)),
                ("copy_fresh", reps, lambda: _copy_fresh(ordinary)),
                ("ppe", reps, lambda: ppe.submit(bj.plain_echo, ordinary).result(120)),
                # bytes through a local Executor (pickled values): out of the pickle, through shared memory
                ("bytes", reps, lambda: ex.submit(bj.plain_echo, blob).result(120)),
                ("ppe_bytes", reps, lambda: ppe.submit(bj.plain_echo, blob).result(120)),
            ]
            t: dict[str, list[float]] = {}
            for key, k, fn in patterns:
                fn()  # warm-up, discarded
                t[key] = []
                for _ in range(k):
                    s = time.perf_counter()
                    fn()
                    t[key].append(time.perf_counter() - s)
            c.free(shared)
            m = {k: median(v) for k, v in t.items() if v}
            ms = 1e3
            over = {k: max(0.0, m[k] - m["noop"]) for k in ("shared", "ord_in", "ord_io")}
            shared_transfer[mb] = over["shared"]
            shared_total[mb] = m["shared"]
            label = f"{mb} MB {case}"
            rows.append(row(label, "client.empty() array, in+out", over["shared"] * ms, "ms",
                            "ProcessPoolExecutor (pickle), in+out", m["ppe"] * ms, "< 1 ms, flat in size",
                            over["shared"] < 0.001,
                            f"over a no-op job ({m['noop'] * ms:.2f} ms); the job gets and returns the same memory"))
            judged = mb == max(sizes)  # the goal is set at 100 MB; at 10 MB a copy is within a no-op job's jitter
            goal = "<= 1.5x one warm copy" if judged else "(reported; goal at the largest size)"
            rows.append(row(label, "ordinary array, in only", over["ord_in"] * ms, "ms", "one warm memcpy (numpy)",
                            m["copy_warm"] * ms, goal, over["ord_in"] <= 1.5 * m["copy_warm"] if judged else None,
                            "over a no-op job, jobs in a row; copied into a pooled, pre-faulted segment"))
            rows.append(row(label, "ordinary array, in+out", over["ord_io"] * ms, "ms", "one warm memcpy (numpy)",
                            m["copy_warm"] * ms, goal, over["ord_io"] <= 1.5 * m["copy_warm"] if judged else None,
                            f"over a no-op job, jobs in a row; a copy into fresh pages costs {m['copy_fresh'] * ms:.1f} ms "
                            "here (the result takes the pooled segment, so the next job needs a new one)"))
            rows.append(row(label, "bytes, in+out (Executor)", m["bytes"] * ms, "ms",
                            "ProcessPoolExecutor (pickle), in+out", m["ppe_bytes"] * ms, "(reported)",
                            note="a local Executor: bytes over jobs.inline_array_limit leave the pickle through "
                                 "shared memory (over 64 MiB they were refused before)"))
    ray_times = ctx.ray.measure("arrays", sizes=sizes, reps=reps)  # after the others, in a child (RaySession)
    for mb in sizes:
        label = f"{mb} MB {case}"
        if ray_times is None:
            rows.append(skipped(label, "vs Ray put/get", ctx.ray.reason, "(reported)", "Ray put + task + get"))
            continue
        rows.append(row(label, "client.empty() array, in+out", shared_total[mb] * 1e3, "ms",
                        "Ray put + task + get", median(ray_times[str(mb)]) * 1e3, "(reported)",
                        note="both include a task round trip; Ray's after the others, in a process of its own"))
    if len(shared_transfer) > 1:
        lo, hi = min(shared_transfer), max(shared_transfer)
        ctx.notes.append(f"arrays: client.empty() transfer {shared_transfer[lo] * 1e3:.2f} ms at {lo} MB vs "
                         f"{shared_transfer[hi] * 1e3:.2f} ms at {hi} MB")
    return rows


def case_values(ctx: Ctx) -> list[Row]:
    """Big plain values in and out of a job: a list of ints, a dict of floats (no arrays: they travel in frames)."""
    from actors.client import Executor

    n = ctx.size(250_000, 1_000_000)
    reps = ctx.size(3, 7)
    values = {f"list of {n:,} ints": list(range(n)), f"dict of {n // 4:,} str -> float": {
        str(i): float(i) for i in range(n // 4)}}
    rows = []
    with BenchDaemon(workers=2) as d, _ppe(2) as ppe, Executor(config=d.config()) as ex:
        c = d.client()
        ppe.submit(bj.plain_noop).result()
        for label, value in values.items():
            sides: dict[str, Callable[[], Any]] = {
                "client": lambda: c.submit("bench.jobs:plain_echo", value).result(120),
                "executor": lambda: ex.submit(bj.plain_echo, value).result(120),
                "ppe": lambda: ppe.submit(bj.plain_echo, value).result(120)}
            t: dict[str, list[float]] = {k: [] for k in sides}
            for fn in sides.values():
                fn()  # warm-up, discarded
            for i in range(reps):
                for key in _rotate(list(sides), i):
                    s = time.perf_counter()
                    sides[key]()
                    t[key].append(time.perf_counter() - s)
            m = {k: median(v) for k, v in t.items()}
            case = f"{label} in and out of a job"
            note = "in frames, journaled twice (arguments, result); sides interleaved"
            rows.append(row(case, "Client.submit, journal on", m["client"] * 1e3, "ms",
                            "ProcessPoolExecutor(2).submit", m["ppe"] * 1e3, "(reported)", None, note, samples=t))
            rows.append(row(case, "Executor.submit", m["executor"] * 1e3, "ms",
                            "ProcessPoolExecutor(2).submit", m["ppe"] * 1e3, "(reported)", None,
                            "pickled, as PPE does"))
    return rows


def _copy_fresh(a: Any) -> None:
    """One copy into pages never touched before (an anonymous mapping, as a new segment is)."""
    import mmap

    import numpy as np

    m = mmap.mmap(-1, a.nbytes)
    try:
        dst = np.frombuffer(m, dtype=a.dtype, count=a.size)
        np.copyto(dst, a.reshape(-1))
        del dst
    finally:
        m.close()


# ================================================================== 12. audio
_PLAIN_AUDIO = textwrap.dedent("""
    import json, sys, time, numpy as np
    from audio import Engine, NoteOn, SoundDeviceBackend, load_sounddevice
    seconds, voices = float(sys.argv[1]), int(sys.argv[2])
    load_sounddevice("plainbench")
    engine = Engine(48000, 256, 2, voices)
    engine.set_buffer(0, np.sin(np.arange(480000) * 0.01).astype(np.float32) * 0.1)
    with SoundDeviceBackend(engine, client_name="plainbench") as b:
        for i in range(voices):
            engine.post(NoteOn(40 + i % 48, 0.5))
        time.sleep(1.0)
        engine.reset_timing(); x0 = engine.stats().underflows
        time.sleep(seconds)
        s = engine.stats()
    print(json.dumps({"p999": s.load_p999, "p50": s.load_p50, "xruns": s.underflows - x0, "blocks": s.timed_blocks}))
""")


def case_audio(ctx: Ctx) -> list[Row]:
    import numpy as np

    case = "audio callback / period, 64 voices, 2 workers busy"
    why = feature_audio()
    if why:
        return [skipped(case, "p99.9", why, "<= 0.30", "plain sounddevice callback"),
                skipped("audio xruns", "count", why, "0", "plain sounddevice callback")]
    seconds, settle = ctx.size((2.0, 0.5), (60.0, 1.0))
    with BenchDaemon(workers=2, ENSEMBLE_AUDIO_BACKEND="sounddevice", ENSEMBLE_AUDIO_BLOCKSIZE="256") as d:
        c = d.client()
        c.upload_sample((np.sin(np.arange(480000) * 0.01) * 0.1).astype(np.float32), "tone", 48000)
        _wait(lambda: "tone" in d.actor("processor").stats.get("samples", ()), what="the sample in the processor")
        for i in range(64):
            c.note_on(40 + i % 48, 64)
        load = [c.submit("bench.jobs:burn", seconds + 3) for _ in range(2)]
        time.sleep(settle)
        s0 = d.actor("processor").stats
        time.sleep(seconds)
        s1 = d.actor("processor").stats
        for h in load:
            h.cancel()
    spin = f"import os, time\nos.nice(5)\nt = time.time()\nwhile time.time() - t < {seconds + 3}: pass"
    burners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]  # the same load as the workers'
    try:
        plain = subprocess.run([sys.executable, "-c", _PLAIN_AUDIO, str(seconds), "64"], capture_output=True,
                               text=True, timeout=seconds + 60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        for b in burners:
            b.kill()
            b.wait()
    p = json.loads(plain.stdout.strip().splitlines()[-1]) if plain.returncode == 0 and plain.stdout.strip() else None
    xr = float(s1["underflows"] - s0["underflows"])  # PortAudio's underflow flags (JACK's xruns, one block late)
    return [
        row(case, "p99.9", s1["load_p999"], "of period", "plain sounddevice callback, same engine",
            p["p999"] if p else None, "<= 0.30", s1["load_p999"] <= 0.30,
            f"{s1['blocks'] - s0['blocks']} blocks in {seconds:g} s on JACK (dummy driver); both beside two "
            "CPU-bound processes at nice 5" + ("" if p else "; the plain stream failed: " + plain.stderr[-200:])),
        row("audio xruns", f"in {seconds:g} s", xr, "xruns", "plain sounddevice callback",
            float(p["xruns"]) if p else None, "0", xr == 0),
    ]


# ================================================================== 13. run_sync / run_async
_BRIDGE_SCRIPT = textwrap.dedent("""
    import json, time
    from controller.script import define_parameter, get_sample_rate, get_time, run_async, run_sync, set_parameter

    N = int(__N__)
    rtt, sync = [], []

    def nothing():
        return 1

    async def on_note(event):
        t0 = get_time()
        await run_async(nothing)
        rtt.append((get_time() - t0) * get_sample_rate() / 1000 / 256)
        if len(rtt) == N:
            set_parameter("rtt", json.dumps(rtt))

    def arrived(sent):
        sync.append(time.monotonic() - sent)
        if len(sync) == N:
            set_parameter("sync", json.dumps(sync))

    def fire(value):
        if value:
            run_sync(arrived, time.monotonic())

    define_parameter("rtt", "rtt", "")
    define_parameter("sync", "sync", "")
    define_parameter("fire", "fire", 0, on_change=fire)
""")


def case_bridges(ctx: Ctx) -> list[Row]:
    why = feature_bridges()
    if why:
        return [skipped("run_async round trip", "p99", why, "p99 <= 2 blocks"),
                skipped("run_sync arrival", "p99", why, "next block")]
    n = ctx.size(40, 200)
    period = 256 / 48000
    with tempfile.TemporaryDirectory(prefix="ens-bs-") as tmp, BenchDaemon(workers=0) as d:
        script = Path(tmp) / "bridges.py"
        script.write_text(_BRIDGE_SCRIPT.replace("__N__", str(n)))
        c = d.client()
        c.load_script(str(script))
        _wait(lambda: d.actor("processor").stats.get("script") == str(script), what="the script in the processor")
        _wait(lambda: any(p.name == "fire" for p in c.params()), what="the script's parameters")
        for i in range(n):
            c.note_on(60, 64)
            c.set_param("fire", i + 1)
            time.sleep(0.012)
        rtt = json.loads(_wait(lambda: c.get_param("rtt"), timeout=60, what="run_async results"))
        sync = [s / period for s in json.loads(_wait(lambda: c.get_param("sync"), timeout=60, what="run_sync results"))]
    return [
        row("run_async round trip", "p99", pct(rtt, 99), "blocks", "", None, "p99 <= 2 blocks", pct(rtt, 99) <= 2,
            f"await -> resume in the processor's clock; p50 {pct(rtt, 50):.2f}, max {max(rtt):.2f}; {n} calls; "
            "256 frames at 48 kHz, null backend", samples={"run_async (blocks)": rtt}),
        row("run_sync arrival", "p99", pct(sync, 99), "blocks", "", None, "next block: p99 <= 1.25 blocks",
            pct(sync, 99) <= 1.25,
            f"controller call -> runs in the processor (wall clock); p50 {pct(sync, 50):.2f}, max {max(sync):.2f}; "
            "1 block of waiting for the next block start plus transit", samples={"run_sync (blocks)": sync}),
    ]


CASES: dict[str, Callable[[Ctx], list[Row]]] = {
    "ping": case_ping, "codec": case_codec, "throughput": case_throughput, "latency": case_latency, "cold": case_cold,
    "scaling": case_scaling, "cancel": case_cancel, "replacement": case_replacement, "up": case_up,
    "clients": case_clients, "memory": case_memory, "arrays": case_arrays, "values": case_values,
    "audio": case_audio,
    "bridges": case_bridges, "audio_jack": case_audio_jack, "ray_cluster": case_ray_cluster,
    "ray_arrays": case_ray_arrays, "panel": case_panel, "remote": case_remote,
}

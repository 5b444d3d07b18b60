"""The Ray peers' side of the benchmark, run in a child process: ``python -m bench._ray_peer KIND PARAMS_JSON``.

The bench's own process never imports Ray (:class:`bench._peers.RaySession`
starts this module for each case's Ray peer and reads its samples back).
Ray's driver puts 26 threads in the process that calls ``ray.init`` and
``ray.shutdown`` leaves 12 of them; measured in the bench's process, they
slowed the contenders that ran after them (``Executor.submit`` 18.2k jobs/s
in a full run against 30.4k in a Ray-free copy of the same case).

The child starts Ray, runs two tasks per CPU and waits for the machine to go
quiet (none of it measured), measures, stops Ray and prints one JSON line:
``{"samples": ..., "init_seconds": s, "settle_seconds": s}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable

from bench import jobs as bj
from bench._peers import RAY_CPUS, quiet_machine


def _ping(ray: Any, blocks: int, per: int) -> list[float]:
    @ray.remote
    class Pinger:
        def ping(self) -> int:
            return 1

    actor = Pinger.remote()  # type: ignore[attr-defined]
    out: list[float] = []
    for b in range(blocks + 1):  # the first block is a warm-up, discarded
        for _ in range(max(10, per // 4) if b else 20):
            t = time.perf_counter()
            ray.get(actor.ping.remote())
            if b:
                out.append(time.perf_counter() - t)
    return out


def _throughput(ray: Any, rounds: int, n: int) -> list[float]:
    """Tasks a second, one number a round of ``n`` tasks submitted together."""
    rf = ray.remote(bj.plain_noop)
    ray.get([rf.remote() for _ in range(500)])  # warm-up, discarded
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        ray.get([rf.remote() for _ in range(n)])
        rates.append(n / (time.perf_counter() - t))
    return rates


def _latency(ray: Any, n: int) -> list[float]:
    rf = ray.remote(bj.plain_noop)
    out = []
    for i in range(n + 20):  # the first 20 are warm-up
        t = time.perf_counter()
        ray.get(rf.remote())
        if i >= 20:
            out.append(time.perf_counter() - t)
    return out


def _arrays(ray: Any, sizes: list[int], reps: int) -> dict[str, list[float]]:
    """Seconds for ``ray.get(f.remote(ray.put(a)))`` of an ``mb``-MiB float64 array, ``reps`` times per size."""
    import numpy as np

    rf = ray.remote(bj.plain_echo)
    out: dict[str, list[float]] = {}
    for mb in sizes:
        ordinary = np.ones(mb * 2**20 // 8)
        times = []
        for i in range(reps + 1):  # the first is a warm-up, discarded
            s = time.perf_counter()
            ray.get(rf.remote(ray.put(ordinary)))
            if i:
                times.append(time.perf_counter() - s)
        out[str(mb)] = times
    return out


KINDS: dict[str, Callable[..., Any]] = {"ping": _ping, "throughput": _throughput, "latency": _latency,
                                        "arrays": _arrays}


def _settle(ray: Any) -> None:
    """``ray.init`` returns while Ray still starts its worker processes, each importing Ray for a second or
    more of CPU on this 2-core machine: run two tasks per CPU, then wait until the machine is quiet."""
    @ray.remote
    def nop() -> None:
        return None

    ray.get([nop.remote() for _ in range(2 * RAY_CPUS)])
    quiet_machine()


def main(argv: list[str]) -> int:
    kind, params = argv[0], json.loads(argv[1])
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    init = time.perf_counter() - t
    try:
        t = time.perf_counter()
        _settle(ray)
        settle = time.perf_counter() - t
        samples = KINDS[kind](ray, **params)
    finally:
        ray.shutdown()
    print(json.dumps({"samples": samples, "init_seconds": init, "settle_seconds": settle}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

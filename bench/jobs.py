"""Job functions for the benchmarks (the daemon's default allow-list has ``bench.jobs:*``).

``plain_*`` variants take no task argument: they are what ``Executor``,
``ProcessPoolExecutor``, ``multiprocessing.Pool`` and Ray run.
"""

from __future__ import annotations

import os
import time
from typing import Any

from actors import Task


def noop(task: Task, *args: Any) -> None:
    """Nothing at all (throughput and latency)."""


def plain_noop(*args: Any) -> None:
    """Nothing, without a task argument."""


def echo(task: Task, value: Any) -> Any:
    """Return the argument (arrays in and out)."""
    return value


def plain_echo(value: Any) -> Any:
    """Return the argument, without a task argument."""
    return value


def nbytes(task: Task, value: Any) -> int:
    """An array in, a number out (arrays in only)."""
    return int(value.nbytes)


def plain_nbytes(value: Any) -> int:
    return int(value.nbytes)


def burn(task: Task, seconds: float) -> int:
    """Spin the CPU for ``seconds`` of wall time (CPU-bound scaling)."""
    return plain_burn(seconds)


def plain_burn(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def spin(task: Task, iterations: int) -> int:
    """A fixed amount of CPU work (``iterations`` loop turns), whatever the wall time."""
    return plain_spin(iterations)


def plain_spin(iterations: int) -> int:
    x = 0
    for i in range(iterations):
        x += i * i & 7
    return x


def ignore_abort(task: Task, seconds: float = 60.0) -> None:
    """Never look at should_abort() (cancel to killed)."""
    time.sleep(seconds)


def plain_hang_marked(path: str) -> None:
    """Write ``path`` once running, then never return (a Ray task for force-cancel to kill)."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.01)


def blob(task: Task, size: int) -> bytes:
    """``size`` bytes as the result (results over tcp: the ``remote`` case)."""
    return b"x" * size

"""Job functions for the benchmarks (allowed by the default allow-list as ``bench.jobs:*``)."""

from __future__ import annotations

import time
from typing import Any


def noop(task: Any = None, *args: Any) -> None:
    """Nothing at all (throughput and latency floors)."""


def plain_noop(*args: Any) -> None:
    """Nothing, without a task argument (Executor, ProcessPoolExecutor, multiprocessing)."""


def echo(task: Any, value: Any) -> Any:
    """Return the argument (arrays in and out)."""
    return value


def plain_echo(value: Any) -> Any:
    """Return the argument, without a task argument (the pickle peers)."""
    return value


def burn(task: Any, seconds: float) -> int:
    """Spin the CPU for ``seconds`` (CPU-bound scaling)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def plain_burn(seconds: float) -> int:
    """``burn`` without a task argument."""
    return burn(None, seconds)


def ignore_abort(task: Any, seconds: float = 60.0) -> None:
    """Never look at should_abort() (cancel-to-kill)."""
    time.sleep(seconds)

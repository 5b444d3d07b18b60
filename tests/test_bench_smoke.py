"""The benchmarks' own plumbing, which the test suite does not otherwise run (`.ci/run` runs `bench --quick`, and
only warns when it fails): its modules import, and its leftovers check runs."""

from __future__ import annotations

import importlib


def test_the_bench_modules_import_and_its_leftovers_check_runs() -> None:
    for name in ("bench.__main__", "bench._daemon", "bench.cases", "bench.panel", "bench.remote", "bench.audio_jack"):
        importlib.import_module(name)
    from bench._daemon import leftovers

    found = leftovers()  # (it called the shared children() without a pid: a TypeError at the end of every run)
    assert set(found) == {"processes", "directories", "shm_segments"} and not found["directories"]

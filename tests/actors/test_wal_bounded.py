"""A steady stream of big results keeps the journal's write-ahead log bounded (it grew by all that was written).

The daemon is a private one, forked from this process (``ENSEMBLE_PRIVATE_START=fork``), so its journal runs with
the sizes this module patches: a checkpoint asked for after 1 MiB of values, the log's file cut back to 4 MiB.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import actors._journal as journal_module
from actors.client import Client

MiB = 1 << 20
_JOBS, _RESULT = 64, MiB


def _size(path: Any) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def test_a_steady_stream_of_big_results_keeps_the_log_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_PRIVATE_START", "fork")  # a fork of this process: its journal runs as patched here
    monkeypatch.setattr(journal_module, "_CHECKPOINT_BYTES", MiB)
    monkeypatch.setattr(journal_module, "_WAL_LIMIT_BYTES", 4 * MiB)
    with Client(private=True, max_workers=2) as c:
        assert c._private is not None
        wal = c._private.dir / "state" / "jobs.sqlite3-wal"
        largest, window = 0, []
        for _ in range(_JOBS):  # 64 MiB of results, 8 jobs in flight: commits one after another, no pause
            window.append(c.submit("bench.jobs:blob", _RESULT))
            if len(window) == 8:
                assert len(window.pop(0).result(60)) == _RESULT
                largest = max(largest, _size(wal))
        for h in window:
            assert len(h.result(60)) == _RESULT
        largest = max(largest, _size(wal))
    # it grew by all that was written (64 MiB): every checkpoint ended with commits written meanwhile, and SQLite
    # starts the log over only once all of it is copied. Now the writer copies the last of it between two commits,
    # and the commits wait for the checkpoints once the log outgrew its file: 4 MiB, and what came in one look (a
    # MiB of values) and one commit (the results of one iteration) past it
    assert largest <= 16 * MiB, f"the write-ahead log grew to {largest / MiB:.1f} MiB"

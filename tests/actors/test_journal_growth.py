"""The journal's size over time: its write-ahead log is checkpointed by bytes too and truncated back, and
pruning goes on in slices until nothing past retention is left."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

import pytest

import actors._journal as journal_module
from actors._journal import Journal
from tests.conftest import Daemon, wait_for

Make = Callable[..., Daemon]
MiB = 1 << 20


def _wal(path: Path) -> int:
    try:
        return os.path.getsize(str(path) + "-wal")
    except FileNotFoundError:
        return 0


def _insert_big(j: Journal, job_id: int, size: int) -> None:
    j.stage_insert(job_id, "m:f", "", os.urandom(size), 0, time.time())
    j.commit()


def test_the_log_is_checkpointed_after_megabytes_and_its_file_truncated_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a few rows of big values: far below the rows that ask for a checkpoint, but megabytes of log each
    monkeypatch.setattr(journal_module, "_CHECKPOINT_BYTES", 4 * MiB, raising=False)
    monkeypatch.setattr(journal_module, "_WAL_LIMIT_BYTES", 8 * MiB, raising=False)
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    try:
        largest = 0
        for job_id in range(1, 41):  # 40 MiB written
            _insert_big(j, job_id, MiB)
            largest = max(largest, _wal(path))
            wait_for(lambda: not j.checkpoint_busy, 30, what="the checkpoint asked for")
        assert largest <= 8 * MiB  # (it was 40 MiB: no checkpoint before 5,000 rows)
        assert os.path.getsize(path) >= 30 * MiB  # the checkpoints copied it into the database

        # a reader on an older snapshot keeps a checkpoint from copying all of the log: the log grows past the
        # limit meanwhile, and once the reader is gone the checkpoint is tried again and the file cut back
        reader = sqlite3.connect(str(path), isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM jobs").fetchone()
            for job_id in range(41, 61):
                _insert_big(j, job_id, MiB)
            assert _wal(path) > 8 * MiB
            assert j.checkpoint_busy
        finally:
            reader.close()
        wait_for(lambda: not j.checkpoint_busy, 30, what="the checkpoint retried once the reader left")
        _insert_big(j, 61, 1000)  # the next commit starts the log over and truncates its file
        assert _wal(path) <= 8 * MiB
    finally:
        j.close()


def test_pruning_is_sliced_and_goes_on_until_nothing_past_retention_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "_PRUNE_SLICE_JOBS", (10, 100, 400), raising=False)
    j = Journal(tmp_path / "jobs.sqlite3")
    try:
        old = time.time() - 3600
        gone_ctx = j.context_id("/gone", [])
        for job_id in range(1, 2001):
            j.stage_insert(job_id, "m:f", "", b"\x90", 0, old, "", gone_ctx)
            j.stage_event(job_id, "retried", "x", old)
            j.stage_finish(job_id, "done", old, b"\x01")
        j.stage_insert(2001, "m:f", "", b"\x90", 0, time.time())  # still queued: kept
        j.commit()
        j._handed.clear()  # as for a context of an earlier daemon's jobs
        slices = [j.prune(time.time() - 60)]
        while j.prune_behind:
            assert len(slices) < 100, "pruning does not end"
            slices.append(j.prune(time.time() - 60))
        assert sum(slices) == 2000 and max(slices) <= 400 and len(slices) >= 5
        assert [r[0] for r in j.db.execute("SELECT id FROM jobs")] == [2001]
        for table in ("results", "starts", "events", "contexts"):
            assert j.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
        assert j.prune(time.time() - 60) == 0 and not j.prune_behind
    finally:
        j.close()


def _old_jobs(path: Path, n: int) -> None:
    """A journal holding ``n`` jobs that ended an hour ago, written as a daemon writes them."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    j = Journal(path)
    try:
        old = time.time() - 3600
        for first in range(1, n + 1, 5000):
            for job_id in range(first, min(first + 5000, n + 1)):
                j.stage_insert(job_id, "tests.jobs:identity", "", b"\x90" * 40, 0, old)
                j.stage_finish(job_id, "done", old, b"\x01")
            j.commit()
        j.stage_horizon(n + 1)
        j.commit()
    finally:
        j.close()


def _rows(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        db.close()


@pytest.mark.slow
def test_a_daemon_prunes_a_backlog_of_many_slices_to_the_end_and_serves_jobs_meanwhile(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True, extra_env={"ENSEMBLE_JOBS_RETENTION": "1"})
    path = d.config.state_dir / "jobs.sqlite3"
    _old_jobs(path, 300_000)  # (it pruned 10,000 a minute after the start, then 10,000 every 10 minutes)
    d.up()
    c = d.client()
    assert c.submit("tests.jobs:identity", 7).result(30) == 7
    wait_for(lambda: _rows(path) <= 1, 60, interval=0.5, what="the backlog to be pruned")
    assert c.submit("tests.jobs:identity", 8).result(30) == 8

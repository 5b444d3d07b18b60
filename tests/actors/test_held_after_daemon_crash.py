"""A result a worker held back when its DAEMON was killed -9 (actors.worker._hold, actors._rundir.HeldResults).

The daemon's workers die with it (parent-death signal).  A short job's result
the worker still held back, or had sent but the daemon had not journaled, is
in the worker's held-results file in the run directory: the next ``up`` ends
that job with it, ``done``, before the rest of recovery retries the jobs that
had begun or ends them ``worker-lost`` (actors.supervisor ``_HeldAtCrash``,
actors._jobs ``JobBook.recover``).  It ran once, and its result reaches the
journal, ``ensemble result`` and a client that watches it again by id.

Deterministic: the short job makes its worker's main thread keep the GIL until
it blocks (tests.jobs:record_keeping_gil), and the job behind it creates its
marker and sleeps in C with the GIL held (tests.jobs:stuck_keeping_gil), so
from the moment the result is held the worker's loop thread, which would send
it after 10 ms, never runs again: when the marker exists, the result is held
and was never sent.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from actors._jobs import JobBook
from actors._journal import Journal
from actors._rundir import HeldResults, RunDir, StartedLog
from actors.client import make_spec
from actors.messages import ArrayHandle, JobDone, JobsDone, JobSpec, Limits, encode
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for


# --------------------------------------------------------------------------------- recovery, no sockets
def test_recovery_ends_unfinished_jobs_with_held_results_never_twice_and_never_with_a_removed_segment(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from actors.supervisor import _HeldAtCrash
    from actors.worker import _ITEM_AT

    run = RunDir(tmp_path / "run")
    run.create()
    journal = Journal(tmp_path / "jobs.sqlite3")
    book = JobBook(journal)
    ended, queued, running, arrays, garbled, untouched = book.accept([JobSpec("m:f")] * 6, 1.0)
    for jid in (ended, running):
        book.start(book.jobs[jid], "worker-1", 2.0, 0.0)
    book.finish(book.jobs[ended], "done", 3.0, "its result")
    journal.commit()
    journal.close()
    prefix = "ensemble.t.0."
    records = {ended: JobDone(ended, True, "again"), queued: JobDone(queued, True, [7], started=2.5, status="s"),
               running: JobDone(running, False, None, "ValueError", "no", "Traceback ..."),
               arrays: JobDone(arrays, True, [ArrayHandle(prefix + "1.1", "<f8", (4,), 0)])}
    held = HeldResults(run.held_file("worker-1.1"))
    for jid, done in records.items():
        held.add(jid, encode(JobsDone([done]))[_ITEM_AT:])
    held.add(garbled, b"\xc1")
    held.close()
    began = StartedLog(run.started_file("worker-1.1"))
    for jid in (queued, running, arrays, garbled):
        began.record(jid)
    began.close()

    journal = Journal(tmp_path / "jobs.sqlite3")
    try:
        book = JobBook(journal)
        returned = _HeldAtCrash(run.take_all_held(), Limits(), prefix)
        assert book.recover(4.0, run.take_all_started(), returned.take) == (1, 0, 2)
        journal.commit()
        assert returned.ended == 2 and list(book.jobs) == [untouched]
        infos = book.infos([ended, queued, running, arrays, garbled])
        assert (infos[ended].state, infos[ended].result) == ("done", "its result")  # not twice
        got = infos[queued]
        assert (got.state, got.result, got.status, got.attempts, got.worker, got.started) == \
            ("done", [7], "s", 1, "worker-1", 2.5)
        got = infos[running]
        assert (got.state, got.error_type, got.error_message, got.attempts, got.started) == \
            ("failed", "ValueError", "no", 1, 2.0)
        assert infos[arrays].state == infos[garbled].state == "worker-lost"  # as begun, no retries
        assert not list(run.path.glob("held.*")) and not list(run.path.glob("started.*"))
    finally:
        journal.close()
    logged = caplog.text
    assert f"event=held-result-unrecoverable job={arrays} worker=worker-1.1" in logged
    assert f"event=bad-held-result job={garbled} worker=worker-1.1" in logged


# --------------------------------------------------------------------------------- through a daemon
def _journal_state(d: Daemon, jid: int) -> str:
    db = sqlite3.connect(f"file:{d.base / 'state' / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        return str(db.execute("SELECT state FROM job_rows WHERE id=?", (jid,)).fetchone()[0])
    finally:
        db.close()


def test_a_result_held_when_the_daemon_was_killed_ends_done_with_it_at_the_next_up(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    # no heartbeat timeout in the test's time: the daemon must not replace the stuck worker before it dies
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "600"})
    d.up()
    runs, marker = tmp_path / "runs", tmp_path / "stuck"
    c = d.client(timeout=60)
    # in one submit: a fresh daemon hands its worker both at once, so the short job's result is held back
    short, stuck = c.submit_many([make_spec("tests.jobs:record_keeping_gil", [str(runs)], {}),
                                  make_spec("tests.jobs:stuck_keeping_gil", [str(marker)], {})])
    wait_for(marker.exists, 60, what="the job behind the short one to hold the GIL in C")
    held = d.base / "run" / "held.worker-1.1"
    assert short.id in dict(HeldResults.read(held))  # the result is in the file...
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its worker to die")
    assert _journal_state(d, short.id) in ("queued", "running")  # ...and never reached the dead daemon's journal

    d.up()
    info = short.wait(120)  # the handle from before the crash: its client watches it again on the new daemon
    assert info.state == "done" and info.result == short.id and info.worker == "worker-1", info
    assert info.attempts == 1 and info.started > 0, info
    assert [line.split()[0] for line in runs.read_text().splitlines()] == [str(short.id)]  # it ran once
    lost = stuck.wait(120)  # it had begun, no retries: it is not run again
    assert lost.state == "worker-lost" and "no retry was left" in lost.error_message, lost
    assert d.client(timeout=60).job(short.id).result(60) == short.id  # a client attaching by id
    assert d.cli("result", str(short.id)).stdout.strip() == str(short.id)
    assert _journal_state(d, short.id) == "done"
    recovered = (d.base / "state" / "daemon.log").read_text().rsplit("event=recover ", 1)[-1].splitlines()[0]
    assert recovered == "queued=0 requeued=0 worker_lost=1 held_results=1", recovered
    d.down()
    assert not list((d.base / "run").glob("held.*")) and not list((d.base / "run").glob("started.*"))

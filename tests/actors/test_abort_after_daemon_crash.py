"""A cancel or a deadline the daemon acted on survives its kill -9 (actors._jobs ``JobBook.abort``, ``recover``).

An abort (``Client.cancel``, ``ensemble cancel``, a job's deadline) is staged
in the journal as the job's ``abort`` event, and the worker is told only once
the commit that writes it is done (``JobBook.durable_aborts``), as a client
hears of its submit only once its jobs are written.  So a daemon killed at any
instant after it acted leaves the abort in its journal, and the next ``up``
ends the job ``cancelled`` (``JobCancelled``, or ``JobTimeout`` for the
deadline) instead of running it again or ending it ``worker-lost``.  Before,
recovery never read the event: a job with retries ran again, one without ended
``worker-lost``.

Deterministic: the job ignores its abort (it sleeps on, with a grace of
minutes, so it is never killed), and the daemon is killed once the cancel is
acknowledged or once the job has seen its deadline's abort.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Callable

import pytest

from actors import Task
from actors._jobs import JobBook
from actors._journal import Journal
from actors.messages import JobDone, JobSpec
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for


def ignore_abort(task: Task, runs: str, aborted: str) -> None:
    """A job: append '<job id> <pid>' to ``runs`` (O_APPEND: one line per execution), then ignore its abort,
    writing its reason to ``aborted`` once it sees it, and sleep on (until killed)."""
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{task.job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    while True:
        if task.should_abort() and not os.path.exists(aborted):
            Path(aborted + ".tmp").write_text(task.abort_reason)
            os.replace(aborted + ".tmp", aborted)
        time.sleep(0.01)


# --------------------------------------------------------------------------------- the job book, no sockets
def _book(path: Path) -> tuple[Journal, JobBook]:
    journal = Journal(path)
    return journal, JobBook(journal)


def test_an_abort_reaches_its_worker_only_once_the_commit_that_writes_it_is_done(tmp_path: Path) -> None:
    journal, book = _book(tmp_path / "jobs.sqlite3")
    try:
        (jid,) = book.accept([JobSpec("m:f", deadline=5.0)], 1.0)
        journal.commit()
        job = book.jobs[jid]
        book.start(job, "worker-1", 2.0, 0.0)
        book.abort(job, "cancel")
        assert job.abort_reason == "cancel"
        assert book.durable_aborts() == []  # staged, not written: the worker must not hear of it yet
        journal.commit_async()  # in the writer thread, as a busy daemon commits
        assert book.durable_aborts() == [] or journal.done_seq == journal.started_seq
        wait_for(journal.collect, 30, what="the writer thread's commit")
        assert book.durable_aborts() == [job]
        assert book.durable_aborts() == []  # each once
        book.abort(job, "deadline")  # a second abort changes nothing
        journal.commit()
        assert job.abort_reason == "cancel" and book.durable_aborts() == []
        assert [e[1:] for e in journal.events(jid)] == [["abort", "cancel"]]
        # a job that ended before its abort was written is not handed out
        (other,) = book.accept([JobSpec("m:f")], 3.0)
        journal.commit()
        book.abort(book.jobs[other], "cancel")
        book.finish(book.jobs[other], "cancelled", 4.0, error_type="JobCancelled", error_message="cancelled")
        journal.commit()
        assert book.durable_aborts() == []
    finally:
        journal.close()


def test_recovery_ends_jobs_whose_cancel_or_deadline_was_journaled_and_reruns_no_other(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    journal, book = _book(path)
    specs = [JobSpec("m:f", retries=1), JobSpec("m:f", retries=1, deadline=2.5), JobSpec("m:f", retries=1),
             JobSpec("m:f"), JobSpec("m:f", retries=1), JobSpec("m:f", retries=1), JobSpec("m:f", retries=1)]
    cancelled, timed_out, unstarted, lost, stopped, returned, plain = book.accept(specs, 1.0)
    journal.commit()
    for jid in (cancelled, timed_out, lost, stopped, returned, plain):
        book.start(book.jobs[jid], "worker-1", 2.0, 0.0)
    for jid, reason in ((cancelled, "cancel"), (timed_out, "deadline"), (unstarted, "cancel"), (lost, "cancel"),
                        (stopped, "shutdown"), (returned, "cancel")):
        journal.stage_event(jid, "abort", reason)  # an abort as JobBook.abort journals it (and older releases did)
    journal.commit()
    journal.close()  # the daemon's end, as a kill -9 leaves it: every abort written, no job ended

    journal, book = _book(path)
    try:
        held = {returned: ("worker-1", JobDone(returned, True, "partial", started=2.0))}
        assert book.recover(5.0, frozenset(), lambda jid: held.pop(jid, None)) == (0, 2, 0)
        journal.commit()
        assert sorted(book.jobs) == [stopped, plain]  # only they are queued again (a shutdown is no one's cancel)
        infos = book.infos([cancelled, timed_out, unstarted, lost, returned])
        for jid in (cancelled, lost):
            info = infos[jid]
            assert (info.state, info.error_type, info.attempts) == ("cancelled", "JobCancelled", 1), info
            assert info.error_message == "cancelled; the daemon stopped before the job returned", info
        info = infos[timed_out]
        assert (info.state, info.error_type) == ("cancelled", "JobTimeout"), info
        assert info.error_message == "deadline of 2.5s passed; the daemon stopped before the job returned", info
        info = infos[unstarted]
        assert (info.state, info.error_type, info.error_message, info.attempts) == \
            ("cancelled", "JobCancelled", "cancelled before it started", 0), info
        info = infos[returned]  # it returned after its cancel: cancelled, with what it returned (as a live daemon does)
        assert (info.state, info.error_type, info.error_message, info.result) == \
            ("cancelled", "JobCancelled", "cancelled", "partial"), info
        assert book.counters["cancelled"] == 5 and book.counters["worker-lost"] == 0
    finally:
        journal.close()
    journal, book = _book(path)  # a second recovery finds nothing more to end: each ended once
    try:
        assert book.recover(6.0) == (2, 0, 0)  # the two requeued before, queued now
        assert sorted(book.jobs) == [stopped, plain]
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 5
        finally:
            db.close()
    finally:
        journal.close()


# --------------------------------------------------------------------------------- through a daemon
def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("how", ["cancel", "deadline"])
@pytest.mark.slow  # a daemon killed and brought up again: ~2 s each
def test_a_job_cancelled_or_past_its_deadline_when_the_daemon_is_killed_ends_so_at_the_next_up(
        make_daemon: Callable[..., Daemon], tmp_path: Path, how: str) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    runs, aborted = tmp_path / "runs", tmp_path / "aborted"
    c = d.client(timeout=60)
    # retries=1: a recovery that forgot the abort would run it again; a grace of 10 minutes: it is never killed
    job = c.submit(f"{__name__}:ignore_abort", str(runs), str(aborted), retries=1, grace=600,
                   deadline=1.0 if how == "deadline" else None)
    wait_for(lambda: _lines(runs), 60, what="the job to start")
    if how == "cancel":
        assert d.cli("cancel", str(job.id)).stdout.strip() == f"job {job.id}: abort requested"
    else:  # the daemon acted on the deadline: the job was told
        wait_for(aborted.exists, 60, what="the job's deadline to pass and the job to be told")
        assert aborted.read_text() == "deadline"
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its worker to die")

    d.up()
    ended = wait_for(lambda: job.refresh().state not in ("queued", "dispatched", "running") or len(_lines(runs)) > 1,
                     60, what="the job to end, or to run again")
    info = job.refresh()
    assert len(_lines(runs)) == 1, (_lines(runs), info)  # it never ran again
    assert ended and info.state == "cancelled", info
    if how == "cancel":
        assert (info.error_type, info.error_message) == \
            ("JobCancelled", "cancelled; the daemon stopped before the job returned"), info
    else:
        assert (info.error_type, info.error_message) == \
            ("JobTimeout", "deadline of 1s passed; the daemon stopped before the job returned"), info
    assert info.attempts == 1, info
    assert d.cli("result", str(job.id), check=False).returncode != 0
    logged = (d.base / "state" / "daemon.log").read_text()
    assert "event=recover-aborted jobs=1 " in logged and "event=recover " not in logged  # nothing else to recover
    assert d.status().daemon.counters["jobs_cancelled"] == 1
    d.down()
    assert len(_lines(runs)) == 1
    assert not d.socket_files()



def die_on_abort(task: Task, runs: str) -> None:
    """A job: append '<job id> <pid>' to ``runs`` (one line per execution), then kill its own worker once it is
    told to abort (a job whose clean-up crashes its process)."""
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{task.job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    while not task.should_abort():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_job_whose_worker_dies_after_its_cancel_is_not_run_again(make_daemon: Callable[..., Daemon],
                                                                   tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    runs = tmp_path / "runs"
    job = d.client(timeout=60).submit(f"{__name__}:die_on_abort", str(runs), retries=1, grace=600)
    wait_for(lambda: _lines(runs), 60, what="the job to start")
    job.cancel()
    wait_for(lambda: job.refresh().state not in ("queued", "dispatched", "running") or len(_lines(runs)) > 1,
             60, what="the job to end, or to run again")
    info = job.refresh()
    assert len(_lines(runs)) == 1 and info.state == "cancelled", (_lines(runs), info)

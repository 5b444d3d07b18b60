"""Durability: the SQLite journal, recovery after restarts, and a daemon kill -9 in a submit burst."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from actors import ClientClosed, TransportError
from actors._errors import DaemonError
from actors._jobs import JobBook, pack_spec, unpack_spec
from actors._journal import TERMINAL, Journal
from actors._rundir import HeldResults, StartedLog
from actors.client import Client, make_spec
from actors.messages import JobSpec
from tests.conftest import Daemon, pid_alive, wait_for

Make = Callable[..., Daemon]


# --------------------------------------------------------------------------------- the journal, no sockets
@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = Journal(tmp_path / "jobs.sqlite3")
    yield j
    j.close()


def test_journal_uses_wal(journal: Journal) -> None:
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_nothing_is_written_before_commit_and_everything_after(journal: Journal, tmp_path: Path) -> None:
    book = JobBook(journal)
    ids = book.accept([JobSpec("tests.jobs:pid"), JobSpec("tests.jobs:pid")], time.time())
    other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"))
    try:
        assert other.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        journal.commit()
        assert other.execute("SELECT id, state FROM job_rows ORDER BY id").fetchall() == [(i, "queued") for i in ids]
    finally:
        other.close()


def test_a_commit_of_hundreds_of_jobs_writes_every_row_and_each_end_once(journal: Journal, tmp_path: Path) -> None:
    # rows go in statements of many rows each (128 a statement): 300 crosses two boundaries
    book = JobBook(journal)
    ids = book.accept([JobSpec("tests.jobs:pid", [i]) for i in range(300)], time.time())
    journal.commit()
    for jid in ids:
        journal.stage_finish(jid, "done", time.time(), b"\x01")
    journal.stage_finish(ids[0], "failed", time.time(), None, "Late", "a second end is ignored")
    journal.commit()
    other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"))
    try:
        rows = other.execute("SELECT id, state, spec IS NOT NULL FROM job_rows ORDER BY id").fetchall()
    finally:
        other.close()
    assert rows == [(jid, "done", 1) for jid in ids]


def _wake(journal: Journal, timeout: float = 30.0) -> bool:
    """Wait for the writer thread's eventfd (as the daemon's poller does), then collect."""
    import select

    readable, _, _ = select.select([journal.wake_fd], [], [], timeout)
    return bool(readable) and journal.collect()


def test_a_commit_in_the_writer_thread_is_numbered_and_collected(journal: Journal, tmp_path: Path) -> None:
    book = JobBook(journal)
    ids = book.accept([JobSpec("tests.jobs:pid") for _ in range(20)], time.time())
    journal.commit_async()
    assert journal.busy and journal.started_seq == journal.done_seq + 1 and not journal.dirty
    book.accept([JobSpec("tests.jobs:pid")], time.time())  # staged meanwhile: the next commit
    assert _wake(journal)
    assert not journal.busy and journal.done_seq == journal.started_seq
    other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"))
    try:
        assert other.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == len(ids)  # the one staged after: not yet
    finally:
        other.close()
    journal.commit()
    assert journal.done_seq == journal.started_seq and not journal.dirty


def test_a_read_waits_for_the_commit_in_flight(journal: Journal) -> None:
    book = JobBook(journal)
    ids = book.accept([JobSpec("tests.jobs:pid") for _ in range(50)], time.time())
    journal.commit_async()
    rows = journal.infos(ids)  # the connection is the writer's until its commit is recorded
    assert [r[0] for r in rows] == ids and not journal.busy


def test_a_failed_commit_in_the_writer_thread_reaches_the_loop_and_the_journal_goes_on(journal: Journal) -> None:
    book = JobBook(journal)
    (jid,) = book.accept([JobSpec("tests.jobs:pid")], time.time())
    journal.commit()
    journal.stage_insert(jid, "tests.jobs:pid", "", b"x", 0, time.time())  # the same id again: refused by SQLite
    journal.commit_async()
    with pytest.raises(DaemonError, match="write failed"):
        _wake(journal)
    assert not journal.busy
    (jid2,) = book.accept([JobSpec("tests.jobs:pid")], time.time())  # rolled back: the next commit works
    journal.commit()
    assert [r[0] for r in journal.infos([jid, jid2])] == [jid, jid2]


def test_the_write_ahead_log_is_checkpointed_beside_the_commits(journal: Journal, tmp_path: Path) -> None:
    db_file = tmp_path / "jobs.sqlite3"
    journal.commit()
    before = db_file.stat().st_size  # the schema only: every page written since lives in the log until a checkpoint
    book = JobBook(journal)
    for _ in range(60):
        book.accept([JobSpec("tests.jobs:pid", [b"x" * 200]) for _ in range(100)], time.time())
        journal.commit()
    # nothing in a commit checkpoints (wal_autocheckpoint=0): the checkpoint thread copies the pages back
    wait_for(lambda: db_file.stat().st_size > before + 500_000, what="the checkpoint thread to copy the log back")
    assert any(t.name == "journal-checkpoint" for t in threading.enumerate())


def test_a_result_is_recorded_exactly_once(journal: Journal) -> None:
    book = JobBook(journal)
    (jid,) = book.accept([JobSpec("tests.jobs:pid")], time.time())
    journal.commit()
    journal.stage_finish(jid, "done", time.time(), b"\x01")
    journal.stage_finish(jid, "failed", time.time(), None, "X", "second finish must not win")
    journal.commit()
    journal.stage_finish(jid, "cancelled", time.time(), None)
    journal.commit()
    row = journal.db.execute("SELECT state, result, error_type FROM job_rows WHERE id=?", (jid,)).fetchone()
    assert row == ("done", b"\x01", "")


def test_queue_is_priority_first_then_fifo() -> None:
    class NullJournal(Journal):
        def __init__(self) -> None:  # bookkeeping only: no file
            self._staged: list[Any] = []
            self.written_id = 1 << 62  # as if every row were written

        def next_id(self) -> int:
            return 1

        def stage_insert(self, *a: Any) -> None:
            self._staged.append(a)

        def stage_start(self, *a: Any) -> None:
            pass

    book = JobBook(NullJournal())
    specs = [JobSpec("m:f", name=n, priority=p) for n, p in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5)]]
    book.accept(specs, time.time())
    order = [j.spec.name for j in book.pop(10)]
    assert order == ["d", "b", "e", "a", "c"]
    assert book.queued == 0


def test_a_job_is_dispatched_only_once_its_row_is_written(tmp_path: Path) -> None:
    """The write-ahead rule: a daemon killed between handing a job out and writing its row would leave a job
    that ran unknown to the journal (and its id free to be handed out again), so the queue holds a job back until
    the commit that writes its row (synchronous or the writer thread's) is done."""
    j = Journal(tmp_path / "jobs.sqlite3")
    book = JobBook(j)
    now = time.time()
    first = book.accept([JobSpec("m:f") for _ in range(3)], now)
    assert book.pop(10) == [] and book.queued == 3
    j.commit()
    second = book.accept([JobSpec("m:f", priority=9)], now)  # better, but not written: the rest wait behind it
    assert book.pop(10) == []
    j.commit_async()
    wait_for(lambda: j.collect(), 10, what="the writer thread's commit")
    assert [job.id for job in book.pop(10)] == second + first
    third = book.accept([JobSpec("m:f", resources={"GPU": 1}), JobSpec("m:f")], now)
    assert book.pop(10, {"GPU": 1}) == []  # the fitting path holds them back too
    j.commit()
    assert [job.id for job in book.pop(10, {"GPU": 1})] == third
    j.close()


def test_the_first_jobs_of_a_big_submit_are_written_ahead_and_may_run_while_the_writer_writes_the_rest(
        tmp_path: Path) -> None:
    """``write_first``: the daemon writes the jobs idle workers take first at once, so a map's first thousands
    of jobs start before the writer thread has written them all; the numbered commits (what an acknowledgement
    waits for) do not move, only the write-ahead mark the queue goes by."""
    j = Journal(tmp_path / "jobs.sqlite3")
    book = JobBook(j)
    ids = book.accept([JobSpec("m:f", [i]) for i in range(100)], time.time(), context=("/w", ["/w"]))
    seq = j.done_seq
    assert not j.write_first(100) and not j.write_first(0)  # all of them, or none: that is a commit's work
    assert j.write_first(10)
    assert j.written_id == ids[9] and j.done_seq == j.started_seq == seq and j.staged_jobs() == 90
    other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"))
    try:
        assert [r[0] for r in other.execute("SELECT id FROM jobs ORDER BY id")] == ids[:10]
        assert other.execute("SELECT COUNT(*) FROM contexts").fetchone()[0] == 1  # the context the jobs name
    finally:
        other.close()
    assert [job.id for job in book.pop(100)] == ids[:10]  # the rest waits for its commit
    j.commit_async()
    assert not j.write_first(1)  # nothing is written beside a commit in flight
    assert _wake(j)
    assert [job.id for job in book.pop(100)] == ids[10:] and j.done_seq == seq + 1
    assert [r[0] for r in j.infos(ids)] == ids
    j.close()


def test_a_write_ahead_that_fails_leaves_its_jobs_staged_for_the_commit(journal: Journal) -> None:
    book = JobBook(journal)
    (old,) = book.accept([JobSpec("m:f")], time.time())
    journal.commit()
    ids = book.accept([JobSpec("m:f") for _ in range(5)], time.time())
    journal.stage_insert(old, "m:f", "", b"x", 0, time.time())  # an id written before: SQLite refuses the row
    journal._inserts.insert(0, journal._inserts.pop())  # ... first in line, so the write-ahead meets it
    assert not journal.write_first(3)
    assert journal.written_id == old and journal.staged_jobs() == 6 and not journal.db.in_transaction
    journal._inserts.pop(0)
    assert journal.write_first(3) and journal.written_id == ids[2]
    journal.commit()
    assert [r[0] for r in journal.infos(ids)] == ids


def test_a_failed_commit_gives_back_only_the_jobs_of_submits_not_written_ahead(journal: Journal) -> None:
    """When a commit fails (a full disk), the submits none of whose jobs is written are refused; one whose first
    jobs were written ahead (and may be running) keeps the rest, to be written when the disk has room."""
    book = JobBook(journal)
    partly = book.accept([JobSpec("m:f") for _ in range(6)], time.time())
    assert journal.write_first(2)
    after = book.accept([JobSpec("m:f") for _ in range(3)], time.time())
    assert journal.drop_unwritten(above=partly[-1]) == after
    assert journal.staged_jobs() == 4  # the partly written submit's rest
    journal.commit()
    assert [r[0] for r in journal.infos(partly + after)] == partly


def test_unfinished_jobs_are_listed_from_memory_as_the_journal_lists_them(journal: Journal,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`jobs --state running` (the panel asks every refresh) is answered without reading the journal's rows,
    with what the journal itself would answer: newest first, per owner, ``queued`` covering handed-out jobs."""
    book = JobBook(journal)
    now = time.time()
    ids = book.accept([JobSpec("m:f", [i]) for i in range(4)], now)
    ids += book.accept([JobSpec("m:f", [i]) for i in range(4)], now, owner="client:ann")
    journal.commit()  # a job is dispatched once its row is written
    popped = book.pop(5)  # dispatched: ids[0..4]
    for job in popped[:4]:
        book.start(job, "worker-1", now, time.monotonic())
    book.finish(popped[0], "done", now, 1)
    book.requeue(popped[1], "its worker died")
    journal.commit()
    cases = [(["running"], 10, None), (["running"], 1, None), (["queued"], 10, None), (["queued", "running"], 3, None),
             (["running"], 10, "client:ann"), (["queued"], 10, "client:ann"), (["queued"], 10, "client:bob")]
    from_journal = [[(r[0], book.jobs[r[0]].state) for r in journal.recent(*case)] for case in cases]
    assert from_journal[0] == [(ids[3], "running"), (ids[2], "running")]
    assert [jid for jid, _ in from_journal[2]] == [ids[7], ids[6], ids[5], ids[4], ids[1]]

    def no_rows(*_: Any) -> Any:
        raise AssertionError("unfinished jobs are all in memory: the journal's rows need not be read")

    monkeypatch.setattr(journal, "recent", no_rows)
    assert [[(i.id, i.state) for i in book.recent(*case)] for case in cases] == from_journal
    assert [(i.id, i.state) for i in book.recent(["dispatched"], 10)] == [(ids[4], "dispatched")]
    with pytest.raises(AssertionError):  # finished states come from the journal
        book.recent(["done"], 10)


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_while_the_journal_cannot_be_written_listings_say_why_and_down_stops(make_daemon: Make, small_disk: Path,
                                                                              tmp_path: Path) -> None:
    """A job that ended while the disk was full left its commit failing: a listing waited for it and timed out
    ("did not answer ListJobs"), and `down` waited 10 s for an answer the stopped daemon never sent, then failed."""
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_STATE_DIR": str(small_disk / "state")})
    d.up()
    c = d.client(timeout=120)
    go = tmp_path / "go"
    job = c.submit("tests.jobs:big_after_file", str(go), 300_000)
    wait_for(lambda: job.state == "running", 60, what="the job to start")
    _fill(small_disk)
    go.touch()  # it ends now, and its result's commit cannot be written
    wait_for(lambda: d.status().daemon.counters.get("journal_error"), 60, what="the result's commit to fail")
    with pytest.raises(DaemonError, match="cannot write its job journal .* it answers ListJobs once it can"):
        c.jobs()
    out = d.cli("down", check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"daemon {d.config.daemon.name!r} stopped", out.stderr
    d.pid = 0  # (stopped: nothing left to clean)


def _died(j: Journal) -> None:
    """What the end of a killed daemon leaves: its database and its journal's lock closed, nothing written."""
    j.db.close()
    os.close(j._lock_fd)


def test_a_journal_is_one_daemon_s(tmp_path: Path) -> None:
    """Two daemons of different names sharing a state directory both wrote its journal, and the second one's
    writes ended the first (a job id taken twice).  The journal is locked while open, naming its holder."""
    path = tmp_path / "jobs.sqlite3"
    first = Journal(path)
    with pytest.raises(DaemonError, match=rf"job journal {path} is in use by another daemon \(pid {os.getpid()}\): "
                                          "each daemon needs a state directory of its own"):
        Journal(path)
    first.close()
    Journal(path).close()  # free again once closed


def test_recovery_requeues_or_fails_running_jobs_by_their_retries(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    book = JobBook(j)
    now = time.time()
    retry, no_retry, queued = book.accept(
        [JobSpec("m:f", name="r", retries=1), JobSpec("m:f", name="n"), JobSpec("m:f", name="q")], now)
    j.commit()
    for job in book.pop(2):  # FIFO: r and n start, q stays queued
        book.start(job, "worker-1", now, time.monotonic())
    j.commit()
    _died(j)  # the daemon died here

    j2 = Journal(path)
    book2 = JobBook(j2)
    assert book2.recover(time.time()) == (1, 1, 1)
    j2.commit()
    states = dict(j2.db.execute("SELECT id, state FROM job_rows").fetchall())
    assert states == {queued: "queued", retry: "queued", no_retry: "worker-lost"}
    row = j2.db.execute("SELECT error_type, error_message FROM job_rows WHERE id=?", (no_retry,)).fetchone()
    assert row[0] == "JobLost" and "no retry was left" in row[1]
    assert [e[1] for e in j2.events(retry)] == ["requeued"]
    assert {job.id for job in book2.pop(10)} == {queued, retry}
    assert book2.accept([JobSpec("m:f")], time.time()) == [queued + 1]  # ids never repeat
    j2.close()


def test_a_client_s_context_is_one_row_for_all_its_jobs_and_comes_back_after_a_restart(tmp_path: Path) -> None:
    """A local client's cwd and import path are journaled once, not in every job's spec, and survive a crash."""
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    book = JobBook(j)
    here = ("/home/u/project", ["/home/u/project", "/usr/lib/python3.11"])
    there = ("/srv/other", ["/srv/other"])
    a = book.accept([JobSpec("m:f"), JobSpec("m:f")], time.time(), context=here)
    b = book.accept([JobSpec("m:f")], time.time(), context=there)
    c = book.accept([JobSpec("m:f")], time.time(), context=here)
    book.accept([JobSpec("m:f")], time.time())  # a remote or internal job: no context at all
    # a row an older release wrote: its context inside its spec, no context row
    j.stage_insert(100, "m:f", "", pack_spec(JobSpec("m:f"), "", False, ("/old", ["/old/lib"])), 0, time.time())
    j.commit()
    assert j.db.execute("SELECT COUNT(*) FROM contexts").fetchone()[0] == 2
    for (spec,) in j.db.execute("SELECT spec FROM jobs WHERE id < 100"):
        assert b"/home/u/project" not in spec and b"/srv/other" not in spec
    _died(j)  # the daemon died here

    j2 = Journal(path)
    book2 = JobBook(j2)
    assert book2.recover(time.time()) == (6, 0, 0)
    got = {jid: book2.jobs[jid].context for jid in [*a, *b, *c, 100]}
    assert got[a[0]] == got[a[1]] == got[c[0]] == here and got[b[0]] == there and got[100] == ("/old", ["/old/lib"])
    assert got[a[0]] is got[c[0]]  # one tuple shared by the jobs of one context, in memory too
    # new jobs from a known context name its row again; a new context gets the next id
    book2.accept([JobSpec("m:f")], time.time(), context=here)
    book2.accept([JobSpec("m:f")], time.time(), context=("/new", []))
    j2.commit()
    assert j2.db.execute("SELECT COUNT(*) FROM contexts").fetchone()[0] == 3
    j2.close()


def test_pruning_drops_contexts_no_job_names_but_keeps_those_in_use(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    book = JobBook(j)
    (old,) = book.accept([JobSpec("m:f")], time.time(), context=("/gone", []))
    book.finish(book.jobs[old], "done", time.time() - 3600)
    j.commit()
    j.close()
    j2 = Journal(path)  # a later daemon: it never handed "/gone" to a job
    book2 = JobBook(j2)
    (mine,) = book2.accept([JobSpec("m:f")], time.time(), context=("/here", []))
    book2.finish(book2.jobs[mine], "done", time.time() - 3600)
    j2.commit()
    assert j2.prune(time.time() - 60) == 2
    # "/gone" is dropped; "/here" stays: this daemon may give it to its next job without writing it again
    assert [r[0] for r in j2.db.execute("SELECT cwd FROM contexts")] == ["/here"]
    (later,) = book2.accept([JobSpec("m:f")], time.time(), context=("/here", []))
    j2.commit()
    _died(j2)
    j3 = Journal(path)
    book3 = JobBook(j3)
    book3.recover(time.time())
    assert book3.jobs[later].context == ("/here", [])
    j3.close()


def test_prune_removes_old_finished_jobs_only(journal: Journal) -> None:
    book = JobBook(journal)
    old, recent, live = book.accept([JobSpec("m:f"), JobSpec("m:f"), JobSpec("m:f")], time.time())
    journal.commit()
    journal.stage_finish(old, "done", time.time() - 3600, None)
    journal.stage_event(old, "abort", "x")
    journal.stage_finish(recent, "done", time.time(), None)
    journal.commit()
    assert journal.prune(time.time() - 60) == 1
    assert {r[0] for r in journal.db.execute("SELECT id FROM jobs")} == {recent, live}
    assert journal.events(old) == []


def test_ids_are_not_reused_after_every_job_was_pruned(tmp_path: Path) -> None:
    j1 = Journal(tmp_path / "jobs.sqlite3")
    book = JobBook(j1)
    a, b = book.accept([JobSpec("m:f"), JobSpec("m:f")], time.time())
    for job in list(book.jobs.values()):
        book.finish(job, "done", time.time() - 3600)
    book.mark_horizon()
    j1.commit()
    assert j1.prune(time.time() - 60) == 2
    j1.close()
    j2 = Journal(tmp_path / "jobs.sqlite3")
    assert JobBook(j2).accept([JobSpec("m:f")], time.time()) == [b + 1]
    j2.close()


def test_recovery_finds_unfinished_jobs_from_the_horizon_on(tmp_path: Path) -> None:
    """Jobs below the recorded horizon have ended; the ones at or above it that did not end are found again."""
    j1 = Journal(tmp_path / "jobs.sqlite3")
    book = JobBook(j1)
    ended, running, queued = book.accept([JobSpec("m:f"), JobSpec("m:f", retries=1), JobSpec("m:f")], time.time())
    j1.commit()
    book.finish(book.jobs[ended], "done", time.time())
    job = book.pop(1)[0]
    assert job.id == running
    book.start(job, "worker-1", time.time(), time.monotonic())
    book.mark_horizon()
    j1.commit()
    assert j1.horizon() == running
    j1.close()  # as after kill -9: nothing else written
    j2 = Journal(tmp_path / "jobs.sqlite3")
    book2 = JobBook(j2)
    assert book2.recover(time.time()) == (1, 1, 0)  # the queued one as it was, the running one requeued (a retry left)
    j2.commit()
    assert dict(j2.db.execute("SELECT id, state FROM job_rows").fetchall()) == {
        ended: "done", running: "queued", queued: "queued"}
    assert j2.db.execute("SELECT attempts FROM job_rows WHERE id=?", (running,)).fetchone() == (1,)
    j2.close()


def test_a_journal_of_the_earlier_layout_opens_with_its_ends_and_its_live_jobs(tmp_path: Path) -> None:
    """Before the results table, a job's end was written into its own row (and a state index existed)."""
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(str(path))
    old.executescript("""
        CREATE TABLE jobs(id INTEGER PRIMARY KEY, fn TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', spec BLOB NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            submitted REAL NOT NULL, started REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0, result BLOB,
            error_type TEXT NOT NULL DEFAULT '', error_message TEXT NOT NULL DEFAULT '',
            traceback TEXT NOT NULL DEFAULT '', progress REAL NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT '',
            properties BLOB, worker TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '');
        CREATE INDEX jobs_state ON jobs(state);
        CREATE TABLE events(job_id INTEGER NOT NULL, t REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
    """)
    spec = pack_spec(JobSpec("m:f"))
    old.execute("INSERT INTO jobs(id, fn, spec, state, submitted, finished, result) VALUES (1, 'm:f', ?, 'done', 1, 2, x'07')",
                (spec,))
    old.execute("INSERT INTO jobs(id, fn, spec, state, submitted) VALUES (2, 'm:f', ?, 'queued', 1)", (spec,))
    old.commit()
    old.close()
    j = Journal(path)
    assert j.db.execute("SELECT state, result FROM job_rows WHERE id=1").fetchone() == ("done", b"\x07")
    assert [r[0] for r in j.unfinished()] == [2]
    assert j.db.execute("SELECT name FROM sqlite_master WHERE name='jobs_state'").fetchone() is None
    book = JobBook(j)
    book.recover(time.time())
    assert book.accept([JobSpec("m:f")], time.time()) == [3]
    j.close()


def test_spec_round_trips_through_the_journal_form() -> None:
    spec = JobSpec("tests.jobs:record", ["/tmp/x", 3], {"k": [1, {"n": None}]}, "name", -2, 750, 4.5, 3, False)
    assert unpack_spec(pack_spec(spec)) == (spec, "", False)
    assert unpack_spec(pack_spec(spec, "client:c1", True)) == (spec, "client:c1", True)


def test_terminal_states_are_the_documented_ones() -> None:
    assert set(TERMINAL) == {"done", "failed", "cancelled", "killed", "worker-lost"}


# --------------------------------------------------------------------------------- across daemon restarts
@pytest.mark.slow  # restarts or waits out a detection timeout: run by .ci/run's slow pass (default suite < 5 min)
def test_queued_jobs_survive_an_orderly_restart(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(workers=1)
    d.up()
    c = d.client()
    blocker = c.submit("tests.jobs:polite", 120)
    wait_for(lambda: blocker.status_message == "started", 30, what="the worker to be busy")
    out = tmp_path / "out"
    queued = [c.submit("tests.jobs:record", str(out), f"t{i}") for i in range(3)]
    done_before = c.submit("examples.jobs:add", 1, 1)
    ids = [q.id for q in queued]
    d.down()
    assert blocker.id not in ids
    d.up()
    c = d.client()
    assert [c.job(i).result(60) for i in ids] == ["t0", "t1", "t2"]
    assert c.job(blocker.id).wait(30).state == "cancelled"  # `down` aborted it; it returned in time
    late = c.job(done_before.id)
    assert late.result(60) == 2
    assert sorted(out.read_text().split()) == ["t0", "t1", "t2"]
    assert d.cli("result", str(ids[0])).stdout.strip() == "t0"


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs of this test's own (mounting needs root, as in CI; skipped elsewhere); unmounted after."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(where: Path) -> Path:
    """Write a file in ``where`` until the disk is full; returns it (remove it to free the space)."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:  # ENOSPC
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_a_full_disk_keeps_the_daemon_up_refusing_new_jobs_and_loses_none(make_daemon: Make,
                                                                             small_disk: Path) -> None:
    """A submit whose commit cannot be written is refused at once, saying why (it used to wait, unanswered, as
    long as the disk stayed full); what was acknowledged before is kept, and jobs are accepted again once the
    journal can write."""
    from actors import JobRefused

    d = make_daemon(workers=1, extra_env={"ENSEMBLE_STATE_DIR": str(small_disk / "state")})
    d.up()
    c = d.client(timeout=10)
    before = c.submit("examples.jobs:add", 1, 2)
    assert before.result(60) == 3
    filler = _fill(small_disk)
    big = "x" * 300_000  # its row needs pages the journal's files do not have yet
    slow = d.client(timeout=120)  # far longer than the refusal takes: it must come at once, not at the timeout
    with pytest.raises(JobRefused, match=r"cannot write its job journal .*disk is full.*were not journaled, so none "
                                         r"was accepted"):
        slow.submit("examples.jobs:add", big, "!")
    for _ in range(3):  # while the disk stays full: refused (its commit failed, or the journal still fails)
        with pytest.raises(JobRefused, match=r"cannot write its job journal .*disk is full"):
            slow.submit("examples.jobs:add", big, "?")
    assert pid_alive(d.pid)
    assert c.job(before.id).result(10) == 3  # acknowledged before: kept
    assert not [j for j in c.jobs(limit=100) if j.id != before.id]  # the refused ones left nothing behind
    log = (small_disk / "state" / "daemon.log").read_text()
    assert "event=journal-write-failed" in log and "event=submits-refused submits=1 jobs=1" in log
    filler.unlink()  # the disk has room again
    wait_for(lambda: not d.status().daemon.counters.get("journal_error"), 60, what="the journal to recover")
    assert slow.submit("examples.jobs:add", big, "!").result(60) == big + "!"
    assert c.submit("examples.jobs:add", 5, 6).result(60) == 11
    d.down()


@pytest.mark.slow  # a burst, kill -9 and a recovery: several seconds (the reliability suite covers more)
def test_daemon_kill_9_in_a_submit_burst_loses_no_acknowledged_job(make_daemon: Make) -> None:
    d = make_daemon(workers=2)
    d.up()
    acked: dict[int, tuple[str, int]] = {}
    stop = threading.Event()
    failures: list[BaseException] = []
    submitting = Client(config=d.config, timeout=30.0)

    def burst() -> None:
        n = 0
        with submitting as c:
            while not stop.is_set():
                specs = [make_spec("tests.jobs:nap", [0.01, f"j{n + k}"], {}, retries=(n + k) % 2) for k in range(5)]
                try:
                    handles = c.submit_many(specs)
                except (TransportError, ClientClosed) as exc:  # the daemon died, or the test closed us
                    failures.append(exc)
                    return
                for k, h in enumerate(handles):
                    acked[h.id] = (f"j{n + k}", (n + k) % 2)
                n += 5

    submitter = threading.Thread(target=burst)
    submitter.start()
    try:
        wait_for(lambda: len(acked) >= 200, 60, what="200 acknowledged jobs")
        children = [a.pid for a in d.status().actors]
        os.kill(d.pid, signal.SIGKILL)
    finally:
        stop.set()
        submitting.close()  # a submit waiting on the dead daemon fails now with ClientClosed
        submitter.join(60)
    wait_for(lambda: not any(pid_alive(p) for p in children + [d.pid]), 10, what="the daemon and its children to die")
    ids = sorted(acked)

    db = sqlite3.connect(str(d.base / "state" / "jobs.sqlite3"))
    try:
        marks = ",".join("?" * len(ids))
        journaled = dict(db.execute(f"SELECT id, state FROM job_rows WHERE id IN ({marks})", ids).fetchall())
    finally:
        db.close()
    assert set(journaled) == set(ids)  # every acknowledged job was on disk before its ack
    was_running = [i for i, s in journaled.items() if s == "running"]
    # a job whose start a worker recorded (its StartedLog survives the kill) but the journal never heard of
    # ran too: recovery treats it as running (JobBook.recover's ``begun``)
    begun: set[int] = set()
    for log in (d.base / "run").rglob("started.*"):
        begun |= StartedLog.read(log)[1]
    was_running += [i for i, s in journaled.items() if s == "queued" and i in begun]
    # a job that had returned, its result held back by its worker (in a file the kill cannot reach), ends with that
    # result at the next up: it ran once, and is not requeued
    returned = {jid for log in (d.base / "run").glob("held.*") for jid, _ in HeldResults.read(log)}

    d.up()  # sweeps the dead daemon's files, recovers the journal
    c = d.client()
    finals = {i: c.job(i).wait(120) for i in ids}
    states = {i: info.state for i, info in finals.items()}
    assert set(states.values()) <= {"done", "worker-lost"}, states
    for i, info in finals.items():
        tag, retries = acked[i]
        if info.state == "done":
            assert info.result == tag
        else:  # it was running when the daemon died and had no retry left
            assert i in was_running and retries == 0 and info.error_type == "JobLost"
    for i in was_running:
        if acked[i][1] == 1:
            assert states[i] == "done" and (i in returned or any(e[1] == "requeued" for e in finals[i].events))
    d.down()
    db = sqlite3.connect(str(d.base / "state" / "jobs.sqlite3"))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        left = db.execute(f"SELECT COUNT(*) FROM job_rows WHERE state IN ('queued', 'running') AND id IN ({marks})",
                          ids).fetchone()[0]
    finally:
        db.close()
    assert left == 0


def test_a_job_a_dead_daemon_s_worker_began_is_not_rerun_without_a_retry(tmp_path: Path) -> None:
    from actors._rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.create()
    log = StartedLog(run.started_file("worker-1.1"))
    journal = Journal(tmp_path / "j.sqlite3")
    book = JobBook(journal)
    began, retried, untouched = book.accept([JobSpec("m:f"), JobSpec("m:f", retries=1), JobSpec("m:f")], 1.0)
    journal.commit()
    log.record(began)  # the worker started these two; the daemon died before their starts were journaled
    log.record(retried)
    log.close()
    assert RunDir.take_started(run, "worker-1.1") == retried
    log = StartedLog(run.started_file("worker-2.1"))
    for jid in (began, retried):
        log.record(jid)
    log.close()
    journal.close()

    journal = Journal(tmp_path / "j.sqlite3")
    book = JobBook(journal)
    queued, requeued, lost = book.recover(2.0, run.take_all_started())
    journal.commit()
    assert (queued, requeued, lost) == (1, 1, 1)
    assert untouched in book.jobs and retried in book.jobs and began not in book.jobs
    assert book.infos([began])[began].state == "worker-lost"
    assert book.jobs[retried].attempts == 1 and not list(run.path.glob("started.*"))


@pytest.mark.slow  # two restarts of a daemon
def test_an_executor_s_futures_end_across_a_restart_of_its_daemon(make_daemon: Make, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The daemon restarts under an Executor attached to it: a queued job runs on the new daemon and its future
    ends with the result (the new daemon knew nothing of the futures' watches: the client watches again)."""
    from actors.client import Executor
    from tests import jobs

    d = make_daemon(workers=1)
    d.up()
    for key, value in d.env.items():
        if key.startswith("ENSEMBLE_"):
            monkeypatch.setenv(key, value)
    markers = tmp_path / "markers"
    markers.mkdir()
    with Executor() as ex:
        assert ex._private is None
        running = ex.submit(jobs.plain_gate, str(markers), str(tmp_path / "gate"))  # `down` aborts it
        wait_for(lambda: any(markers.iterdir()), 60, what="the worker to be busy")
        queued = ex.submit(jobs.square, 7)  # behind it: stays queued in the journal
        wait_for(lambda: any(j.fn == "tests.jobs:square" for j in d.client().jobs()), 30, what="the queued job")
        d.down()
        wait_for(lambda: "event=daemon-disconnected" in caplog.text, 30, what="the notice of the disconnect")
        d.up()
        assert queued.result(60) == 49  # it hung forever before
        with pytest.raises(Exception, match="killed|cancelled"):
            running.result(60)


def test_a_second_daemon_on_one_state_directory_is_refused_and_the_first_keeps_its_jobs(make_daemon: Any) -> None:
    """Two daemons of different names with one state directory: the second started, both wrote the journal, and
    the first one died at its next commit (a job id taken twice), with no reason in its log."""
    first = make_daemon(workers=1, jobs_only=True)
    first.up()
    second = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_STATE_DIR": first.env["ENSEMBLE_STATE_DIR"]})
    out = second.cli("up", check=False)
    assert out.returncode == 1 and "is in use by another daemon" in out.stderr, out.stderr
    assert f"(pid {first.pid})" in out.stderr and "a state directory of its own" in out.stderr
    assert not (second.base / "run").exists() or not list((second.base / "run").iterdir())  # nothing left behind
    log = (first.base / "state" / "daemon.log").read_text()
    assert "event=start-failed reason=job journal" in log  # (the one log both wrote: the reason is in it)
    with first.client() as c:
        assert c.submit("examples.jobs:add", 1, 2).result(60) == 3  # the first serves on


def test_a_journal_of_a_newer_release_is_refused_saying_so(tmp_path: Path) -> None:
    """A newer release's journal was taken as it was: a column this release does not fill failed the first submit
    (and ended the daemon), a state it does not know left its jobs waiting for ever."""
    from actors._journal import JOURNAL_VERSION

    path = tmp_path / "jobs.sqlite3"
    Journal(path).close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == JOURNAL_VERSION
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={JOURNAL_VERSION + 1}")
    db.close()
    with pytest.raises(DaemonError, match=rf"written by a newer ensemble \(journal version {JOURNAL_VERSION + 1}; "
                                          rf"this one reads up to {JOURNAL_VERSION}\)"):
        Journal(path)
    Journal(tmp_path / "other.sqlite3").close()  # (the lock of the refused one was let go: nothing is held)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=0")  # one from before versions: migrated, and marked
    db.close()
    Journal(path).close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == JOURNAL_VERSION


def test_a_journal_replaced_under_the_daemon_stops_new_submits_saying_so(make_daemon: Any) -> None:
    """Replaced while the daemon ran (another file at its path), the journal took every later submit into a file
    no later start reads: the jobs acknowledged meanwhile were gone after a restart, and nothing said so.  The
    file found there is never written over (a removed one is written there again: test_journal_unwritable)."""
    import shutil

    from actors import JobRefused

    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    path = d.base / "state" / "jobs.sqlite3"
    with d.client() as c:
        assert c.submit("examples.jobs:add", 1, 2).result(60) == 3
        shutil.copy(path, path.with_name("other"))
        os.replace(path.with_name("other"), path)
        wait_for(lambda: "was replaced while the daemon ran" in str(c.status().daemon.counters.get("journal_error", "")),
                 30, what="the daemon to see its journal replaced")
        with pytest.raises(JobRefused, match="was replaced while the daemon ran: .* accepts no new job"):
            c.submit("examples.jobs:add", 1, 2)
    assert "event=journal-lost" in (d.base / "state" / "daemon.log").read_text()

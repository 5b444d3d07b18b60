"""A journal that cannot be written (a full disk) or that was removed under the daemon: what the daemon holds is
neither lost nor kept from its clients."""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from actors._errors import DaemonError
from actors._jobs import MAX_EVENTS, Job, JobBook, pack_spec
from actors._journal import JOURNAL_VERSION, Journal
from actors.messages import JobSpec
from tests.actors.test_journal import _fill, small_disk  # noqa: F401 - small_disk: a fixture
from tests.conftest import Daemon, wait_for

Make = Callable[..., Daemon]


def _journal_files(state: Path) -> list[Path]:
    """The journal's files, as an `rm` of them would take (its lock file aside)."""
    return [f for f in state.glob("jobs.sqlite3*") if not f.name.endswith(".lock")]


# --------------------------------------------------------------------------------- the journal, no sockets
def test_a_journal_removed_under_its_writer_is_written_again_at_its_path_with_its_lock(tmp_path: Path) -> None:
    """Removed (its lock file too), the journal went on writing the removed file: every job it held was gone at
    the next start.  It is copied back to its path, locked again, and written there from then on."""
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    try:
        ident = j.ident
        j.stage_insert(1, "m:f", "", pack_spec(JobSpec("m:f")), 0, 1.0)
        j.commit()
        j.stage_insert(2, "m:f", "", pack_spec(JobSpec("m:f")), 0, 2.0)  # staged, not written yet
        for f in tmp_path.iterdir():
            f.unlink()
        assert j.check_file() == "" and path.exists()
        with pytest.raises(DaemonError, match="in use by another daemon"):  # the lock is held again
            Journal(path)
        j.stage_finish(1, "done", 3.0, None)
        j.commit()
        assert j.check_file() == ""
    finally:
        j.close()
    again = Journal(path)
    try:
        assert again.ident == ident
        assert [(r[0], r[3]) for r in again.infos([1, 2])] == [(1, "done"), (2, "queued")]
        assert again.db.execute("PRAGMA user_version").fetchone()[0] == JOURNAL_VERSION
        assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        again.close()


def test_a_journal_replaced_under_its_writer_is_left_as_found(tmp_path: Path) -> None:
    """A file put in the journal's place (a backup restored) is never written over: new jobs are refused."""
    path = tmp_path / "jobs.sqlite3"
    j = Journal(path)
    try:
        for f in _journal_files(tmp_path):
            f.unlink()
        sqlite3.connect(path).execute("CREATE TABLE restored(x)").connection.close()
        assert "was replaced while the daemon ran" in j.check_file()
        assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [("restored",)]
    finally:
        j.close()


def test_a_job_s_events_past_the_cap_are_counted_by_its_list_not_read_back_from_its_text() -> None:
    """The count of the events not kept was the summary's first word, parsed back at each event."""
    from actors._jobs import CappedEvents

    job = Job(1, JobSpec("m:f"), 0.0)
    quiet = Job(2, JobSpec("m:f"), 0.0)
    quiet.add_event([0.0, "stalled", "x"])
    assert type(quiet.events) is list  # no job below the cap pays for the count
    for i in range(200):
        job.add_event([float(i), "stalled", f"d{i}"])
    assert type(job.events) is CappedEvents and len(job.events) == MAX_EVENTS
    assert job.events.dropped == 200 - (MAX_EVENTS - 1)
    assert job.events[-1] == [199.0, "more", f"{job.events.dropped} more events not kept; the latest: stalled: d199"]
    job.events[-1][2] = "edited"  # the count does not live in the text
    job.add_event([200.0, "stalled", "last"])
    assert job.events.dropped == 200 - (MAX_EVENTS - 1) + 1
    assert type(job.info().events) is list  # what travels is a plain list of triples


def test_a_job_s_capped_events_are_journaled_with_their_final_count(tmp_path: Path) -> None:
    j = Journal(tmp_path / "jobs.sqlite3")
    try:
        book = JobBook(j)
        (jid,) = book.accept([JobSpec("m:f")], 1.0)
        j.commit()
        job = book.jobs[jid]
        for _ in range(100):
            book.event(job, "stalled", "slow")
        book.finish(job, "done", 2.0)
        j.commit()
        events = j.events(jid)
        assert len(events) == MAX_EVENTS and events[-1][1] == "more"
        assert events[-1][2].startswith(f"{100 - (MAX_EVENTS - 1)} more events not kept")
    finally:
        j.close()


def test_the_journal_failure_is_told_in_one_place() -> None:
    """The text was built three times in the requests (a refused submit, a listing put off, refused submits)."""
    from actors.supervisor._requests import RequestsMixin

    assert inspect.getsource(RequestsMixin).count("cannot write its job journal") == 1


# --------------------------------------------------------------------------------- a daemon
def test_a_journal_removed_under_the_daemon_is_saved_with_its_jobs_and_the_daemon_goes_on(make_daemon: Make,
                                                                                         tmp_path: Path) -> None:
    """Removed while the daemon ran, the journal kept taking the jobs the daemon held (and refused new ones):
    written to a file no start reads, all of them were unknown after the next `up`."""
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    state = d.base / "state"
    go = tmp_path / "go"
    with d.client(timeout=60) as c:
        before = c.submit("examples.jobs:add", 1, 2)
        assert before.result(60) == 3
        running = c.submit("tests.jobs:big_after_file", str(go), 10)
        queued = c.submit("examples.jobs:add", 5, 6)  # behind it: one worker
        wait_for(lambda: running.state == "running", 60, what="the job to start")
        for f in _journal_files(state):
            f.unlink()
        wait_for(lambda: "event=journal-restored" in (state / "daemon.log").read_text(), 30,
                 what="the daemon to write its journal again")
        assert "journal_error" not in c.status().daemon.counters
        after = c.submit("examples.jobs:add", 7, 8)  # accepted: the journal is there again
        go.touch()
        assert (running.result(60), queued.result(60), after.result(60)) == ("x" * 10, 11, 15)
    d.down()
    d.up()
    with d.client(timeout=60) as c:
        assert [c.job(j.id).result(30) for j in (before, running, queued, after)] == [3, "x" * 10, 11, 15]
    assert sqlite3.connect(state / "jobs.sqlite3").execute("PRAGMA user_version").fetchone()[0] == JOURNAL_VERSION


@pytest.mark.slow  # two starts of a daemon on a disk filled up: several seconds
def test_a_result_that_ends_while_the_disk_is_full_reaches_its_client_and_is_journaled_at_down(
        make_daemon: Make, small_disk: Path, tmp_path: Path) -> None:  # noqa: F811 - small_disk: the fixture
    """A job that finished while the journal could not be written: its result, held for the failing commit,
    never reached the client waiting for it, and `down` lost it: the next start ended the job worker-lost
    ('the daemon stopped while the job ran').  The result goes to the client from memory, and the last commit
    at `down` is written with the space the journal keeps in reserve."""
    state = small_disk / "state"
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_STATE_DIR": str(state)})
    d.up()
    c = d.client(timeout=120)
    go = tmp_path / "go"
    job = c.submit("tests.jobs:big_after_file", str(go), 300_000)
    wait_for(lambda: job.state == "running", 60, what="the job to start")
    filler = _fill(small_disk)
    go.touch()  # it ends now, and its result's commit cannot be written
    wait_for(lambda: d.status().daemon.counters.get("journal_error"), 60, what="the result's commit to fail")
    wait_for(job.done, 30, what="the result to reach its client from memory")
    assert job.result(0) == "x" * 300_000
    assert d.status().daemon.counters.get("replies_unjournaled", 0) >= 1
    d.down()
    log = (state / "daemon.log").read_text()
    assert "event=journal-reserve-freed" in log and "close-step-failed" not in log, log[-2000:]
    filler.unlink()
    d.up()
    with d.client(timeout=60) as again:
        info = again.job(job.id).wait(30)
        assert (info.state, info.error_message) == ("done", "")
        assert again.job(job.id).result(30) == "x" * 300_000

"""The durable job journal: SQLite in WAL mode with group commit.

The supervisor stages every change of one poll-loop iteration (new jobs, state
changes, results, events) and :meth:`Journal.commit` writes them in one
transaction, before any acknowledgement of that iteration is sent.  A larger
commit goes to a writer thread (:meth:`Journal.commit_async`) and the
acknowledgements wait for it there; checkpoints of the log run in a thread of
their own, never inside a commit (under a steady stream of big values the
writer copies the last tail of the log between two commits, so that the log
starts over: :meth:`Journal._copy_tail`).

Layout, chosen for the cost per job (``python -m bench --only throughput``):
a job is a row of ``jobs`` (its spec, inserted once as ``queued``), a row of
``starts`` while it runs (when, where, which attempt; removed when it is
requeued) and, once it ended, a row of ``results`` (its final state and
value; and its start, when the start is committed with the end, as it is
for short jobs whose results come in batches: no ``starts`` row then),
appended with ``INSERT OR IGNORE``.  So a job's result is recorded
exactly once (the first end wins), the row holding the spec is not rewritten
as the job moves, and ``jobs`` needs no index on its state.  Measured
alone (20,000 jobs inserted, started and finished in batches of 200, the
``Journal`` methods as the supervisor calls them) that is 10.9 us per job
against 19.4 for the earlier layout, which updated the job's row and its
state index at the start and again at the end.
A local client's context (its cwd and import path, ~230 bytes) is a row of
``contexts`` that its jobs name in their ``ctx`` column, not a copy in each
spec.
A job's abort (a cancel, its deadline, a stop) is a row of ``events`` of kind
``abort`` (:data:`ABORT_EVENT`), its reason the detail; a cancel's or a
deadline's is written before its worker is told, and recovery reads them back
(:meth:`Journal.aborts`).
A result that names shared-memory segments its worker made (arrays nobody
owns but its taker) has a row of ``result_segments`` naming them, written
with its end; pruning the job hands those names back to be unlinked
(:meth:`Journal.prune`), so a result nobody took leaves ``/dev/shm`` with its
row.  Only such results have one: the others cost nothing.
Read jobs through the ``job_rows`` view (a job's row with its result
folded in).  Finding unfinished jobs at start-up scans from the ``horizon``
(the smallest id that was still live when last recorded), not the whole table.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from actors._errors import DaemonError
from actors._state import FINAL
from actors.messages import _decode_value, _encode_value

log = logging.getLogger("ensemble.journal")
TERMINAL = tuple(sorted(FINAL))  # for SQL parameters
ABORT_EVENT = "abort"  # the kind of the event that records a job's abort (its detail: the reason)
_CHECKPOINT_ROWS = 5000  # rows committed between two checkpoints (a few MB of log when the rows are small) ...
# ... or bytes of values (specs, results, tracebacks, properties) written, whichever comes first: big rows fill the
# log with their overflow pages, not with rows (20 jobs of 0.5 MB made 20 MB of log and 40 rows). 32 MiB is copied
# back by one checkpoint in a fraction of a second, beside the commits; far fewer would checkpoint a stream of big
# results all the time, far more would let the log (which every read searches through its index) grow for long
_CHECKPOINT_BYTES = 32 << 20
# the write-ahead log's file is truncated back to this size (PRAGMA journal_size_limit) by the first commit after a
# checkpoint copied all of it (SQLite then starts the log over): it is reused up to there, not grown and kept forever
_WAL_LIMIT_BYTES = 2 * _CHECKPOINT_BYTES
_CHECKPOINT_RETRY_SECONDS = 0.25  # a checkpoint that could not copy the whole log (a reader, commits meanwhile) is
# tried again after this long, until it does: else the log is never started over and its file only grows
# A checkpoint during which commits were written copied the log only up to where it began: the log is not started
# over. Once the log is half of _WAL_LIMIT_BYTES long, the checkpoint thread then copies on at once, each pass
# copying what came during the one before, in less time, while a pass copies more than _TAIL_FRAMES frames (~1 MiB
# of 4 KiB pages), at most half of what the one before copied (past that, the passes' syncs take their time, not
# the copying: the tails shrink no more) and for _CHASE_PASSES passes at most; the rest, what came during the last
# pass, is copied by the writer between two commits (Journal._copy_tail). A shorter log is left as it is: small
# rows (no-op jobs) fill it slowly, and a checkpoint ends between two of their commits often enough
_TAIL_FRAMES = 256
_CHASE_PASSES = 4
# bytes of values committed between two looks (one stat) at the size of the log's file: past _WAL_LIMIT_BYTES (the
# checkpoints cannot keep up: a disk slower than the results coming in), the writer copies the log back itself
_LOG_LOOK_BYTES = 1 << 20
_COPY_TAIL = ("copy the log's tail",)  # handed to the writer thread, as a batch is (see Journal._copy_tail_later)
# Pruning runs in slices, one transaction each, on the daemon's loop (between two iterations that serve requests):
# a slice deletes up to ``Journal.prune_slice`` jobs, halved when a slice took more than _PRUNE_SLICE_SECONDS and
# doubled when it took less than half of it, within _PRUNE_SLICE_JOBS. A slice of jobs with small rows takes ~2 us a
# job (10,000 jobs ~20 ms here); a job whose result was megabytes frees hundreds of overflow pages, read one by one
_PRUNE_SLICE_SECONDS = 0.02
_PRUNE_SLICE_JOBS = (100, 5000, 100_000)  # (fewest, first, most) jobs a slice deletes
_RETRY_SECONDS = 1.0  # a commit that failed (disk full, say) is tried again this often, before anything newer
_CONTEXTS_CACHED = 256  # distinct client contexts kept in memory (each also a row of ``contexts``)
# disk space the journal keeps beside it (``PATH.reserve``) for its last commit, freed only for that: a daemon
# stopped while its disk is full writes the ends of the jobs that finished meanwhile (see Journal.close)
_RESERVE_BYTES = 1 << 20

# A job's end, as its columns (the same in ``jobs``, where the earlier layout kept it, and in ``results``).
_END = """result BLOB,
    error_type TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    traceback TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '',
    properties BLOB"""

# A start committed with its job's end is folded into the end's row (NULL there when ``starts`` has it).
_START_IN_RESULT = """started REAL,
    worker TEXT,
    attempts INTEGER"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY,
    fn TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    spec BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted REAL NOT NULL,
    started REAL NOT NULL DEFAULT 0,
    finished REAL NOT NULL DEFAULT 0,
    {_END},
    worker TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    ctx INTEGER NOT NULL DEFAULT 0
);
DROP INDEX IF EXISTS jobs_state;
CREATE TABLE IF NOT EXISTS contexts(
    id INTEGER PRIMARY KEY,
    cwd TEXT NOT NULL,
    path BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results(
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    finished REAL NOT NULL,
    {_END},
    {_START_IN_RESULT}
);
CREATE TABLE IF NOT EXISTS starts(
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    worker TEXT NOT NULL,
    attempts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS result_segments(
    id INTEGER PRIMARY KEY,
    names TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
DROP VIEW IF EXISTS job_rows;
CREATE VIEW job_rows AS
SELECT j.id AS id, j.fn AS fn, j.name AS name, j.spec AS spec, j.priority AS priority,
    IIF(r.id IS NULL, IIF(s.id IS NULL, j.state, 'running'), r.state) AS state,
    COALESCE(r.attempts, IIF(s.id IS NULL, j.attempts, s.attempts)) AS attempts, j.submitted AS submitted,
    COALESCE(r.started, IIF(s.id IS NULL, j.started, s.started)) AS started,
    IIF(r.id IS NULL, j.finished, r.finished) AS finished,
    IIF(r.id IS NULL, j.result, r.result) AS result,
    IIF(r.id IS NULL, j.error_type, r.error_type) AS error_type,
    IIF(r.id IS NULL, j.error_message, r.error_message) AS error_message,
    IIF(r.id IS NULL, j.traceback, r.traceback) AS traceback,
    IIF(r.id IS NULL, j.progress, r.progress) AS progress,
    IIF(r.id IS NULL, j.status, r.status) AS status,
    IIF(r.id IS NULL, j.properties, r.properties) AS properties,
    COALESCE(r.worker, IIF(s.id IS NULL, j.worker, s.worker)) AS worker, j.owner AS owner
FROM jobs j LEFT JOIN starts s ON s.id = j.id LEFT JOIN results r ON r.id = j.id;
CREATE TABLE IF NOT EXISTS events(
    job_id INTEGER NOT NULL,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
"""

_INFO_COLUMNS = (
    "id, fn, name, state, progress, status, properties, result, error_type, error_message, "
    "traceback, submitted, started, finished, attempts, worker, priority"
)


JOURNAL_VERSION = 1  # the journal's layout (PRAGMA user_version): raise it with each change an older release would
# misread; a journal of a higher version is refused (0: a journal from before versions, migrated on open)

class Journal:
    """SQLite journal of jobs and their events; one writer (the supervisor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = _lock(path)
        try:
            self.db = _connect(path)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > JOURNAL_VERSION:  # its rows may hold what this release does not write (a column it
                # leaves empty, a state it never ends): taking it would fail at the first submit, or hang its jobs
                raise DaemonError(f"job journal {path} was written by a newer ensemble (journal version {version}; "
                                  f"this one reads up to {JOURNAL_VERSION}): run that release, or move the journal "
                                  "aside to start with an empty one")
            had_jobs = self._has_table("jobs")
            had_results = self._has_table("results")
            if had_jobs:
                columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
                if "owner" not in columns:  # a journal from before remote ownership: every job was local
                    self.db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                if "ctx" not in columns:  # a journal from before shared contexts: each spec holds its own
                    self.db.execute("ALTER TABLE jobs ADD COLUMN ctx INTEGER NOT NULL DEFAULT 0")
            if had_results and "attempts" not in {row[1] for row in self.db.execute("PRAGMA table_info(results)")}:
                for column in ("started REAL", "worker TEXT", "attempts INTEGER"):  # before folded starts
                    self.db.execute(f"ALTER TABLE results ADD COLUMN {column}")
            self.db.executescript(_SCHEMA)
            if had_jobs and not had_results:  # a journal from before the results table: move the ended jobs' ends
                with self.db:
                    self.db.execute(
                        "INSERT OR IGNORE INTO results(id, state, finished, result, error_type, error_message, traceback, "
                        "progress, status, properties) SELECT id, state, finished, result, error_type, error_message, "
                        f"traceback, progress, status, properties FROM jobs WHERE state IN ({','.join('?' * len(TERMINAL))})",
                        TERMINAL)
            if version < JOURNAL_VERSION:
                self.db.execute(f"PRAGMA user_version={JOURNAL_VERSION}")  # migrated above: this release's now
            # the journal's identity, made with it: job ids count anew in another journal (Submitted.journal)
            row = self.db.execute("SELECT value FROM meta WHERE key='journal'").fetchone()
            if row is None:
                row = (os.urandom(8).hex(),)  # (secrets.token_hex's bytes; secrets imports OpenSSL)
                self.db.execute("INSERT INTO meta(key, value) VALUES ('journal', ?)", row)
            self.ident = str(row[0])
            st = os.stat(path)
            self._file_id = (st.st_dev, st.st_ino)  # the file this connection writes (see check_file)
        except DaemonError:
            os.close(self._lock_fd)
            raise
        except sqlite3.DatabaseError as exc:
            os.close(self._lock_fd)
            raise DaemonError(f"job journal {path} cannot be opened: {exc}") from exc
        self._inserts: list[tuple[Any, ...]] = []
        # a local client's (cwd, import path), a row of ``contexts`` shared by every job submitted from it, not
        # copied into each job's spec (~230 bytes a job less to write); cached both ways, staged like jobs
        self._context_ids: dict[tuple[str, tuple[str, ...]], int] = {}
        self._context_by_id: dict[int, tuple[str, list[str]]] = {}
        self._new_contexts: list[tuple[int, str, bytes]] = []
        self._handed: set[int] = set()  # context ids this daemon gave to jobs (never pruned while it runs)
        for cid, cwd, packed in self.db.execute("SELECT id, cwd, path FROM contexts"):
            self._remember_context(cid, cwd, list(_decode_value(packed)))
        row = self.db.execute("SELECT MAX(id) FROM contexts").fetchone()
        self._next_context = (row[0] or 0) + 1
        self._starts: dict[int, tuple[Any, ...]] = {}  # job id -> its start, until committed or folded
        self._finishes: list[tuple[Any, ...]] = []
        self._requeues: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._segments: list[tuple[int, str]] = []  # (job id, the names of its result's segments)
        self._progress: dict[int, tuple[Any, ...]] = {}
        self._horizon: int | None = None
        # the write-ahead rule: every job with an id up to this one has its row written (a job is dispatched
        # only then, so one that ran is never unknown to the journal after a crash: see JobBook.pop)
        row = self.db.execute("SELECT MAX(id) FROM jobs").fetchone()
        self.written_id = row[0] or 0
        self._taken_id = 0  # the largest job id in the last batch taken to be written (0: none)
        # the writer thread (commit_async): one batch in flight, numbered; started lazily
        self.started_seq = 0  # commits begun (sync or handed over)
        self.done_seq = 0  # commits written and collected
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._writer: threading.Thread | None = None
        self._batches: "queue.SimpleQueue[tuple[Any, ...] | None]" = queue.SimpleQueue()
        self._written = threading.Event()
        self._inflight = False
        self._inflight_batch: tuple[Any, ...] = ()
        self._error: BaseException | None = None
        # a commit that failed (disk full, a read-only file): kept, with its largest job id, and written again
        # before anything staged since, every _RETRY_SECONDS; meanwhile ``write_error`` says why (the daemon
        # accepts no new job, and what waits for that commit waits on)
        self._failed: tuple[tuple[Any, ...], int] | None = None
        self.lost_file = ""  # why the journal file is no longer the one written (check_file), else ""
        self._retry_at = 0.0
        self.write_error = ""
        self._unchecked = 0  # rows committed since the last checkpoint was asked for
        self._unchecked_bytes = 0  # bytes of values committed since then
        self._commits = 0  # commits written (the checkpoint thread tells by it whether commits came during a pass)
        self._tail_due = False  # the log's tail is for the writer to copy at its next commit (see _copy_tail)
        self._pass_lock = threading.Lock()  # held for each checkpoint, on either thread (one at a time)
        self._unlooked_bytes = 0  # bytes of values committed since the log's file was last looked at
        self._wal = Path(f"{path}-wal")  # the log's file
        self.prune_slice = _PRUNE_SLICE_JOBS[1]  # jobs the next slice of pruning deletes at most (see prune)
        self.prune_behind = False  # whether the last slice of pruning found more to delete than it could
        self._orphans: set[int] = set()  # contexts whose jobs were pruned, looked at once a pruning is through
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = threading.Event()
        self._checkpoint_partial = False  # the last checkpoint left part of the log uncopied (it is retried)
        self._checkpoints_asked = self._checkpoints_done = 0  # (see checkpoint_busy)
        self._closing = False
        self.reserve = path.with_name(path.name + ".reserve")
        _make_reserve(self.reserve)

    def check_file(self) -> str:
        """Whether the journal file is still the one this daemon writes: '' if so, else why not (said once, kept
        in :attr:`lost_file`).

        Removed or replaced under a running daemon (an ``rm`` of the state
        directory, a restore of a backup), it took every write since into a
        file no later start reads: the jobs acknowledged meanwhile were lost
        at the next start, and nothing said so.  The daemon looks once a
        heartbeat and accepts no new job once it is not (one ``stat``).
        """
        if self.lost_file:
            return self.lost_file
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except FileNotFoundError:
            same = False
            st = None
        except OSError:  # (no descriptor left, say: looked at again at the next heartbeat)
            return ""
        if same:
            return ""
        if st is None:  # removed: what this daemon holds is written there again, and the journal goes on
            why = self.restore()
            if not why:
                return ""
            self.lost_file = (f"the job journal {self.path} was removed while the daemon ran and could not be "
                              f"written there again ({why}): what it writes now no later start reads, so it accepts "
                              "no new job; the jobs it has go on, and `ensemble down` tries once more to save them")
        else:
            self.lost_file = (f"the job journal {self.path} was replaced while the daemon ran: what it writes now no "
                              "later start reads, so it accepts no new job; the jobs it has go on. Stop it (`ensemble "
                              "down`) and start it again to use the journal found there")
        return self.lost_file

    def restore(self) -> str:
        """Write the journal again at its path, removed under the daemon, and go on there: '' if done, else why not.

        SQLite's backup copies the open database (everything committed,
        written since to the removed file too) into a new file beside it,
        which then takes the journal's name (never over a file found there);
        the connections of the removed file are closed first, so that none
        takes the new file for its own, and the daemon's writes go on in the
        new one.  Its lock is taken again if the lock file went too (refused if
        another daemon took the directory meanwhile).  What is staged, or kept
        from a commit that failed, is written there by the next commit.
        Blocks for the copy (a few milliseconds a megabyte).
        """
        self._settle()  # the connection is the writer thread's while a commit is in flight
        tmp = self.path.with_name(self.path.name + ".restoring")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # (an `rm -r` of the state directory)
            self._relock()
            tmp.unlink(missing_ok=True)
            copy = sqlite3.connect(str(tmp))
            try:
                self.db.backup(copy)
            finally:
                copy.close()
        except (OSError, sqlite3.Error, DaemonError) as exc:
            _unlink(tmp)
            return str(exc)
        self._stop_checkpointer()
        self.db.close()  # (the last connection of the removed file: it removes the log files of that name)
        for leftover in ("-wal", "-shm"):
            _unlink(self.path.with_name(self.path.name + leftover))
        try:
            os.link(tmp, self.path)
            where = self.path
        except OSError as exc:  # a file appeared there meanwhile (kept), or the link failed: the copy is the journal
            where = tmp
            why = f"{self.path} could not take the copy ({exc}); the daemon writes {tmp} now"
        else:
            _unlink(tmp)
            why = ""
        self.db = _connect(where)
        self._wal = Path(f"{where}-wal")
        st = os.stat(where)
        self._file_id = (st.st_dev, st.st_ino)
        if why:
            return why
        _make_reserve(self.reserve)
        log.warning("event=journal-restored path=%s detail=the job journal was removed while the daemon ran: the "
                    "jobs it holds are written there again, and it goes on there", self.path)
        return ""

    def _relock(self) -> None:
        """Hold the lock of the journal's path again if its lock file was removed or replaced (DaemonError if
        another daemon holds it now: that daemon's journal is not written over)."""
        st = os.fstat(self._lock_fd)
        try:
            found = os.stat(self.path.with_name(self.path.name + ".lock"))
            if (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino):
                return
        except FileNotFoundError:
            pass
        fd = _lock(self.path)
        os.close(self._lock_fd)
        self._lock_fd = fd

    def _has_table(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def horizon(self) -> int:
        """The recorded smallest id that may still be unfinished (every job below it has ended)."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        row = self.db.execute("SELECT value FROM meta WHERE key='horizon'").fetchone()
        return int(row[0]) if row else 0

    # -- staging ---------------------------------------------------------------
    def next_id(self) -> int:
        """The id after the largest one ever journaled (never below the horizon: pruned ids are not reused)."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        row = self.db.execute("SELECT MAX(id) FROM jobs").fetchone()
        return max((row[0] or 0) + 1, self.horizon())

    def stage_horizon(self, job_id: int) -> None:
        """Record that every job below ``job_id`` has ended (written with, so never before, their results)."""
        self._horizon = job_id

    def stage_insert(self, job_id: int, fn: str, name: str, spec: bytes, priority: int, submitted: float,
                     owner: str = "", ctx: int = 0) -> None:
        """Record a newly accepted job (state ``queued``); ``owner`` is "" for a local client, else ROLE:NAME.

        ``ctx``: its client's context, from :meth:`context_id` (0: none, or held in ``spec`` as older rows do).
        """
        self._inserts.append((job_id, fn, name, spec, priority, "queued", submitted, owner, ctx))

    def context_id(self, cwd: str, path: list[str]) -> int:
        """The id of a local client's context (``cwd``, import path), staged as a new row the first time.

        0 for no context (a remote or internal job).  The row is written in the
        same commit as the first job that names it, as it is staged before it.
        """
        if not cwd and not path:
            return 0
        key = (cwd, tuple(path))
        cid = self._context_ids.get(key)
        if cid is None:
            if len(self._context_ids) >= _CONTEXTS_CACHED:  # bounded: a context seen again gets a second row
                self._context_ids.clear()
                self._context_by_id.clear()
                self._handed.clear()  # but the contexts of jobs staged and not yet written are kept from pruning:
                self._handed.update(row[-1] for row in self._inserts)  # a prune comes after their commit
            cid = self._next_context
            self._next_context += 1
            self._remember_context(cid, cwd, list(path))
            self._new_contexts.append((cid, cwd, _encode_value(list(path))))
        self._handed.add(cid)
        return cid

    def context(self, cid: int) -> tuple[str, list[str]] | None:
        """The context of id ``cid`` (one tuple, shared by its jobs), or None if the journal has no such row."""
        found = self._context_by_id.get(cid)
        if found is None:
            self._settle()  # the connection is the writer thread's while a commit is in flight
            row = self.db.execute("SELECT cwd, path FROM contexts WHERE id=?", (cid,)).fetchone()
            if row is None:
                return None
            found = self._remember_context(cid, row[0], list(_decode_value(row[1])))
        return found

    def _remember_context(self, cid: int, cwd: str, path: list[str]) -> tuple[str, list[str]]:
        context = (cwd, path)
        self._context_ids[(cwd, tuple(path))] = cid
        self._context_by_id[cid] = context
        return context

    def stage_start(self, job_id: int, started: float, worker: str, attempts: int) -> None:
        """Record that a job started running on a worker."""
        self._starts[job_id] = (started, worker, attempts, job_id)

    def stage_requeue(self, job_id: int, attempts: int) -> None:
        """Put a job back to ``queued`` (its worker died and a retry is left).

        Requeues are written before starts, so a start staged earlier in this
        batch for the same job is dropped: the row must end ``queued``.
        """
        self._starts.pop(job_id, None)
        self._requeues.append((attempts, job_id))

    def stage_progress(self, job_id: int, progress: float, status: str, properties: dict[str, Any]) -> None:
        """Record the latest progress of a running job (last one per commit wins)."""
        self._progress[job_id] = (progress, status, _encode_value(properties), job_id)

    def stage_finish(
        self,
        job_id: int,
        state: str,
        finished: float,
        result: bytes | None,
        error_type: str = "",
        error_message: str = "",
        traceback: str = "",
        progress: float = 0.0,
        status: str = "",
        properties: bytes | None = None,
    ) -> None:
        """Record a terminal state; ignored if the job is already terminal (exactly once).

        A start staged in the same commit goes into the end's row instead of
        a row of ``starts`` of its own (one row fewer per job when jobs are
        short and results come in batches).
        """
        start = self._starts.pop(job_id, None)
        self._finishes.append(
            (job_id, state, finished, result, error_type, error_message, traceback, progress, status, properties,
             *(start[:3] if start is not None else (None, None, None)))
        )

    def staged_result(self, job_id: int) -> bytes | None:
        """The result (as it is written) of the end staged last, if that end is ``job_id``'s; else None."""
        row = self._finishes[-1] if self._finishes else None
        return row[3] if row is not None and row[0] == job_id else None

    def stage_segments(self, job_id: int, names: Sequence[str]) -> None:
        """Record that a job's result names these shared-memory segments (made by its worker, for its taker):
        unlinked when the job is pruned (:meth:`prune`).  Staged with the job's end, written in its commit;
        the first record of a job wins, as its end does.  ``names`` hold no whitespace (segment names)."""
        self._segments.append((job_id, " ".join(names)))

    def segments_named(self, prefix: str) -> set[str]:
        """The segment names starting with ``prefix`` that results' records hold (see :meth:`stage_segments`):
        written, staged, or in a commit kept for a retry.  For the segments a dead worker made
        (:func:`actors.shm.unlink_left_by`): those its results name are their takers'.  Waits for the commit
        in flight; one scan of ``result_segments`` (a row per job whose result holds its worker's arrays)."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        found: set[str] = set()
        rows = list(self._segments) + (list(self._failed[0][7]) if self._failed is not None else [])
        rows += self.db.execute("SELECT id, names FROM result_segments WHERE instr(names, ?) > 0", (prefix,))
        for _, names in rows:
            found.update(name for name in names.split() if name.startswith(prefix))
        return found

    def stage_event(self, job_id: int, kind: str, detail: str = "", t: float | None = None) -> None:
        """Record an event on a job (stalled, retried, killed, ...)."""
        self._events.append((job_id, time.time() if t is None else t, kind, detail))

    @property
    def dirty(self) -> bool:
        """Whether anything is staged."""
        return self._horizon is not None or self.staged_rows() > 0

    def staged_rows(self) -> int:
        """How many rows the next commit writes (besides the horizon)."""
        return (len(self._inserts) + len(self._new_contexts) + len(self._starts) + len(self._finishes) + len(self._requeues)
                + len(self._events) + len(self._progress) + len(self._segments))

    def staged_jobs(self) -> int:
        """How many new jobs are staged (not written yet)."""
        return len(self._inserts)

    @property
    def busy(self) -> bool:
        """Whether a commit handed to the writer thread has not been collected yet."""
        return self._inflight

    @property
    def staged_seq(self) -> int:
        """The number of the commit that will write what is staged now: the next one begun (after the one in
        flight, or kept failed, if any).  What is staged is written once :attr:`done_seq` reaches it."""
        return self.started_seq + 1

    def commit(self) -> None:
        """Write everything staged in one transaction (group commit), after any commit still in flight.

        A commit that fails for a reason that may pass (a full disk: see
        :func:`_passing`) is kept and tried again first, at most every
        :data:`_RETRY_SECONDS` (see :attr:`write_error`); nothing staged after
        it is written before it.  Any other failure raises DaemonError.
        """
        self._settle()
        if self._failed is not None:
            if time.monotonic() < self._retry_at:
                return
            batch, taken = self._failed
            self._failed = None
            if not self._write_or_keep(batch, taken):
                return
            log.warning("event=journal-write-recovered detail=the failed commit is written; accepting jobs again")
            self.write_error = ""
        if not self.dirty:
            return
        batch = self._take()
        self.started_seq += 1
        self._write_or_keep(batch, self._taken_id)

    def _write_or_keep(self, batch: tuple[Any, ...], taken: int) -> bool:
        """Write ``batch`` (the commit numbered ``started_seq``) now; on failure keep it for a retry."""
        try:
            self._write(batch)
        except DaemonError as exc:
            if not _passing(exc):
                raise
            self._keep_failed(batch, taken, exc)
            return False
        self.done_seq = self.started_seq
        self.written_id = max(self.written_id, taken)
        return True

    def _keep_failed(self, batch: tuple[Any, ...], taken: int, error: BaseException) -> None:
        if not self.write_error:
            log.error("event=journal-write-failed reason=%s detail=retried every %gs; no new job is accepted until "
                      "it is written", error, _RETRY_SECONDS)
        self._failed = (batch, taken)
        self.write_error = str(error)
        self._retry_at = time.monotonic() + _RETRY_SECONDS

    def drop_unwritten(self, above: int = 0) -> list[int]:
        """Take back the new jobs of the failed commit and those staged since, with ids over ``above``: their ids.

        For when a commit failed (:attr:`write_error`): no job in it or
        staged after it was acknowledged (an acknowledgement waits for the
        commit of its jobs), so their submits can be refused at once instead
        of waiting for the disk; the rest of the failed commit (results,
        starts, and the jobs of a submit whose first ones were written ahead:
        ``above`` is its last id) is kept and written when it can be.
        """
        ids = [row[0] for row in self._inserts if row[0] > above]
        self._inserts = [row for row in self._inserts if row[0] <= above]
        if self._failed is not None:
            inserts = self._failed[0][1]
            ids += [row[0] for row in inserts if row[0] > above]
            # the kept batch holds this list: its retry writes no row of the dropped jobs
            inserts[:] = [row for row in inserts if row[0] <= above]
            if not any(self._failed[0][:-1]):  # nothing else failed with them: the next commit tries at once
                self._retry_at = 0.0
        return ids

    def write_first(self, n: int) -> bool:
        """Write the first ``n`` staged new jobs now, on this thread, ahead of the commit that stages them;
        whether it did.

        So the first jobs of a big submit may run while the writer thread
        writes the rest (:meth:`JobBook.pop` takes only written jobs).  It is
        outside the numbered commits: ``done_seq`` does not move, so nothing
        held for the commit of these jobs (a submit's acknowledgement waits
        for all its jobs) is sent early; only :attr:`written_id` moves.  Done
        only when no commit is in flight or kept failed (every job staged
        before is written, so these are the next ids) and there are more
        than ``n``; a failure puts the rows back for the commit to meet.
        """
        if self._inflight or self._failed is not None or len(self._inserts) <= n or n < 1:
            return False
        first = self._inserts[:n]
        try:
            self._write((self._new_contexts, first, [], [], [], [], [], [], None))
        except DaemonError:
            return False  # still staged: the commit writes them, or keeps its failure and says why
        del self._inserts[:n]
        self._new_contexts = []
        self.written_id = max(self.written_id, first[-1][0])
        return True

    def commit_async(self) -> None:
        """Hand everything staged to the writer thread as one transaction (its number is ``started_seq``).

        The caller keeps what must wait for it until :attr:`done_seq` reaches
        that number: :attr:`wake_fd` turns readable when the writer is done,
        and :meth:`collect` then records it (or raises its error).  One commit
        is in flight at a time; what is staged meanwhile is the next one.
        While the writer runs, SQLite runs without the GIL, so the daemon's
        loop goes on with the next messages on the other core.
        """
        assert not self._inflight, "one commit in flight at a time"
        if self._failed is not None:  # the failed one first, on this thread (it is retried once a second at most)
            self.commit()
            return
        if not self.dirty:
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="journal", daemon=True)
            self._writer.start()
        batch = self._take()
        self.started_seq += 1
        self._inflight = True
        self._written.clear()
        self._inflight_batch = batch
        self._batches.put(batch)

    def collect(self) -> bool:
        """Record the writer's finished commit, if it finished (one that failed is kept: see :meth:`commit`);
        whether one did."""
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        if not self._inflight or not self._written.is_set():
            return False
        self._settle()
        return True

    def _settle(self) -> None:
        """Wait for the commit in flight, if any, and record it (or keep it for a retry, if it failed)."""
        if not self._inflight:
            return
        self._written.wait()
        self._inflight = False
        error, self._error = self._error, None
        if error is not None:
            if not _passing(error):
                raise error
            self._keep_failed(self._inflight_batch, self._taken_id, error)
            return
        self.done_seq = self.started_seq
        self.written_id = max(self.written_id, self._taken_id)

    def _write_loop(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            try:
                if batch is _COPY_TAIL:
                    self._copy_tail()
                else:
                    self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the daemon's loop, which raises it
                self._error = exc
            self._written.set()
            os.eventfd_write(self.wake_fd, 1)

    def _wrote(self, rows: int, nbytes: int) -> None:
        """Count what a commit wrote; ask for a checkpoint once :data:`_CHECKPOINT_ROWS` rows or
        :data:`_CHECKPOINT_BYTES` bytes were written since the last one was asked for; copy the log's tail if
        the checkpoint thread left it to the writer, or if the log's file has grown past
        :data:`_WAL_LIMIT_BYTES` (:meth:`_copy_tail`; looked at every :data:`_LOG_LOOK_BYTES`).  Never
        raises: the commit is written."""
        self._commits += 1
        self._unchecked += rows
        self._unchecked_bytes += nbytes
        if self._unchecked >= _CHECKPOINT_ROWS or self._unchecked_bytes >= _CHECKPOINT_BYTES:
            self._unchecked = self._unchecked_bytes = 0
            self._ask_checkpoint()
        self._unlooked_bytes += nbytes
        if self._unlooked_bytes >= _LOG_LOOK_BYTES:
            self._unlooked_bytes = 0
            try:
                self._tail_due = self._tail_due or os.stat(self._wal).st_size > _WAL_LIMIT_BYTES
            except OSError:  # (no log yet)
                pass
        if self._tail_due:
            self._tail_due = False
            if threading.current_thread() is self._writer:
                self._copy_tail()
            else:  # a commit written on the daemon's loop: the loop goes on meanwhile, the next commit waits
                self._copy_tail_later()

    def _copy_tail_later(self) -> None:
        """Hand :meth:`_copy_tail` to the writer thread as if it were a commit (:attr:`busy` until collected:
        the daemon begins no commit meanwhile, and what waits for one waits for it; nothing else waits)."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="journal", daemon=True)
            self._writer.start()
        self._inflight = True
        self._written.clear()
        self._inflight_batch = ()
        self._batches.put(_COPY_TAIL)

    def _copy_tail(self) -> None:
        """Copy back the tail of the log that the checkpoint thread could not, here, between two commits: so
        that the next commit starts the log over and cuts its file back to :data:`_WAL_LIMIT_BYTES`.

        Under a steady stream of commits (big results, one after another)
        every checkpoint beside them ends with commits written meanwhile,
        uncopied, and SQLite starts the log over only once all of it is
        copied: the log's file grew by all that was written (600 MiB for
        3,000 results of 200 KB).  No commit can come in here (this
        connection is the only writer, on the thread that writes), so this
        copies the tail whole unless a reader (another process) holds an
        older snapshot.  The checkpoint thread hands over a short tail (see
        :data:`_TAIL_FRAMES`): some copying and two syncs before the next
        commit (on the writer thread: :meth:`_copy_tail_later`), once per
        half of :data:`_WAL_LIMIT_BYTES` of log written while such a stream
        lasts.  A checkpoint of that thread under way is waited for first:
        when the log outgrew its file, the checkpoints could not keep up,
        and the commits wait for them (the disk takes the results no faster).
        """
        with self._pass_lock:
            try:
                busy = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]
            except sqlite3.Error as exc:
                log.warning("event=checkpoint-failed reason=%s", exc)
                return
        if busy:  # a checkpoint of another process under way: tried again after the next commit
            self._tail_due = True

    @property
    def checkpoint_busy(self) -> bool:
        """Whether a checkpoint was asked for and has not yet copied the whole log (one that could not is retried)."""
        return self._checkpoints_done < self._checkpoints_asked or self._checkpoint_partial

    def _ask_checkpoint(self) -> None:
        self._checkpoints_asked += 1
        if self._checkpointer is None:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="journal-checkpoint", daemon=True)
            self._checkpointer.start()
        self._checkpoint_due.set()

    def _stop_checkpointer(self) -> None:
        """End the checkpoint thread and close its connection (the next checkpoint asked for starts another)."""
        if self._checkpointer is not None:
            self._closing = True
            self._checkpoint_due.set()
            self._checkpointer.join()
            self._checkpointer = None
            self._closing = False

    def _checkpoint_loop(self) -> None:
        """Copy the write-ahead log back into the database, on a connection of its own.

        SQLite's automatic checkpoint would run inside the commit that crosses
        its threshold (1,000 pages) and stall that commit, and every reply
        waiting for it, for the copy and its fsyncs.  A ``PASSIVE`` checkpoint
        here runs beside the commits (it never blocks a writer) and lets the
        log start over once everything in it is copied: the next commit then
        writes from the start of the file and truncates it to
        :data:`_WAL_LIMIT_BYTES`.  One that could not copy everything (a
        reader still on an older snapshot) is tried again every
        :data:`_CHECKPOINT_RETRY_SECONDS` until it does, asked or not.  One
        during which commits were written copied the log up to where it
        began only (and says it copied it all): once the log is long, it goes
        on at once, and leaves the last tail to the writer (:meth:`_next_pass`).
        """
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            long_log = _WAL_LIMIT_BYTES // 2 // (db.execute("PRAGMA page_size").fetchone()[0] + 24)  # (frames)
            logged = copied = last = 0  # (last: the frames the last pass copied)
            chase = 0  # passes made at once in a row, each after one during which commits came
            while True:
                if not chase:
                    self._checkpoint_due.wait(_CHECKPOINT_RETRY_SECONDS if self._checkpoint_partial else None)
                self._checkpoint_due.clear()
                if self._closing:
                    return
                asked = self._checkpoints_asked
                if self._tail_due:  # the writer copies the log's tail at its next commit: a pass now would only
                    self._checkpoints_done = asked  # make it wait, and end with a tail again
                    chase = 0
                    continue
                commits = self._commits
                before = copied
                try:
                    with self._pass_lock:
                        busy, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self._checkpoint_partial = bool(busy) or copied < logged
                except sqlite3.Error as exc:  # busy or failing: tried again; commits go on
                    self._checkpoint_partial = True
                    log.warning("event=checkpoint-failed reason=%s", exc)
                frames = copied - before if copied >= before else copied  # (the log started over in between)
                chase = 0 if self._checkpoint_partial or self._commits == commits or logged < long_log \
                    else self._next_pass(frames, last, chase)
                last = frames
                self._checkpoints_done = asked
        finally:
            db.close()

    def _next_pass(self, frames: int, before: int, chase: int) -> int:
        """After a pass that copied ``frames`` frames (the one before it, ``before``) while commits were
        written (what they wrote is not copied, so the log is not started over): the number of the next pass
        to make at once, or 0 to hand the tail to the writer (:meth:`_copy_tail`), once the last pass copied
        :data:`_TAIL_FRAMES` or fewer (the tail it left is shorter still), no less than half of the one before
        it (the tails shrink no more), or after :data:`_CHASE_PASSES` passes."""
        if frames > _TAIL_FRAMES and chase < _CHASE_PASSES and (not chase or frames <= before // 2):
            return chase + 1
        self._tail_due = True
        return 0

    def _take(self) -> tuple[Any, ...]:
        self._taken_id = self._inserts[-1][0] if self._inserts else 0  # ids are staged in increasing order
        batch = (self._new_contexts, self._inserts, self._requeues, list(self._starts.values()),
                 list(self._progress.values()), self._finishes, self._events, self._segments, self._horizon)
        self._new_contexts, self._inserts, self._requeues, self._finishes, self._events = [], [], [], [], []
        self._segments = []
        self._starts = {}
        self._progress = {}
        self._horizon = None
        return batch

    def _write(self, batch: tuple[Any, ...]) -> None:
        contexts, inserts, requeues, starts, progress, finishes, events, segments, horizon = batch
        db = self.db
        try:
            db.execute("BEGIN")
            if contexts:
                db.executemany("INSERT OR REPLACE INTO contexts(id, cwd, path) VALUES (?,?,?)", contexts)
            if inserts:
                _insert_rows(db, "INSERT INTO jobs(id, fn, name, spec, priority, state, submitted, owner, ctx) VALUES ",
                             inserts)
            if requeues:
                db.executemany("UPDATE jobs SET state='queued', attempts=?, worker='' WHERE id=?", requeues)
                db.executemany("DELETE FROM starts WHERE id=?", [(r[1],) for r in requeues])
            if starts:
                db.executemany("INSERT OR REPLACE INTO starts(started, worker, attempts, id) VALUES (?,?,?,?)", starts)
            if progress:
                db.executemany("UPDATE jobs SET progress=?, status=?, properties=? WHERE id=?", progress)
            if finishes:  # the first end of a job wins: exactly once
                _insert_rows(db, "INSERT OR IGNORE INTO results(id, state, finished, result, error_type, error_message, "
                                 "traceback, progress, status, properties, started, worker, attempts) VALUES ", finishes)
            if events:
                db.executemany("INSERT INTO events(job_id, t, kind, detail) VALUES (?,?,?,?)", events)
            if segments:
                db.executemany("INSERT OR IGNORE INTO result_segments(id, names) VALUES (?,?)", segments)
            if horizon is not None:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('horizon', ?)", (horizon,))
            db.execute("COMMIT")
            self._wrote(sum(len(rows) for rows in batch[:-1]),  # every part but the horizon
                        _sizes(inserts, 3) + _sizes(finishes, 3) + _sizes(finishes, 6) + _sizes(finishes, 9)
                        + _sizes(progress, 2))
        except sqlite3.Error as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:  # SQLite rolled it back itself (a full disk can end the transaction)
                    pass
            raise DaemonError(f"job journal {self.path} write failed: {exc}") from exc

    # -- reading -----------------------------------------------------------------
    def unfinished(self) -> list[tuple[int, bytes, int, str, int, float, int]]:
        """Jobs that were queued or running when the last daemon stopped (the last column: their context's id)."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        rows = self.db.execute(
            "SELECT j.id, j.spec, j.priority, IIF(s.id IS NULL, j.state, 'running'), IIF(s.id IS NULL, j.attempts, "
            "s.attempts), j.submitted, j.ctx FROM jobs j LEFT JOIN starts s ON s.id = j.id "
            "WHERE j.id >= ? AND j.state IN ('queued','running') AND NOT EXISTS (SELECT 1 FROM results r WHERE r.id=j.id) "
            "ORDER BY j.id", (self.horizon(),)
        ).fetchall()
        return [tuple(r) for r in rows]

    def aborts(self, reasons: Iterable[str]) -> dict[int, str]:
        """The aborts for one of ``reasons`` recorded on jobs from the horizon on: job id -> reason (the latest).

        An abort is the job's ``abort`` event, its reason the event's detail
        (as :meth:`JobBook.abort <actors._jobs.JobBook.abort>` stages it);
        journals of older releases hold them the same way.
        """
        self._settle()  # the connection is the writer thread's while a commit is in flight
        reasons = list(reasons)
        rows = self.db.execute(  # (events_job: from the horizon on, not the whole table)
            f"SELECT job_id, detail FROM events WHERE job_id >= ? AND kind = ? AND detail IN "
            f"({','.join('?' * len(reasons))}) ORDER BY rowid", (self.horizon(), ABORT_EVENT, *reasons))
        return dict(rows.fetchall())

    def infos(self, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """Rows for the given ids (see ``_INFO_COLUMNS``), with events, in id order."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        ids = [i for i in ids if -2**63 <= i < 2**63]  # no row has an id SQLite cannot even bind
        out = []
        for chunk_start in range(0, len(ids), 500):
            chunk = list(ids[chunk_start : chunk_start + 500])
            marks = ",".join("?" * len(chunk))
            out += self.db.execute(f"SELECT {_INFO_COLUMNS} FROM job_rows WHERE id IN ({marks}) ORDER BY id", chunk).fetchall()
        return out

    def recent(self, states: Iterable[str], limit: int, owner: str | None = None) -> list[tuple[Any, ...]]:
        """The most recent jobs, newest first, optionally filtered by state and by owner."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        where, params = [], []
        states = list(states)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += states
        if owner is not None:
            where.append("owner=?")
            params.append(owner)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self.db.execute(f"SELECT {_INFO_COLUMNS} FROM job_rows {clause}ORDER BY id DESC LIMIT ?",
                               (*params, limit)).fetchall()

    def owners(self, ids: Sequence[int]) -> dict[int, str]:
        """Who submitted each of the given jobs ("" for a local client)."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        out: dict[int, str] = {}
        ids = [i for i in ids if -2**63 <= i < 2**63]
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(f"SELECT id, owner FROM jobs WHERE id IN ({marks})", chunk).fetchall())
        return out

    def events(self, job_id: int) -> list[list[Any]]:
        """Events recorded on one job, oldest first, as ``[t, kind, detail]``."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        rows = self.db.execute("SELECT t, kind, detail FROM events WHERE job_id=? ORDER BY rowid", (job_id,))
        return [list(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        self._settle()  # the connection is the writer thread's while a commit is in flight
        return dict(self.db.execute("SELECT state, COUNT(*) FROM job_rows GROUP BY state").fetchall())

    def prune(self, older_than: float, unlink: Callable[[list[tuple[str, float]]], object] | None = None) -> int:
        """Delete up to :attr:`prune_slice` terminal jobs finished before ``older_than`` (epoch seconds), with
        their starts and events, in one transaction; how many it deleted.

        ``unlink`` is called once that transaction is committed, with the
        shared-memory segments the deleted jobs' results named (see
        :meth:`stage_segments`), as ``(name, when its job ended)``, if any:
        nobody can ask for those results any more.  The names are as the
        journal held them; ``unlink`` checks them
        (:func:`actors.shm.unlink_ended`).  Most jobs have none: one lookup
        in an empty range of ``result_segments`` a slice.

        Runs on the daemon's loop, so it is one bounded slice: the caller
        calls again soon while :attr:`prune_behind` says there is more (a
        journal of millions of ended jobs is pruned in a few minutes, not at
        10,000 jobs per prune), and the size of the next slice follows the
        time this one took (:data:`_PRUNE_SLICE_SECONDS`).  Once a slice finds
        no more, the contexts no job names any more are deleted too (a scan
        of ``jobs``: once per pruning, not per slice).  Raises
        sqlite3.OperationalError if it cannot write (the disk full): nothing
        of the slice is deleted then.
        """
        self._settle()  # the connection is the writer thread's while a commit is in flight
        began = time.perf_counter()
        self.prune_behind = False
        db = self.db
        db.execute("BEGIN")
        try:
            n, last = db.execute("SELECT COUNT(*), MAX(id) FROM (SELECT id FROM results WHERE finished < ? ORDER BY id "
                                 "LIMIT ?)", (older_than, self.prune_slice)).fetchone()
            if n:  # the same rows again, the scan of ``results`` bounded by the last one's id
                chosen, params = "SELECT id FROM results WHERE id <= ? AND finished < ?", (last, older_than)
                self._orphans.update(r[0] for r in db.execute(f"SELECT DISTINCT ctx FROM jobs WHERE id IN ({chosen})",
                                                               params))
                named = db.execute("SELECT s.id, s.names, r.finished FROM result_segments s JOIN results r ON "
                                   "r.id = s.id WHERE s.id <= ? AND r.finished < ?", params).fetchall()
                if named:  # (by id: a subquery of the chosen rows would be built once more for a table mostly empty)
                    db.executemany("DELETE FROM result_segments WHERE id=?", [row[:1] for row in named])
                for rows in ("events WHERE job_id", "starts WHERE id", "jobs WHERE id", "results WHERE id"):
                    db.execute(f"DELETE FROM {rows} IN ({chosen})", params)  # results last: it chooses the rows
            else:
                named = []
            if n < self.prune_slice:
                self._drop_orphans()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:  # SQLite rolled it back itself (a full disk can end the transaction)
                    pass
            raise
        self.prune_behind = n >= self.prune_slice
        self._wrote(4 * n, 0)
        if named and unlink is not None:
            unlink([(name, ended) for _, names, ended in named for name in names.split()])
        self._size_slice(time.perf_counter() - began)
        return int(n)

    def _drop_orphans(self) -> None:
        """Delete the contexts of pruned jobs that no job names any more, except those this daemon handed out (a
        job being staged may name one); a dropped one is forgotten here too, so it is never handed out again."""
        orphans = [cid for cid in self._orphans - self._handed if cid]
        self._orphans.clear()
        gone = [cid for cid in orphans if self.db.execute("SELECT 1 FROM jobs WHERE ctx=? LIMIT 1", (cid,)).fetchone()
                is None]
        self.db.executemany("DELETE FROM contexts WHERE id=?", [(cid,) for cid in gone])
        for cid in gone:
            cwd, path = self._context_by_id.pop(cid, ("", []))
            self._context_ids.pop((cwd, tuple(path)), None)

    def _size_slice(self, took: float) -> None:
        """The next slice of pruning: halved after one that took more than :data:`_PRUNE_SLICE_SECONDS`, doubled
        after one that took less than half of it (when it was full), within :data:`_PRUNE_SLICE_JOBS`."""
        fewest, _, most = _PRUNE_SLICE_JOBS
        if took > _PRUNE_SLICE_SECONDS:
            self.prune_slice = max(fewest, self.prune_slice // 2)
        elif took < _PRUNE_SLICE_SECONDS / 2 and self.prune_behind:
            self.prune_slice = min(most, self.prune_slice * 2)

    def close(self) -> None:
        """Commit what is staged and close the database; DaemonError if a commit could not be written.

        A journal removed under the daemon is written at its path again first
        (:meth:`restore`), if it was not yet.  A last commit that fails for
        want of space (a full disk) is tried once more with the space of the
        reserve freed (``PATH.reserve``, made again at the next start): so the
        ends of the jobs that finished while the disk was full, whose results
        their clients were sent from memory, are journaled, not found
        unfinished by the next start.  If it still fails, the error says how
        many ends were not written, and what the next start makes of them.
        """
        try:
            if self.lost_file and not self.path.exists() and not self.restore():
                log.warning("event=journal-saved-at-stop path=%s", self.path)
            self._retry_at = 0.0  # a last try now
            self.commit()
            if self._failed is not None and _unlink(self.reserve):
                log.warning("event=journal-reserve-freed detail=the last commit failed (%s); tried again with the "
                            "%d bytes kept for it", self.write_error, _RESERVE_BYTES)
                self._retry_at = 0.0
                self.commit()
            if self._failed is not None:
                raise DaemonError(self._unwritten())
        finally:
            if self._writer is not None:
                self._batches.put(None)
                self._writer.join()
            self._stop_checkpointer()
            os.close(self.wake_fd)
            self.db.close()
            os.close(self._lock_fd)

    def _unwritten(self) -> str:
        """What is lost when the last commit cannot be written (at close): the ends of jobs above all."""
        failed = self._failed[0] if self._failed is not None else ()
        ends = [row[0] for row in chain(failed[5] if failed else (), self._finishes)]
        text = f"job journal {self.path}: the last commit was not written ({self.write_error})"
        if not ends:
            return text
        shown = ", ".join(map(str, ends[:20])) + (f" and {len(ends) - 20} more" if len(ends) > 20 else "")
        return (f"{text}: {len(ends)} finished job(s) ({shown}) are not journaled as ended (their clients were "
                "sent their ends from memory, if connected); the next start finds them unfinished and runs them "
                "again if retries are left, else ends them worker-lost")


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to the journal at ``path`` as the daemon writes it (WAL, its checkpoints left to
    :meth:`Journal._checkpoint_loop`, never inside a commit)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")  # (applied by this connection's commits)
    return db


def _sizes(rows: Sequence[tuple[Any, ...]], column: int) -> int:
    """The total length of ``column`` (bytes or str; None counts 0) in ``rows``: what a commit writes of them."""
    return sum(map(len, filter(None, map(itemgetter(column), rows)))) if rows else 0


def _make_reserve(path: Path) -> None:
    """Keep :data:`_RESERVE_BYTES` of the disk at ``path`` (allocated, not sparse); without it if there is no room."""
    try:
        if os.stat(path).st_blocks * 512 >= _RESERVE_BYTES:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("event=journal-no-reserve path=%s reason=%s", path, exc.strerror)
        return
    try:
        os.posix_fallocate(fd, 0, _RESERVE_BYTES)
    except OSError as exc:  # no room (or a file system that cannot allocate ahead): no reserve this time
        log.warning("event=journal-no-reserve path=%s reason=%s", path, exc.strerror)
        os.close(fd)
        _unlink(path)
        return
    os.close(fd)


def _unlink(path: Path) -> bool:
    """Remove ``path``; whether there was one."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("event=unlink-failed path=%s reason=%s", path, exc.strerror)
        return False


def _lock(path: Path) -> int:
    """An exclusive lock on ``path``'s journal, held while it is open (``PATH.lock``, naming its holder's pid);
    DaemonError if another daemon holds it.

    The daemon's own lock is in its run directory, per name: two daemons of
    different names with one state directory (one ``ENSEMBLE_STATE_DIR`` for a
    whole environment, say) both wrote this journal, and the second one's
    writes ended the first daemon (a job id taken twice).
    """
    import fcntl

    lock_file = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonError(f"job journal {path} cannot be locked ({lock_file}: {exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise DaemonError(f"job journal {path} is in use by another daemon" + (f" (pid {holder})" if holder else "")
                          + ": each daemon needs a state directory of its own ([daemon] state_dir, "
                          "ENSEMBLE_STATE_DIR; by default one per --name)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # (a full disk: the lock holds all the same, without its pid)
        pass
    return fd


def _passing(error: BaseException) -> bool:
    """Whether a failed commit may succeed when written again: SQLite's operational errors (the disk full,
    an I/O error, a read-only file, the database locked), not a broken rule or a corrupt file (a bug)."""
    return isinstance(error.__cause__, sqlite3.OperationalError)


_ROWS_PER_STATEMENT = 128  # 13 columns x 128 = 1,664 parameters, far below SQLite's limit of 32,766
_STATEMENTS: dict[tuple[str, int, int], str] = {}


def _insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``head`` + ``VALUES`` for every row, up to :data:`_ROWS_PER_STATEMENT` rows a statement.

    ``executemany`` steps SQLite once a row, and every step gives up the GIL
    and takes it back, a hand-over each time the daemon's loop thread wants
    it too.  One statement of many rows steps once.
    """
    width = len(rows[0])
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        part = rows[start:start + _ROWS_PER_STATEMENT]
        key = (head, width, len(part))
        sql = _STATEMENTS.get(key)
        if sql is None:
            one = "(" + ",".join("?" * width) + ")"
            sql = _STATEMENTS[key] = head + ",".join([one] * len(part))
        db.execute(sql, list(chain.from_iterable(part)))

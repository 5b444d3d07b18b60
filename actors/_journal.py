"""The durable job journal: SQLite in WAL mode with group commit.

The supervisor stages every change of one poll-loop iteration (new jobs, state
changes, results, events) and :meth:`Journal.commit` writes them in one
transaction, before any acknowledgement of that iteration is sent.  A job's
result is recorded exactly once: a finish is applied only while the row is
not yet terminal.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from actors._errors import DaemonError
from actors._state import FINAL
from actors.messages import _encode_value

TERMINAL = tuple(sorted(FINAL))  # for SQL parameters

_SCHEMA = """
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
    result BLOB,
    error_type TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    traceback TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '',
    properties BLOB,
    worker TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
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


class Journal:
    """SQLite journal of jobs and their events; one writer (the supervisor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
            if "owner" not in columns:  # a journal from before remote ownership: every job was local
                self.db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        except sqlite3.DatabaseError as exc:
            raise DaemonError(f"job journal {path} cannot be opened: {exc}") from exc
        self._inserts: list[tuple[Any, ...]] = []
        self._starts: list[tuple[Any, ...]] = []
        self._finishes: list[tuple[Any, ...]] = []
        self._requeues: list[tuple[Any, ...]] = []
        self._events: list[tuple[Any, ...]] = []
        self._progress: dict[int, tuple[Any, ...]] = {}

    # -- staging ---------------------------------------------------------------
    def next_id(self) -> int:
        """The id after the largest one ever journaled."""
        row = self.db.execute("SELECT MAX(id) FROM jobs").fetchone()
        return (row[0] or 0) + 1

    def stage_insert(self, job_id: int, fn: str, name: str, spec: bytes, priority: int, submitted: float,
                     owner: str = "") -> None:
        """Record a newly accepted job (state ``queued``); ``owner`` is "" for a local client, else ROLE:NAME."""
        self._inserts.append((job_id, fn, name, spec, priority, "queued", submitted, owner))

    def stage_start(self, job_id: int, started: float, worker: str, attempts: int) -> None:
        """Record that a job started running on a worker."""
        self._starts.append((started, worker, attempts, job_id))

    def stage_requeue(self, job_id: int, attempts: int) -> None:
        """Put a job back to ``queued`` (its worker died and a retry is left).

        Requeues are written before starts, so a start staged earlier in this
        batch for the same job is dropped: the row must end ``queued``.
        """
        if self._starts:
            self._starts = [s for s in self._starts if s[3] != job_id]
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
        """Record a terminal state; ignored if the job is already terminal (exactly once)."""
        self._finishes.append(
            (state, finished, result, error_type, error_message, traceback, progress, status, properties, job_id)
        )

    def stage_event(self, job_id: int, kind: str, detail: str = "", t: float | None = None) -> None:
        """Record an event on a job (stalled, retried, killed, ...)."""
        self._events.append((job_id, time.time() if t is None else t, kind, detail))

    @property
    def dirty(self) -> bool:
        """Whether anything is staged."""
        return bool(
            self._inserts or self._starts or self._finishes or self._requeues or self._events or self._progress
        )

    def commit(self) -> None:
        """Write everything staged in one transaction (group commit)."""
        if not self.dirty:
            return
        db = self.db
        try:
            db.execute("BEGIN")
            if self._inserts:
                db.executemany(
                    "INSERT INTO jobs(id, fn, name, spec, priority, state, submitted, owner) VALUES (?,?,?,?,?,?,?,?)",
                    self._inserts,
                )
            if self._requeues:
                db.executemany(
                    "UPDATE jobs SET state='queued', attempts=?, worker='' WHERE id=? AND state IN ('queued','running')",
                    self._requeues,
                )
            if self._starts:
                db.executemany(
                    "UPDATE jobs SET state='running', started=?, worker=?, attempts=? "
                    "WHERE id=? AND state IN ('queued','running')",
                    self._starts,
                )
            if self._progress:
                db.executemany(
                    "UPDATE jobs SET progress=?, status=?, properties=? WHERE id=? AND state='running'",
                    list(self._progress.values()),
                )
            if self._finishes:
                db.executemany(
                    "UPDATE jobs SET state=?, finished=?, result=?, error_type=?, error_message=?, traceback=?, "
                    "progress=?, status=?, properties=? "
                    "WHERE id=? AND state NOT IN ('done','failed','cancelled','killed','worker-lost')",
                    self._finishes,
                )
            if self._events:
                db.executemany("INSERT INTO events(job_id, t, kind, detail) VALUES (?,?,?,?)", self._events)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise DaemonError(f"job journal {self.path} write failed: {exc}") from exc
        finally:
            self._inserts.clear()
            self._starts.clear()
            self._finishes.clear()
            self._requeues.clear()
            self._events.clear()
            self._progress.clear()

    # -- reading -----------------------------------------------------------------
    def unfinished(self) -> list[tuple[int, bytes, int, str, int, float]]:
        """Jobs that were queued or running when the last daemon stopped."""
        rows = self.db.execute(
            "SELECT id, spec, priority, state, attempts, submitted FROM jobs "
            "WHERE state IN ('queued','running') ORDER BY id"
        ).fetchall()
        return [tuple(r) for r in rows]

    def infos(self, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """Rows for the given ids (see ``_INFO_COLUMNS``), with events, in id order."""
        ids = [i for i in ids if -2**63 <= i < 2**63]  # no row has an id SQLite cannot even bind
        out = []
        for chunk_start in range(0, len(ids), 500):
            chunk = list(ids[chunk_start : chunk_start + 500])
            marks = ",".join("?" * len(chunk))
            out += self.db.execute(f"SELECT {_INFO_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY id", chunk).fetchall()
        return out

    def recent(self, states: Iterable[str], limit: int, owner: str | None = None) -> list[tuple[Any, ...]]:
        """The most recent jobs, newest first, optionally filtered by state and by owner."""
        where, params = [], []
        states = list(states)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += states
        if owner is not None:
            where.append("owner=?")
            params.append(owner)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self.db.execute(f"SELECT {_INFO_COLUMNS} FROM jobs {clause}ORDER BY id DESC LIMIT ?",
                               (*params, limit)).fetchall()

    def owners(self, ids: Sequence[int]) -> dict[int, str]:
        """Who submitted each of the given jobs ("" for a local client)."""
        out: dict[int, str] = {}
        ids = [i for i in ids if -2**63 <= i < 2**63]
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(f"SELECT id, owner FROM jobs WHERE id IN ({marks})", chunk).fetchall())
        return out

    def events(self, job_id: int) -> list[list[Any]]:
        """Events recorded on one job, oldest first, as ``[t, kind, detail]``."""
        rows = self.db.execute("SELECT t, kind, detail FROM events WHERE job_id=? ORDER BY rowid", (job_id,))
        return [list(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        return dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())

    def prune(self, older_than: float) -> int:
        """Delete terminal jobs finished before ``older_than`` (epoch seconds) and their events."""
        marks = ",".join("?" * len(TERMINAL))
        with self.db:
            ids = [
                r[0]
                for r in self.db.execute(
                    f"SELECT id FROM jobs WHERE state IN ({marks}) AND finished < ? LIMIT 10000",
                    (*TERMINAL, older_than),
                )
            ]
            if ids:
                self.db.executemany("DELETE FROM events WHERE job_id=?", [(i,) for i in ids])
                self.db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])
        return len(ids)

    def close(self) -> None:
        """Commit what is staged and close the database."""
        try:
            self.commit()
        finally:
            self.db.close()

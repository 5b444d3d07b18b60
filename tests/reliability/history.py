"""Jepsen-style history of a job queue: every operation recorded while faults are injected, checked at the end.

A test records what it did (:meth:`History.invoke` before a submit,
:meth:`History.ack` with the ids that came back, :meth:`History.observe` with
what a client saw at the end) and, through the job ``tests.jobs:record_execution``,
what the workers did: one line ``<job id> <worker pid>`` appended with O_APPEND
per execution.  :meth:`History.check` then reads the journal and that log:

* **lost**: acknowledged, never finished (no terminal row in the journal);
* **unexpected**: finished or executed but never acknowledged, beyond the
  submits whose acknowledgement was lost with the daemon (indeterminate);
* **duplicated**: a job with more than one journal row or more than one
  terminal state seen by clients, a result that is not the job's own, or an
  execution without the right to it: a job may run again only after the
  worker running it died, and only as often as its retries allow.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors._jobs import unpack_spec

TERMINAL = ("done", "failed", "cancelled", "killed", "worker-lost")


@dataclass
class History:
    """Operations recorded by a test while faults are injected (thread-safe)."""

    invoked: int = 0  # jobs handed to submit, acknowledged or not
    acknowledged: set[int] = field(default_factory=set)
    observed: dict[int, list[tuple[str, Any]]] = field(default_factory=lambda: collections.defaultdict(list))
    killed_pids: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def invoke(self, n: int) -> None:
        """``n`` jobs are about to be submitted."""
        with self.lock:
            self.invoked += n

    def ack(self, ids: list[int]) -> None:
        """A submit returned these ids."""
        with self.lock:
            self.acknowledged.update(ids)

    def observe(self, job_id: int, state: str, value: Any = None) -> None:
        """A client saw job ``job_id`` end in ``state`` with result ``value``."""
        with self.lock:
            self.observed[job_id].append((state, value))

    def killed(self, pid: int) -> None:
        """The fault injector SIGKILLed worker ``pid``."""
        with self.lock:
            self.killed_pids.add(pid)

    def check(self, journal: Path, executions: Path | None = None, results_are_ids: bool = False) -> dict[str, Any]:
        """The figures: lost, unexpected, duplicated and their evidence (lists of job ids)."""
        rows, dup_rows, deaths, integrity = _read_journal(journal)
        runs = _read_executions(executions)
        acked = self.acknowledged
        finished = {i for i, r in rows.items() if r["state"] in TERMINAL}
        indeterminate = max(0, self.invoked - len(acked))
        recovered = set(rows) - acked  # journaled, acknowledgement lost with the daemon
        ran_twice = sorted(i for i, pids in runs.items() if len(pids) > 1)
        return {
            "invoked": self.invoked,
            "acknowledged": len(acked),
            "finished": len(finished & acked),
            "lost": sorted(acked - finished),
            "recovered_unacknowledged": len(recovered),
            "unexpected": sorted((set(runs) | set(self.observed) | finished) - acked - recovered)
            + (sorted(recovered) if len(recovered) > indeterminate else []),
            "duplicated_rows": dup_rows,
            "duplicated_results": sorted(i for i, seen in self.observed.items() if len(seen) > 1),
            "wrong_results": sorted(i for i, seen in self.observed.items()
                                    if results_are_ids and seen[0][0] == "done" and seen[0][1] != i),
            "executions": sum(len(p) for p in runs.values()),
            "ran_twice": ran_twice,
            "ran_twice_without_right": [i for i in ran_twice if not self._may_rerun(i, runs[i], rows, deaths)],
            "still_running": sorted(i for i, r in rows.items() if r["state"] == "running"),
            "states": dict(collections.Counter(rows[i]["state"] for i in finished)),
            "integrity_check": integrity,
        }

    def _may_rerun(self, job_id: int, pids: list[int], rows: dict[int, dict[str, Any]],
                   deaths: collections.Counter[int]) -> bool:
        """A job ran ``len(pids)`` times: allowed only if the worker of every run but the last died (killed
        by us, or gone), the journal records each of those deaths under the job, and its retries cover them."""
        row = rows.get(job_id)
        reruns = len(pids) - 1
        workers_died = all(p in self.killed_pids or not _alive(p) for p in pids[:-1])
        return row is not None and workers_died and reruns <= min(row["retries"], deaths[job_id])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_journal(path: Path) -> tuple[dict[int, dict[str, Any]], list[int], collections.Counter[int], str]:
    """Rows by id, ids with more than one row, worker deaths per job (requeue events), integrity."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = {r[0]: {"state": r[1], "attempts": r[2], "retries": unpack_spec(r[3])[0].retries}
                for r in db.execute("SELECT id, state, attempts, spec FROM job_rows")}
        dup_rows = [r[0] for r in db.execute("SELECT id FROM jobs GROUP BY id HAVING COUNT(*) > 1")]
        deaths = collections.Counter(r[0] for r in db.execute(
            "SELECT job_id FROM events WHERE kind='requeued' AND (detail LIKE 'worker % died%' OR detail LIKE 'daemon%')"))
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    return rows, dup_rows, deaths, integrity


def _read_executions(path: Path | None) -> dict[int, list[int]]:
    """Worker pids per job id, in execution order, from the O_APPEND log."""
    runs: dict[int, list[int]] = collections.defaultdict(list)
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            job_id, pid = line.split()
            runs[int(job_id)].append(int(pid))
    return runs


def report(name: str, figures: dict[str, Any]) -> None:
    """Print a test's figures (lists as their lengths) and append them to ``$ENSEMBLE_FIGURES`` when set."""
    brief = {k: (len(v) if isinstance(v, list) else v) for k, v in figures.items()}
    print(f"\n[{name}] {json.dumps(brief, sort_keys=True)}")
    target = os.environ.get("ENSEMBLE_FIGURES")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"test": name, "full": full(), **brief}, sort_keys=True) + "\n")


def full() -> bool:
    """Whether the full sizes were asked for (``ENSEMBLE_FULL=1``)."""
    return os.environ.get("ENSEMBLE_FULL") == "1"


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss(pid: int) -> int:
    """Peak resident set size (VmHWM) of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start again from the current RSS (``/proc/PID/clear_refs``, value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))

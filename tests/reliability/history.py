"""Jepsen-style history of a queue: what was acknowledged, what finished, what ran, checked at the end.

* **lost**: acknowledged (an id came back from submit), never finished;
* **unexpected**: finished (in the journal or seen by a client) but never acknowledged;
* **duplicated**: a result recorded twice, or a job executed twice without the
  right to (it may run again only after its worker was killed while running
  it, and only if it had retries).
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

TERMINAL = ("done", "failed", "cancelled", "killed", "worker-lost")


@dataclass
class History:
    """Operations recorded by the test while faults are injected."""

    acknowledged: set[int] = field(default_factory=set)
    observed: dict[int, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, ids: list[int]) -> None:
        with self.lock:
            self.acknowledged.update(ids)

    def observe(self, job_id: int, state: str) -> None:
        with self.lock:
            self.observed[job_id].append(state)

    def check(self, journal: Path, executions: Path | None = None, tags: dict[int, int] | None = None) -> dict[str, Any]:
        """Figures from the journal and the per-execution log (one tag per line; ``tags`` maps job id -> tag)."""
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, state, attempts FROM jobs").fetchall()
            requeued = {r[0] for r in db.execute("SELECT DISTINCT job_id FROM events WHERE kind='requeued'")}
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
        states = {r[0]: r[1] for r in rows}
        finished = {i for i, s in states.items() if s in TERMINAL}
        by_tag: collections.Counter[int] = collections.Counter()
        if executions is not None and executions.exists():
            by_tag.update(int(line) for line in executions.read_text().split())
        runs = collections.Counter({jid: by_tag[tag] for jid, tag in (tags or {}).items()})
        figures = {
            "acknowledged": len(self.acknowledged),
            "finished": len(finished & self.acknowledged),
            "lost": sorted(self.acknowledged - finished),
            "unexpected": sorted((finished | set(self.observed)) - self.acknowledged),
            "duplicated_results": sorted(i for i, seen in self.observed.items()
                                         if len([s for s in seen if s in TERMINAL]) > 1),
            "ran_twice": sorted(i for i, n in runs.items() if n > 1),
            "ran_twice_without_right": sorted(i for i, n in runs.items() if n > 1 and i not in requeued),
            "states": dict(collections.Counter(states[i] for i in finished)),
            "integrity_check": integrity,
        }
        return figures


def report(name: str, figures: dict[str, Any]) -> None:
    """Print a test's figures (and append them to $ENSEMBLE_FIGURES when set)."""
    brief = {k: (len(v) if isinstance(v, list) else v) for k, v in figures.items()}
    print(f"\n[{name}] {json.dumps(brief, sort_keys=True)}")
    target = os.environ.get("ENSEMBLE_FIGURES")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"test": name, **brief}) + "\n")


def full() -> bool:
    """Whether the full sizes were asked for (ENSEMBLE_FULL=1)."""
    return os.environ.get("ENSEMBLE_FULL") == "1"


def is_zombie_child(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a zombie whose parent is ``parent`` (nobody reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "Z" and int(fields[1]) == parent

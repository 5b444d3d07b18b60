"""A job's states, defined once.

``queued`` (journaled, waiting) → ``dispatched`` (in a worker's line, not yet
begun: each worker is handed about 20 ms of work at a time, so a job submitted
while every worker is busy often waits here, behind the jobs of that line; an
idle worker takes back jobs that wait behind one that overran) → ``running`` →
one of the final states.  The values are the strings that travel on the wire and sit in the
journal, so a :class:`JobState` compares equal to its string.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"  # returned a value
    FAILED = "failed"  # raised, or could not be run or sent
    CANCELLED = "cancelled"  # cancelled, or its deadline passed, and it stopped in its grace
    KILLED = "killed"  # ignored its abort for its grace: its process group was SIGKILLed
    WORKER_LOST = "worker-lost"  # its worker died and no retry was left

    @property
    def final(self) -> bool:
        """Whether the job has ended (its result, if any, is known)."""
        return self in FINAL


FINAL: frozenset[JobState] = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.KILLED,
                                        JobState.WORKER_LOST})
"""The states in which a job has ended: its result or error is known and will not change."""

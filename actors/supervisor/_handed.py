"""Shared memory a gone client left to its jobs: kept while a job the daemon holds names it, then unlinked.

A local client's numpy arguments cross in shared memory it made (its
argument pool, its ``empty()`` arrays).  The daemon accepts and journals the
job; the client may then end before the job runs: a script that submits and
exits, a client killed.  Its segments went with it, and the job failed
("segment ... no longer exists"): an accepted job lost.  Now a client that
closes leaves the segments that jobs may still read listed and unlocked
(:meth:`actors._rundir.OwnedSegments.hand_over`), as a killed client's list
is left; each heartbeat tick the daemon takes such lists
(:meth:`RunDir.take_gone_clients`), unlinks at once the names no job it
holds refers to, and keeps the others here, with the ids of the jobs that
refer to them, until those jobs have ended.  A job whose result is such a
segment (an argument returned) hands it to the journal with its end, as a
result array its worker made: it stays for the result's taker until the job
is pruned (:meth:`claim`).

A job refers to a segment when its arguments, as held (packed), hold the
segment's name: an :class:`~actors.messages.ArrayHandle`'s name, or a name
inside a pickled value (an Executor's arrays cross as handles there too).
A search of the bytes, not a decode: a false match keeps a segment until
that job ends, never unlinks one a job needs.  It runs once per gone list
(and once at start-up over the recovered jobs), over the jobs held.

At start-up the daemon sweeps the segments a killed daemon left; it now
keeps those a live client lists (its pool outlives a restart of its daemon,
as its connection does), those a recovered job refers to (here, until that
job ends) and the result arrays the journal records for their takers
(unlinked when their jobs are pruned); at ``down`` it keeps the live
clients' again.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Mapping

import msgspec

from actors._jobs import Job
from actors.messages import _encode_value
from actors.shm import made_by, process_prefix, unlink_listed

log = logging.getLogger("ensemble.supervisor")


def _packed(value: Any) -> bytes:
    """A held spec's arguments as bytes (:func:`actors._jobs.held_spec` keeps them packed)."""
    return bytes(value) if type(value) is msgspec.Raw else _encode_value(value)


def referring(jobs: Iterable[Job], head: str, tail: str = r"[0-9]{1,10}\.[0-9]{1,20}") -> dict[str, set[int]]:
    """The segment names ``head`` + ``tail`` that the arguments of ``jobs`` hold, each with those jobs' ids.

    ``head``: a process's prefix (:func:`process_prefix`, then ``tail`` is
    its counter ``[0-9]{1,20}``) or the daemon's (``<pid>.<n>`` follow).
    Local clients' jobs only: a remote key's strings name nothing here (and
    must not make the daemon keep, or later unlink, anything).
    """
    start = head.encode()
    pattern = re.compile(re.escape(start) + tail.encode())
    found: dict[str, set[int]] = {}
    for job in jobs:
        if job.owner:  # a remote client's: its arrays crossed in the frame, it names no segment of this host
            continue
        spec = job.spec
        for value in (spec.args, spec.kwargs):
            data = _packed(value)
            if start not in data:
                continue
            for match in pattern.finditer(data):
                found.setdefault(match.group().decode("ascii"), set()).add(job.id)
    return found


class HandedSegments:
    """The segments gone clients left to jobs still held: ``name -> (maker's pid, when its list last grew, the ids
    of the jobs that refer to it)``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # the daemon's segment prefix, ``ensemble.<key>.``
        self.names: dict[str, tuple[int, float, set[int]]] = {}

    def take(self, pid: int, names: list[str], grew: float, jobs: Mapping[int, Job]) -> set[str]:
        """A gone client's list: keep the names its jobs still refer to; returns them (the caller unlinks the rest)."""
        if not names:
            return set()
        refs = referring(jobs.values(), process_prefix(self.prefix, pid), r"[0-9]{1,20}")
        kept = {name for name in names if name in refs}
        for name in kept:
            self.names[name] = (pid, grew, refs[name])
        return kept

    def adopt(self, refs: dict[str, set[int]], when: float) -> None:
        """Names that recovered jobs refer to, made by processes no client list holds alive (start-up)."""
        for name, ids in refs.items():
            pid = int(name[len(self.prefix):].partition(".")[0])
            self.names[name] = (pid, when, ids)

    def release(self, jobs: Mapping[int, Job]) -> int:
        """Unlink the kept names no held job refers to any more; how many were removed."""
        removed = 0
        for name, (pid, grew, ids) in list(self.names.items()):
            ids.intersection_update(jobs.keys())  # (ids of ended jobs go: those are no longer held)
            if not ids:
                del self.names[name]
                removed += unlink_listed(self.prefix, pid, [name], grew)
        return removed

    def claim(self, value: Any, blob: bytes) -> list[str]:
        """The kept names a job's result (``value``, journaled as ``blob``) holds: no longer kept here, they are
        the result's (its taker's, unlinked when the job is pruned should nobody take it)."""
        claimed: list[str] = []
        for pid in {pid for pid, _, _ in self.names.values()}:
            maker = process_prefix(self.prefix, pid)
            if maker.encode() in blob:
                for name in made_by(value, maker):
                    if self.names.pop(name, None) is not None:
                        claimed.append(name)
        return claimed

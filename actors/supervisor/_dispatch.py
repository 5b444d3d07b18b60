"""Dispatch policy as pure code: which queued jobs go to which worker, what to recall or steal, what is due.

Nothing here touches a socket or a clock of its own: each function takes the
job book, the worker slots and the time it is told, changes the bookkeeping
(jobs popped from the queue, ``recalling`` marks) and returns what the
supervisor must send.  So the policy is unit-tested without processes
(``tests/actors/test_dispatch.py``).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Collection, Iterable

from actors._jobs import Job, JobBook
from actors._ray import unplaceable
from actors._resources import describe, fits

if TYPE_CHECKING:
    from actors.supervisor._children import Slot

BUFFERED_WORK = 0.02  # seconds of work the dispatch window aims to keep queued at each worker
# a worker's current job has overrun (see overrun) once it has run this long and this many average jobs:
# the jobs prefetched behind it may then move to an idle worker (see steals)
OVERRUN_SECONDS = 0.05
OVERRUN_JOBS = 2.0


def window(job_seconds: float, limit: int, starting: int = 0) -> int:
    """Jobs to hand one worker at once: about :data:`BUFFERED_WORK` seconds of work, at most ``limit``.

    Short jobs travel in big batches (throughput); long ones one or two at a
    time, so an idle worker never waits while another holds a backlog.  Before
    the first job has been timed (``job_seconds <= 0``): two, or one while
    ``starting`` workers are still on their way (the first one ready held the
    second job behind the first, and the next one ready started the third:
    jobs of a second each started out of order).
    """
    if job_seconds <= 0:
        return 1 if starting else min(2, limit)
    return max(1, min(limit, int(BUFFERED_WORK / job_seconds)))


def starting(slots: Iterable["Slot"]) -> int:
    """The workers on their way: started, not ready yet (and not retiring)."""
    return sum(1 for s in slots if s.role == "worker" and not s.ready and not s.retire)


def takes_jobs(slot: "Slot") -> bool:
    """Whether a slot can be handed jobs now: a worker, ready, not retiring."""
    return slot.role == "worker" and slot.ready and not slot.retire


def plan(book: JobBook, slots: Iterable["Slot"], credit: int,
         late: Collection[str] = ()) -> list[tuple["Slot", list[Job]]]:
    """Pop queued jobs, best first, for every ready worker with free credit; returns ``(worker, jobs)`` pairs.

    Workers with the fewest outstanding jobs are served first, and the queue is
    shared out evenly so that one worker never takes a backlog others could
    run.  A job naming resources goes only to a worker whose slot offers them
    (:func:`actors._resources.fits`); it keeps its place in the queue
    meanwhile.  The workers named in ``late`` (their current job overran, see
    :func:`overrun`) are handed jobs only when no other worker could (none
    that is not late, or jobs that name resources): what they hold waits
    behind that job.  The popped jobs are ``dispatched``
    in the book; the caller records them on the slot and sends them (or
    requeues them if it cannot).  A capped group's jobs (an Executor's
    ``max_workers``) go only to the workers its cap allows
    (:meth:`JobBook.pop`), so they are not dealt again among the workers.
    """
    if not book.queued:
        return []
    slots = list(slots)
    ready = [s for s in slots if takes_jobs(s) and len(s.outstanding) < credit]
    if late:
        prompt = [s for s in ready if s.name not in late]
        if prompt or (not book.needy and any(takes_jobs(s) and s.name not in late for s in slots)):
            # a worker that is not late takes them once it has room: queued here, they go to whichever worker
            # is free first (handed to the late one, they waited for its job, or were stolen back and forth)
            ready = prompt
    ready.sort(key=lambda s: len(s.outstanding))
    out = []
    for i, slot in enumerate(ready):
        share = math.ceil(book.queued / (len(ready) - i))
        jobs = book.pop(min(credit - len(slot.outstanding), max(1, share)), slot.resources, slot.name)
        if not jobs:
            if book.needy or book.capped:  # this worker lacks what the queue's head needs, or its cap; another may not
                continue
            break
        out.append((slot, jobs))
    if len(out) > 1 and not book.needy and not (book.capped and any(j.spec.cap for _, js in out for j in js)):
        _deal(out)
    return out


def _deal(out: list[tuple["Slot", list[Job]]]) -> None:
    """Hand the popped jobs out again one at a time, in turn, each worker keeping its count (in place).

    Popped a worker at a time, the first worker got the queue's first jobs
    and the next one those after: with two idle workers and jobs 0-3, jobs 0
    and 2 started while 1 waited behind 0 (a cancel of the jobs not started
    then spared 2 and cancelled 1).  Dealt in turn, each worker's first job
    is among the oldest, so jobs start in about the order they were queued,
    as a pool's workers take them.  Only when no queued job names resources
    (any worker may run any of them).
    """
    jobs = [job for _, taken in out for job in taken]
    counts = [len(taken) for _, taken in out]
    if min(counts) == max(counts):  # (the usual case: every 'th job, by slicing)
        for i, (slot, _) in enumerate(out):
            out[i] = (slot, jobs[i::len(out)])
        return
    dealt: list[list[Job]] = [[] for _ in out]
    it = iter(jobs)
    for turn in range(max(counts)):
        for i, count in enumerate(counts):
            if turn < count:
                dealt[i].append(next(it))
    for i, (slot, _) in enumerate(out):
        out[i] = (slot, dealt[i])


def offers(slots: Iterable["Slot"]) -> list[dict[str, float]]:
    """What every worker slot offers (ready, starting or restarting: any that can run a job again)."""
    return [s.resources for s in slots if s.role == "worker" and not s.retire and s.state != "failed"]


def refusal(need: dict[str, float], offered: list[dict[str, float]], placeable: bool) -> str:
    """Why a job needing ``need`` can never run ("" when it can): no worker offers it and none can be placed.

    ``placeable``: a cluster (Ray) may still start a worker offering it (its
    nodes and autoscaler decide), so nothing is refused for its resources
    then, unless it names a resource Ray keeps for itself
    (:func:`actors._ray.unplaceable`): no worker could ever be placed for it.
    """
    if not need or any(fits(need, o) for o in offered):
        return ""
    if placeable:
        return unplaceable(need)
    best = ", ".join(sorted({describe(o) for o in offered})[:4]) or "no workers"
    return (f"it needs {describe(need)} and no worker offers that (workers offer: {best}); "
            "add a worker that does (`ensemble worker --resources`, or [cluster] ray) or ask for less")


def unmet(book: JobBook, slots: Iterable["Slot"]) -> list[dict[str, float]]:
    """Distinct resource needs of queued jobs that no live worker slot offers (to place a worker for each)."""
    needs = book.waiting_needs()
    if not needs:
        return []
    offered = offers(slots)
    out: list[dict[str, float]] = []
    for need in needs:
        if need not in out and not any(fits(need, o) for o in offered):
            out.append(need)
    return out


def recalls(book: JobBook, slots: Iterable["Slot"], priority: int) -> list[tuple["Slot", list[int]]]:
    """Prefetched jobs of lower priority than ``priority`` to ask back from their workers (marked ``recalling``).

    A worker's head job may already run, so only the jobs behind it are
    candidates; a job already being recalled is not asked for twice.
    """
    out = []
    for slot in slots:
        if len(slot.outstanding) < 2:
            continue
        ids = []
        for jid in list(slot.outstanding)[1:]:
            job = book.jobs.get(jid)
            if job is not None and job.state == "dispatched" and job.spec.priority < priority and not job.recalling:
                job.recalling = True
                ids.append(jid)
        if ids:
            out.append((slot, ids))
    return out


def overrun(book: JobBook, slots: Iterable["Slot"], now: float, job_seconds: float) -> set[str]:
    """Names of the workers whose current job has overrun at wall-clock time ``now``: jobs behind it may wait long.

    A job overruns once it has run :data:`OVERRUN_SECONDS` and
    :data:`OVERRUN_JOBS` times ``job_seconds`` (the moving average of a job's
    run time): a worker going through short jobs never has one, so what it
    holds stays where it is.  Costs a look at each worker's head job.
    """
    after = max(OVERRUN_SECONDS, OVERRUN_JOBS * job_seconds)
    out = set()
    for slot in slots:
        if slot.outstanding and slot.role == "worker":
            job = book.jobs.get(slot.outstanding[0])
            if job is not None and job.state == "running" and now - job.started >= after:
                out.add(slot.name)
    return out


def steals(book: JobBook, slots: Iterable["Slot"], now: float, job_seconds: float) -> list[tuple["Slot", list[int]]]:
    """Jobs waiting behind an overrun job to ask back for other workers (marked ``recalling``): ``(worker, ids)`` pairs.

    Called after :func:`plan`.  Every job that waits, not started, behind a
    local worker's overrun job (:func:`overrun`: no one can say when that
    worker will reach them) is asked back when another local worker can
    take it: an idle one, or one whose current job has not overrun.  Before,
    only an idle worker stole, so a stream of short jobs kept the other
    worker busy, never idle, and the jobs dealt behind a long one waited for
    all of it (4 s where a pool's shared queue took 0.2).  Once queued again
    a job keeps its place by priority, and ``plan`` hands it to a worker
    that is not late once that one has room (never to the late one while
    another can take it: it would be asked back again).  A job the offered resources do not
    fit, or a capped group's job no taker may hold
    (:meth:`~actors._jobs.JobBook.may_move`), stays.  Workers on other
    hosts (Ray-placed or remote) are neither robbed nor counted.  Jobs being
    aborted are left alone, and a worker that has a Recall to answer is
    asked nothing more until it has: its line is changing.
    """
    slots = list(slots)
    if len(slots) < 2:
        return []
    late = overrun(book, slots, now, job_seconds)
    if not late:
        return []
    takers = [s for s in slots if takes_jobs(s) and not s.remote and s.name not in late]
    if not takers:
        return []
    offered = [s.resources for s in takers]
    names = [s.name for s in takers]
    out = []
    for slot in slots:
        if slot.name not in late or slot.remote or not slot.ready or len(slot.outstanding) < 2:
            continue
        behind = [book.jobs.get(jid) for jid in itertools.islice(slot.outstanding, 1, None)]
        if any(job is not None and job.recalling for job in behind):
            continue
        ids = []
        for job in behind:
            if job is None or job.state != "dispatched" or job.abort_reason:
                continue
            need = job.spec.resources
            if need and not any(fits(need, offer) for offer in offered):
                continue
            if not book.may_move(job, names):  # its group's cap lets no taker hold it: back, it would come here again
                continue
            job.recalling = True
            ids.append(job.id)
        if ids:
            out.append((slot, ids))
    return out


def due(book: JobBook, slots: Iterable["Slot"], mono: float) -> tuple[list[Job], list[tuple["Slot", Job]]]:
    """``(jobs whose deadline passed, (worker, job) pairs whose abort grace ran out)`` at monotonic time ``mono``.

    Only the job at the head of a worker's line runs, so only heads are looked at.
    """
    expired, kills = [], []
    for slot in slots:
        if not slot.outstanding:
            continue
        job = book.jobs.get(slot.outstanding[0])
        if job is None:
            continue
        if job.deadline_at and mono >= job.deadline_at and not job.abort_reason:
            expired.append(job)
        if job.kill_at and mono >= job.kill_at and not job.killed:
            kills.append((slot, job))
    return expired, kills


def next_wakeup(book: JobBook, slots: Iterable["Slot"], mono: float, longest: float) -> float:
    """Seconds until the next deadline or kill of a running job, at most ``longest``."""
    timeout = longest
    for slot in slots:
        if slot.outstanding:
            job = book.jobs.get(slot.outstanding[0])
            if job is not None:
                for t in (job.kill_at, job.deadline_at):
                    if t:
                        timeout = min(timeout, max(0.0, t - mono))
    return timeout

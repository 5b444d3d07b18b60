"""Work stealing: jobs prefetched behind a long one move to an idle worker; and a job's output is out per job.

The policy (who is late, what is asked back) is tested without processes, as
in ``test_dispatch.py``; then with real daemons: a job that blocks until a file
appears holds its worker, and the short jobs handed to that worker behind it
must all finish while it still blocks, each exactly once.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from actors._jobs import Job, JobBook
from actors._journal import Journal
from actors.client import Executor, make_spec
from actors.messages import JobSpec
from actors.supervisor import _dispatch as plan
from actors.supervisor._children import Slot
from tests import jobs
from tests.conftest import Daemon, wait_for

Make = Callable[..., Daemon]
NOW = 1000.0  # wall-clock time the pure tests run at
LONG_AGO = NOW - 60  # a head job started then has overrun whatever the average


# -- the policy, without processes -------------------------------------------------------------------
def _book(tmp_path: Path, specs: list[JobSpec]) -> JobBook:
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    book.accept(specs, 0.0)
    book.journal.commit()  # a job is dispatched once its row is written
    return book


def _worker(name: str, remote: bool = False, resources: dict[str, float] | None = None) -> Slot:
    return Slot(name, "worker", "actors.worker", ready=True, remote=remote, resources=resources or {})


def _hand(book: JobBook, slot: Slot, n: int, started: float = LONG_AGO) -> list[Job]:
    """Give ``slot`` the next ``n`` queued jobs, as the supervisor does; the first runs since ``started``."""
    jobs_ = book.pop(n, slot.resources)
    slot.outstanding.extend(j.id for j in jobs_)
    book.start(jobs_[0], slot.name, started, 0.0)
    return jobs_


def test_a_head_overruns_only_past_both_a_floor_and_a_multiple_of_the_average_job(tmp_path: Path) -> None:
    book = _book(tmp_path, [JobSpec("m:f") for _ in range(4)])
    slow, quick, idle = _worker("slow"), _worker("quick"), _worker("idle")
    _hand(book, slow, 2, started=NOW - 1.0)
    _hand(book, quick, 2, started=NOW - plan.OVERRUN_SECONDS / 2)
    assert plan.overrun(book, [slow, quick, idle], NOW, job_seconds=0.001) == {"slow"}
    # a worker going through jobs that take about as long as this one has run keeps its own
    assert plan.overrun(book, [slow, quick, idle], NOW, job_seconds=1.0) == set()
    assert plan.overrun(book, [slow], NOW, job_seconds=1.0 / plan.OVERRUN_JOBS) == {"slow"}


def test_an_idle_worker_steals_what_waits_behind_an_overrun_job_once(tmp_path: Path) -> None:
    book = _book(tmp_path, [JobSpec("m:f") for _ in range(4)])
    busy, idle = _worker("busy"), _worker("idle")
    head, *behind = _hand(book, busy, 4)
    (slot, ids), = plan.steals(book, [busy, idle], NOW, job_seconds=0.001)
    assert slot is busy and ids == [j.id for j in behind]  # never the head: it runs
    assert all(j.recalling for j in behind) and not head.recalling
    assert plan.steals(book, [busy, idle], NOW, job_seconds=0.001) == []  # already on their way back


def test_nothing_is_stolen_from_a_worker_going_through_short_jobs_or_without_an_idle_worker(tmp_path: Path) -> None:
    book = _book(tmp_path, [JobSpec("m:f") for _ in range(6)])
    quick, idle = _worker("quick"), _worker("idle")
    _hand(book, quick, 3, started=NOW - 0.01)
    assert plan.steals(book, [quick, idle], NOW, job_seconds=0.001) == []  # its head started 10 ms ago
    assert plan.steals(book, [quick, idle], NOW + 0.04, job_seconds=0.05) == []  # 50 ms: one average job
    stuck, busy = _worker("stuck"), _worker("busy")
    _hand(book, stuck, 2)
    _hand(book, busy, 1)
    assert plan.steals(book, [stuck, busy], NOW, job_seconds=0.001) == []  # nobody to hand them to
    retiring = _worker("retiring")
    retiring.retire = True
    assert plan.steals(book, [stuck, retiring], NOW, job_seconds=0.001) == []
    (slot, ids), = plan.steals(book, [quick, idle], NOW + 1.0, job_seconds=0.05)  # its head has now overrun
    assert slot is quick and len(ids) == 2


def test_only_local_workers_steal_and_are_stolen_from(tmp_path: Path) -> None:
    book = _book(tmp_path, [JobSpec("m:f") for _ in range(4)])
    remote_busy, remote_idle, local_idle = _worker("r1", remote=True), _worker("r2", remote=True), _worker("local")
    _hand(book, remote_busy, 2)
    assert plan.steals(book, [remote_busy, local_idle], NOW, 0.001) == []  # its jobs stay (Ray's store holds them)
    local_busy = _worker("busy")
    _hand(book, local_busy, 2)
    assert plan.steals(book, [local_busy, remote_idle], NOW, 0.001) == []  # an idle remote worker steals nothing
    (slot, ids), = plan.steals(book, [remote_busy, local_busy, remote_idle, local_idle], NOW, 0.001)
    assert slot is local_busy and len(ids) == 1


def test_a_job_needing_resources_moves_only_to_an_idle_worker_offering_them(tmp_path: Path) -> None:
    book = _book(tmp_path, [JobSpec("m:f"), JobSpec("m:f", resources={"GPU": 1}), JobSpec("m:f")])
    busy = _worker("busy", resources={"CPU": 4.0, "GPU": 1.0})
    _, gpu_job, plain = _hand(book, busy, 3)
    cpu_only = _worker("cpu", resources={"CPU": 4.0})
    (_, ids), = plan.steals(book, [busy, cpu_only], NOW, 0.001)
    assert ids == [plain.id] and not gpu_job.recalling
    busy.outstanding.remove(plain.id)  # given back
    book.requeue(plain, "")
    gpu = _worker("gpu", resources={"GPU": 2.0})
    (_, ids), = plan.steals(book, [busy, cpu_only, gpu], NOW, 0.001)
    assert ids == [gpu_job.id]


def test_stolen_jobs_keep_their_priority_and_leave_priority_recalls_and_aborts_alone(tmp_path: Path) -> None:
    book = _book(tmp_path, [JobSpec("m:f", priority=p) for p in (9, 5, 1, 1, 1)])
    busy, idle = _worker("busy"), _worker("idle")
    head, high, low1, low2, low3 = _hand(book, busy, 5)
    ((_, recalled),) = plan.recalls(book, [busy], priority=3)  # a better job came: the 1s go back for it
    assert recalled == [low1.id, low2.id, low3.id]
    assert plan.steals(book, [busy, idle], NOW, 0.001) == []  # not before the worker has answered that Recall
    for job in (low1, low2, low3):  # it had started none of them, say; they came back to it, behind the head
        job.recalling = False
    low2.abort_reason = "cancel"  # its AbortJob is on its way: it ends there, it does not move
    (_, ids), = plan.steals(book, [busy, idle], NOW, 0.001)
    assert ids == [high.id, low1.id, low3.id]
    for job in (high, low1, low3):  # the worker gave them back: in the queue by priority, the best to the idle one
        busy.outstanding.remove(job.id)
        book.requeue(job, "")
    (slot, got), = plan.plan(book, [busy, idle], credit=1, late=plan.overrun(book, [busy, idle], NOW, 0.001))
    assert slot is idle and got == [high]


def test_a_late_worker_is_handed_jobs_only_when_no_other_can_take_them(tmp_path: Path) -> None:
    """A late worker was handed jobs once the others' lines were full: they waited behind its long job (or were
    stolen back at the next room elsewhere, and handed to it again).  They wait queued for a worker that is not
    late now; a late worker is handed jobs only when it is the only one."""
    book = _book(tmp_path, [JobSpec("m:f") for _ in range(5)])
    late, other = _worker("late"), _worker("other")
    _hand(book, late, 1)
    _hand(book, other, 1, started=NOW)
    names = plan.overrun(book, [late, other], NOW, 0.001)
    assert names == {"late"}
    (slot, got), = plan.plan(book, [late, other], credit=8, late=names)
    assert slot is other and len(got) == 3  # all of the queue, none behind the overrun job
    book.requeue(got[-1], "")
    other.outstanding.extend(j.id for j in got[:-1])
    assert plan.plan(book, [late, other], credit=3, late=names) == []  # the other worker's credit is used: it waits
    assert book.queued == 1
    (slot, got), = plan.plan(book, [late], credit=3, late=names)  # no other worker: the late one takes it
    assert slot is late and len(got) == 1


# -- with real daemons -----------------------------------------------------------------------------------
def _executions(path: Path) -> collections.Counter[int]:
    """How often each job ran (``tests.jobs:record_execution`` writes '<job id> <pid>' per run)."""
    return collections.Counter(int(line.split()[0]) for line in path.read_text().splitlines()) if path.exists() \
        else collections.Counter()


def test_short_jobs_handed_to_a_blocked_worker_run_on_the_idle_one(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(jobs_only=True, workers=2)
    d.up()
    c = d.client()
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    # one message: the blocking job is popped first and each worker is handed a share, so some of the short
    # jobs wait behind it in its worker (and the others' worker goes idle once it has run its own)
    long, *short = c.submit_many([make_spec("tests.jobs:wait_file", [str(gate)], {})]
                                 + [make_spec("tests.jobs:record_execution", [str(runs)], {}) for _ in range(6)])
    try:
        wait_for(lambda: all(h.state == "done" for h in short), 60,
                 what="the short jobs to finish while the long one blocks")
        assert long.state == "running" and long.info.attempts == 1
        infos = [h.wait(10) for h in short]
        assert {i.state for i in infos} == {"done"}
        assert {i.worker for i in infos} == {"worker-1", "worker-2"} - {long.info.worker}  # all on the idle one
        assert [i.attempts for i in infos] == [1] * 6  # a job given back unstarted spent no attempt
        assert _executions(runs) == {h.id: 1 for h in short}  # each ran exactly once
        assert d.status().daemon.counters.get("stolen", 0) >= 1
    finally:
        gate.touch()
    assert long.result(60) == "released"


def test_an_executor_s_short_jobs_do_not_wait_for_its_long_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report: Executor(max_workers=2), a long job then six short ones; a short one finished after the long."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    with Executor(max_workers=2) as ex:
        list(ex.map(jobs.plain_pid, range(40)))  # jobs timed short: the daemon prefetches deep from now on
        blocked = ex.submit(jobs.plain_gate, str(marks), str(gate))
        short = [ex.submit(jobs.plain_pid) for _ in range(6)]
        try:
            done, _ = concurrent.futures.wait(short, timeout=60)
            assert len(done) == 6, "short jobs waited behind the long one"
            assert not blocked.done()
            (idle_pid,) = {f.result() for f in short}  # all ran on the worker that was free
        finally:
            gate.touch()
        assert blocked.result(60) != idle_pid


@pytest.mark.parametrize("cap", [None, 2])
def test_a_stream_of_short_jobs_never_waits_behind_a_long_one_while_the_other_worker_is_busy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int | None) -> None:
    """A probe's stream: after jobs timed short, one long job, then short ones kept ten in flight.  The other
    worker was never idle, so nothing was stolen, and the short jobs dealt behind the long one waited for all of
    it (4 s, where ProcessPoolExecutor's worst was 0.2 s); attached and capped at 2 on 2 workers, the cap let no
    other worker hold them either.  Every short job now ends while the long one still runs."""
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    if cap is None:
        monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
        monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
        ex = Executor(max_workers=2)
    else:
        d = Daemon(tmp_path / "d", workers=2, jobs_only=True)
        d.up()
        for key, value in d.env.items():
            if key.startswith("ENSEMBLE_"):
                monkeypatch.setenv(key, value)
        ex = Executor(max_workers=cap)
        assert ex._private is None
    try:
        list(ex.map(pow, range(3000), [2] * 3000))  # jobs timed short: each worker's window is deep from now on
        blocked = ex.submit(jobs.plain_gate, str(marks), str(gate))
        try:
            inflight: set[concurrent.futures.Future[Any]] = set()
            first: list[concurrent.futures.Future[Any]] = []
            for n in range(150):  # ten in flight, dealt to both workers at first: the other one never runs dry
                while len(inflight) >= 10:
                    done, inflight = concurrent.futures.wait(inflight, timeout=60,
                                                             return_when=concurrent.futures.FIRST_COMPLETED)
                    assert done, "no short job ended"
                inflight.add(ex.submit(jobs.plain_sleep, 0.02))
                if n < 10:
                    first.extend(inflight - set(first))
            # a hundred and forty short jobs ended after them: none of the first ten waits behind the long job
            assert all(f.done() for f in first), "a short job waited behind the long one while the other worker ran"
            done, left = concurrent.futures.wait(inflight, timeout=60)
            assert not left
            assert not blocked.done()
        finally:
            gate.touch()
        assert blocked.result(60)
    finally:
        ex.shutdown()
        if cap is not None:
            d.cleanup()


def test_a_job_cancelled_while_its_recall_is_answered_is_cancelled_not_queued_again(make_daemon: Make,
                                                                                    tmp_path: Path) -> None:
    """The worker answers the Recall first (giving the job back unstarted), so the AbortJob behind it finds nothing
    to stop: the daemon must end the job as cancelled then, not queue it again to run later."""
    d = make_daemon(jobs_only=True, workers=1, extra_env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "120"})
    d.up()
    c = d.client()
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    blocker = c.submit("tests.jobs:wait_file", str(gate))
    wait_for(lambda: blocker.status_message.startswith("waiting for"), 60, what="the worker to be busy")
    behind = c.submit("tests.jobs:record_execution", str(runs))
    wait_for(lambda: behind.state == "dispatched", 60, what="the job to be handed to the busy worker")
    pid = d.actor("worker-1").pid
    os.kill(pid, signal.SIGSTOP)  # (our own daemon's worker) it reads its orders in the order sent, once continued
    try:
        better = c.submit("tests.jobs:record_execution", str(runs), priority=5)  # sends a Recall of `behind`
        behind.cancel()  # sends an AbortJob for it, behind the Recall
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert behind.wait(60).state == "cancelled"
    finally:
        gate.touch()
    assert blocker.result(60) == "released" and better.result(60) == better.id
    assert _executions(runs) == {better.id: 1}  # the cancelled job never ran


# -- a job's output ------------------------------------------------------------------------------------
def test_what_a_job_prints_to_a_file_is_there_when_its_result_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """A private Executor's jobs print to its owner's stdout, here a file (not a terminal): each job's text is
    written by the time its result arrives, in order, not all at the worker's exit."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    with Executor(max_workers=1) as ex:
        for i in range(3):
            assert ex.submit(print, f"job {i}").result(60) is None
            assert capfd.readouterr().out == f"job {i}\n"
        assert ex.submit(functools.partial(print, "no newline", end="")).result(60) is None
        assert capfd.readouterr().out == "no newline"

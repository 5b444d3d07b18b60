"""Cancel as ``concurrent.futures`` means it: a job that has not started is cancelled, one that started runs on.

``Cancel(if_queued=True)`` at the daemon (the Executor's, map's and
``shutdown(cancel_futures)``'s); a job already handed to a worker but not
started there is first taken back from the worker (Recall), so nothing that
started is ever interrupted by a future's ``cancel()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.client import Client, Executor
from actors.messages import Cancel
from tests import jobs
from tests.conftest import Daemon, wait_for


def _ask(c: Client, job_id: int) -> str:
    """The daemon's answer to a Cancel(if_queued) of ``job_id``."""
    detail: str = c.conn.call(Cancel(job_id, False, True)).result(60).detail
    return detail


def _gate_job(c: Client, tmp_path: Path, name: str) -> tuple[Any, Path]:
    """A job that runs until ``tmp_path/name`` exists, and that gate."""
    gate = tmp_path / name
    return c.submit("tests.jobs:wait_file", str(gate)), gate


def test_a_running_job_is_left_to_run(module_daemon: Daemon, tmp_path: Path) -> None:
    c = module_daemon.client()
    job, gate = _gate_job(c, tmp_path, "g")
    wait_for(lambda: job.state == "running", 60, what="the job to run")
    assert _ask(c, job.id) == "running"
    gate.touch()
    assert job.wait(60).state == "done" and job.result() == "released"


def test_a_queued_or_waiting_job_is_cancelled_and_never_runs(jobs_daemon: Daemon, tmp_path: Path) -> None:
    """Both workers busy: the jobs behind them wait, in the daemon's queue or already in a worker's line.

    A new daemon (no job run time measured yet) hands each worker a few jobs ahead."""
    c = jobs_daemon.client()
    blockers = [_gate_job(c, tmp_path, f"b{i}") for i in range(2)]
    wait_for(lambda: all(b.state == "running" for b, _ in blockers), 60, what="both workers busy")
    ran = tmp_path / "ran"
    ran.mkdir()
    (tmp_path / "open").touch()  # a job that runs drops a marker in `ran` and returns at once
    waiting = [c.submit("tests.jobs:plain_gate", str(ran), str(tmp_path / "open")) for _ in range(6)]
    try:
        # the first ones wait in the workers' lines (taken back before they are cancelled), the rest in the queue
        wait_for(lambda: {c.job(j.id).state for j in waiting} == {"dispatched", "queued"}, 60,
                 what="jobs both in a worker's line and in the daemon's queue")
        assert [_ask(c, j.id) for j in waiting] == ["cancelled"] * 6
        assert [j.wait(60).state for j in waiting] == ["cancelled"] * 6
        assert _ask(c, waiting[0].id) == f"job {waiting[0].id} had already ended (cancelled)"
    finally:
        for _, gate in blockers:
            gate.touch()
    assert [b.wait(60).state for b, _ in blockers] == ["done", "done"]
    assert not list(ran.iterdir())  # none of them ran


def test_an_ended_job_says_so(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("examples.jobs:add", 1, 2)
    assert job.result(60) == 3
    assert _ask(c, job.id) == f"job {job.id} had already ended (done)"


def test_future_cancel_after_the_job_started_is_false_and_the_job_finishes(module_daemon: Daemon,
                                                                          tmp_path: Path) -> None:
    """ProcessPoolExecutor never interrupts a running call: cancel() is False, the result still comes.

    The cancel is asked as soon as the daemon says the job runs, whether or not the future heard it yet
    (it used to return True then, and the daemon killed the job after its grace)."""
    c = module_daemon.client()
    gate = tmp_path / "gate"
    with Executor(config=module_daemon.config) as ex:
        fut = ex.submit(jobs.plain_gate, str(tmp_path), str(gate))
        wait_for(lambda: hasattr(fut, "job_id") and c.job(fut.job_id).state == "running", 60,  # type: ignore[attr-defined]
                 what="the job to run")
        assert fut.cancel() is False
        assert fut.running() and not fut.cancelled()
        gate.touch()
        assert fut.result(60) > 0
    assert c.job(fut.job_id).state == "done"  # type: ignore[attr-defined]


def test_future_cancel_before_the_job_id_came_back_still_cancels_it(module_daemon: Daemon, tmp_path: Path) -> None:
    """A cancel right after submit (the daemon's answer with the job id still on its way) waits for the id."""
    c = module_daemon.client()
    blockers = [_gate_job(c, tmp_path, f"b{i}") for i in range(2)]
    wait_for(lambda: all(b.state == "running" for b, _ in blockers), 60, what="both workers busy")
    try:
        with Executor(config=module_daemon.config) as ex:
            futures = [ex.submit(jobs.plain_sleep, 3600) for _ in range(20)]
            assert all(f.cancel() for f in futures)
            assert all(f.cancelled() for f in futures)
        for f in futures:
            assert c.job(f.job_id).wait(60).state == "cancelled"  # type: ignore[attr-defined]
    finally:
        for _, gate in blockers:
            gate.touch()


def test_a_cancel_waiting_for_a_dead_worker_s_recall_is_answered_when_it_dies(make_daemon: Any,
                                                                               tmp_path: Path) -> None:
    """A Cancel(if_queued) of a job in a worker's line waits for the worker to give it back; if the worker
    dies first, the job (never started) is cancelled then and there, and the cancel answered: it used to
    wait until the job, requeued, had run to its end on another worker."""
    import os
    import signal

    from tests.conftest import pid_alive

    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    blocker, _ = _gate_job(c, tmp_path, "b")  # never opened: the worker dies running it
    # its status is set inside the function, after the worker recorded its start: "running" alone may come
    # before (a worker stopped then had not begun it, and it ran again on the next worker, for ever)
    wait_for(lambda: blocker.refresh().status.startswith("waiting for"), 60, what="the worker to be busy")
    ran = tmp_path / "ran"
    ran.mkdir()
    (tmp_path / "open").touch()
    behind = c.submit("tests.jobs:plain_gate", str(ran), str(tmp_path / "open"), retries=1)
    wait_for(lambda: c.job(behind.id).state == "dispatched", 60, what="the job to wait in the worker's line")
    worker = d.actor("worker-1").pid
    os.kill(worker, signal.SIGSTOP)  # it can no longer answer a Recall
    try:
        answer = c.conn.call(Cancel(behind.id, False, True))
        wait_for(lambda: c.job(behind.id).state == "dispatched", 10, what="the Recall to be on its way")
        assert not answer.done()
    finally:
        os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not pid_alive(worker), 30, what="the stopped worker to die")
    assert answer.result(60).detail == "cancelled"
    assert behind.wait(60).state == "cancelled"
    assert blocker.wait(60).state == "worker-lost"  # it had begun, and had no retry
    assert not list(ran.iterdir())  # the cancelled job never ran

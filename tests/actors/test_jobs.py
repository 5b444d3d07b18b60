"""Jobs through the sync client: allow-list, task handle, cancel and kill, deadlines, priority, retries."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from actors import EnsembleError, JobCancelled, JobError, JobLost, JobRefused, JobTimeout, QueueFull, RemoteError
from actors._procs import stat
from tests.conftest import Daemon, pid_alive, wait_for

Make = Callable[..., Daemon]


def journal_rows(d: Daemon, ids: list[int]) -> dict[int, tuple[Any, ...]]:
    db = sqlite3.connect(str(d.base / "state" / "jobs.sqlite3"))
    try:
        marks = ",".join("?" * len(ids))
        rows = db.execute(f"SELECT id, state, error_type, error_message, attempts FROM job_rows WHERE id IN ({marks})",
                          ids).fetchall()
    finally:
        db.close()
    return {r[0]: r[1:] for r in rows}


def start_time(pid: int) -> int | None:
    """The kernel's start time of process ``pid`` (tells a process from a later one reusing its pid)."""
    fields = stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def kinds(handle: Any) -> list[str]:
    return [e[1] for e in handle.events()]


def started(handle: Any) -> None:
    """Wait until a polite/stubborn job's function really runs (it sets the status 'started')."""
    wait_for(lambda: handle.status_message == "started", 30, what=f"job {handle.id} to start")


# --------------------------------------------------------------------------------- what may run
@pytest.mark.parametrize("path", ["os:system", "subprocess:run", "builtins:eval", "posix:system", "shutil:rmtree",
                                  "importlib:import_module"])
def test_dangerous_functions_are_refused_at_submit(module_daemon: Daemon, path: str) -> None:
    c = module_daemon.client()
    with pytest.raises(JobRefused, match="never runs as a job") as info:
        c.submit(path, "echo pwned")
    assert path in str(info.value)
    assert not [j for j in c.jobs(limit=1000) if j.fn == path]  # nothing was journaled


def test_a_local_client_is_not_bound_by_the_remote_allow_list(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    assert c.submit("examples.jobs:sine_sweep", 0.01).result(60)  # outside the default allow-list: local is trusted


@pytest.mark.parametrize("path, fragment", [
    ("not a path", "is not a job path"),
    ("tests.jobs", "is not a job path"),
    ("tests.jobs:", "is not a job path"),
    ("tests.jobs:Task.run_process", "no attribute walk"),
])
def test_malformed_or_missing_paths_are_refused(module_daemon: Daemon, path: str, fragment: str) -> None:
    with pytest.raises(JobRefused, match=fragment):
        module_daemon.client().submit(path)


def test_unknown_function_in_an_allowed_module_fails_clearly(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:no_such_function")
    with pytest.raises(RemoteError) as info:
        job.result(30)
    assert info.value.type_name == "LookupError"
    assert "defines no function 'no_such_function'" in info.value.remote_message
    missing = module_daemon.client().submit("examples.no_such_module:fn")
    with pytest.raises(RemoteError, match="cannot be imported"):
        missing.result(30)


def test_lambdas_and_closures_are_refused_with_an_explanation(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    with pytest.raises(JobRefused, match="lambda or a closure.*define it at module level"):
        c.submit(lambda task: 1)

    def inner(task: Any) -> int:
        return 1

    with pytest.raises(JobRefused, match="lambda or a closure"):
        c.submit(inner)

    def main_fn(task: Any) -> None:
        pass

    main_fn.__module__, main_fn.__qualname__ = "__main__", "main_fn"  # (claims to be the script's: it is not)
    with pytest.raises(JobRefused, match="the function cannot cross .* does not pickle"):
        c.submit(main_fn)  # a local client sends the script's own functions pickled: this one cannot be
    with pytest.raises(JobRefused, match="not a function"):
        c.submit(42)  # type: ignore[arg-type]


def test_module_level_functions_can_be_passed_directly(module_daemon: Daemon) -> None:
    from examples import jobs as examples_jobs
    from tests import jobs

    c = module_daemon.client()
    assert c.submit(examples_jobs.add, 40, 2).result(30) == 42
    worker_pids = {a.pid for a in module_daemon.status().actors if a.role == "worker"}
    assert c.submit(jobs.pid).result(30) in worker_pids


def test_bad_options_are_refused(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    with pytest.raises(ValueError, match="grace must be positive"):
        c.submit("tests.jobs:pid", grace=0)
    with pytest.raises(JobRefused, match=r"its retries must be 0..1000, got -1$"):
        c.submit("tests.jobs:pid", retries=-1)
    import msgspec

    spec = c.spec("tests.jobs:pid")
    with pytest.raises(JobRefused, match=r"its cap \(jobs of its group at once\) must be 0..1048576, got -1$"):
        c.submit_many([msgspec.structs.replace(spec, cap=-1, cap_group="g")])
    with pytest.raises(JobRefused, match=r"its cap_group must be 1..64 characters with a cap, got 0$"):
        c.submit_many([msgspec.structs.replace(spec, cap=2)])


def test_refusals_are_job_errors_in_the_tree() -> None:
    assert issubclass(JobRefused, JobError) and issubclass(QueueFull, JobRefused)
    assert issubclass(JobError, EnsembleError)
    for cls in (JobTimeout, JobCancelled, RemoteError, JobLost):
        assert issubclass(cls, JobError)


# --------------------------------------------------------------------------------- the task handle
def test_progress_status_and_properties_are_readable_while_running(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("tests.jobs:props", 7, name="props-job")
    wait_for(lambda: job.progress == 0.5 and job.status_message == "half way" and job.properties == {"n": 7}, 30,
             what="progress, status and properties while running")
    assert job.state == "running" and not job.done()
    info = job.refresh()
    assert info.name == "props-job" and info.worker.startswith("worker-") and info.started > 0
    final = job.cancel(block=True)
    assert final is not None and final.state == "cancelled"
    assert final.properties == {"n": 7} and final.progress == 0.5 and final.result == {"n": 7}
    with pytest.raises(JobCancelled):
        job.result(10)


def test_updates_a_client_could_not_receive_fail_in_the_job_not_the_worker(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    # each one used to kill the worker as it published the update (the job: JobLost, "worker died")
    assert c.submit("tests.jobs:unsendable_updates").result(60) == \
        ["ValueError", "TypeError", "TypeError", "ValueError", "ValueError"]
    # a property changed in place after its check cannot take the worker down either: the updates go without
    # it, and the job fails as it ends, saying why (not JobLost)
    job = c.submit("tests.jobs:mutate_property", 0.5)
    with pytest.raises(TypeError, match="properties cannot be sent"):
        job.result(60)


def test_an_exception_whose_str_raises_fails_its_job_and_the_worker_goes_on(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    bad = c.submit("tests.jobs:raise_unprintable")
    after = [c.submit("examples.jobs:add", i, 1) for i in range(4)]  # prefetched behind it on the one worker
    with pytest.raises(RemoteError) as caught:
        bad.result(60)
    assert caught.value.type_name == "tests.jobs.Unprintable"
    assert caught.value.remote_message == "<str() of the Unprintable raised RuntimeError>"
    assert [j.result(60) for j in after] == [1, 2, 3, 4]


def test_results_and_states_of_a_plain_job(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("examples.jobs:add", 2, 3.5)
    assert job.result(30) == 5.5
    assert job.state == "done" and job.done()
    info = job.wait(1)
    assert info.finished >= info.started >= info.submitted > 0 and info.attempts == 1
    assert c.submit("examples.jobs:echo", {"a": [1, None, "x", b"\x00"]}).result(30) == {"a": [1, None, "x", b"\x00"]}


def test_small_numpy_arrays_are_arguments_and_results(module_daemon: Daemon) -> None:
    a = np.arange(10, dtype=np.int32)
    out = module_daemon.client().submit("tests.jobs:numpy_sum", a).result(30)
    assert out["sum"] == 45.0
    np.testing.assert_array_equal(out["doubled"], a * 2)


def test_cancel_block_of_a_polite_job_returns_when_it_stopped(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("tests.jobs:polite", 120)
    started(job)
    assert job.state == "running"
    info = job.cancel(block=True)
    assert info is not None and info.state == "cancelled" and info.result == "aborted"
    assert job.state == "cancelled" and job.done()
    assert "abort" in kinds(job)
    with pytest.raises(JobCancelled, match="cancelled"):
        job.result(5)


def test_cancel_of_a_queued_job_never_runs_it(module_daemon: Daemon, tmp_path: Path) -> None:
    c = module_daemon.client()
    blockers = [c.submit("tests.jobs:wait_file", str(tmp_path / "go")) for _ in range(2)]
    for b in blockers:  # both workers really busy
        wait_for(lambda: b.status_message.startswith("waiting for"), 30, what="the blockers to start")
    marks = tmp_path / "ran"
    queued = c.submit("tests.jobs:record", str(marks), "should-not-run")
    info = queued.cancel(block=True)
    (tmp_path / "go").touch()
    for b in blockers:
        assert b.result(30) == "released"
    assert queued.state == "cancelled"
    assert info is None or info.state == "cancelled"
    assert not marks.exists()


def test_ignoring_job_and_its_sigterm_proof_grandchild_are_killed(module_daemon: Daemon, tmp_path: Path) -> None:
    c = module_daemon.client()
    pidfile = str(tmp_path / "grandchild.pid")
    job = c.submit("tests.jobs:ignore_abort_with_grandchild", pidfile, grace=0.3)
    grandchild = int(wait_for(lambda: Path(pidfile).exists() and Path(pidfile).read_text(), 30,
                              what="the grandchild's pid"))
    assert pid_alive(grandchild)
    worker = job.refresh().worker
    old_worker_pid = module_daemon.actor(worker).pid
    old_worker = (old_worker_pid, start_time(old_worker_pid))
    info = job.cancel(block=True)
    assert info is not None and info.state == "killed"
    wait_for(lambda: not pid_alive(grandchild), 10, what="the grandchild to be gone")
    # its group was SIGKILLed when the job was recorded killed; the process is gone soon after (pid may be reused)
    wait_for(lambda: start_time(old_worker[0]) != old_worker[1], 10, what="the killed worker to be gone")
    assert job.state == "killed"
    assert {"abort", "killed"} <= set(kinds(job))
    with pytest.raises(JobCancelled, match="killed"):
        job.result(5)
    wait_for(lambda: (a := module_daemon.actor(worker)).state == "running" and a.pid != old_worker_pid, 30,
             what="the worker to be replaced")


def test_gap_between_should_abort_calls_is_recorded_as_stalled(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("tests.jobs:stall_after_check", 0.6, grace=0.2)  # away 3 times the 200 ms
    wait_for(lambda: "stalled" in kinds(job), 30, what="a stalled event while the job runs")
    assert job.result(30) == "ok"
    stalled = [e for e in job.events() if e[1] == "stalled"]
    assert stalled and "no should_abort() call for" in stalled[0][2] and "timeout 200 ms" in stalled[0][2]
    gap_ms = float(stalled[0][2].split("for ")[1].split(" ms")[0])
    assert gap_ms >= 200  # reported once past 200 ms, in whole ms: a gap of 200.4 ms reads "200"


@pytest.mark.slow  # ~9 s of stalls: the default suite stays under its 5 minutes
def test_a_job_keeps_a_bounded_number_of_events_and_counts_the_rest(module_daemon: Daemon) -> None:
    """A job a little slower than its timeout is stalled at every check, for as long as it runs: its events grew
    without end (in memory, the journal and every snapshot sent, until one passed the frame limit and its owner
    could no longer be told the result).  It keeps MAX_EVENTS, the last counting those not kept."""
    from actors._jobs import MAX_EVENTS

    job = module_daemon.client().submit("tests.jobs:stall_often", 150, 0.06, grace=0.02)
    wait_for(lambda: kinds(job)[-1:] == ["more"], 60, what="the events past the cap to be counted")
    assert len(job.events()) == MAX_EVENTS and not job.done()  # while it runs, from the daemon's memory
    assert job.result(120) == 150
    events = job.events()
    assert len(events) == MAX_EVENTS and all(e[1] == "stalled" for e in events[:-1]), events[:3]
    more = events[-1]
    assert more[1] == "more" and "more events not kept; the latest: stalled: no should_abort() call" in more[2]
    assert int(more[2].split()[0]) >= 150 - MAX_EVENTS - 20  # about one stall a gap (the worker looks every 20 ms)


def test_no_stalled_event_for_a_job_that_checks_often(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:polite", 0.3, grace=5.0)  # checks every 10 ms
    assert job.result(30) == "finished"
    assert "stalled" not in kinds(job)


def test_deadline_aborts_a_polite_job_with_job_timeout(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:polite", 120, deadline=0.5)
    with pytest.raises(JobTimeout, match="deadline"):
        job.result(30)
    info = job.wait(1)
    assert info.state == "cancelled" and info.error_type == "JobTimeout" and info.result == "aborted"
    assert any(e[1] == "abort" and e[2] == "deadline" for e in job.events())


def test_deadline_kills_a_job_that_ignores_it(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:stubborn", deadline=0.5, grace=0.2)
    with pytest.raises(JobTimeout, match="killed: deadline"):
        job.result(30)
    assert job.state == "killed" and {"abort", "killed"} <= set(kinds(job))


def test_a_failed_job_raises_its_own_exception_type_where_the_client_has_that_class(module_daemon: Daemon) -> None:
    """``except ValueError`` catches a job's ValueError; it is a RemoteError too; unknown classes stay RemoteError."""
    import builtins
    import sys

    from tests.jobs import CustomJobError

    c = module_daemon.client()
    for kind in ("ValueError", "IndexError", "FileNotFoundError"):
        with pytest.raises(getattr(builtins, kind)) as info:
            c.submit("tests.jobs:raise_builtin", kind, "no such thing").result(30)
        err = info.value
        assert isinstance(err, RemoteError) and err.type_name == kind and err.remote_message == "no such thing"
        assert type(err).__name__ == kind and str(err) == "no such thing" and "raise_builtin" in err.traceback_text
        assert "Remote traceback" in str(err.__cause__)  # chained as concurrent.futures chains it
    with pytest.raises(CustomJobError) as custom:  # a class of the user's module, imported here: found by its name
        c.submit("tests.jobs:boom", "bad value 7").result(30)
    assert isinstance(custom.value, RemoteError) and custom.value.remote_message == "bad value 7"
    assert "tests._remote_only" not in sys.modules  # the premise: this process never imported that module
    with pytest.raises(RemoteError) as there:  # a class of a module this process never imported: a client on the
        c.submit("tests.jobs:raise_remote_only", "over there").result(30)  # daemon's host gets the exception its
    # worker pickled, and unpickling it imports the class's module, as under ProcessPoolExecutor (a client of
    # another host imports nothing on the daemon's word: tests/actors/test_errors_script_classes.py)
    assert type(there.value).__name__ == "OnlyThereError"
    assert there.value.type_name == "tests._remote_only.OnlyThereError"
    assert isinstance(there.value, sys.modules["tests._remote_only"].OnlyThereError)
    with pytest.raises(RemoteError) as stop:  # a job's SystemExit never becomes the caller's own
        c.submit("tests.jobs:raise_builtin", "SystemExit", "bye").result(30)
    assert type(stop.value) is RemoteError and stop.value.type_name == "SystemExit"


def test_remote_error_carries_the_type_name_and_traceback(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:boom", "bad value 42")
    with pytest.raises(RemoteError) as info:
        job.result(30)
    err = info.value
    assert err.type_name == "tests.jobs.CustomJobError" and err.remote_message == "bad value 42"
    assert "Traceback (most recent call last)" in err.traceback_text
    assert "inner_helper" in err.traceback_text and "tests/jobs.py" in err.traceback_text
    # a plain RemoteError says it all; a CustomJobError twin (when tests.jobs is imported here) reads as the
    # original and chains the RemoteError as its cause
    text = str(err) if type(err) is RemoteError else str(err.__cause__)
    assert type(err) is RemoteError or str(err) == "bad value 42"
    assert "Remote traceback" in text and "CustomJobError: bad value 42" in text
    assert job.state == "failed"


def run_priority_plan(d: Daemon, tmp_path: Path) -> list[str]:
    """Occupy the only worker, submit jobs one by one with priorities, release it; the run order."""
    c = d.client()
    go, order = tmp_path / "go", tmp_path / "order"
    blocker = c.submit("tests.jobs:wait_file", str(go))
    wait_for(lambda: blocker.status_message.startswith("waiting for"), 30, what="the worker to be busy")
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 10), ("f", -1), ("g", 10)]
    jobs = [c.submit("tests.jobs:record", str(order), tag, priority=prio) for tag, prio in plan]
    go.touch()
    assert blocker.result(30) == "released"
    assert [j.result(30) for j in jobs] == [tag for tag, _ in plan]
    return order.read_text().split()


def test_priority_runs_higher_first_and_fifo_within_a_priority(make_daemon: Make, tmp_path: Path) -> None:
    # window 1: the busy worker holds no prefetched jobs, so the daemon's queue alone decides the order
    d = make_daemon(jobs_only=True, workers=1, extra_env={"ENSEMBLE_JOBS_WINDOW": "1"})
    d.up()
    assert run_priority_plan(d, tmp_path) == ["e", "g", "b", "d", "a", "c", "f"]


def test_priority_holds_with_the_default_window(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    assert run_priority_plan(d, tmp_path) == ["e", "g", "b", "d", "a", "c", "f"]


def test_queue_full_is_a_clear_error(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(jobs_only=True, workers=1, extra_env={"ENSEMBLE_JOBS_QUEUE_LIMIT": "3"})
    d.up()
    c = d.client()
    go = str(tmp_path / "go")
    held = [c.submit("tests.jobs:wait_file", go) for _ in range(3)]
    with pytest.raises(QueueFull, match=r"queue full: 3 unfinished jobs, limit 3 \(jobs.queue_limit\)"):
        c.submit("examples.jobs:add", 1, 2)
    from actors.client import make_spec

    with pytest.raises(QueueFull):
        c.submit_many([make_spec("examples.jobs:add", [1, 2], {}) for _ in range(2)])
    (tmp_path / "go").touch()
    assert [h.result(30) for h in held] == ["released"] * 3
    assert c.submit("examples.jobs:add", 1, 2).result(30) == 3  # room again


def test_a_listing_of_big_results_fits_its_frame(make_daemon: Make) -> None:
    """Three results of 1.5 MB under a 4 MiB frame limit: the listing leaves the biggest results out, saying
    so, instead of failing (two 40 MB results broke every `ensemble jobs` until they were pruned)."""
    d = make_daemon(jobs_only=True, workers=1, extra_env={"ENSEMBLE_MAX_FRAME": str(4 << 20)})
    d.up()
    c = d.client()
    big = [c.submit("examples.jobs:echo", str(i) * 1_500_000) for i in range(3)]
    assert [len(j.result(60)) for j in big] == [1_500_000] * 3
    listed = {j.id: j for j in c.jobs(limit=10)}
    assert set(listed) >= {j.id for j in big}
    left_out = [listed[j.id] for j in big if listed[j.id].result is None]
    assert left_out and all("too big to list" in j.status for j in left_out)
    assert big[0].refresh().result == "0" * 1_500_000  # the whole record is one GetJobs away
    assert d.cli("jobs").returncode == 0


# --------------------------------------------------------------------------------- worker deaths
def test_retry_after_a_worker_death(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(jobs_only=True)
    d.up()
    c = d.client()
    retried = c.submit("tests.jobs:crash_once", str(tmp_path / "m1"), retries=1)
    assert retried.result(60) == "survived"
    info = retried.wait(1)
    assert info.state == "done" and info.attempts == 2
    assert "requeued" in kinds(retried)

    lost = c.submit("tests.jobs:crash_once", str(tmp_path / "m2"), retries=0)
    with pytest.raises(JobLost, match="died while running the job and no retry was left"):
        lost.result(60)
    assert lost.state == "worker-lost" and lost.wait(1).attempts == 1
    assert (tmp_path / "m2").exists()

    always = c.submit("tests.jobs:crash", retries=1)
    with pytest.raises(JobLost):
        always.result(60)
    assert always.wait(1).attempts == 2
    wait_for(lambda: all(a.state == "running" for a in d.status().actors), 30, what="workers to be replaced")
    assert c.submit("examples.jobs:add", 1, 1).result(30) == 2


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_a_job_that_keeps_killing_its_worker_spends_its_retries_not_the_workers_restarts(make_daemon: Make) -> None:
    """Deaths under a job are bounded by its retries: they never make the daemon give up on its only worker
    (which failed everyone's queued jobs with BrokenProcessPool and refused every later submit)."""
    d = make_daemon(jobs_only=True, workers=1, extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "2",
                                                          "ENSEMBLE_SUPERVISION_RESTART_PERIOD": "600"})
    d.up()
    c = d.client()
    always = c.submit("tests.jobs:crash", retries=4)  # five deaths, more than the two restarts allowed
    others = [c.submit("examples.jobs:add", i, 1) for i in range(3)]
    with pytest.raises(JobLost):
        always.result(120)
    assert always.wait(1).attempts == 5
    assert [j.result(60) for j in others] == [1, 2, 3]
    assert c.submit("examples.jobs:add", 1, 1).result(60) == 2
    assert [a.state for a in d.status().actors if a.role == "worker"] == ["running"]


def test_a_job_that_exits_its_worker_with_code_0_is_lost_without_stalling_the_daemon(make_daemon: Make) -> None:
    """An exit 0 nobody asked for (a job's os._exit(0)) is not an orderly leave: the daemon does not wait seconds,
    its loop stalled, for a goodbye that never comes (it did, 2 s a time: every client waited)."""
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    job = c.submit("tests.jobs:exit_0")
    with pytest.raises(JobLost, match="died while running the job and no retry was left"):
        job.result(60)
    assert job.state == "worker-lost"
    wait_for(lambda: all(a.state == "running" for a in d.status().actors), 30, what="the worker to be replaced")
    assert c.submit("examples.jobs:add", 1, 1).result(30) == 2
    log = (d.base / "state" / "daemon.log").read_text()
    assert "event=worker-exit-unasked name=worker-1 code=0 outstanding=1" in log
    assert "event=last-results-missing" not in log  # the long wait, for workers that leave in order, was not taken


@pytest.mark.slow  # restarts or waits out a detection timeout: run by .ci/run's slow pass (default suite < 5 min)
def test_a_silent_worker_running_a_job_is_detected_by_heartbeat(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    job = c.submit("tests.jobs:polite", 120)
    started(job)
    pid = d.actor("worker-1").pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(JobLost):
            job.result(60)
        assert job.state == "worker-lost"
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "silent" in d.actor("worker-1").detail


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_down_aborts_running_jobs_and_kills_those_that_ignore_it(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True)
    d.up()
    c = d.client()
    polite = c.submit("tests.jobs:polite", 120)
    stubborn = c.submit("tests.jobs:stubborn", grace=0.2)
    started(polite)
    started(stubborn)
    d.down()
    rows = journal_rows(d, [polite.id, stubborn.id])
    assert rows[polite.id][0] == "cancelled" and "the daemon stopped" in rows[polite.id][2]
    assert rows[stubborn.id][0] == "killed"
    assert not d.socket_files()


def test_jobs_listing_newest_first(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    a = c.submit("examples.jobs:add", 1, 1, name="first")
    b = c.submit("examples.jobs:add", 2, 2, name="second")
    assert (a.result(30), b.result(30)) == (2, 4)
    recent = c.jobs(limit=2)
    assert [(j.id, j.name) for j in recent] == [(b.id, "second"), (a.id, "first")]
    assert all(j.state == "done" for j in c.jobs(["done"], limit=50))


def test_results_held_back_for_a_batch_are_not_kept_waiting_by_a_long_job(make_daemon: Make, tmp_path: Path) -> None:
    """A worker sends the results of jobs handed to it together in one frame; when the job after them runs
    long, they leave without it (here it waits until the test has them: held behind it, they never would)."""
    from actors.client import make_spec

    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    go = tmp_path / "go"
    jobs = c.submit_many([make_spec("tests.jobs:square", [i], {}) for i in range(20)]
                         + [make_spec("tests.jobs:wait_file", [str(go)], {})])
    try:
        assert [j.result(60) for j in jobs[:20]] == [float(i * i) for i in range(20)]
        assert jobs[20].state == "running"
    finally:
        go.touch()
    assert jobs[20].result(60) == "released"

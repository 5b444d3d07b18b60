"""The task handle (HISE's BackgroundTask) in-process, and run_process inside real jobs."""

from __future__ import annotations

import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors import EnsembleError, JobCancelled, RemoteError, Task, current_task
from actors._task import activate, deactivate
from tests.conftest import Daemon, pid_alive, wait_for

PY = sys.executable


def collecting() -> tuple[list[list[Any]], Any]:
    seen: list[list[Any]] = []

    def log_fn(task: Task, finished: bool, data: Any) -> None:
        seen.append([finished, data])

    return seen, log_fn


# --------------------------------------------------------------------------------- the handle, in-process
def test_progress_is_clamped_and_readable() -> None:
    t = Task(1, 500)
    assert t.get_progress() == 0.0
    t.set_progress(0.25)
    assert t.get_progress() == 0.25
    t.set_progress(7)
    assert t.get_progress() == 1.0
    t.set_progress(-1)
    assert t.get_progress() == 0.0


def test_status_message_and_properties() -> None:
    t = Task(1, 500)
    t.set_status_message("loading")
    assert t.get_status_message() == "loading"
    t.set_property("count", 3)
    t.set_property("names", ["a", "b"])
    assert t.get_property("count") == 3 and t.get_property("names") == ["a", "b"]
    assert t.get_property("missing") is None and t.get_property("missing", 5) == 5
    with pytest.raises(TypeError, match="property keys must be strings"):
        t.set_property(1, "x")  # type: ignore[arg-type]


def test_should_abort_turns_true_on_abort() -> None:
    t = Task(1, 500)
    assert not t.should_abort() and not t.aborted
    t.abort("cancel")
    assert t.should_abort() and t.aborted and t.abort_reason == "cancel"


def test_timeout_defaults_to_500_ms_and_must_be_positive() -> None:
    from actors.messages import JobSpec

    assert JobSpec("m:f").timeout_ms == 500
    t = Task(1, 500)
    assert t.get_timeout() == 500
    t.set_timeout(1500)
    assert t.get_timeout() == 1500
    for bad in (0, -5, float("nan"), 1e300, 86_400_001):  # the last three could not cross to the daemon
        with pytest.raises(ValueError, match=r"timeout must be a number of ms in 1\.\.86400000"):
            t.set_timeout(bad)


def test_stall_is_reported_once_per_gap_and_only_after_a_first_check() -> None:
    t = Task(1, 200)
    now = time.monotonic()
    assert t.stalled_for(now + 10) is None  # never called should_abort(): no safety check yet
    t.should_abort()
    assert t.stalled_for(time.monotonic() + 0.1) is None  # within the timeout
    gap = t.stalled_for(time.monotonic() + 1.0)
    assert gap is not None and gap > 0.2
    assert t.stalled_for(time.monotonic() + 2.0) is None  # the same gap is reported once
    t.should_abort()
    assert t.stalled_for(time.monotonic() + 1.0) is not None  # a new gap


def test_changes_are_published_when_dirty() -> None:
    t = Task(1, 500)
    assert t.snapshot_if_due(time.monotonic(), force=True) is None
    t.set_progress(0.5)
    t.set_property("k", "v")
    snap = t.snapshot_if_due(time.monotonic(), force=True)
    assert snap == (0.5, "", {"k": "v"}, 500)
    assert t.snapshot_if_due(time.monotonic() + 1) is None


def test_current_task_outside_a_job_is_an_error() -> None:
    with pytest.raises(EnsembleError, match="only available inside a job"):
        current_task()
    t = Task(3, 500)
    token = activate(t)
    try:
        assert current_task() is t
    finally:
        deactivate(token)


def test_kill_voices_and_call_without_a_processor_just_calls() -> None:
    ran: list[int] = []
    assert Task(1, 500).kill_voices_and_call(lambda: ran.append(1)) is True
    assert ran == [1]


# --------------------------------------------------------------------------------- run_process, in-process
def test_run_process_with_list_args_logs_every_line_then_the_exit_code() -> None:
    seen, log_fn = collecting()
    code = Task(1, 500).run_process(PY, ["-c", "print('one'); print('two words'); print('')"], log_fn)
    assert code == 0
    assert seen == [[False, "one"], [False, "two words"], [False, ""], [True, 0]]


def test_run_process_splits_a_string_at_unquoted_whitespace() -> None:
    seen, log_fn = collecting()
    script = "import sys; print(sys.argv[1:]); sys.exit(3)"
    code = Task(1, 500).run_process(PY, f"-c {shlex.quote(script)} 'a  b' c \"d e\"", log_fn)
    assert code == 3
    assert seen == [[False, "['a  b', 'c', 'd e']"], [True, 3]]


def test_run_process_without_log_fn_returns_the_exit_code() -> None:
    assert Task(1, 500).run_process(PY, ["-c", "raise SystemExit(4)"]) == 4
    assert Task(1, 500).run_process("true") == 0


def test_run_process_missing_program_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="program 'ensemble-no-such-program' was not found"):
        Task(1, 500).run_process("ensemble-no-such-program", [], None)


def test_run_process_kills_the_program_when_aborted() -> None:
    task = Task(1, 500)
    seen, log_fn = collecting()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(task.run_process(
            PY, ["-c", "import os, time; print(os.getpid(), flush=True); time.sleep(3600)"], log_fn)))
    thread.start()
    try:
        wait_for(lambda: seen, 30, what="the program's first line")
        program = int(seen[0][1])
        assert pid_alive(program)
        task.abort("cancel")
        thread.join(30)
        assert not thread.is_alive()
    finally:
        task.abort()
        thread.join(30)
    assert result and result[0] < 0  # killed by a signal
    assert seen[-1] == [True, result[0]]
    wait_for(lambda: not pid_alive(program), 10, what="the program to be gone")



def _aborted_while_running(script: str) -> tuple[list[int], list[list[Any]], float]:
    """Run ``sh -c script`` through run_process, abort it once it printed its first line; (the pids it printed,
    every call of log_fn, seconds from the abort to run_process's return)."""
    task = Task(1, 500)
    seen, log_fn = collecting()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(task.run_process("/bin/sh", ["-c", script], log_fn)))
    thread.start()
    try:
        wait_for(lambda: seen, 30, what="the program's first line")
        aborted = time.monotonic()
        task.abort("cancel")
        thread.join(30)
        took = time.monotonic() - aborted
        assert not thread.is_alive(), "run_process did not return after the abort"
    finally:
        task.abort()
        thread.join(30)
    return [int(line) for done, line in seen if not done and str(line).isdigit()], seen, took


@pytest.mark.parametrize("script", [
    "sleep 3600 & echo $!; wait",  # the program waits for its child
    "sleep 3600 & echo $!",  # the program ended; its child, in its group, holds the output
    "echo $$; sleep 3600; echo never",  # a command line: the shell's child, then more
])
def test_an_abort_kills_what_the_program_started_in_its_group_and_returns(script: str) -> None:
    pids, seen, _ = _aborted_while_running(script)
    assert pids and seen[-1][0] is True  # (it used to wait for the output's end, held open by the sleep)
    assert "never" not in [line for _, line in seen]
    for pid in pids:
        wait_for(lambda: not pid_alive(pid), 10, what=f"process {pid} the program started to be gone")


def test_an_abort_stops_waiting_for_output_held_by_a_process_that_left_the_group() -> None:
    import os
    import signal

    pids, seen, _ = _aborted_while_running("setsid sleep 3600 & echo $!; wait")
    try:
        assert seen[-1][0] is True  # returned, though the setsid sleep still holds the output
    finally:
        for pid in pids:  # not the job's any more once it left the group: the daemon's kill of a job finds it
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------- run_process inside jobs
def test_run_process_in_a_job_with_list_args(module_daemon: Daemon) -> None:
    out = module_daemon.client().submit("tests.jobs:run_lines", PY, ["-c", "print('hello'); print('world')"]).result(30)
    assert out == {"code": 0, "calls": [[False, "hello"], [False, "world"], [True, 0]]}


def test_run_process_in_a_job_with_a_quoted_string(module_daemon: Daemon) -> None:
    args = "-c \"import sys; print(' '.join(sys.argv[1:])); sys.exit(2)\" 'x  y' z"
    out = module_daemon.client().submit("tests.jobs:run_lines", PY, args).result(30)
    assert out == {"code": 2, "calls": [[False, "x  y z"], [True, 2]]}


def test_run_process_in_a_job_missing_program_is_a_clear_error(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:run_lines", "ensemble-no-such-program", [])
    with pytest.raises(RemoteError) as info:
        job.result(30)
    assert info.value.type_name == "FileNotFoundError"
    assert "'ensemble-no-such-program' was not found" in info.value.remote_message


def test_cancel_kills_the_program_at_once_so_the_job_ends_cancelled(module_daemon: Daemon) -> None:
    # a 60 s grace: if run_process did not kill the program itself, the job could only end 'killed'
    program = "import os, time; print(os.getpid(), flush=True); time.sleep(3600)"
    job = module_daemon.client().submit("tests.jobs:run_lines", PY, ["-c", program], 60_000, grace=60)
    pid = int(wait_for(lambda: job.status_message, 30, what="the program's pid line"))
    assert pid_alive(pid)
    info = job.cancel(block=True, timeout=120)
    assert info is not None and info.state == "cancelled"
    assert info.result["code"] < 0 and info.result["calls"][-1] == [True, info.result["code"]]
    assert not pid_alive(pid)
    with pytest.raises(JobCancelled):
        job.result(5)


def test_cancel_of_a_command_line_ends_the_job_cancelled_and_its_processes(module_daemon: Daemon) -> None:
    # sh runs sleep as a child and waits: the kill of sh alone left sleep holding the output, and the job waited
    # out its grace (60 s here) to end 'killed'
    job = module_daemon.client().submit("tests.jobs:run_lines", "/bin/sh", ["-c", "echo $$; sleep 3600; echo never"],
                                        60_000, grace=60)
    shell = int(wait_for(lambda: job.status_message, 30, what="the shell's pid line"))
    info = job.cancel(block=True, timeout=120)
    assert info is not None and info.state == "cancelled", info
    assert "never" not in [line for _, line in info.result["calls"]]
    wait_for(lambda: not pid_alive(shell), 10, what="the shell to be gone")


def test_example_job_count_lines_runs_wc(module_daemon: Daemon, tmp_path: Path) -> None:
    f = tmp_path / "lines.txt"
    f.write_text("a\nb\nc\n")
    assert module_daemon.client().submit("examples.jobs:count_lines", str(f)).result(30) == 3


# --------------------------------------------------------------------------------- a result's way back, in-process
@pytest.mark.parametrize("value", [None, True, 7, -2**63, 2**64 - 1, 1.5, b"", b"x" * 1000, "text", [1, "a"], {"k": 1},
                                   1 + 2j])
def test_a_result_that_can_cross_is_sized_from_above(value: Any) -> None:
    from actors.messages import JobDone, JobsDone, encode
    from actors.worker import _sendable

    done = JobDone(1, True, value, started=0.0)
    out, size = _sendable(done, 64 * 1024 * 1024)
    assert out is done and size >= len(encode(JobsDone([done])))  # what the worker's frame budget counts


@pytest.mark.parametrize("value, why", [(2**64, "integer"), (-2**63 - 1, "integer"), ("\ud800", "surrogate"),
                                        (b"x" * 70_000, "frame limit"), (object(), "object")])
def test_a_result_that_cannot_cross_becomes_an_error_saying_why(value: Any, why: str) -> None:
    from actors.messages import JobDone
    from actors.worker import _sendable

    out, _ = _sendable(JobDone(1, True, value, started=0.0), 64 * 1024)
    assert not out.ok and out.error_type == "TypeError" and "cannot be sent" in out.error_message, why

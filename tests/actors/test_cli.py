"""The ``ensemble`` command line against a real daemon: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import actors
from tests.conftest import Daemon, wait_for

Make = Callable[..., Daemon]


def one_line_error(proc: subprocess.CompletedProcess[str], fragment: str) -> str:
    """Assert the CLI failed with exactly one ``ensemble: error:`` line containing ``fragment``."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ensemble: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_version(module_daemon: Daemon) -> None:
    out = module_daemon.cli("--version").stdout
    assert actors.__version__ in out and "ensemble" in out


def test_status_json_has_every_field_a_script_needs(module_daemon: Daemon) -> None:
    data = json.loads(module_daemon.cli("status", "--json").stdout)
    d = data["daemon"]
    assert d["pid"] == module_daemon.pid and d["version"] == actors.__version__ and d["name"] == "t"
    assert Path(d["log_file"]).exists()
    assert {a["role"] for a in data["actors"]} == {"controller", "processor", "worker"}
    for a in data["actors"]:
        assert {"name", "pid", "state", "uptime", "restarts", "heartbeat_age", "rss"} <= set(a)
        assert a["state"] == "running" and a["pid"] > 0


def test_status_table_names_every_actor(module_daemon: Daemon) -> None:
    module_daemon.env["COLUMNS"] = "200"
    out = module_daemon.cli("status").stdout
    for word in ("controller", "processor", "worker-1", "worker-2", "restarts", "heartbeat", str(module_daemon.pid)):
        assert word in out
    # the processor's line counts both kinds of lost block: the device's (or JACK's) xruns and the underflows
    # (PortAudio's flags, a render-ahead ring found empty)
    line = next(x for x in out.splitlines() if "processor" in x)
    assert "xruns=" in line and "underflows=" in line, line


def test_submit_prints_the_id_and_result_prints_the_value(module_daemon: Daemon) -> None:
    job_id = int(module_daemon.cli("submit", "examples.jobs:add", "1", "2").stdout.strip())
    assert module_daemon.cli("result", str(job_id)).stdout.strip() == "3"
    info = module_daemon.client().job(job_id).wait(30)
    assert info.state == "done" and info.result == 3


SUBMIT_WAITS = [
    (["examples.jobs:add", "1", "2.5"], "3.5"),
    (["examples.jobs:echo", '{"a": [1, null, true]}'], '{"a": [1, null, true]}'),
    (["examples.jobs:echo", "hello world"], "hello world"),  # not JSON: a string
    (["examples.jobs:echo", "[1, 2"], "[1, 2"),
    (["examples.jobs:add", "--kw", "a=40", "--kw", "b=2"], "42"),
    (["examples.jobs:add", "1", "--kw", "b=\"x\""], None),
]


@pytest.fixture(scope="module")
def submit_waits(module_daemon: Daemon) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """What ``ensemble submit ARGS --wait`` did for each of :data:`SUBMIT_WAITS`, all run once side by side."""
    commands = [["submit", *args, "--wait"] for args, _ in SUBMIT_WAITS]
    return dict(zip((tuple(args) for args, _ in SUBMIT_WAITS), module_daemon.cli_each(*commands)))


@pytest.mark.parametrize("args, expected", SUBMIT_WAITS)
def test_submit_wait_reads_arguments_as_json_where_they_parse(
        submit_waits: dict[tuple[str, ...], subprocess.CompletedProcess[str]], args: list[str],
        expected: str | None) -> None:
    proc = submit_waits[tuple(args)]
    if expected is None:
        one_line_error(proc, "job raised TypeError")
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr


def test_submit_options_reach_the_job(module_daemon: Daemon) -> None:
    job_id = int(module_daemon.cli("submit", "examples.jobs:add", "1", "1", "--job-name", "named", "--priority", "3",
                                   "--retries", "2").stdout)
    info = module_daemon.client().job(job_id).wait(30)
    assert (info.name, info.priority, info.result) == ("named", 3, 2)


def test_bad_kw_is_a_one_line_error(module_daemon: Daemon) -> None:
    one_line_error(module_daemon.cli("submit", "examples.jobs:add", "--kw", "no-equals", check=False),
                   "--kw 'no-equals' must look like NAME=VALUE")


def test_refused_submit_is_a_one_line_error(module_daemon: Daemon) -> None:
    system, walk = module_daemon.cli_each(["submit", "os:system", "ls"], ["submit", "examples.jobs:Path.unlink", "x"])
    one_line_error(system, "never runs as a job")
    one_line_error(walk, "no attribute walk")


def test_a_failing_job_is_one_line_and_debug_shows_the_remote_traceback(module_daemon: Daemon) -> None:
    plain, proc = module_daemon.cli_each(["submit", "tests.jobs:boom", "went wrong", "--wait"],
                                         ["--debug", "submit", "tests.jobs:boom", "went wrong", "--wait"])
    line = one_line_error(plain, "job raised tests.jobs.CustomJobError: went wrong")
    assert "--debug" in line
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "Remote traceback" in proc.stderr and "inner_helper" in proc.stderr


def test_jobs_lists_recent_jobs(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("examples.jobs:add", 5, 5, name="listed")
    job.result(30)
    failed = c.submit("tests.jobs:boom", "listed too")
    with pytest.raises(actors.RemoteError):
        failed.result(30)
    listed = json.loads(module_daemon.cli("jobs", "--json", "--limit", "500").stdout)
    mine = next(j for j in listed if j["id"] == job.id)
    assert mine["state"] == "done" and mine["name"] == "listed" and mine["result"] == 10
    # a failed job's result was its exception pickled for a client ("<pickled value, 120 bytes>"): its type and
    # message say what it raised
    wrong = next(j for j in listed if j["id"] == failed.id)
    assert wrong["state"] == "failed" and wrong["result"] is None
    assert (wrong["error_type"], wrong["error_message"]) == ("tests.jobs.CustomJobError", "listed too")
    only_done = json.loads(module_daemon.cli("jobs", "--json", "--state", "done").stdout)
    assert only_done and all(j["state"] == "done" for j in only_done)
    module_daemon.env["COLUMNS"] = "200"
    table = module_daemon.cli("jobs").stdout
    assert "listed" in table and "examples.jobs:add" in table


def test_watch_follows_a_job_to_its_result(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("examples.jobs:countdown", 0.3, 0.05)
    out = module_daemon.cli("watch", str(job.id))
    assert out.returncode == 0 and out.stdout.strip()
    assert job.wait(30).state == "done"


def test_cancel_with_and_without_wait(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    a = c.submit("tests.jobs:polite", 120)
    b = c.submit("tests.jobs:polite", 120)
    wait_for(lambda: a.state == "running" and b.state == "running", 30, what="two running jobs")
    assert module_daemon.cli("cancel", str(a.id), "--wait").stdout.strip() == f"job {a.id}: cancelled"
    assert module_daemon.cli("cancel", str(b.id)).stdout.strip() == f"job {b.id}: abort requested"
    assert b.wait(30).state == "cancelled"
    result, again, again_wait, unknown = module_daemon.cli_each(
        ["result", str(a.id)], ["cancel", str(a.id)], ["cancel", str(a.id), "--wait"], ["cancel", "999999999"])
    one_line_error(result, "cancelled")
    # the daemon's answer, not "abort requested" for a job that had ended (a reviewer's report)
    assert again.returncode == 0 and again.stdout.strip() == f"job {a.id} had already ended (cancelled)", again
    # --wait or not: a job that had ended is said to have ended (it said "job N: cancelled", as if just stopped)
    assert again_wait.returncode == 0 and again_wait.stdout.strip() == f"job {a.id} had already ended (cancelled)", \
        again_wait
    one_line_error(unknown, "unknown to this daemon")


def test_result_no_wait_of_a_running_job(module_daemon: Daemon) -> None:
    job = module_daemon.client().submit("tests.jobs:polite", 120)
    wait_for(lambda: job.state == "running", 30, what="the job to run")
    one_line_error(module_daemon.cli("result", str(job.id), "--no-wait", check=False), "is still running")
    job.cancel(block=True)


def test_ctrl_c_during_submit_wait_cancels_the_job(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    before = {j.id for j in c.jobs(limit=10_000)}
    # faulthandler: should the CLI ever hang after its SIGINT (seen once in CI, never reproduced), SIGABRT makes it
    # print every thread's stack, and the failure shows where it waited
    env = {**module_daemon.env, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "actors", "submit", "tests.jobs:polite", "120", "--wait"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def started() -> Any:
            new = [j for j in c.jobs(limit=50) if j.id not in before and j.fn == "tests.jobs:polite"]
            return new[0] if new and new[0].state == "running" else None

        job = wait_for(started, 30, what="the submitted job to run")
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"the CLI did not exit within 60 s of its SIGINT; its threads then:\n{err}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "Traceback" not in err and "cancelled" in err
    assert c.job(job.id).wait(30).state == "cancelled"


def test_errors_without_a_daemon_are_one_line_unless_debug(make_daemon: Make) -> None:
    d = make_daemon()  # configured, never started
    *plain, proc = d.cli_each(["status"], ["jobs"], ["submit", "examples.jobs:add", "1", "2"], ["cancel", "1"],
                              ["scale", "2"], ["--debug", "status"])
    for out in plain:
        one_line_error(out, "no daemon named 't' is running")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DaemonNotRunning" in proc.stderr
    down = d.cli("down")
    assert down.returncode == 0 and "no daemon named 't' is running" in down.stdout


def test_usage_errors_exit_2_without_traceback(module_daemon: Daemon) -> None:
    for proc in module_daemon.cli_each(["no-such-command"], ["scale"], ["scale", "many"], ["cancel", "abc"]):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("ensemble: error: ") and len(proc.stderr.strip().splitlines()) == 1
        assert "--help" in proc.stderr  # and it says where the usage is


def test_up_that_cannot_start_reports_why_in_one_line(make_daemon: Make) -> None:
    d = make_daemon()
    d.env["ENSEMBLE_RUN_DIR"] = str(d.base / ("x" * 120))
    one_line_error(d.cli("up", check=False), "too long for a unix socket path")
    assert not d.socket_files()

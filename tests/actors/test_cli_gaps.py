"""Gaps the command line had: a config path that is a FIFO, wait timeouts that took NaN, ``param list --json``
that was not JSON, ``scale -1``, a job's error text that named its type twice, ``jobs --state`` that took any
word, negative-number arguments that needed ``--``, and ``submit --wait`` silent with no worker to run its job.

Against real CLI processes and a real daemon; each test fails on the code before its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from typing import Any, Callable

import pytest

from actors import RemoteError
from tests.actors.test_cli import one_line_error
from tests.conftest import Daemon, wait_for

Make = Callable[..., Daemon]


# ------------------------------------------------------------------------------ a config that is a FIFO
def test_ensemble_config_naming_a_fifo_is_refused_in_one_line_not_read(make_daemon: Make) -> None:
    d = make_daemon()  # configured, never started: the config is read before any daemon is asked
    fifo = d.base / "config.fifo"
    os.mkfifo(fifo)
    d.env["ENSEMBLE_CONFIG"] = str(fifo)
    for args in (["status"], ["jobs"], ["up"]):
        line = one_line_error(d.cli(*args, check=False, timeout=20), f"ENSEMBLE_CONFIG={str(fifo)!r}")  # was: a hang
        assert "is not a regular file (a FIFO, device or socket cannot be read as one)" in line, line
        assert "unset it" in line, line
    d.env["ENSEMBLE_CONFIG"] = "/dev/null"  # a device, as --config refuses it
    one_line_error(d.cli("status", check=False, timeout=20), "ENSEMBLE_CONFIG='/dev/null' is not a regular file")
    assert not (d.base / "run").exists()  # nothing started


def test_a_default_config_file_that_is_a_fifo_is_refused_in_one_line(make_daemon: Make) -> None:
    d = make_daemon()
    default = d.base / "xdg" / "ensemble" / "config.toml"
    default.parent.mkdir(parents=True)
    os.mkfifo(default)
    d.env.pop("ENSEMBLE_CONFIG", None)
    d.env["XDG_CONFIG_HOME"] = str(d.base / "xdg")
    line = one_line_error(d.cli("status", check=False, timeout=20), f"config file {default} (the default)")
    assert "is not a regular file" in line, line  # was: ignored without a word, as if there were no file
    default.unlink()
    one_line_error(d.cli("status", check=False, timeout=20), "no daemon named 't' is running")  # none: defaults


# ------------------------------------------------------------------------------ wait timeouts
@pytest.mark.parametrize("args, fragments", [
    (["load", "SCRIPT", "--timeout", "nan"], ["--timeout", "nan is not a finite number", "0 to 86400 seconds"]),
    (["load", "SCRIPT", "--timeout", "-1"], ["--timeout", "-1 is out of range", "0 returns once"]),
    (["reload", "--timeout", "inf"], ["--timeout", "inf is not a finite number"]),
    (["reload", "--timeout", "1e6"], ["--timeout", "out of range: give 0 to 86400 seconds"]),
    (["panel", "--timeout", "nan"], ["--timeout", "nan is not a finite number"]),
    (["panel", "--timeout", "-1"], ["--timeout", "-1 is out of range: give more than 0 and at most 86400"]),
    (["panel", "--timeout", "0"], ["--timeout", "more than 0", "how long to wait for the panel to listen"]),
    (["midi", "connect", "some-port", "--timeout", "nan"], ["--timeout", "nan is not a finite number"]),
    (["midi", "connect", "some-port", "--timeout", "-inf"], ["--timeout", "-inf is not a finite number"]),
    (["midi", "connect", "some-port", "--timeout", "0.1"], ["--timeout", "give 0.5 to 120 seconds"]),
])
def test_wait_timeouts_take_finite_seconds_in_range(module_daemon: Daemon, args: list[str],
                                                    fragments: list[str]) -> None:
    script = module_daemon.base / "gaps_empty.py"
    script.write_text("")
    args = [str(script) if a == "SCRIPT" else a for a in args]
    line = one_line_error(module_daemon.cli(*args, check=False, timeout=30), fragments[0])
    assert all(f in line for f in fragments), line
    assert "panel" not in {a.role for a in module_daemon.status().actors}  # refused before anything was asked


# ------------------------------------------------------------------------------ param list --json
def _reject(constant: str) -> Any:
    raise AssertionError(f"{constant} is not JSON")


def test_param_and_sample_lists_say_why_they_are_empty_on_stderr(make_daemon: Any) -> None:
    """With no script or sample loaded `ensemble param list` and `sample list` printed nothing at all; they say
    why, on stderr."""
    d = make_daemon()
    d.up()
    out = d.cli("param", "list")
    assert out.stdout == "" and "no script is loaded" in out.stderr and "ensemble load" in out.stderr
    assert json.loads(d.cli("param", "list", "--json").stdout) == []
    out = d.cli("sample", "list")  # the same for samples
    assert out.stdout == "" and "no samples loaded" in out.stderr


def test_param_list_json_is_json_whatever_the_parameters_hold(module_daemon: Daemon) -> None:
    script = module_daemon.base / "gaps_params.py"
    script.write_text('from controller.script import define_parameter\n'
                      'define_parameter("open", "Open", 0.5, float("-inf"), float("inf"))\n'
                      'define_parameter("mode", "Mode", "a", choices=["a", "b"])\n')
    module_daemon.cli("load", str(script))
    out = module_daemon.cli("param", "list", "--json").stdout
    params = {p["name"]: p for p in json.loads(out, parse_constant=_reject)}  # was: -Infinity, Infinity
    assert (params["open"]["min"], params["open"]["max"], params["open"]["value"]) == ("-inf", "inf", 0.5)
    assert params["mode"]["choices"] == ["a", "b"] and params["mode"]["kind"] == "choice"
    assert set(params["open"]) >= {"name", "long_name", "value", "default", "min", "max", "kind", "cc"}


# ------------------------------------------------------------------------------ scale -1
@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_negative_scale_is_the_same_range_error_as_a_too_large_one(module_daemon: Daemon) -> None:
    def error(count: str) -> str:
        proc = module_daemon.cli("scale", count, check=False)
        assert proc.returncode == 2
        return one_line_error(proc, "WORKERS")

    assert error("-1") == ("ensemble: error: Invalid value for 'WORKERS': -1 is out of range: give 0 to 1024 "
                           "(the daemon runs at most 1024 workers) (see `ensemble scale --help`)")  # was: No such option
    assert error("-1") == error("5000").replace("5000", "-1")
    assert "'-2.5' is not an integer" in error("-2.5")
    extra = module_daemon.cli("scale", "2", "--bogus", check=False)  # an unknown option is still refused
    assert extra.returncode == 2 and "unexpected extra argument (--bogus)" in one_line_error(extra, "scale --help")
    help_text = module_daemon.cli("scale", "--help").stdout
    assert "Usage: ensemble scale [OPTIONS] WORKERS" in help_text and "--on" in help_text
    assert module_daemon.status().daemon.workers_wanted == 2  # none of them scaled anything


# ------------------------------------------------------------------------------ a job's error text
def test_a_job_s_builtin_exception_reads_as_the_original_not_type_twice(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    with pytest.raises(TypeError) as info:
        c.submit("tests.jobs:raise_builtin", "TypeError", "boom").result(30)
    err = info.value
    assert isinstance(err, RemoteError) and (err.type_name, err.remote_message) == ("TypeError", "boom")
    assert str(err) == str(TypeError("boom")) == "boom" and err.args == ("boom",)  # was: "TypeError: boom\n\n..."
    assert traceback.format_exception_only(err) == ["TypeError: boom\n"]
    assert f"{type(err).__name__}: {err}" == "TypeError: boom"
    cause = err.__cause__  # the remote traceback, as ProcessPoolExecutor chains it
    assert type(cause) is RemoteError and "raise_builtin" in cause.traceback_text and "raise_builtin" in str(cause)
    assert "raise_builtin" in err.traceback_text


def test_the_cli_s_debug_traceback_of_a_failed_job_names_its_type_once(module_daemon: Daemon) -> None:
    args = ("submit", "tests.jobs:raise_builtin", "TypeError", "boom", "--wait")
    one_line_error(module_daemon.cli(*args, check=False), "job raised TypeError: boom (--debug shows")
    proc = module_daemon.cli("--debug", *args, check=False)
    assert proc.returncode != 0
    assert proc.stderr.rstrip().splitlines()[-1] == "TypeError: boom", proc.stderr  # was: TypeError: TypeError: boom
    assert "TypeError: TypeError" not in proc.stderr
    assert "Remote traceback" in proc.stderr and "raise_builtin" in proc.stderr


# ------------------------------------------------------------------------------ jobs --state
def test_jobs_state_is_refused_by_the_parser_naming_every_state(module_daemon: Daemon) -> None:
    from actors._state import JobState

    proc = module_daemon.cli("jobs", "--state", "bogus", check=False)
    assert proc.returncode == 2, proc.stdout  # was: an empty table, exit 0
    line = one_line_error(proc, "Invalid value for '--state': 'bogus' is not one of")
    assert all(repr(s.value) in line for s in JobState), line
    assert proc.stdout == ""
    job = module_daemon.client().submit("tests.jobs:square", 3)
    assert job.result(30) == 9
    listed = json.loads(module_daemon.cli("jobs", "--json", "--state", "done", "--state", "worker-lost").stdout)
    assert job.id in [j["id"] for j in listed] and {j["state"] for j in listed} <= {"done", "worker-lost"}


# ------------------------------------------------------------------------------ negative numbers as arguments
@pytest.mark.slow  # many CLI processes: ~4.5 s
def test_negative_numbers_are_arguments_without_a_double_dash(module_daemon: Daemon) -> None:
    d = module_daemon
    out = d.cli("submit", "tests.jobs:nap", "0", "-1.5", "--priority", "-5", "--job-name", "neg", "--wait")
    assert out.stdout.strip().splitlines()[-1] == "-1.5"  # was: No such option '-1.5'
    (info,) = [j for j in json.loads(d.cli("jobs", "--json").stdout) if j["name"] == "neg"]
    assert info["priority"] == -5  # an option's value is still the option's
    assert d.cli("submit", "tests.jobs:nap", "-0", "-2e1", "--wait").stdout.strip().splitlines()[-1] == "-20.0"
    assert d.cli("submit", "tests.jobs:nap", "0", "--wait", "--", "-x").stdout.strip().splitlines()[-1] == "-x"
    one_line_error(d.cli("submit", "tests.jobs:nap", "0", "-1", "--bogus", check=False), "No such option '--bogus'")
    one_line_error(d.cli("submit", "tests.jobs:nap", "0", "-x", check=False), "No such option '-x'")

    script = d.base / "gaps_negative.py"
    script.write_text('from controller.script import define_parameter\n'
                      'define_parameter("gain", "Gain", 0.0, -60.0, 12.0)\n')
    d.cli("load", str(script))
    assert d.cli("param", "set", "gain", "-3").stdout.strip() == "gain = -3.0"  # was: No such option '-3'
    assert d.cli("param", "set", "-n", "t", "gain", "-4.5").stdout.strip() == "gain = -4.5"
    one_line_error(d.cli("param", "set", "gain", "-100", check=False), "-100.0 is outside -60.0..12.0")
    for cmd in ("cancel", "watch", "result"):  # a negative id is the id's range error, not "No such option '-1'"
        one_line_error(d.cli(cmd, "-1", check=False), "Invalid value for 'JOB_ID': -1 is out of range")
    one_line_error(d.cli("note", "-1", check=False), "Invalid value for 'NOTE': -1 is not in the range")


# ------------------------------------------------------------------------------ submit --wait with no worker
@pytest.mark.slow  # waits for the note: ~3 s
def test_submit_wait_with_no_worker_says_so_once_and_keeps_waiting(make_daemon: Make) -> None:
    d = make_daemon(workers=0)
    d.up()
    err = d.base / "submit.err"
    with open(err, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "actors", "submit", "tests.jobs:square", "3", "--wait"],
                                env=d.env, stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        hint = "is still queued: no workers are running: `ensemble scale N` starts some (still waiting"
        wait_for(lambda: hint in err.read_text(), what="the hint that no worker runs")  # was: silence, forever
        assert proc.poll() is None  # it goes on waiting: a worker may come
        d.client().scale(1)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == "9\n", repr(out)  # only the result (was: an empty line first)
    lines = err.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble: note: job ") and hint in lines[0], lines

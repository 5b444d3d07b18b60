"""The ``ensemble`` command line fed hostile or out-of-range input: one-line errors, never a traceback.

Against a real daemon through real CLI processes: text the daemon sends back
(job names, statuses, errors, script errors) is shown as text, never parsed
as Rich markup; results JSON cannot carry are still printed as JSON; every
numeric option is checked (finite, in range) before anything runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import subprocess
import tempfile
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import click
import numpy as np
import pytest

from actors import ProtocolError
from tests.conftest import ROOT, Daemon, running_daemon, wait_for

JOBS = '''
import time

from actors import Task

ANSWER = 42


def bytes_key(task: Task):
    return {b"k": 1}


def tuple_key(task: Task):
    return {(1, 2): "a", "raw": b"\\x00z"}


def say(task: Task, message, seconds=1.0):
    """Show ``message`` as the job's status for ``seconds`` (long enough for a progress bar to draw it)."""
    task.set_status_message(message)
    time.sleep(seconds)
    return "said"
'''


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A running daemon (1 worker) that can import this module's jobs (``cli_input_jobs``)."""
    base = Path(tempfile.mkdtemp(prefix="ens-i"))
    mods = base / "mods"
    mods.mkdir()
    (mods / "cli_input_jobs.py").write_text(JOBS)
    yield from running_daemon(base, workers=1, extra_env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(mods)])})


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert the CLI failed with exactly one ``ensemble: error:`` line containing every fragment."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("ensemble: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ daemon text is not markup
def test_job_errors_and_names_that_look_like_markup_are_listed_as_text(daemon: Daemon) -> None:
    failed, named = daemon.cli_each(
        ["submit", "examples.jobs:fail", "[/b] oops", "--wait"],
        ["submit", "examples.jobs:add", "1", "2", "--job-name", "[/x] :thumbs_up:", "--wait"])
    one_line_error(failed, "[/b] oops")
    assert named.returncode == 0, named.stderr
    out = daemon.cli("jobs").stdout  # was: rich.errors.MarkupError for every user while the job is listed
    assert "ValueError: [/b] oops" in out
    assert "[/x] :thumbs_up:" in out  # neither markup nor an emoji code


def test_control_characters_from_jobs_are_shown_not_sent_to_the_terminal(daemon: Daemon) -> None:
    """A job's name, error or result is anyone's text (a remote key's): its ESC sequences (a window title, colours,
    the cursor) reached the terminal through `jobs` and the error line; they are shown as \\x1b now.  A result
    piped on is the job's text as it returned it."""
    title = "\x1b]0;PWNED\x07"
    failed, named, piped = daemon.cli_each(
        ["submit", "examples.jobs:fail", f"oops{title}", "--wait"],
        ["submit", "examples.jobs:add", "1", "2", "--job-name", f"n{title}x", "--wait"],
        ["submit", "examples.jobs:echo", title, "--wait"])  # (no JSON: taken as the text)
    assert "\x1b" not in failed.stderr and "oops\\x1b]0;PWNED\\x07" in failed.stderr, failed.stderr
    daemon.env["COLUMNS"] = "300"
    listed = daemon.cli("jobs").stdout
    assert "\x1b" not in listed and "n\\x1b]0;PWNED\\x07x" in listed
    assert piped.stdout.splitlines()[-1] == title  # not a terminal: the value itself


def test_a_keyword_given_twice_and_a_resource_without_an_amount_are_refused_saying_so(daemon: Daemon) -> None:
    """``--kw x=3 --kw x=4`` ran with x=4, the first dropped; ``--resources GPU`` said "GPU = nan must be a
    number"."""
    twice, bare = daemon.cli_each(["submit", "examples.jobs:add", "1", "--kw", "b=3", "--kw", "b=4", "--wait"],
                                  ["submit", "examples.jobs:add", "1", "2", "--resources", "GPU", "--wait"])
    one_line_error(twice, "--kw b is given twice; give each keyword once")
    one_line_error(bare, "--resources: 'GPU' is no NAME=AMOUNT (e.g. GPU=1)")


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_status_message_that_looks_like_markup_does_not_break_submit_wait(daemon: Daemon) -> None:
    proc = daemon.cli("submit", "cli_input_jobs:say", "copying [/tmp/x] [bold]", "--wait", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "said"


def test_a_script_error_that_looks_like_markup_is_shown_by_status(daemon: Daemon) -> None:
    script = daemon.base / "bad_markup.py"
    script.write_text('raise ValueError("missing [/samples] dir")\n')
    one_line_error(daemon.cli("load", str(script), check=False), "[/samples]")
    daemon.env["COLUMNS"] = "200"
    out = daemon.cli("status").stdout  # the controller's detail holds the script error
    assert "[/samples]" in out


def test_top_renders_daemon_text_as_text(daemon: Daemon) -> None:
    from rich.console import Console

    from actors._top import render
    from actors.messages import JobInfo

    status = daemon.status()
    job = JobInfo(1, "mod:fn[/i]", "[/x]", "running", 0.5, "copying [/tmp/x] :thumbs_up:")
    console = Console(file=io.StringIO(), width=200)
    console.print(render(status, [job]))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "copying [/tmp/x] :thumbs_up:" in text and "mod:fn[/i]" in text


# ------------------------------------------------------------------------------ JSON output is total
def test_a_result_with_bytes_keys_is_printed_as_json(daemon: Daemon) -> None:
    proc = daemon.cli("submit", "cli_input_jobs:bytes_key", "--wait", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"b'k'": 1}  # a key JSON cannot carry: its repr


def test_a_result_with_tuple_keys_is_printed_as_json_everywhere(daemon: Daemon) -> None:
    job_id = int(daemon.cli("submit", "cli_input_jobs:tuple_key").stdout)
    expected = {"(1, 2)": "a", "raw": "b'\\x00z'"}  # a tuple key and a bytes value as their repr
    assert json.loads(daemon.cli("result", str(job_id)).stdout) == expected  # it waits for the job to end
    jobs, status = daemon.cli_each(["jobs", "--json"], ["status", "--json"])
    listed = json.loads(jobs.stdout)  # was: TypeError for everyone while it is listed
    assert next(j for j in listed if j["id"] == job_id)["result"] == expected
    assert status.returncode == 0 and json.loads(status.stdout)


# ------------------------------------------------------------------------------ numeric options
NUMERIC_REFUSALS = [
    (["submit", "examples.jobs:add", "1", "2", "--timeout", "0"], ["--timeout", "0 is out of range", "more than 0"]),
    (["submit", "examples.jobs:add", "1", "2", "--timeout", "nan"], ["--timeout", "nan is not a finite number"]),
    (["submit", "examples.jobs:add", "1", "2", "--grace", "inf"], ["--grace", "inf is not a finite number"]),
    (["submit", "examples.jobs:add", "1", "2", "--grace", "1e6"], ["--grace", "at most 86400"]),
    (["submit", "examples.jobs:add", "1", "2", "--deadline", "nan"], ["--deadline", "not a finite number"]),
    (["submit", "examples.jobs:add", "1", "2", "--deadline", "-1"], ["--deadline", "out of range"]),
    (["submit", "examples.jobs:add", "1", "2", "--priority", str(2**70)], ["--priority", "64-bit"]),
    (["submit", "examples.jobs:add", "1", "2", "--retries", "1001"], ["--retries", "0 to 1000"]),
    (["up", "--timeout", "0"], ["--timeout", "more than 0"]),
    (["up", "--timeout", "nan"], ["--timeout", "not a finite number"]),
    (["down", "--timeout", "0"], ["--timeout", "more than 0"]),
    (["down", "--timeout", "inf"], ["--timeout", "not a finite number"]),
    (["scale", "5000"], ["WORKERS", "0 to 1024"]),
    (["jobs", "--limit", "0"], ["--limit", "1 to 10000"]),
    (["jobs", "--limit", str(2**70)], ["--limit", "1 to 10000"]),
    (["result", str(2**70)], ["JOB_ID", "64-bit"]),
    (["top", "--refresh", "nan"], ["--refresh", "nan is not a number"]),
]


@pytest.fixture(scope="module")
def numeric_refusals(daemon: Daemon) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """What each command of :data:`NUMERIC_REFUSALS` did, all run once side by side (each test reads its own)."""
    commands = [args for args, _ in NUMERIC_REFUSALS]
    return dict(zip(map(tuple, commands), daemon.cli_each(*commands)))


@pytest.mark.parametrize("args, fragments", NUMERIC_REFUSALS)
def test_numeric_options_are_checked_with_one_line_errors(
        daemon: Daemon, numeric_refusals: dict[tuple[str, ...], subprocess.CompletedProcess[str]], args: list[str],
        fragments: list[str]) -> None:
    one_line_error(numeric_refusals[tuple(args)], *fragments)
    if args[0] == "down":
        assert daemon.cli("status", "--json", check=False).returncode == 0  # it was not stopped, nor killed


def test_client_submit_names_the_argument_that_is_not_a_finite_number(daemon: Daemon) -> None:
    from actors.client import AsyncClient

    c = daemon.client()
    with pytest.raises(ValueError, match=r"^grace must be positive.*86400.*got nan"):
        c.submit("examples.jobs:add", 1, 2, grace=math.nan)
    with pytest.raises(ValueError, match=r"^grace must be positive.*got inf"):
        c.submit("examples.jobs:add", 1, 2, grace=math.inf)
    with pytest.raises(ValueError, match=r"^deadline must be a finite number.*got nan"):
        c.submit("examples.jobs:add", 1, 2, deadline=math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match=r"^grace must be positive.*got nan"):  # (the old name of grace)
            c.submit("examples.jobs:add", 1, 2, timeout=math.nan)
    from actors.client import Executor

    with Executor(config=daemon.config, grace=math.nan) as ex:  # the executor's job options alike
        with pytest.raises(ValueError, match=r"^grace must be positive.*got nan"):
            ex.submit(abs, -1)

    async def async_submit() -> None:
        async with AsyncClient(config=daemon.config) as ac:
            await ac.submit("examples.jobs:add", 1, 2, grace=math.nan)

    with pytest.raises(ValueError, match=r"^grace must be positive.*got nan"):
        asyncio.run(async_submit())


def test_an_argument_that_is_not_utf8_is_named_in_one_line(daemon: Daemon) -> None:
    """Bytes that are not UTF-8 in an argument (subprocess passes '\\udcff' as the byte 0xff): the error said only
    "'utf-8' codec can't encode character '\\udcff' in position 1", not which argument."""
    submit, param = daemon.cli_each(("submit", "examples.jobs:add", "1", "a\udcffb"), ("param", "set", "\udcff", "1"))
    one_line_error(submit, "cannot encode Submit: jobs[0].args[1] ('a\\udcffb') holds the bytes b'\\xff', which are "
                           "not UTF-8")
    one_line_error(param, "cannot encode ParamSet: name ('\\udcff') holds the bytes b'\\xff'")
    with pytest.raises(ProtocolError, match=re.escape("jobs[0].args[0]['k'][1] ('\\udcfe') holds the bytes b'\\xfe'")):
        daemon.client().submit("examples.jobs:add", {"k": ["ok", "\udcfe"]}, 1)


# ------------------------------------------------------------------------------ files, scripts, hints
def test_a_config_that_is_not_a_regular_file_is_refused_not_read(daemon: Daemon) -> None:
    fifo = daemon.base / "config.fifo"
    os.mkfifo(fifo)
    for out in daemon.cli_each(["--config", str(fifo), "status"], ["status", "--config", str(fifo)],
                               ["-c", "/dev/null", "jobs"], timeout=20):
        one_line_error(out, "is not a regular file")  # was: a hang


@pytest.mark.slow  # the controller's 5 s budget runs out: .ci/run's slow pass (default suite < 5 min)
def test_a_script_stuck_in_module_code_names_the_budget(daemon: Daemon) -> None:
    script = daemon.base / "forever.py"
    script.write_text("while True:\n    pass\n")
    line = one_line_error(daemon.cli("load", str(script), check=False), "forever.py")
    assert re.search(r"module code ran past the controller's budget of \d+ ms", line), line
    wait_for(lambda: "budget" in daemon.actor("controller").detail, 10, what="the controller to report the overrun")


def test_every_ensemble_command_a_message_names_exists() -> None:
    from actors.cli import main

    named = []
    for package in ("actors", "audio", "controller"):
        for path in (ROOT / package).rglob("*.py"):
            for m in re.finditer(r"`ensemble ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", path.read_text()):
                cmd = main.commands.get(m.group(1))
                if cmd is None or (isinstance(cmd, click.Group) and m.group(2) and m.group(2) not in cmd.commands):
                    named.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not named, named


def test_script_and_sample_files_must_be_regular_files_and_messages_read_right(daemon: Daemon) -> None:
    fifo = daemon.base / "sample.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    sample, script, param, refused = daemon.cli_each(["sample", "load", str(fifo)], ["load", "/dev/null"],
                                                     ["param", "get", "nope"],
                                                     ["submit", "cli_input_jobs:ANSWER", "--wait"], timeout=20)
    one_line_error(sample, "is not a regular file")  # it hung
    one_line_error(script, "is not a regular file")
    # a missing parameter keeps both quotes of its name; a job path naming an int is "an int"
    assert "'nope'" in one_line_error(param, "nope")
    assert refused.returncode != 0 and "is an int, not a function" in refused.stderr, refused.stderr


def test_a_state_dir_that_is_a_file_and_an_empty_sample_file_are_one_line_errors(daemon: Daemon,
                                                                                  tmp_path: Path) -> None:
    """Both were tracebacks (FileExistsError from `up`, ValueError from `sample load`)."""
    import soundfile as sf

    afile = tmp_path / "not-a-dir"
    afile.write_text("")
    env = {**daemon.env, "ENSEMBLE_NAME": "statefile", "ENSEMBLE_RUN_DIR": str(tmp_path / "run"),
           "ENSEMBLE_STATE_DIR": str(afile)}
    up = subprocess.run([sys.executable, "-m", "actors", "up"], env=env, capture_output=True, text=True, timeout=60)
    one_line_error(up, f"state directory {afile} exists and is not a directory", "ENSEMBLE_STATE_DIR")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), 48000)
    one_line_error(daemon.cli("sample", "load", str(empty), check=False), "holds no audio frames")


def test_exact_values_print_as_json_a_reader_can_use() -> None:
    """What a Client job gives back exactly (a set, a datetime, a Decimal...) prints as JSON meant for it."""
    import datetime
    import decimal
    import uuid
    from pathlib import Path

    from actors.jsontext import json_text

    value = {"s": {3}, "t": (1, frozenset({2})), "when": datetime.datetime(2026, 12, 6, 10, 30),
             "day": datetime.date(2026, 12, 6), "at": datetime.time(7, 5), "price": decimal.Decimal("1.50"),
             "id": uuid.UUID(int=1), "file": Path("/tmp/x.wav"), "c": 1 + 2j}
    assert json.loads(json_text(value)) == {
        "s": [3], "t": [1, [2]], "when": "2026-12-06T10:30:00", "day": "2026-12-06", "at": "07:05:00",
        "price": "1.50", "id": "00000000-0000-0000-0000-000000000001", "file": "/tmp/x.wav", "c": "(1+2j)"}


def test_keys_json_would_write_alike_stay_apart() -> None:
    """``{1: "a", "1": "b"}`` printed as ``{"1": "a", "1": "b"}``, and every reader kept "b" alone: JSON keeps
    the last of equal keys.  A key that is no string is told apart by its type then (and only then)."""
    from actors.jsontext import json_text

    def pairs(text: str) -> list[tuple[str, Any]]:
        return json.loads(text, object_pairs_hook=list)  # type: ignore[no-any-return]

    assert pairs(json_text({1: "a", "1": "b", None: "c", "null": "d", 2: "e"})) == [
        ("1 (int)", "a"), ("1", "b"), ("null (NoneType)", "c"), ("null", "d"), ("2", "e")]
    assert pairs(json_text({1: {2: "x"}, 3.5: None})) == [("1", [("2", "x")]), ("3.5", None)]  # no collision: as json

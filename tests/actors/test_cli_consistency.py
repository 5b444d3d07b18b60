"""What the command line says of one thing is the same wherever it says it, and its exit statuses are the man
page's (0, 1 an error, 2 a usage error, 130 interrupted).

``cancel --wait`` of a job that had ended said ``job N: done`` as if it had just stopped, and gave up after
30 s on a job whose grace was longer; a done job that never set its progress read 0% in ``jobs`` and ``top``;
Ctrl-C while the command was still importing printed Python's traceback; usage mistakes the command checks
itself (``--kw``, ``--resources``, ``--connect`` without keys) exited 1.  Against a real daemon through real
CLI processes; each test fails on the code before its fix.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for

INTERRUPTED = "ensemble: error: interrupted"


def _table_row(out: str, job_id: int) -> str:
    """The line of ``ensemble jobs``' table for ``job_id``."""
    return next(line for line in out.splitlines() if re.match(rf"[│|]\s*{job_id}\s*[│|]", line))


# ------------------------------------------------------------------------------ cancel: what it says
def test_cancel_of_an_ended_job_says_it_had_already_ended_with_or_without_wait(module_daemon: Daemon) -> None:
    """``cancel --wait`` of a job that had ended said ``job N: done``, the line of a job it had just stopped."""
    c = module_daemon.client()
    done, failed = c.submit("examples.jobs:add", 1, 2), c.submit("examples.jobs:fail", "boom")
    done.wait(30)
    failed.wait(30)
    asked = [(done, "done", ["cancel", str(done.id), "--wait"]), (done, "done", ["cancel", str(done.id)]),
             (failed, "failed", ["cancel", str(failed.id), "--wait"])]
    for (job, state, args), out in zip(asked, module_daemon.cli_each(*(args for _, _, args in asked))):
        assert out.returncode == 0 and out.stdout.strip() == f"job {job.id} had already ended ({state})", (args, out)


def test_cancel_wait_of_a_job_that_ignores_its_abort_says_it_was_killed_and_why(module_daemon: Daemon) -> None:
    """It said ``job N: killed``: not that the job ignored its abort for its grace.  And its help said "force
    kill after its timeout", an option submit calls --grace now, and nothing of what it prints."""
    c = module_daemon.client()
    job = c.submit("tests.jobs:stubborn")
    wait_for(lambda: job.status_message == "started", 30, what="the job to start")
    out, helped = module_daemon.cli_each(["cancel", str(job.id), "--wait"], ["cancel", "--help"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"job {job.id}: killed: cancel (no return within 500 ms of the abort)", out.stdout
    words = " ".join(helped.stdout.split())
    assert "force kill after its grace (submit --grace)" in words and "timeout" not in words
    assert "job N had already ended (STATE) nothing to cancel, --wait or not" in words
    assert "Exit status 1: the job is unknown, or the daemon does not answer." in words


@pytest.mark.slow  # the job takes more than 30 s to stop, as asked
def test_cancel_wait_waits_out_a_grace_longer_than_30_seconds(module_daemon: Daemon) -> None:
    """A job given 60 s to stop, which takes 33: the one Cancel waited 30 s, then the command said "the daemon
    did not answer Cancel within 30s; is it overloaded or stopped?" and exited 1, the daemon well."""
    c = module_daemon.client()
    job = c.submit("tests.jobs:sleep", 33, grace=60)
    wait_for(lambda: job.state == "running", 30, what="the job to run")
    out = module_daemon.cli("cancel", str(job.id), "--wait", check=False, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"job {job.id}: cancelled", out
    assert "did not answer" not in out.stderr


# ------------------------------------------------------------------------------ progress of a done job
def test_a_done_job_that_never_set_its_progress_shows_100_percent_and_json_keeps_0(module_daemon: Daemon) -> None:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    from actors._top import render

    c = module_daemon.client()
    done, failed = c.submit("examples.jobs:add", 1, 2), c.submit("examples.jobs:fail", "boom")
    done.wait(30)
    failed.wait(30)
    table, as_json, helped = (p.stdout for p in module_daemon.cli_each(["jobs", "--limit", "50"],
                                                                        ["jobs", "--json", "--limit", "50"],
                                                                        ["jobs", "--help"]))
    assert "100%" in _table_row(table, done.id), table  # (it read 0%)
    assert " 0%" in _table_row(table, failed.id), table  # where a job that did not end well stopped
    listed = {j["id"]: j for j in json.loads(as_json)}
    assert listed[done.id]["progress"] == 0.0 and listed[done.id]["state"] == "done"  # the raw value, as documented
    helped = " ".join(helped.split())
    assert "0.0 if it never did, done or not" in helped
    assert "--limit INTEGER List at most this many jobs (1 to 10000)." in helped  # (it had no text)

    infos = {j.id: j for j in c.jobs(limit=50)}
    screen = render(c.status(), [infos[done.id], infos[failed.id]])
    jobs_table = screen.renderables[2]
    assert isinstance(jobs_table, Table)
    bars = {int(str(i)): bar for i, bar in zip(jobs_table.columns[0].cells, jobs_table.columns[3].cells)
            if isinstance(bar, ProgressBar)}
    assert bars[done.id].completed == 1.0 and bars[failed.id].completed == 0.0  # top's bar of a done job was empty

"""A script's background task runs the code the controller runs, or not at all.

A worker reads the script's file when the task's job starts.  A file edited
since the controller loaded it (and not loaded again) gave the worker the new
code beside the controller's old: the task ran a function the controller had
never seen.  The job names the digest of the source the controller ran, and a
worker whose file holds another fails the job, saying to load the edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Daemon, wait_for

EDITION_1 = """from controller.script import create_background_task, define_parameter

EDITION = 1
task = create_background_task("Work")


def work(t):
    t.set_status_message(f"edition {EDITION}")


def on_go(value):
    if value:
        task.call_on_background_thread(work)


define_parameter("go", "Go", False, on_change=on_go)
"""

EDITION_2 = EDITION_1.replace("EDITION = 1", "EDITION = 2  # edited")


def _task_ends(c: Any, before: int) -> Any:
    """Start the task (the parameter's callback) and wait for its job's end; that job's record."""
    c.set_param("go", False)
    c.set_param("go", True)
    wait_for(lambda: [j for j in c.jobs() if j.id > before and j.state in ("done", "failed")], 60,
             what="the background task's job to end")
    return next(j for j in c.jobs() if j.id > before)


def test_a_task_runs_the_code_the_controller_runs_and_not_an_edit_it_never_loaded(daemon: Daemon,
                                                                                  tmp_path: Path) -> None:
    script = tmp_path / "instrument.py"
    script.write_text(EDITION_1)
    c = daemon.client()
    c.load_script(str(script), wait=30)

    first = _task_ends(c, 0)
    assert (first.state, first.status) == ("done", "edition 1"), first

    script.write_text(EDITION_2)  # edited, not loaded: the controller runs edition 1
    second = _task_ends(c, first.id)
    assert second.state == "failed", second  # was: done, "edition 2"
    assert second.error_message.startswith(f"script {script.resolve()} was edited since the controller loaded it: "
                                           "this background task would run the edited code beside the "
                                           "controller's"), second.error_message
    assert second.error_message.endswith(f"`ensemble load {script.resolve()}` loads the edit on every side")

    c.load_script(str(script), wait=30)  # what the error says to do
    third = _task_ends(c, second.id)
    assert (third.state, third.status) == ("done", "edition 2"), third

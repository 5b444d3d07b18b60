"""Which script functions run where, and what a wrong-context error advises (HALion-CONTEXTS.md, the seeds).

``define_parameter`` is a controller function in HALion; a processor
callback could call it and nothing said so.  A wrong-context error inside a
background task advised ``run_sync``/``run_async``, neither of which a task
has: it must name what a task can do (its handle, its finish callback).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from controller.offline import render_script
from tests.conftest import Daemon
from tests.controller.test_script_task_version import _task_ends

DEFINE_IN_ON_NOTE = """from controller.script import *

def on_note(event):
    define_parameter("late", "Defined by a processor callback", 0.5)
    play_note(event.note, event.velocity)

define_parameter("early", "Defined in module code", 1.0)
"""


def test_define_parameter_in_a_processor_callback_is_a_wrong_context_error(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(DEFINE_IN_ON_NOTE)
    _, errors = render_script(str(script), out=tmp_path / "out.wav", seconds=0.3)
    assert errors, "define_parameter ran in on_note (the processor) without an error"
    first = errors[0]
    assert first.startswith("Processor wrong-context: WrongContextError in on_note: define_parameter() is available "
                            f"in: Controller; it was called in: Processor at {script}:4 in on_note; "), first
    assert first.endswith("define parameters in the script's module code (its top level), which runs when the "
                          "script loads; a callback cannot add one"), first  # no bridge leads to a definition


TASK_CALLS = """from controller.script import *

task = create_background_task("Calls")

def hello():
    pass

def call(t):
    t.set_status_message(get_context())
    {call}

def on_go(value):
    if value:
        task.call_on_background_thread(call)

define_parameter("go", "Go", False, on_change=on_go)
"""


def _task_error(c: Any, script: Path, call: str) -> Any:
    """Load a script whose background task makes ``call``; the job that ran it, once it ended."""
    script.write_text(TASK_CALLS.format(call=call))
    c.load_script(str(script), wait=30)
    return _task_ends(c, max((j.id for j in c.jobs()), default=0))


def test_a_wrong_context_error_in_a_background_task_names_what_the_task_can_do(daemon: Daemon,
                                                                              tmp_path: Path) -> None:
    c = daemon.client()
    script = tmp_path / "calls.py"
    for call, available in (("play_note(60)", "Processor"), ("run_sync(hello)", "Controller"),
                            ("task.call_on_background_thread(hello)", "Controller")):
        job = _task_error(c, script, call)
        assert job.state == "failed" and job.status == "Background task", (call, job)
        message = job.error_message
        assert re.search(rf"\(\) is available in: {available}; it was called in: Background task", message), message
        assert "run_sync(fn) (Controller -> Processor)" not in message, message  # a bridge the task has not
        assert "`await run_async(fn)`" not in message, message
        assert "(run_sync and run_async are not available in it): hand the result over with " \
               "task.set_property(key, value)" in message, message
        assert ("the finish callback (set_finish_callback on the handle create_background_task returned), which "
                "runs in the Controller when the task stops") in message, message
        if available == "Processor":
            assert message.endswith("from there run_sync(fn) reaches the Processor"), message


def test_a_load_on_another_thread_allows_this_thread_no_definition() -> None:
    """While the processor's main thread ran a new script's module code, a callback of the script before on the
    audio thread could call define_parameter, and its parameter went into the new script's: the flag saying
    module code runs was the whole process's.  It is the loading thread's now."""
    import threading

    import pytest

    from actors import WrongContextError
    from controller import _context, script
    from controller._context import PROCESSOR, set_thread_context

    entered, release = threading.Event(), threading.Event()

    def load() -> None:
        with _context.loading_module():  # as ProcessorScript.load runs module code on the main thread
            entered.set()
            release.wait(30)

    loader = threading.Thread(target=load, name="loading")
    loader.start()
    set_thread_context(PROCESSOR)  # this thread: the audio thread, in a callback of the script before
    try:
        assert entered.wait(30)
        with pytest.raises(WrongContextError, match=r"define_parameter\(\) is available in: Controller; it was "
                                                     r"called in: Processor"):
            script.define_parameter("late", "Late", 0.0)
    finally:
        set_thread_context("")
        release.set()
        loader.join(30)

"""A callback past its context's execution limit stops the script, live and offline alike (HALion's timeout).

The contract (docs/script-api.md, HALion's threads): one callback may run at
most 5000 ms in the controller and 1000 ms in the processor "before the
script stops with an execution error".  An offline render never stopped a
processor callback: a synchronous one that ran past the hard limit ran on,
and the rest of the script with it.  A controller callback past its budget
was stopped, but the script's other callbacks went on running.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.offline import parse_set, render_script
from tests.conftest import Daemon, wait_for

HARD_LIMIT_MS = 1000  # the processor's, live and offline (ProcessorScript's hard_limit_ms)

RUNAWAY_NOTE = """from controller.script import *
import time

def rec(text):
    with open({log!r}, "a") as f:
        f.write(text + "\\n")

def on_note(event):  # synchronous: no await where the processor could take it back
    rec(f"note {{event.note}}")
    if event.note == 60:
        until = time.monotonic() + {spin_s}
        while time.monotonic() < until:  # Python code: the interrupt reaches it at its next bytecode
            pass
        rec("ran on past the hard limit")
    play_note(event.note, event.velocity)

def hello():
    rec("run_sync ran")

def on_go(value):
    run_sync(hello)

define_parameter("go", "go", False, on_change=on_go)
"""


def test_an_offline_render_stops_a_synchronous_processor_callback_at_the_hard_limit(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    script = tmp_path / "runaway.py"
    # long enough past the limit that only the interrupt ends it early (the render itself takes under a second)
    script.write_text(RUNAWAY_NOTE.format(log=str(log), spin_s=HARD_LIMIT_MS / 1000 * 20))
    _, errors = render_script(str(script), out=tmp_path / "out.wav", seconds=2.0, sets=[parse_set("go=true@1.5")])
    stopped = f"Processor stopped: script stopped: on_note ran past the processor's hard limit of {HARD_LIMIT_MS} ms; " \
              "audio continues"
    assert any(e.startswith(stopped) for e in errors), errors  # the live processor's error, word for word
    ran = log.read_text().splitlines()
    assert "ran on past the hard limit" not in ran, ran
    assert ran == ["note 60"], ran  # the demo phrase's later notes found the script stopped
    assert any("run_sync(hello) did not run: the script is stopped" in e for e in errors), errors


RUNAWAY_CONTROL = """from controller.script import *

def rec(text):
    with open({log!r}, "a") as f:
        f.write(text + "\\n")

def on_spin(value):
    if value:
        while True:  # Python code: the budget's interrupt stops it
            pass

def on_other(value):
    rec(f"on_other {{value}}")

def ticked():
    rec("tick")

start_timer(100, ticked) if get_context() == "Controller" else None
define_parameter("spin", "Spin", False, on_change=on_spin)
define_parameter("other", "Other", 0, 0, 10, on_change=on_other)
"""


@pytest.mark.slow  # waits out the controller's budget of 5 s
def test_a_controller_callback_past_its_budget_stops_the_script_until_it_is_loaded_again(daemon: Daemon,
                                                                                        tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    script = tmp_path / "runaway.py"
    script.write_text(RUNAWAY_CONTROL.format(log=str(log)))
    c = daemon.client()
    c.load_script(str(script), wait=30)
    wait_for(lambda: log.exists() and "tick" in log.read_text(), what="the timer to run")

    c.set_param("spin", True)
    stopped = wait_for(lambda: daemon.actor("controller").stats.get("script_stopped"), 60,
                       what="the controller's script to stop")
    assert stopped == "on_change(spin) ran past the controller's budget of 5000 ms", stopped
    errors = c.status().daemon.counters["script_errors_recent"]
    assert any(e.startswith("Controller overrun: on_change(spin) ran past the controller's budget of 5000 ms and was "
                            "stopped; the script is stopped: none of its controller callbacks runs until it is "
                            f"loaded again (`ensemble load {script.resolve()}`)") for e in errors), errors

    log.write_text("")  # what runs from now on
    c.set_param("other", 3)
    wait_for(lambda: any("on_change(other) did not run: the script is stopped (on_change(spin) ran past the "
                         "controller's budget of 5000 ms)" in e
                         for e in c.status().daemon.counters["script_errors_recent"]),
             60, what="the refused callback to be reported")
    assert c.get_param("other") == 3  # the value is taken (and saved); the script's callback is not run
    assert log.read_text() == ""  # neither on_other nor the timer ran

    c.load_script(str(script), wait=30)  # what the message says to do
    wait_for(lambda: daemon.actor("controller").stats.get("script_stopped") == "", 60,
             what="status to show the script running again")
    c.set_param("other", 4)
    wait_for(lambda: "on_other 4" in log.read_text(), what="the loaded script's callbacks to run again")

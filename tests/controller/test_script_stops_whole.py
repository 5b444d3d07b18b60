"""A controller callback past its budget stops the whole script: its processor callbacks stop too.

HALion's contract (docs/script-api.md, /work/shared/HALION-CONTEXTS.md): one
callback may run at most 5000 ms in the controller "before the script stops
with an execution error".  The controller stopped its own callbacks, but the
processor went on running the stopped script's ``on_note`` and the rest, and
``status`` said nothing of the processor.  Now the processor stops them too
(notes play the default sampler) until the next load, a restarted processor
included, and ``status`` says the script stopped and why (``script_stopped``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from audio import Engine, NoteOff, NoteOn, builtin_sample
from controller.offline import OfflineScriptHost
from controller._watchdog import Deadline
from tests.conftest import Daemon, wait_for

SCRIPT = """from controller.script import *

def rec(text):
    with open({log!r}, "a") as f:
        f.write(text + "\\n")

def on_note(event):
    rec(f"on_note {{event.note}}")

def on_spin(value):
    if value:
        while True:  # Python code: the budget's interrupt stops it
            pass

define_parameter("spin", "Spin", False, on_change=on_spin)
"""


def _write(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "log.txt"
    script = tmp_path / "spinner.py"
    script.write_text(SCRIPT.format(log=str(log)))
    return script, log


def _ran(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_processor_stops_the_script_the_controller_stopped(tmp_path: Path) -> None:
    """Both sides in one process (``ensemble render``'s host), the controller's budget cut to 200 ms."""
    script, log = _write(tmp_path)
    engine = Engine(48000, 256, 2, 16)
    engine.set_buffer(0, builtin_sample(48000), 48000, 60)
    block = np.zeros((256, 2), dtype=np.float32)
    state = tmp_path / "state"
    state.mkdir()
    with OfflineScriptHost(engine, str(script), state) as host:
        host.ctrl.deadline = Deadline(0.2, 3.0)
        engine.render(block)  # the processor's init
        host.feed(NoteOn(60, 1.0, engine.frame))
        engine.render(block)
        assert _ran(log) == ["on_note 60"]
        host.feed(NoteOff(note=60, at=engine.frame))

        host.ctrl.param_from_outside("spin", True)
        wait_for(lambda: host.ctrl.stopped, 10, what="the controller to stop the script")
        host.sync()  # what the controller sent the processor: its stop
        engine.render(block)
        assert host.proc.stopped == "the controller stopped it: on_change(spin) ran past the controller's budget " \
                                    "of 200 ms", host.proc.stopped
        host.feed(NoteOn(61, 1.0, engine.frame))
        engine.render(block)
        assert _ran(log) == ["on_note 60"]  # on_note did not run for 61
        assert engine.stats().active_voices >= 1  # the default sampler plays it
    assert any(e.startswith("Processor stopped: script stopped: the controller stopped it: on_change(spin) ran past "
                            "the controller's budget of 200 ms; none of its processor callbacks runs until it is "
                            "loaded again: notes play the default sampler") for e in host.errors), host.errors


@pytest.mark.slow  # waits out the controller's budget of 5 s
def test_a_controller_overrun_stops_the_processor_callbacks_until_the_script_is_loaded_again(daemon: Daemon,
                                                                                            tmp_path: Path) -> None:
    script, log = _write(tmp_path)
    c = daemon.client()
    c.load_script(str(script), wait=30)
    c.note_on(60)
    wait_for(lambda: _ran(log) == ["on_note 60"], what="on_note to run")
    c.note_off(60)

    c.set_param("spin", True)
    why = "on_change(spin) ran past the controller's budget of 5000 ms"
    wait_for(lambda: daemon.actor("processor").stats.get("script_stopped") == f"the controller stopped it: {why}", 30,
             what="the processor to stop the script")
    counters = daemon.status().daemon.counters
    assert counters["script_stopped"].startswith(f"stopped in the controller: {why}; none of its callbacks runs"), \
        counters
    assert "Processor stopped: script stopped: the controller stopped it" in daemon.actor("processor").detail
    assert daemon.actor("processor").stats["peak_voices"] == 0  # on_note 60 played nothing
    c.note_on(61)
    wait_for(lambda: daemon.actor("processor").stats["peak_voices"] >= 1, what="the default sampler to play 61")
    c.note_off(61)

    old = daemon.actor("processor").pid  # a processor restarted meanwhile runs the script stopped, too
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: (p := daemon.actor("processor")).pid not in (0, old) and p.state == "running"
             and p.stats.get("script_stopped") == f"the controller stopped it: {why}", 30,
             what="the restarted processor to have the script stopped")
    c.note_on(62)
    c.note_off(62)
    c.load_script(str(script), wait=30)  # what the error says to do: both sides run it again
    assert "script_stopped" not in daemon.status().daemon.counters
    wait_for(lambda: daemon.actor("processor").stats.get("script_stopped") == "", what="the processor to run it")
    c.note_on(63)
    wait_for(lambda: "on_note 63" in _ran(log), what="on_note to run again")
    assert _ran(log) == ["on_note 60", "on_note 63"]  # neither 61 nor 62 reached the stopped script


ON_LOAD_SPINS = """from controller.script import *
from pathlib import Path

def rec(text):
    with open({log!r}, "a") as f:
        f.write(text + "\\n")

def on_save():
    return 1

def on_load(state):
    while Path({spin!r}).exists():  # Python code: the budget's interrupt stops it
        pass

def on_note(event):
    rec(f"on_note {{event.note}}")

define_parameter("x", "X", 0, 0, 10)
"""


@pytest.mark.slow  # waits out the controller's budget of 5 s
def test_a_script_whose_on_load_runs_past_the_budget_is_stopped_in_the_processor_once_loaded_there(
        daemon: Daemon, tmp_path: Path) -> None:
    """The stop came before the load's ScriptReady: the daemon passed it to the processor, which still ran the
    script before and stopped that one, then loaded the stopped script and ran its on_note."""
    log, spin = tmp_path / "log.txt", tmp_path / "spin"
    script = tmp_path / "loader.py"
    script.write_text(ON_LOAD_SPINS.format(log=str(log), spin=str(spin)))
    c = daemon.client()
    c.load_script(str(script), wait=30)
    c.set_param("x", 1, wait=10)  # saves on_save()'s state: the next load runs on_load with it
    spin.touch()
    c.reload_script(wait=30)
    why = "on_load ran past the controller's budget of 5000 ms"
    wait_for(lambda: daemon.actor("controller").stats.get("script_stopped") == why, what="the controller's stop")
    wait_for(lambda: daemon.actor("processor").stats.get("script_stopped") == f"the controller stopped it: {why}", 30,
             what="the processor to stop the script it loaded")
    assert daemon.status().daemon.counters["script_stopped"].startswith(f"stopped in the controller: {why};")
    c.note_on(60)
    wait_for(lambda: daemon.actor("processor").stats["peak_voices"] >= 1, what="the default sampler to play 60")
    assert _ran(log) == []

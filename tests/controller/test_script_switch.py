"""Switching scripts in a running daemon: each script's own parameter values, and a load that fails as a whole.

The tests share the module's daemon: each loads scripts of its own (in its own ``tmp_path``, so its entries in
``script-state.json`` are its own) and waits for the outcome of its own load by its number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller._supervision import NO_SCRIPT
from tests.conftest import Daemon, wait_for

SCRIPT_A = """from controller.script import define_parameter

define_parameter("gain", "Gain", 0.5, 0.0, 1.0)
define_parameter("only_a", "Only in A", "a's default")
"""

SCRIPT_B = """from controller.script import define_parameter

define_parameter("gain", "Gain", 0.25, 0.0, 1.0)
"""


def _values(c: Any) -> dict[str, Any]:
    return {p.name: p.value for p in c.params()}


def _set(c: Any, name: str, value: Any) -> None:
    c.set_param(name, value)
    wait_for(lambda: c.get_param(name) == value, what=f"{name} to be {value!r}")


def _saved(d: Daemon, script: Path) -> Any:
    """``script``'s entry in the daemon's ``script-state.json`` (None while it has none)."""
    try:
        return json.loads((d.base / "state" / "script-state.json").read_text()).get(str(script.resolve()))
    except (FileNotFoundError, ValueError):
        return None


def _load_state(d: Daemon) -> list[Any]:
    return list(d.status().daemon.counters.get("script_load", [0, "", ""]))


def _script_in(d: Daemon, actor: str) -> str:
    return str(d.actor(actor).stats.get("script", ""))


def test_another_script_starts_from_its_own_values_and_a_reload_keeps_the_live_ones(shared_daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(SCRIPT_A)
    b.write_text(SCRIPT_B)
    c = shared_daemon.client()
    c.load_script(str(a), wait=30)
    _set(c, "gain", 0.9)
    _set(c, "only_a", "set in a")
    c.load_script(str(b), wait=30)
    assert _values(c) == {"gain": 0.25}  # B's default, not A's 0.9
    _set(c, "gain", 0.3)
    wait_for(lambda: _saved(shared_daemon, b) == {"params": {"gain": 0.3}}, what="b's own entry, without only_a")
    c.load_script(str(a), wait=30)
    assert _values(c) == {"gain": 0.9, "only_a": "set in a"}  # A's own saved values
    c.load_script(str(b), wait=30)
    assert _values(c) == {"gain": 0.3}
    _set(c, "gain", 0.35)
    c.reload_script(wait=30)  # the same script: its live values stay
    assert _values(c) == {"gain": 0.35}
    c.load_script(str(b), wait=30)  # loaded again by its path: the same
    assert _values(c) == {"gain": 0.35}


PROCESSOR_FAILS = """from controller.script import define_parameter, get_context

define_parameter("level", "Level", 0.5, 0.0, 1.0)
if get_context() == "Processor":
    raise RuntimeError("no DSP licence here")
"""


def test_a_load_that_fails_in_the_processor_leaves_the_controller_without_it_too(shared_daemon: Daemon,
                                                                                  tmp_path: Path) -> None:
    """The processor runs no script after its module code raised; the controller, which ran the new script, no
    longer runs it either (its parameters, callbacks and `status` showed it)."""
    good, bad = tmp_path / "good.py", tmp_path / "processor_fails.py"
    good.write_text(SCRIPT_B)
    bad.write_text(PROCESSOR_FAILS)
    c = shared_daemon.client()
    c.load_script(str(good), wait=30)
    out = shared_daemon.cli("load", str(bad), check=False)
    assert out.returncode == 1 and out.stdout == "", out.stdout
    assert "RuntimeError in the processor's module code: no DSP licence here" in out.stderr
    assert NO_SCRIPT in out.stderr, out.stderr
    number, state, error = _load_state(shared_daemon)
    assert state == "failed" and NO_SCRIPT in error
    wait_for(lambda: _script_in(shared_daemon, "controller") == "", what="the controller to run no script")
    wait_for(lambda: _script_in(shared_daemon, "processor") == "", what="the processor to run no script")
    assert c.params() == []  # not the failed script's `level`
    c.load_script(str(good), wait=30)
    assert _values(c) == {"gain": 0.25}
    wait_for(lambda: _script_in(shared_daemon, "controller") == str(good.resolve()), what="the controller to run it")
    wait_for(lambda: _script_in(shared_daemon, "processor") == str(good.resolve()), what="the processor to run it")


def test_a_load_that_fails_in_the_controller_leaves_the_processor_without_the_script_before(
        shared_daemon: Daemon, tmp_path: Path) -> None:
    """The two failures end alike: a SyntaxError in the controller left the processor running the script before,
    whose parameters the daemon no longer listed."""
    good, bad = tmp_path / "good.py", tmp_path / "broken.py"
    good.write_text(SCRIPT_B)
    bad.write_text("def on_note(e)\n    pass\n")
    c = shared_daemon.client()
    c.load_script(str(good), wait=30)
    wait_for(lambda: _script_in(shared_daemon, "processor") == str(good.resolve()), what="the processor to run it")
    out = shared_daemon.cli("load", str(bad), check=False)
    assert out.returncode == 1 and "SyntaxError" in out.stderr and NO_SCRIPT in out.stderr, out.stderr
    wait_for(lambda: _script_in(shared_daemon, "processor") == "", what="the processor to run no script")
    wait_for(lambda: _script_in(shared_daemon, "controller") == "", what="the controller to run no script")
    assert c.params() == []


SLOW_IN_THE_CONTROLLER = """import os, time
from controller.script import get_context

if get_context() == "Controller":
    open({started!r}, "w").close()
    end = time.monotonic() + 4.0  # inside the controller's 5 s budget for module code
    while not os.path.exists({gate!r}) and time.monotonic() < end:
        time.sleep(0.01)
"""

BROKEN_IN_THE_CONTROLLER = """from controller.script import get_context

if get_context() == "Controller":
    raise RuntimeError("the second version is broken in the controller")
"""


def test_the_processor_s_answer_to_a_load_does_not_finish_the_next_load_of_the_same_file(
        shared_daemon: Daemon, tmp_path: Path) -> None:
    """Load, edit, load again before the first is done: the second load's outcome is its own.

    The first load's module code waits in the controller until the second is
    accepted; the file then raises in the controller.  The processor's answer
    to the first load (it read the second version, which it runs) marked the
    second one ready, and the controller's error for it was ignored.
    """
    script, started, gate = tmp_path / "edited.py", tmp_path / "started", tmp_path / "gate"
    script.write_text(SLOW_IN_THE_CONTROLLER.format(started=str(started), gate=str(gate)))
    c = shared_daemon.client()
    before = _load_state(shared_daemon)[0]
    c.load_script(str(script))
    wait_for(started.exists, what="the first load's module code to run in the controller")
    script.write_text(BROKEN_IN_THE_CONTROLLER)  # another size: not taken for the first version's bytecode
    c.load_script(str(script))
    gate.touch()
    number, state, error = wait_for(lambda: (s := _load_state(shared_daemon))[1] != "loading" and s,
                                    what="the second load to end")
    assert number == before + 2
    assert state == "failed" and "the second version is broken in the controller" in error, (state, error)
    wait_for(lambda: _script_in(shared_daemon, "processor") == "", what="the processor to run no script")
    wait_for(lambda: _script_in(shared_daemon, "controller") == "", what="the controller to run no script")
    script.write_text(SCRIPT_B)  # fixed: it loads as any script
    c.load_script(str(script), wait=30)
    assert _values(c) == {"gain": 0.25}

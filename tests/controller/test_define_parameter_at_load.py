"""``define_parameter`` works while the script loads, and a callback calling it is told when it may (HALion's model).

From a controller callback (the right context, after the load) it half-worked:
the controller added the parameter, the daemon listed it only after some other
change went out (``param set`` refused it meanwhile: "no parameter named"),
the processor never had it (``get_parameter`` raised KeyError there), and the
next reload dropped it.  Now the call raises WrongContextError naming when it
may be called, and nothing is defined.
"""

from __future__ import annotations

import json
from pathlib import Path

from controller.messages import ParamValues, ScriptError
from tests.conftest import Daemon, wait_for
from tests.controller.test_script_contract import _loaded

LATE = """
def define_late():
    define_parameter("late", "Late", 5, 0, 10)

def on_load(state):
    define_late()

def on_go(value):
    define_late()

define_parameter("go", "Go", False, on_change=on_go)
"""

WHY = ("define_parameter() may be called only while the script loads, in its module code; it was called in: "
       "Controller at {file}:4 in define_late, after the script loaded; define parameters in the script's module "
       "code (its top level), which runs when the script loads; a callback cannot add one")


def test_a_controller_callback_defining_a_parameter_is_told_when_it_may(tmp_path: Path) -> None:
    (tmp_path / "script-state.json").write_text(json.dumps({str((tmp_path / "instrument.py").resolve()): {"state": 1}}))
    rt, out = _loaded(tmp_path, LATE)
    try:
        rt.param_from_outside("go", True)
        rt.barrier()
        assert list(rt.params) == ["go"]  # nothing defined half-way
    finally:
        rt.stop()
    file = tmp_path / "instrument.py"
    errors = [m.message for m in out.items if isinstance(m, ScriptError)]
    assert errors == [f"WrongContextError in {name}: " + WHY.format(file=file)
                      for name in ("on_load", "on_change(go)")], errors
    assert all([p.name for p in m.params] == ["go"] for m in out.items if isinstance(m, ParamValues))


def test_live_the_error_is_in_status_and_the_daemon_lists_what_module_code_defined(shared_daemon: Daemon,
                                                                                   tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text("from controller.script import *\n" + LATE)
    c = shared_daemon.client()
    c.load_script(str(script), wait=30)
    c.set_param("go", True)
    detail = wait_for(lambda: "define_parameter() may be called only" in (d := shared_daemon.actor("controller").detail)
                      and d, what="the error in status")
    assert detail.startswith("Controller wrong-context: WrongContextError in on_change(go): " + WHY.format(file=script))
    assert [p.name for p in c.params()] == ["go"]

"""An acknowledged ``param set`` survives a load that comes before it runs (HISE: a recompile discards callbacks).

The daemon acknowledges ``param set`` ("queued") and the change waits in the
controller's queue.  Behind a long controller callback, a load queued after
it discarded the change with the old script's callbacks, and the daemon,
which forgets acknowledged changes when it sends a load, never sent it again:
the caller was told the value was taken, and it was not.  Now the load
carries it over to the script it loads, and says so where the parameter is
gone there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Daemon, wait_for

EDITION_1 = """from controller.script import *
import time
from pathlib import Path

GATE = Path({gate!r})
STARTED = Path({started!r})

def on_hold(value):  # a long controller callback (within the budget): what comes after it waits in the queue
    if value:
        STARTED.write_text("holding")
        until = time.monotonic() + 4.5
        while not GATE.exists() and time.monotonic() < until:
            time.sleep(0.01)

define_parameter("hold", "Hold the queue", False, on_change=on_hold)
define_parameter("level", "Level", 0.0, 0.0, 1.0)
define_parameter("gone", "Not in edition 2", 0, 0, 10)
define_parameter("marker", "Set last", 0, 0, 10)
"""

EDITION_2 = EDITION_1.replace('define_parameter("gone", "Not in edition 2", 0, 0, 10)\n', "")


def _param(c: Any, name: str) -> Any:
    return next((p.value for p in c.params() if p.name == name), None)


def test_an_acknowledged_param_set_queued_behind_a_callback_is_applied_after_a_load(daemon: Daemon,
                                                                                   tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    script = tmp_path / "instrument.py"
    script.write_text(EDITION_1.format(gate=str(gate), started=str(started)))
    c = daemon.client()
    c.load_script(str(script), wait=30)
    before = c.status().daemon.counters["script_load"][0]

    c.set_param("hold", True)
    wait_for(started.exists, what="the long callback to start")
    c.set_param("level", 0.7)  # acknowledged: each waits behind on_hold
    c.set_param("gone", 3)
    script.write_text(EDITION_2.format(gate=str(gate), started=str(started)))
    c.load_script(str(script))  # queued behind them; it runs before they would
    gate.touch()
    wait_for(lambda: c.status().daemon.counters["script_load"][:2] == [before + 1, "ready"], 60,
             what="edition 2 to load")
    c.set_param("marker", 1)  # queued after anything the load carried over
    wait_for(lambda: _param(c, "marker") == 1, 60, what="a change made after the load to be applied")

    assert _param(c, "level") == 0.7  # was 0.0: the load discarded the acknowledged change
    assert _param(c, "gone") is None
    errors = c.status().daemon.counters.get("script_errors_recent", [])
    assert any(e.startswith("Controller error: param set gone=3 was acknowledged but not applied: a load came "
                            f"before it ran, and the script loaded since ({script.resolve()}) has no parameter "
                            "'gone'") for e in errors), errors

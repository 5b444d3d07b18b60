"""The daemon reloads the controller to the processor's version of a script's file a bounded number of times in a row.

When the processor ran another version of the file than the controller, the
daemon reloads the controller to the file as it is now.  A file rewritten on
every load (here by its own module code, with a new version number each time
it runs; an editor or a generator saving in a loop does the same) had the
daemon reload the controller forever.  After ``FOLLOW_RELOADS`` reloads in a
row the script is dropped on both sides, as a load that fails; edits that
each end with both sides on one version are followed however many there are.
Each test has a daemon of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from controller._supervision import FOLLOW_RELOADS, NO_SCRIPT
from controller.client import ScriptLoadError
from tests.conftest import Daemon, wait_for
from tests.controller.test_script_one_version import (
    EDITION_1, EDITION_2, _both_run, _counters, _digest, _kill_processor, _ran, script_errors,
)

REWRITES_ITSELF = """from pathlib import Path
from controller.script import define_parameter

VERSION = 1
define_parameter("version", "The version the side ran", VERSION, 0, 1000)

_me = Path(__file__)  # each side that runs this writes the next version: every load finds the file changed
_me.write_text(_me.read_text().replace(f"VERSION = {VERSION}\\n", f"VERSION = {VERSION + 1}\\n", 1))
"""


def _version(script: Path) -> int:
    found = re.search(r"^VERSION = (\d+)$", script.read_text(), re.M)
    assert found, script.read_text()
    return int(found.group(1))


def _number(d: Daemon) -> int:
    return int(_counters(d).get("script_load", [0])[0])


@pytest.mark.slow  # three reloads on both sides: ~3 s
def test_a_script_that_rewrites_its_file_on_every_load_is_dropped_after_the_bounded_reloads(daemon: Daemon,
                                                                                            tmp_path: Path) -> None:
    script = tmp_path / "instrument.py"
    script.write_text(REWRITES_ITSELF)
    path = str(script.resolve())
    c = daemon.client()
    before = _number(daemon)
    with pytest.raises(ScriptLoadError) as raised:
        c.load_script(str(script), wait=60)
    error = str(raised.value)
    assert (f"{path} kept changing under the load: {FOLLOW_RELOADS} times in a row the daemon reloaded the "
            "controller") in error, error
    assert f"stop that, then load it again (`ensemble load {path}`); {NO_SCRIPT}" in error, error

    last = before + 1 + FOLLOW_RELOADS  # the user's load and the daemon's reloads, each run by both sides
    number, state, note = _counters(daemon)["script_load"]
    assert (number, state) == (last, "failed") and note.startswith("started by the daemon: "), (number, state, note)
    assert _version(script) == 1 + 2 * (1 + FOLLOW_RELOADS)  # no side ran it once more
    wait_for(lambda: _ran(daemon, "controller") == _ran(daemon, "processor") == ("", ""), 60,
             what="both sides to drop the script")
    assert c.params() == [] and c.ui_elements().elements == []
    assert any("kept changing under the load" in e for e in _counters(daemon)["script_errors_recent"])
    log = (daemon.base / "state" / "daemon.log").read_text()
    assert log.count("event=script-reload side=controller") == FOLLOW_RELOADS
    assert f"event=script-dropped side=both path={path} load={last}" in log

    script.write_text(EDITION_1)  # the rewriting stopped: the next load of the user's runs it, the next number
    c.load_script(str(script), wait=60)
    assert _counters(daemon)["script_load"][:2] == [last + 1, "ready"]  # the daemon started no load meanwhile
    _both_run(daemon, c, path, EDITION_1, 1)


@pytest.mark.slow  # three processor restarts: ~2.5 s
def test_edits_that_each_end_in_one_version_are_followed_however_many(daemon: Daemon, tmp_path: Path) -> None:
    """Each edit followed by a processor restart costs one reload, and both sides then agree: no loop, no drop."""
    script = tmp_path / "instrument.py"
    script.write_text(EDITION_1)
    path = str(script.resolve())
    c = daemon.client()
    c.load_script(str(script), wait=30)
    number = _number(daemon)
    _both_run(daemon, c, path, EDITION_1, 1)
    source: Any = EDITION_1
    for edit in range(1, FOLLOW_RELOADS + 2):
        edition = 1 + edit
        source = EDITION_2.replace("EDITION = 2", f"EDITION = {edition}")
        script.write_text(source)
        _kill_processor(daemon)
        wait_for(lambda: _counters(daemon)["script_load"][:2] == [number + edit, "ready"], 60,
                 what=f"the daemon's reload to edit {edit} to be ready")
        _both_run(daemon, c, path, source, edition)
    assert _ran(daemon, "controller") == (path, _digest(source))
    counters = _counters(daemon)
    assert counters["script_load"][:2] == [number + FOLLOW_RELOADS + 1, "ready"]  # nothing dropped, no other load
    assert not script_errors(counters)

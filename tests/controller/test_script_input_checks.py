"""What a script's processor calls refuse, the status detail a load clears, and binds a controller can move.

Each check runs in the script's ``on_note`` for one note number and sets the
parameter ``said`` to what the call raised (or returned), so the test reads
the outcome as a user would, through ``param get``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import DaemonError
from tests.conftest import Daemon, wait_for

CHECKS = '''
import math

from controller.script import *  # noqa: F403

CALLS = {
    1: lambda: get_cc(-1),
    2: lambda: get_cc(128),
    3: lambda: get_cc(500),
    4: lambda: play_note(60.7, 1.0),
    5: lambda: play_note(60, 1.0, math.nan),
    6: lambda: play_note(60, 1.0, -5),
    7: lambda: play_note(60, 1.0, -math.inf),
    8: lambda: control_change(74.5, 0.5),
    9: lambda: (play_note(60.0, 1.0, 10), get_cc(74)),  # a whole float is a note; a duration in range plays
}


def on_note(event):
    try:
        said = repr(CALLS[event.note]())
    except Exception as exc:
        said = f"{type(exc).__name__}: {exc}"
    set_parameter("said", f"{event.note}: {said}")


define_parameter("said", "said", "")
define_parameter("wide", "wide", 0.0, -1e308, 1e308)
define_parameter("endless", "endless", 0.0, -math.inf, math.inf)
'''

FAILING = '''
from controller.script import *  # noqa: F403


def on_note(event):
    raise RuntimeError("on purpose")
'''


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The module's daemon (its tests load scripts, play notes and read parameters)."""
    return shared_daemon


def _load(d: Daemon, path: Path) -> Any:
    c = d.client()
    c.load_script(str(path), wait=60)
    wait_for(lambda: d.actor("processor").stats.get("script") == str(path.resolve()), what="the processor's script")
    return c


def _said(c: Any, note: int) -> str:
    c.note_on(note)
    return str(wait_for(lambda: (s := c.get_param("said")).startswith(f"{note}: ") and s.removeprefix(f"{note}: "),
                        what=f"the script's answer to note {note}"))


def test_script_calls_refuse_numbers_out_of_range_or_not_whole(daemon: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "checks.py"
    script.write_text(CHECKS)
    c = _load(daemon, script)
    for note in (1, 2, 3):  # -1 read CC 127; 128 and 500 raised numpy's IndexError
        assert _said(c, note).startswith("ValueError: controller must be an int in 0..127, got ")
    assert _said(c, 4) == "ValueError: note must be an int in 0..127, got 60.7"  # was played as 60
    for note, given in ((5, "nan"), (6, "-5"), (7, "-inf")):  # each held its voice for ever
        assert _said(c, note) == (f"ValueError: duration must be a number of milliseconds 0..3.6e+06 (0 or -1: "
                                  f"until released), got {given}")
    assert _said(c, 8) == "ValueError: controller must be an int in 0..127, got 74.5"  # was sent as 74
    assert _said(c, 9).startswith("(1")  # a note id, then CC 74's value: still played and read


def test_a_bind_moves_a_wide_range_and_refuses_an_infinite_one(daemon: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "checks.py"
    script.write_text(CHECKS)
    c = _load(daemon, script)
    with pytest.raises(DaemonError, match="its range is infinite; give it a finite min and max"):
        c.bind_param("endless", 75)
    c.bind_param("wide", 74)
    wait_for(lambda: {p.name: p.cc for p in c.params()}.get("wide") == 74, what="the bind to be applied")
    c.control_change(74, 1.0)  # min + x * (max - min) overflowed to inf here, and the value stayed put
    wait_for(lambda: c.get_param("wide") == 1e308, what="the parameter to follow CC 74")
    c.control_change(74, 0.0)
    wait_for(lambda: c.get_param("wide") == -1e308, what="the parameter to follow CC 74 down")


def test_a_load_clears_the_script_error_the_processor_detail_showed(daemon: Daemon, tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text(FAILING)
    good.write_text(CHECKS)
    c = _load(daemon, bad)
    c.note_on(60)
    wait_for(lambda: "RuntimeError in on_note" in daemon.actor("processor").detail, what="the error in the detail")
    _load(daemon, good)
    processor = wait_for(lambda: (a := daemon.actor("processor")).detail == "" and a, what="the detail to clear")
    assert processor.stats["notice"] is not None  # the processor's own figures show again (`status`: backend, ...)
    errors = daemon.status().daemon.counters["script_errors_recent"]
    assert any("RuntimeError in on_note" in e for e in errors)  # the error is still listed among the recent ones

"""The controller and the processor run one version of a script's file, and a dropped script's UI elements stay gone.

Each side reads the script's file as it is when it loads it: the processor
after the controller, and again when it is restarted.  A file edited in
between (in a way that still loads) gave the processor the new code beside
the controller's old; the daemon compares the digests of what each ran and
reloads the controller to the file as it is now, a numbered load of its own.
UI elements the controller sent before it read an unload never show the
dropped script's elements again.  Each daemon test has a daemon of its own
(the first kills its processor; the others leave script errors or loads of
their own in ``status``).
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from actors import DaemonError
from controller._supervision import NO_SCRIPT
from controller._ui import ScriptUi
from tests.conftest import Daemon, pid_alive, wait_for, without_overruns

EDITION_1 = """from controller.script import add_label, define_parameter, set_parameter

EDITION = 1
define_parameter("heard", "The edition whose on_init the processor ran", 0, 0, 10)
add_label("edition", f"the controller runs edition {EDITION}")


def on_init():  # the processor's
    set_parameter("heard", EDITION)
"""

# the same script, edited: its on_init tells the processor's edition, its label the controller's
EDITION_2 = EDITION_1.replace("EDITION = 1", "EDITION = 2  # edited")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _counters(d: Daemon) -> dict[str, Any]:
    return dict(d.status().daemon.counters)


def script_errors(counters: dict[str, Any]) -> list[str]:
    """The script errors ``status`` keeps, less the processor's overruns.

    An overrun says a block's script callbacks took more than half its time
    by the clock: on a loaded machine any block may, so it says nothing here.
    """
    return without_overruns(counters.get("script_errors_recent", []))


def _ran(d: Daemon, actor: str) -> tuple[str, str]:
    """The script ``actor`` runs and the digest of the source it ran, as its status says."""
    stats = d.actor(actor).stats
    return str(stats.get("script", "")), str(stats.get("script_digest", ""))


def _heard(c: Any) -> Any:
    return next((p.value for p in c.params() if p.name == "heard"), None)


def _label(c: Any) -> str:
    return next((e.text for e in c.ui_elements().elements if e.id == "edition"), "")


def _kill_processor(d: Daemon) -> None:
    """kill -9 the processor and wait until its successor runs."""
    old = d.actor("processor").pid
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old), 10, what="the killed processor to be gone")

    def restarted() -> bool:
        a = d.actor("processor")
        return a.state == "running" and a.pid not in (0, old) and bool(a.stats)

    wait_for(restarted, 60, what="the processor to be restarted")


def _both_run(d: Daemon, c: Any, path: str, source: str, edition: int) -> None:
    """Wait until both sides run ``source`` of ``path``: the processor's on_init, the label, the digests they ran."""
    wait_for(lambda: _heard(c) == edition, 60, what=f"the processor's on_init of edition {edition}")
    wait_for(lambda: _label(c) == f"the controller runs edition {edition}", 60,
             what=f"the controller's label of edition {edition}")
    wait_for(lambda: _ran(d, "controller") == _ran(d, "processor") == (path, _digest(source)), 60,
             what=f"both sides to say they run edition {edition}")


def _edition_1_loaded(daemon: Daemon, tmp_path: Path) -> tuple[Path, str, Any, int]:
    """``instrument.py`` of edition 1, loaded and run by both sides: (its file, its path, a client, the load's number)."""
    script = tmp_path / "instrument.py"
    script.write_text(EDITION_1)
    path = str(script.resolve())
    c = daemon.client()
    c.load_script(str(script), wait=30)
    number = _counters(daemon)["script_load"][0]
    _both_run(daemon, c, path, EDITION_1, 1)
    return script, path, c, number


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_processor_restarted_after_an_edit_that_loads_has_the_controller_reloaded_to_it(daemon: Daemon,
                                                                                          tmp_path: Path) -> None:
    """The restarted processor read the edited file and ran its code; the controller went on running the old."""
    script, path, c, number = _edition_1_loaded(daemon, tmp_path)

    script.write_text(EDITION_2)  # edited, not loaded
    _kill_processor(daemon)
    wait_for(lambda: _counters(daemon)["script_load"][:2] == [number + 1, "ready"],
             60, what="the daemon's load of the edit to be ready")
    _both_run(daemon, c, path, EDITION_2, 2)
    note = _counters(daemon)["script_load"][2]
    assert note == (f"started by the daemon: the processor was restarted (signal 9) and ran {path} as it is now, "
                    f"another version than load {number}, which the controller ran (the file was edited); so the "
                    "controller was reloaded to run it too"), note
    assert not script_errors(_counters(daemon))
    log = (daemon.base / "state" / "daemon.log").read_text()
    assert f"event=script-reload side=controller path={path} load={number + 1} was={number}" in log

    _kill_processor(daemon)  # the file as the controller runs it: a restart changes nothing
    wait_for(lambda: _ran(daemon, "processor") == (path, _digest(EDITION_2)), 60,
             what="the restarted processor to run edition 2")
    assert _counters(daemon)["script_load"] == [number + 1, "ready", note]
    assert _ran(daemon, "controller") == (path, _digest(EDITION_2))


EDITS_ITSELF = EDITION_1 + """
from pathlib import Path
from controller.script import get_context

if get_context() == "Controller":  # edited after the controller ran it, before the processor reads it
    Path(__file__).write_text(EDITION_2)
""".replace("EDITION_2", repr(EDITION_2))


def test_a_file_edited_between_the_two_sides_of_a_load_ends_in_one_version(daemon: Daemon, tmp_path: Path) -> None:
    """The controller runs the file, then the processor reads it: an edit in between gave each its own version.

    The script edits itself in the controller's module code, so the edit
    lands in that window every time; `ensemble load` waits for the reload
    the daemon starts, and both sides run the edit.
    """
    script = tmp_path / "instrument.py"
    script.write_text(EDITS_ITSELF)
    path = str(script.resolve())
    c = daemon.client()
    c.load_script(str(script), wait=60)
    number, state, note = _counters(daemon)["script_load"]
    assert state == "ready" and note.startswith(f"started by the daemon: the processor ran {path} as it is now, "
                                                f"another version than load {number - 1}, which the controller "
                                                "ran"), (number, state, note)
    _both_run(daemon, c, path, EDITION_2, 2)


FAILS_IN_THE_CONTROLLER = EDITION_2 + """
from controller.script import get_context

if get_context() == "Controller":
    raise RuntimeError("the edit needs a licence the controller has not")
"""


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_reload_to_the_edit_that_fails_in_the_controller_drops_the_script_on_both_sides(daemon: Daemon,
                                                                                           tmp_path: Path) -> None:
    """The processor, restarted, ran the edit; the controller, reloaded to it, fails it: a load that fails."""
    script, path, c, number = _edition_1_loaded(daemon, tmp_path)

    script.write_text(FAILS_IN_THE_CONTROLLER)
    _kill_processor(daemon)
    wait_for(lambda: _counters(daemon)["script_load"][:2] == [number + 1, "failed"], 60,
             what="the daemon's load of the edit to fail")
    error = _counters(daemon)["script_load"][2]
    assert error.startswith("started by the daemon: the processor was restarted (signal 9) and ran ") and (
        "; that failed: RuntimeError in module code: the edit needs a licence the controller has not") in error, error
    assert error.endswith(NO_SCRIPT), error
    wait_for(lambda: _ran(daemon, "controller") == _ran(daemon, "processor") == ("", ""), 60,
             what="both sides to drop the script")
    assert c.params() == [] and c.ui_elements().elements == []


UI_IN_FLIGHT = """import asyncio, os, time
from controller.script import add_button, define_parameter, get_context, set_text
from controller.messages import ScriptError

define_parameter("level", "Level", 0.5, 0.0, 1.0)
add_button("press", "Press")
if get_context() == "Processor":
    raise RuntimeError("no DSP licence here")

from controller._host import runtime

_rt = runtime()


def _wait_for(path):
    end = time.monotonic() + 60.0
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)


def _in_flight():
    # The controller's script thread, after the load and before the unload the processor's failure brings: the
    # script changes its button, and the controller's main thread sends the elements, which cross that unload on
    # their way to the daemon.  The marker follows them (the main thread sends the outbox after them).
    _wait_for({sent!r})
    shown = _rt.ui.version
    set_text("press", "Pressed")
    end = time.monotonic() + 60.0
    while _rt.ui.version == shown and time.monotonic() < end:
        time.sleep(0.01)
    _rt.outbox.put(ScriptError("Controller", "error", "marker: the daemon read the elements the controller sent"))
    _wait_for({checked!r})


asyncio.get_running_loop().call_soon(_in_flight)  # runs once the load is done, before the unload queued after it
"""


def test_ui_elements_sent_before_the_controller_read_an_unload_do_not_show_the_dropped_script_again(
        daemon: Daemon, tmp_path: Path) -> None:
    """Driven in the racing order over the real sockets: the daemon fails the load and sends the unload; the
    controller, which has not read it yet, sends the script's UI elements; the daemon reads them after the unload.
    They showed the dropped script's button again (until the controller's next state), and a click on it was
    acknowledged and went nowhere."""
    script, sent, checked = tmp_path / "ui_in_flight.py", tmp_path / "sent", tmp_path / "checked"
    script.write_text(UI_IN_FLIGHT.format(sent=str(sent), checked=str(checked)))
    c = daemon.client()
    try:
        c.load_script(str(script))
        n, state, error = wait_for(lambda: (s := _counters(daemon)["script_load"])[1] != "loading" and s,
                                   what="the load to fail in the processor")
        assert state == "failed" and "no DSP licence here" in error and NO_SCRIPT in error, (state, error)
        assert c.ui_elements().elements == []  # the unload is sent; the controller's script thread has not read it
        sent.touch()
        wait_for(lambda: any("marker" in e for e in _counters(daemon).get("script_errors_recent", [])),
                 what="the daemon to read the elements the controller sent before the unload")
        assert c.ui_elements().elements == []
        with pytest.raises(DaemonError, match="no UI element 'press'"):
            c.ui_event("press")
    finally:
        checked.touch()  # the controller reads the unload now
    wait_for(lambda: _ran(daemon, "controller") == ("", ""), what="the controller to drop the script")
    assert c.ui_elements().elements == []
    log = (daemon.base / "state" / "daemon.log").read_text()
    assert f"event=ui-ignored load={n} count=1" in log

    script.write_text(EDITION_1)  # the next load's elements show as before
    c.load_script(str(script), wait=30)
    wait_for(lambda: _label(c) == "the controller runs edition 1", what="the next load's label")


def test_the_same_elements_of_a_new_load_are_sent_again() -> None:
    """The daemon drops the elements of a load that fails; the next load's, though equal, are a new state."""
    ui = ScriptUi()
    ui.clear(1)
    ui.add("button", "press", "Press")
    first = ui.message_if_changed(100.0, "a.py")
    assert first is not None and first.load == 1 and [e.id for e in first.elements] == ["press"]
    assert ui.message_if_changed(100.1, "a.py") is None  # unchanged: nothing to send
    ui.clear(2)  # unloaded and loaded again within one interval: the empty state was never sent
    ui.add("button", "press", "Press")
    second = ui.message_if_changed(100.2, "a.py")
    assert second is not None and second.load == 2 and second.elements == first.elements
    assert second.version > first.version

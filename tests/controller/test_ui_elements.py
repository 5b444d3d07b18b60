"""The script's UI elements: the API's contexts, the click's place in the controller queue, the daemon's routing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from actors import DaemonError, WrongContextError
from controller import script
from controller._context import CONTROLLER, PROCESSOR, set_thread_context
from controller._controller_side import CONTROL, STATUS, TASK, TIMER, ControllerScript
from controller._host import install
from tests.conftest import Daemon, wait_for
from tests.controller.test_callback_queue import Collect

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_ui_functions_outside_a_controller_raise_wrong_context() -> None:
    set_thread_context(PROCESSOR)  # as on the processor's audio thread
    try:
        for call in (lambda: script.add_button("a", "A"), lambda: script.add_label("a"),
                     lambda: script.add_progress("a"), lambda: script.set_visible("a", True),
                     lambda: script.set_text("a", "x")):
            with pytest.raises(WrongContextError, match=r"is available in: Controller; it was called in: Processor"):
                call()
    finally:
        set_thread_context("")


def test_ui_functions_are_documented_as_controller_only() -> None:
    for fn in (script.add_button, script.add_label, script.add_progress, script.set_visible, script.set_text):
        assert "**Available in:** Controller." in (fn.__doc__ or "")
        assert fn.__name__ in script.__all__


def test_a_click_is_a_control_callback_ahead_of_tasks_timers_and_status(tmp_path: Path) -> None:
    out = Collect()
    rt = ControllerScript(out, tmp_path)
    try:
        install(rt, CONTROLLER)  # the script thread's context: this runtime, whatever an earlier test installed
        rt.load(str(SCRIPTS / "ui.py"), False)
        wait_for(lambda: rt.module is not None and rt.ui.snapshot(), what="the script's elements")
        gate = threading.Event()
        order: list[str] = []
        rt.submit(CONTROL, gate.wait, (10,), "gate")
        wait_for(lambda: rt.busy_name == "gate", what="gate callback to start")
        for prio, name in ((STATUS, "status"), (TIMER, "timer"), (TASK, "task")):
            rt.submit(prio, order.append, (name,), name)
        rt.ui_event("go", None)
        rt.submit(CONTROL, lambda: order.append(f"click ran: {len(rt.module.clicks)}"), (), "probe")
        gate.set()
        wait_for(lambda: len(order) == 4, what="the burst to run")
        assert order == ["click ran: 1", "task", "timer", "status"]
        snap = {e.id: e for e in rt.ui.snapshot()}
        assert snap["status"].text == "clicked 1" and not snap["hint"].visible and snap["go"].kind == "button"
    finally:
        rt.stop()


def test_elements_are_sent_when_they_change_and_dropped_on_reload(tmp_path: Path) -> None:
    rt = ControllerScript(Collect(), tmp_path)
    try:
        install(rt, CONTROLLER)  # the script thread's context: this runtime, whatever an earlier test installed
        rt.load(str(SCRIPTS / "ui.py"), False)
        wait_for(lambda: rt.module is not None and rt.ui.snapshot(), what="the script's elements")
        first = rt.ui.message_if_changed(100.0, rt.path)
        assert first is not None and [e.id for e in first.elements] == ["go", "status", "hint"]
        rt.ui_set("status", text="changed")
        assert rt.ui.message_if_changed(100.01, rt.path) is None  # within the interval: coalesced
        later = rt.ui.message_if_changed(100.2, rt.path)
        assert later is not None and later.version > first.version and later.elements[1].text == "changed"
        assert rt.ui.message_if_changed(200.0, rt.path) is None  # unchanged: nothing to send
        with pytest.raises(KeyError, match="no UI element with id 'missing'.*known: go, status, hint"):
            rt.ui_set("missing", text="x")
        with pytest.raises(ValueError, match="id of 1..64 characters"):
            rt.ui_add("button", "", "empty id")
        rt.load(str(SCRIPTS / "ui.py"), True)
        rt.barrier()  # queued behind the whole reload: generation is bumped before the module code runs
        assert rt.generation == 2
        assert [e.id for e in rt.ui.snapshot()] == ["go", "status", "hint"]  # the new module code added them again
    finally:
        rt.stop()


def _load(d: Daemon, path: Path) -> Any:
    c = d.client()
    c.load_script(str(path), wait=60)  # loaded again if it was already: the processor's stats alone cannot tell
    wait_for(lambda: d.actor("processor").stats.get("script") == str(path.resolve()), what="the script to load")
    return c


def test_a_click_through_the_daemon_runs_the_button_callback(shared_daemon: Daemon) -> None:
    c = _load(shared_daemon, SCRIPTS / "ui.py")
    ui = wait_for(lambda: c.ui_elements().elements, what="the elements to reach the daemon")
    assert [(e.id, e.kind, e.text) for e in ui][:2] == [("go", "button", "Go"), ("status", "label", "never clicked")]
    c.ui_event("go")
    wait_for(lambda: c.get_param("clicks") == 1, what="the click callback")
    els = wait_for(lambda: {e.id: e for e in c.ui_elements().elements if e.id == "status" and e.text != "never clicked"},
                   what="the label to change")
    assert els["status"].text == "clicked 1"
    with pytest.raises(DaemonError, match="no UI element 'nope'"):
        c.ui_event("nope")


def test_a_click_the_element_cannot_take_is_refused_up_front_and_the_script_never_sees_it(
        shared_daemon: Daemon) -> None:
    """A click with a value was acknowledged, then ``on_click(0.5)`` failed in the script (a TypeError in status);
    a click on a label was acknowledged and dropped by the controller.  Both are now refused by the daemon."""
    c = _load(shared_daemon, SCRIPTS / "ui.py")
    wait_for(lambda: c.ui_elements().elements, what="the elements to reach the daemon")
    log = shared_daemon.base / "state" / "daemon.log"
    offset = log.stat().st_size
    with pytest.raises(DaemonError, match=r"button 'go' takes no value \(its on_click\(\) takes no argument\), "
                                          r"got 0\.5; send the click without one"):
        c.ui_event("go", 0.5)
    with pytest.raises(DaemonError, match=r"UI element 'status' is a label, which cannot be clicked; only a button "
                                          r"can \(buttons: go\)"):
        c.ui_event("status")
    c.ui_event("go")  # after the refused ones in the controller's queue, had they been queued
    wait_for(lambda: any(e.id == "status" and e.text == "clicked 1" for e in c.ui_elements().elements),
             what="the click's callback")
    detail = shared_daemon.actor("controller").detail
    assert "TypeError" not in detail and "ui go" not in detail, detail
    assert "event=ui-event-ignored" not in log.read_bytes()[offset:].decode(errors="replace")


def test_a_ui_function_in_the_processor_is_a_wrong_context_error(shared_daemon: Daemon) -> None:
    c = _load(shared_daemon, SCRIPTS / "ui.py")
    c.note_on(1)
    detail = wait_for(lambda: "add_button()" in (text := shared_daemon.actor("processor").detail) and text,
                      what="the error in status")
    assert "add_button() is available in: Controller" in detail and "called in: Processor" in detail


def test_a_load_is_ready_only_with_its_ui_elements_in_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """`load_script(wait=)` returned while the controller had yet to send the new load's elements (they went at its
    next tick, up to 0.15 s later): a page showing the elements of the load before, or none, then had a click
    refused with "the script has no UI element 'run' (known: none)" (a CI run of the panel's download test)."""
    script = tmp_path / "buttons.py"
    c = daemon.client()
    for edition in range(1, 9):
        script.write_text("from controller.script import add_button, add_label\n\n"
                          f"add_label('edition', 'edition {edition}')\n"
                          "add_button('run', 'Run', lambda: None)\n")
        c.load_script(str(script), wait=30)
        load = dict(daemon.status().daemon.counters)["script_load"][0]
        ui = c.ui_elements()  # at once: what a page opened now, or a click sent now, meets
        assert (ui.load, [(e.id, e.text) for e in ui.elements]) == (
            load, [("edition", f"edition {edition}"), ("run", "Run")]), (edition, ui)
        c.ui_event("run")

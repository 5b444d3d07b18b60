"""The controller and the processor run the same script or none, past a processor restart and an unload.

A processor restarted outside a load reads the script's file as it is now; a
file edited since so that it fails there drops the script on both sides, as a
load that fails does.  Parameters the controller sent before it read an unload
never bring the dropped script's parameters back.  Each test has a daemon of
its own (the first kills its processor; the second leaves script errors of its
own in ``status``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from actors import DaemonError
from controller._supervision import NO_SCRIPT
from tests.conftest import Daemon, pid_alive, wait_for

GOOD = """from controller.script import add_button, define_parameter, set_parameter

define_parameter("level", "Level", 0.5, 0.0, 1.0)


def _pressed():
    set_parameter("level", 0.75)


add_button("press", "Press", _pressed)
"""

# the same script, edited so that its module code raises in the processor (another size than GOOD: the cached
# bytecode of GOOD is never taken for it)
FAILS_IN_THE_PROCESSOR = GOOD + """
from controller.script import get_context

if get_context() == "Processor":
    raise RuntimeError("the edit needs a DSP licence")
"""


def _counters(d: Daemon) -> dict[str, Any]:
    return dict(d.status().daemon.counters)


def _script_in(d: Daemon, actor: str) -> str:
    return str(d.actor(actor).stats.get("script", ""))


def _values(c: Any) -> dict[str, Any]:
    return {p.name: p.value for p in c.params()}


def _restarted_processor(d: Daemon, old_pid: int) -> Any:
    def check() -> Any:
        a = d.actor("processor")
        return a if a.state == "running" and a.pid not in (0, old_pid) and a.stats else None

    return wait_for(check, 60, what="the processor to be restarted")


def _kill_processor(d: Daemon) -> None:
    """kill -9 the processor and wait until its successor runs."""
    old = d.actor("processor").pid
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old), 10, what="the killed processor to be gone")
    _restarted_processor(d, old)


@pytest.mark.slow  # two processor restarts: ~2 s
def test_a_processor_restarted_after_an_edit_that_fails_in_it_drops_the_script_on_both_sides(daemon: Daemon,
                                                                                              tmp_path: Path) -> None:
    """The processor, restarted, loaded the edited file and failed; the controller went on running the script."""
    script = tmp_path / "instrument.py"
    script.write_text(GOOD)
    path = str(script.resolve())
    c = daemon.client()
    c.load_script(str(script), wait=30)
    number = _counters(daemon)["script_load"][0]
    wait_for(lambda: _script_in(daemon, "processor") == path, what="the processor to run the script")

    _kill_processor(daemon)  # the file unchanged: a restart changes nothing
    wait_for(lambda: _script_in(daemon, "processor") == path, what="the restarted processor to run the script again")
    assert _counters(daemon)["script_load"] == [number, "ready", ""]
    assert _script_in(daemon, "controller") == path
    wait_for(lambda: [e.id for e in c.ui_elements().elements] == ["press"], what="the script's button")
    c.ui_event("press")  # a call through the controller: its callback sets the parameter
    wait_for(lambda: _values(c) == {"level": 0.75}, what="the button's callback to run")

    script.write_text(FAILS_IN_THE_PROCESSOR)  # edited, not loaded
    _kill_processor(daemon)
    wait_for(lambda: any("Processor load-failed" in e and "the edit needs a DSP licence" in e
                         for e in _counters(daemon).get("script_errors_recent", [])),
             what="the restarted processor's error")
    n, state, error = _counters(daemon)["script_load"]
    assert n == number and state == "failed", (n, state, error)
    assert error.startswith(f"the processor was restarted (signal 9) and loaded {path} again from its file as it "
                            "is now, and failed: RuntimeError in the processor's module code: the edit needs a DSP "
                            f"licence ({path}:"), error
    assert error.endswith(NO_SCRIPT), error

    # both sides run no script: none in either's status, no parameters, no UI element, no callback reached
    wait_for(lambda: _script_in(daemon, "controller") == "", what="the controller to drop the script")
    assert _script_in(daemon, "processor") == ""
    assert c.params() == []
    with pytest.raises(DaemonError, match="no parameter named 'level'"):
        c.set_param("level", 0.25)
    wait_for(lambda: c.ui_elements().elements == [], what="the controller to drop the script's button")
    with pytest.raises(DaemonError, match="no UI element 'press'"):
        c.ui_event("press")
    log = (daemon.base / "state" / "daemon.log").read_text()
    assert "event=script-reload-failed side=processor" in log and "event=script-unloaded" in log

    script.write_text(GOOD + "\n# fixed\n")  # until the next load, which gives both sides the script again
    c.reload_script(wait=30)
    assert _values(c) == {"level": 0.75}  # its saved value
    wait_for(lambda: _script_in(daemon, "controller") == path, what="the controller to run it")
    wait_for(lambda: _script_in(daemon, "processor") == path, what="the processor to run it")


IN_FLIGHT = """import asyncio, os, time
from controller.script import define_parameter, get_context
from controller.messages import ScriptError

define_parameter("level", "Level", 0.5, 0.0, 1.0)
if get_context() == "Processor":
    raise RuntimeError("no DSP licence here")

from controller._host import runtime

_rt = runtime()


def _wait_for(path):
    end = time.monotonic() + 60.0
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)


def _in_flight():
    # The controller's script thread, after the load and before the unload the processor's failure brings: what it
    # sends now crosses that unload on its way to the daemon (a parameter change it applied meanwhile).
    _wait_for({sent!r})
    _rt.outbox.put(_rt._param_message([]))
    _rt.outbox.put(ScriptError("Controller", "error", "marker: the daemon read what the controller sent before"))
    _wait_for({checked!r})


asyncio.get_running_loop().call_soon(_in_flight)  # runs once the load is done, before the unload queued after it
"""


def test_parameters_sent_before_the_controller_read_an_unload_do_not_list_the_dropped_script_again(
        daemon: Daemon, tmp_path: Path) -> None:
    """Driven in the racing order over the real sockets: the daemon fails the load and sends the unload; the
    controller, which has not read it yet, sends its parameters; the daemon reads them after the unload.  They
    listed the failed script's parameters again, and a `param set` of one was acknowledged and then lost."""
    script, sent, checked = tmp_path / "in_flight.py", tmp_path / "sent", tmp_path / "checked"
    script.write_text(IN_FLIGHT.format(sent=str(sent), checked=str(checked)))
    c = daemon.client()
    try:
        c.load_script(str(script))
        n, state, error = wait_for(lambda: (s := _counters(daemon)["script_load"])[1] != "loading" and s,
                                   what="the load to fail in the processor")
        assert state == "failed" and "no DSP licence here" in error and NO_SCRIPT in error, (state, error)
        assert c.params() == []  # the unload is sent; the controller's script thread has not read it
        sent.touch()
        wait_for(lambda: any("marker" in e for e in _counters(daemon).get("script_errors_recent", [])),
                 what="the daemon to read the parameters the controller sent before the unload")
        assert c.params() == []
        with pytest.raises(DaemonError, match="no parameter named 'level'"):
            c.set_param("level", 0.25)
    finally:
        checked.touch()  # the controller reads the unload now
    wait_for(lambda: _script_in(daemon, "controller") == "", what="the controller to drop the script")
    assert c.params() == []
    assert _script_in(daemon, "processor") == ""

"""A script blocked in C past its budget (where the interrupt cannot reach): the controller is restarted.

The socket-less test drives the deadline with a short budget; the daemon
tests wait out the real one (5 s and the grace after it) through the CLI and
the client, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from controller._controller_side import CONTROL, ControllerScript
from tests.conftest import Daemon, pid_alive, wait_for

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
STATEFUL = SCRIPTS / "stateful.py"


class Collect:
    """An outbox that keeps what the runtime sends (the runtime's real peer is the supervisor)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, msg: Any) -> None:
        self.items.append(msg)


def test_a_step_blocked_in_c_past_budget_and_grace_is_reported_wedged(tmp_path: Path) -> None:
    rt = ControllerScript(Collect(), tmp_path, budget_ms=100, grace_ms=200)
    held = threading.Lock()
    held.acquire()
    try:
        rt.submit(CONTROL, held.acquire, (True, 60.0), "stuck")  # blocked in C: the interrupt waits for it
        wait_for(lambda: rt.busy_name == "stuck", what="the callback to start")
        assert wait_for(rt.check_budget, 30, what="the deadline to pass") == "stuck"
        ran: list[int] = []
        rt.submit(CONTROL, ran.append, (1,), "after")
        held.release()  # the call returns, the interrupt lands, and the queue goes on
        wait_for(lambda: ran == [1], what="the queue to go on once the call returned")
        assert rt.check_budget() == ""
    finally:
        if held.locked():
            held.release()
        rt.stop()


def _load_cli(d: Daemon, script: Path) -> subprocess.Popen[str]:
    """``ensemble load SCRIPT`` running in the background (it waits for the controller)."""
    return subprocess.Popen([sys.executable, "-m", "actors", "load", str(script)], env=d.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _restarted(d: Daemon, old_pid: int) -> Any:
    def check() -> Any:
        a = d.actor("controller")
        return a if a.state == "running" and a.pid not in (0, old_pid) and a.restarts >= 1 else None

    return wait_for(check, 30, what="the controller to be restarted")


@pytest.mark.slow  # waits out the controller's 5 s budget and its grace
def test_module_code_blocked_in_c_fails_the_load_and_restarts_the_controller(daemon: Daemon) -> None:
    c = daemon.client()
    c.load_script(str(STATEFUL), wait=30)
    c.set_param("gain", 0.8)
    wait_for(lambda: c.get_param("gain") == 0.8, what="gain set")
    old = daemon.actor("controller").pid
    wedge = daemon.base / "wedge.py"
    wedge.write_text("import time\ntime.sleep(100000)\n")
    number = daemon.status().daemon.counters["script_load"][0]
    load = _load_cli(daemon, wedge)
    try:
        wait_for(lambda: daemon.status().daemon.counters["script_load"][:2] == [number + 1, "loading"],
                 what="the load to start")
        c.set_param("gain", 0.25)  # acknowledged while the controller is stuck: applied after the restart
        out, err = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 1, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble: error: script "), err
    assert "blocked past the controller's budget" in lines[0] and "cannot be interrupted" in lines[0], lines[0]
    assert "the controller was restarted" in lines[0] and f"{wedge.resolve()}:2" in lines[0], lines[0]
    _restarted(daemon, old)
    wait_for(lambda: not pid_alive(old), 10, what="the stuck controller to be gone")
    wait_for(lambda: c.get_param("gain") == 0.25, what="the change made while it was stuck to be applied")
    assert daemon.status().daemon.counters["script"] == str(STATEFUL.resolve())  # the script it ran before
    wait_for(lambda: c.get_param("restored") == "0.8", what="on_load to get its saved state back")
    good = daemon.cli("load", str(STATEFUL))  # and the next load is not "still loading"
    assert good.stdout.strip() == f"loaded {STATEFUL.resolve()}"


@pytest.mark.slow  # waits out the controller's 5 s budget and its grace
def test_a_callback_blocked_in_c_restarts_the_controller_and_later_changes_still_apply(daemon: Daemon) -> None:
    script = daemon.base / "hang.py"
    script.write_text(
        "import time\n"
        "from controller.script import define_parameter\n\n"
        "def on_hang(value):\n"
        "    if value:\n"
        "        time.sleep(100000)\n\n"
        "define_parameter('hang', 'Hang', False, on_change=on_hang)\n"
        "define_parameter('gain', 'Gain', 0.5, 0.0, 1.0)\n"
    )
    c = daemon.client()
    c.load_script(str(script), wait=30)
    old = daemon.actor("controller").pid
    c.set_param("hang", True)
    wait_for(lambda: c.get_param("hang") is True, what="the blocking change to be applied")
    c.set_param("gain", 0.75)  # queued behind the blocked callback
    c.bind_param("gain", 74)  # so is this bind: acknowledged, and lost with the wedged controller unless sent again
    _restarted(daemon, old)
    wait_for(lambda: c.get_param("gain") == 0.75, what="the queued change to be applied after the restart")
    wait_for(lambda: next(p.cc for p in c.params() if p.name == "gain") == 74,
             what="the queued bind to be applied after the restart")
    assert "event=binds-resent count=1" in (daemon.base / "state" / "daemon.log").read_text()
    assert c.get_param("hang") is True  # saved before its on_change ran, and not run again
    detail = daemon.actor("controller").detail
    assert "on_change(hang) blocked past the controller's budget" in detail, detail
    assert "the controller was restarted" in detail and f"{script.resolve()}:6" in detail, detail


@pytest.mark.slow  # waits out the controller's budget and grace twice (~20 s)
def test_a_timer_that_wedges_the_controller_each_time_is_not_run_again_after_the_second_wedge(daemon: Daemon) -> None:
    script = daemon.base / "timer_hang.py"
    script.write_text(
        "import time\n"
        "from actors import WrongContextError\n"
        "from controller.script import define_parameter, start_timer\n\n"
        "def tick():\n"
        "    time.sleep(100000)\n\n"
        "try:\n"
        "    start_timer(200, tick)\n"
        "except WrongContextError:  # the processor runs the module code too\n"
        "    pass\n"
        "define_parameter('gain', 'Gain', 0.5, 0.0, 1.0)\n"
    )
    c = daemon.client()
    c.load_script(str(script), wait=30)
    first = _restarted(daemon, daemon.actor("controller").pid)  # the timer wedged it: run again once

    def dropped() -> Any:
        a = daemon.actor("controller")
        return a if a.state == "running" and a.pid != first.pid and "is not run again" in a.detail else None

    ctl = wait_for(dropped, 60, what="the controller to come back without the script after its second wedge")
    assert ctl.restarts == 2, ctl
    assert f"script {script.resolve()} is not run again: its callbacks wedged the controller twice" in ctl.detail
    assert "fix it and `ensemble load` it again" in ctl.detail
    assert "event=script-dropped" in (daemon.base / "state" / "daemon.log").read_text()
    # neither side runs it: the processor, which never wedged, went on running the script the controller dropped
    wait_for(lambda: daemon.actor("processor").stats.get("script", "") == "", 60,
             what="the processor to drop the script too")
    c.load_script(str(STATEFUL), wait=30)  # the user's next load runs as usual
    c.set_param("gain", 0.8)
    wait_for(lambda: c.get_param("gain") == 0.8, what="a parameter of the new script to change")
    assert daemon.actor("controller").restarts == 2  # the dropped script's timer runs nowhere any more


def test_processor_module_code_past_the_heartbeat_timeout_fails_the_load_once(daemon: Daemon) -> None:
    """Module code that sleeps in the processor only (under the controller's budget, past the processor's
    heartbeat timeout: the processor runs module code in its main thread) had the processor killed, and every
    processor started after it was sent the script again and killed again, for as long as it stayed loaded (a
    probe counted 34 restarts).  Now the load fails, saying why, and the one processor started after it runs no
    script and stays up."""
    slow = daemon.base / "slow_in_processor.py"
    slow.write_text("import time\nfrom controller.script import get_context\n\n"
                    "if get_context() == 'Processor':\n    time.sleep(6)\n")
    out = daemon.cli("load", str(slow), check=False)
    assert out.returncode == 1, out.stdout
    assert "while it ran the script's module code" in out.stderr and "heartbeat" in out.stderr, out.stderr
    proc = wait_for(lambda: (lambda a: a if a.state == "running" and a.restarts == 1 else None)(
        daemon.actor("processor")), 30, what="the processor to be restarted once")
    assert daemon.status().daemon.counters["script_load"][1] == "failed"  # and neither side runs it
    daemon.client().load_script(str(STATEFUL), wait=30)  # the next load loads, on both sides
    # and the processor started after the failure ran no script: it is the same one
    assert daemon.actor("processor").pid == proc.pid and daemon.actor("processor").restarts == 1

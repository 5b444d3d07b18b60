"""A ``param set`` the daemon acknowledged and the controller never applied is an error for the client that sent it.

The daemon acknowledges a change ("queued") once it has checked it, and the
controller applies it when its queue gets there.  A load that comes first
carries it over to the script it loads, and one that has no such parameter
(or refuses the value) drops it: ``status`` and the log said so, but
``ensemble param set`` had already printed the value and exited 0, and
``Client.set_param`` had returned.  Now the daemon's reply numbers the change,
the client can ask what became of it (``ParamCheck``), ``set_param(wait=...)``
raises ParamNotApplied saying why, and ``ensemble param set`` waits for the
outcome and exits 1 with it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.client import ParamNotApplied
from controller.messages import ParamCheck, ParamSet, ParamState, ScriptError
from tests.conftest import Daemon, wait_for
from tests.controller.test_contract_reload_params import EDITION_1, EDITION_2
from tests.controller.test_script_contract import _loaded


def _state(c: Any, seq: int) -> str:
    state = c._call(ParamCheck(seq))
    assert isinstance(state, ParamState)
    return state.state


def test_a_set_dropped_by_a_load_is_an_error_for_its_client_and_for_param_set(daemon: Daemon, tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    script = tmp_path / "instrument.py"
    script.write_text(EDITION_1.format(gate=str(gate), started=str(started)))
    c = daemon.client()
    c.load_script(str(script), wait=30)
    c.set_param("level", 0.25, wait=10)  # nothing in the way: applied, and the value is there at once
    assert c.get_param("level") == 0.25

    queued = c._call(ParamSet("hold", True))  # the reply numbers the change
    assert isinstance(queued, ParamState) and queued.state == "queued", queued
    wait_for(started.exists, what="the long callback to start")
    failed: list[BaseException] = []

    def set_gone() -> None:
        try:
            c.set_param("gone", 3, wait=30)
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            failed.append(exc)

    waiter = threading.Thread(target=set_gone)
    waiter.start()
    wait_for(lambda: _state(c, queued.seq + 1) == "queued", what="the client's change to be acknowledged")
    cli = subprocess.Popen([sys.executable, "-m", "actors", "param", "set", "gone", "4"], env=daemon.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _state(c, queued.seq + 2) == "queued", what="the command's change to be acknowledged")
        script.write_text(EDITION_2.format(gate=str(gate), started=str(started)))
        c.load_script(str(script))  # queued behind them; it runs before they would, and has no 'gone'
        gate.touch()
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    waiter.join(30)
    why = (f"was acknowledged but not applied: a load came before it ran, and the script loaded since "
           f"({script.resolve()}) has no parameter 'gone'; set it again if it still matters")
    assert len(failed) == 1 and isinstance(failed[0], ParamNotApplied), failed
    assert str(failed[0]) == f"param set gone=3 {why}", failed[0]
    assert cli.returncode == 1, (out, err)
    assert out == "" and err == f"ensemble: error: param set gone=4 {why}\n", err
    # (applied once written to the state file: the controller says so after the write, a moment later)
    wait_for(lambda: _state(c, queued.seq) == "applied", what="the held change to be applied and saved")
    assert _state(c, queued.seq + 1) == "dropped"
    assert _state(c, 10**6) == "unknown"


def test_a_set_the_controller_itself_refuses_says_so_with_its_number(tmp_path: Path) -> None:
    """A change the daemon acknowledged for a script the controller no longer runs (a load failed or unloaded it
    before the daemon knew) was reported as a bare KeyError, with nothing to tell its sender by."""
    rt, out = _loaded(tmp_path, "define_parameter('level', 'Level', 0.0, 0.0, 1.0)\n")
    try:
        rt.param_from_outside("gone", 3, seq=7)
        rt.param_from_outside("level", 5, seq=8)
        rt.param_from_outside("level", 0.5, seq=9)
        rt.barrier()
    finally:
        rt.stop()
    errors = [(m.seq, m.message) for m in out.items if isinstance(m, ScriptError)]
    running = f"the script running ({Path(rt.path)}) refuses it"
    assert errors == [
        (7, f"param set gone=3 was acknowledged but not applied: {running}: no parameter named 'gone'; set it again "
            "if it still matters"),
        (8, f"param set level=5 was acknowledged but not applied: {running}: parameter 'level': 5.0 is outside "
            "0.0..1.0; set it again if it still matters"),
    ], errors
    assert rt.get_parameter("level") == 0.5


@pytest.mark.parametrize("seq", [0, -1])
def test_a_number_no_set_was_given_is_unknown(shared_daemon: Daemon, seq: int) -> None:
    c = shared_daemon.client()
    state = c._call(ParamCheck(seq))
    assert state.state == "unknown" and "numbered no param set" in state.error, state


def test_param_set_wait_bounds_how_long_it_waits_for_the_controller(daemon: Daemon, tmp_path: Path) -> None:
    """``param set`` waited a fixed 10 s for the controller to apply the value; ``--wait SECONDS`` says how long (0:
    return once the daemon queued it), and a change not applied in time is an error that says it stays queued."""
    gate, started = tmp_path / "gate", tmp_path / "started"
    script = tmp_path / "instrument.py"
    script.write_text(EDITION_1.format(gate=str(gate), started=str(started)))
    c = daemon.client()
    c.load_script(str(script), wait=30)
    c.set_param("hold", True)
    try:
        wait_for(started.exists, what="the long callback to start")
        late = daemon.cli("param", "set", "level", "0.5", "--wait", "0.2", check=False)
        assert late.returncode == 1 and "param set level was not applied within 0.2s" in late.stderr, late
        queued = daemon.cli("param", "set", "marker", "7", "--wait", "0")
        assert queued.stdout == "marker = 7\n"  # (it returns once queued: the callback may still hold the queue)
    finally:
        gate.touch()
    wait_for(lambda: c.get_param("level") == 0.5 and c.get_param("marker") == 7, what="both changes to be applied")
    refused = daemon.cli("param", "set", "level", "0.1", "--wait", "-1", check=False)
    assert refused.returncode == 2 and "--wait" in refused.stderr, refused

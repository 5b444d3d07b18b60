"""Instrument scripts in a running daemon: contexts, parameters, init order, budgets, run_async, tasks.

The tests of contexts and of the key-colour example share the module's daemon (each waits for its own error
text or log line); the download example's tests set a parameter that starts a task and take a daemon of their
own (each reads the daemon's job list, and on a shared daemon the saved ``run = True`` would start the next
load's download at once).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from actors import DaemonError, EnsembleError
from controller._host import load_module
from tests.conftest import Daemon, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(d: Daemon, script: Path) -> Any:
    c = d.client()
    c.load_script(str(script), wait=60)  # loaded again if it was already: the processor's stats alone cannot tell
    wait_for(lambda: d.actor("processor").stats.get("script") == str(script.resolve()), what="processor to load the script")
    return c


def _param(c: Any, name: str) -> Any:
    return c.get_param(name)


def _blocks(d: Daemon) -> int:
    return int(d.actor("processor").stats["blocks"])


def _detail(d: Daemon, actor: str, text: str) -> str:
    """``actor``'s detail in status once it holds ``text`` (a script error; the daemon keeps the latest)."""
    return str(wait_for(lambda: text in (detail := d.actor(actor).detail) and detail, what=f"{text!r} in status"))


def test_wrong_context_in_the_processor_is_reported_and_audio_goes_on(shared_daemon: Daemon) -> None:
    c = _load(shared_daemon, SCRIPTS / "contexts.py")
    before = _blocks(shared_daemon)
    c.note_on(1)
    detail = _detail(shared_daemon, "processor", "run_sync() is available in: Controller")
    assert "called in: Processor" in detail
    assert "contexts.py:" in detail and "run_async" in detail
    wait_for(lambda: _blocks(shared_daemon) > before + 10, what="the processor to keep rendering")


def test_wrong_context_in_the_controller_is_reported(shared_daemon: Daemon) -> None:
    c = _load(shared_daemon, SCRIPTS / "contexts.py")
    c.set_param("bad", 1)
    detail = _detail(shared_daemon, "controller", "play_note() is available in: Processor")
    assert "called in: Controller" in detail and "run_sync" in detail
    log = (shared_daemon.base / "state" / "daemon.log").read_text()
    assert "wrong-context" in log


def test_get_context_names_each_side_and_run_async_errors_raise_at_the_await(shared_daemon: Daemon) -> None:
    c = _load(shared_daemon, SCRIPTS / "contexts.py")
    c.note_on(2)
    wait_for(lambda: _param(c, "ctx_seen") == "Processor", what="processor context")
    c.note_on(3)
    wait_for(lambda: _param(c, "ctx_controller") == "Controller", what="controller context via run_async")
    c.note_on(4)
    err = wait_for(lambda: _param(c, "async_error"), what="run_async error at the await")
    assert err == "nope"  # the ValueError itself, with its message (its type: test_script_contract.py)


@pytest.mark.slow  # restarts or waits out a detection timeout: run by .ci/run's slow pass (default suite < 5 min)
def test_parameters_and_on_save_state_survive_a_daemon_restart(make_daemon: Any) -> None:
    script = SCRIPTS / "stateful.py"
    d = make_daemon(extra_env={"ENSEMBLE_AUDIO_SCRIPT": str(script)})
    d.up()
    c = d.client()
    wait_for(lambda: d.actor("processor").stats.get("script") == str(script.resolve()), what="script from config")
    c.set_param("gain", 0.8)
    wait_for(lambda: _param(c, "gain") == 0.8, what="gain set")
    with pytest.raises(Exception, match="outside"):
        c.set_param("gain", 3)
    d.down()
    d.up()
    c = d.client()
    wait_for(lambda: _param(c, "restored") == "0.8", what="on_load to get what on_save returned")
    assert _param(c, "gain") == 0.8


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_processor_budget_overrun_is_counted_and_a_runaway_callback_stops_the_script(daemon: Daemon) -> None:
    c = _load(daemon, SCRIPTS / "heavy.py")
    c.note_on(1)
    wait_for(lambda: daemon.actor("processor").stats["script_overruns"] >= 1, what="an overrun to be counted")
    c.note_on(2)
    stopped = wait_for(lambda: daemon.actor("processor").stats["script_stopped"], 60, what="the script to be stopped")
    assert "hard limit" in stopped
    before = _blocks(daemon)
    wait_for(lambda: _blocks(daemon) > before + 10, what="audio to continue after the stop")
    assert daemon.actor("processor").restarts == 0


def test_hise_download_example_runs_and_cancels_gracefully(daemon: Daemon) -> None:
    c = _load(daemon, ROOT / "examples" / "instruments" / "download.py")
    c.set_param("run", True)
    loading = wait_for(lambda: daemon.actor("controller").stats.get("loading", {}).get("progress", 0) > 0.02
                       and daemon.actor("controller").stats["loading"], what="forwarded progress")
    assert loading["task"] == "DownloadTest" and "Downloading" in loading["status"]
    c.set_param("run", False)
    wait_for(lambda: _param(c, "last_finish") == "True,True", what="finish callback (finished, cancelled)")
    jobs = c.jobs()
    assert jobs[0].name == "DownloadTest" and jobs[0].state == "cancelled"


def test_halion_key_colour_example_awaits_the_controller(shared_daemon: Daemon) -> None:
    c = _load(shared_daemon, ROOT / "examples" / "instruments" / "key_colour.py")
    c.note_on(60, 114)  # MIDI velocities: the script sees 0.9 and 0.1
    c.note_on(62, 13)
    log = shared_daemon.base / "state" / "daemon.log"
    wait_for(lambda: "key 60 is red" in log.read_text() and "key 62 is blue" in log.read_text(), what="both notes")
    wait_for(lambda: shared_daemon.actor("processor").stats["peak_voices"] >= 1, what="the notes to play")


def test_reload_keeps_parameters_and_aborts_background_tasks(daemon: Daemon) -> None:
    c = _load(daemon, ROOT / "examples" / "instruments" / "download.py")
    c.set_param("run", True)
    wait_for(lambda: any(j.state == "running" for j in c.jobs()), what="the task to run")
    c.reload_script()
    wait_for(lambda: c.jobs()[0].state in ("cancelled", "killed"), what="reload to abort the task")
    assert _param(c, "run") is True


def test_a_load_the_controller_was_killed_before_reading_does_not_blame_the_script(daemon: Daemon,
                                                                                   tmp_path: Path) -> None:
    """A load sent to a controller that was then killed from outside (signal 9, the OOM killer, a user), before it
    read it, failed saying the controller "ended (signal 9) while it loaded the script": the new, harmless script
    blamed. It says what is known now."""
    import os
    import signal

    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("from controller.script import define_parameter\ndefine_parameter('a', 'A', 1, 0, 10)\n")
    second.write_text("from controller.script import define_parameter\ndefine_parameter('b', 'B', 2, 0, 10)\n")
    c = daemon.client()
    c.load_script(str(first), wait=30)
    pid = daemon.actor("controller").pid
    os.kill(pid, signal.SIGSTOP)  # it cannot read the load sent next
    try:
        before = c._load_state()[0]
        c.load_script(str(second))  # accepted and sent: loading
        wait_for(lambda: c._load_state()[:2] == [before + 1, "loading"], what="the load to be under way")
    finally:
        os.kill(pid, signal.SIGKILL)
    number, state, error = wait_for(lambda: (s := c._load_state())[1] == "failed" and s, 60, what="the load to fail")
    assert number == before + 1
    assert "the controller was killed (signal 9, not by the daemon" in error and "load it again" in error, error
    assert "while it loaded the script" not in error, error
    assert error.endswith(f", with the script it ran before ({first})"), error
    wait_for(lambda: daemon.actor("controller").state == "running", 60, what="the controller to run again")
    c.load_script(str(second), wait=30)  # and so it does


def test_a_fifo_or_a_directory_given_as_a_script_is_named_for_what_it_is_and_never_opened(
        shared_daemon: Daemon, tmp_path: Path) -> None:
    """The daemon said ``script '/tmp/x/fifo.py' does not exist`` of a FIFO and a directory (and on a reload of
    a script replaced by a FIFO); now it says what the CLI says.  Opening the FIFO would hang the answer."""
    fifo, folder, script = tmp_path / "fifo.py", tmp_path / "folder.py", tmp_path / "inst.py"
    os.mkfifo(fifo)
    folder.mkdir()
    c = shared_daemon.client()
    for path in (fifo, folder):
        with pytest.raises(DaemonError, match=r"is not a regular file \(a FIFO, device or socket cannot be read"):
            c.load_script(str(path))
    script.write_text((SCRIPTS / "ui.py").read_text())
    _load(shared_daemon, script)
    script.unlink()
    os.mkfifo(script)  # the loaded file replaced by a FIFO: `ensemble reload`
    with pytest.raises(DaemonError, match=r"inst\.py' is not a regular file"):
        c.reload_script()
    with pytest.raises(EnsembleError, match=r"fifo\.py is not a regular file"):  # the controller's own check
        load_module(str(fifo))


def test_state_only_a_click_changed_is_saved_when_the_script_is_reloaded(shared_daemon: Daemon) -> None:
    """on_save ran only when a parameter or a binding changed: what the script kept since (clicks counted in a
    module global) was lost to a reload.  The running script saves before it is replaced, and before its
    controller stops."""
    script = SCRIPTS / "counter_state.py"
    c = _load(shared_daemon, script)
    for n in range(1, 4):
        c.ui_event("inc")
        wait_for(lambda: any(e.id == "seen" and e.text == f"{n} clicks" for e in c.ui_elements().elements),
                 what=f"click {n} to be counted")
    c.load_script(str(script), wait=30)  # a reload: the new module code starts from 0, on_load gets the saved state
    wait_for(lambda: _param(c, "restored") == 3, what="on_load to get the count saved before the reload")


@pytest.mark.slow  # restarts a daemon: run by .ci/run's slow pass (default suite < 5 min)
def test_state_only_a_click_changed_is_saved_when_the_daemon_stops(make_daemon: Any) -> None:
    script = SCRIPTS / "counter_state.py"
    d = make_daemon(extra_env={"ENSEMBLE_AUDIO_SCRIPT": str(script)})
    d.up()
    c = d.client()
    wait_for(lambda: d.actor("processor").stats.get("script") == str(script.resolve()), what="script from config")
    for n in range(1, 3):
        c.ui_event("inc")
        wait_for(lambda: any(e.id == "seen" and e.text == f"{n} clicks" for e in c.ui_elements().elements),
                 what=f"click {n} to be counted")
    d.down()
    d.up()
    c = d.client()
    wait_for(lambda: _param(c, "restored") == 2, what="on_load to get the count saved as the controller stopped")


def test_an_on_save_value_the_state_file_cannot_keep_is_an_error_and_the_state_before_is_kept(
        shared_daemon: Daemon) -> None:
    """An object was saved as its text and NaN as bare NaN (not JSON): on_load got a string, or nothing.  Now the
    script error says what and where, and the state saved before stays."""
    script = SCRIPTS / "save_bad.py"
    c = _load(shared_daemon, script)
    c.set_param("how", "fine", wait=10)  # saves {"fine": ..., "pair": [1, 2]}
    log = shared_daemon.base / "state" / "daemon.log"
    for how, said in (("object", "Thing, which the state file cannot keep"), ("nan", "is nan, which JSON cannot hold"),
                      ("intkey", "has the key 1 (int)")):
        c.set_param("how", how, wait=10)
        wait_for(lambda: said in log.read_text(), what=f"on_save's {how} value to be refused")
    c.load_script(str(script), wait=30)
    wait_for(lambda: _param(c, "restored") == "{'fine': [1, 2.5, 'three', None, True], 'pair': [1, 2]}",
             what="on_load to get the state saved before")

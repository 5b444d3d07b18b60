"""A processor script callback blocked in C (where the hard limit's interrupt cannot reach) restarts the processor.

The blocked thread is the audio thread, so audio stops with it; the processor
reports the callback and its line, leaves, and the restarted one plays again.
The socket-less test drives the deadline with short limits; the daemon test
waits out the real ones through the client, as a user would.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controller._processor_side import ProcessorScript
from controller._watchdog import WEDGED_EXIT
from controller.messages import ScriptError
from tests.conftest import Daemon, pid_alive, wait_for


class _Engine:
    """The little of an engine a script host reads before it posts anything."""

    blocksize = 64
    samplerate = 48000
    frame = 0


def _proc(d: Daemon) -> Any:
    return d.actor("processor")


def test_a_callback_blocked_in_c_past_the_hard_limit_and_grace_is_reported_wedged(tmp_path: Path) -> None:
    script = tmp_path / "held.py"
    script.write_text("import threading\n\nheld = threading.Lock()\nheld.acquire()\n\n\n"
                      "def on_note(event):\n    held.acquire(True, 60.0)\n")
    sent: list[Any] = []  # what the host gives the main thread to send (the real outbox goes to the supervisor)
    rt = ProcessorScript(_Engine(), SimpleNamespace(put=sent.append), hard_limit_ms=100, grace_ms=200)
    audio = None
    try:
        rt.load(str(script))
        rt.event("note_on", 60, 1.0, 0.0, None)
        audio = threading.Thread(target=rt.block, args=(0, 64), name="test-audio")  # stands in for the audio thread
        audio.start()
        wait_for(lambda: rt.busy_since, what="on_note to start")
        assert wait_for(lambda: rt.tick(rt.period_ns), 30, what="the deadline to pass") == WEDGED_EXIT
        [err] = [m for m in sent if isinstance(m, ScriptError)]
        assert err.kind == "wedged" and err.context == "Processor", err
        assert err.message.startswith("on_note blocked past the processor's hard limit of 100 ms (and 0.2 s of grace)")
        assert err.location == f"{script.resolve()}:8 in on_note", err.location
    finally:
        if rt.module is not None and rt.module.held.locked():
            rt.module.held.release()  # the call returns, and the interrupt lands
        if audio is not None:
            audio.join(10)
        sys.modules.pop("ensemble_instrument", None)
    assert audio is not None and not audio.is_alive()
    assert "hard limit" in rt.stopped  # the interrupt stopped the script once the call returned


@pytest.mark.slow  # waits out the hard limit (1 s), the grace (1 s) and a restart
def test_on_note_blocked_in_c_is_reported_and_the_restarted_processor_plays_again(daemon: Daemon) -> None:
    script = daemon.base / "sleepy.py"
    script.write_text("import time\n\n\ndef on_note(event):\n    time.sleep(3600)\n")
    c = daemon.client()
    c.load_script(str(script), wait=30)
    wait_for(lambda: _proc(daemon).stats.get("script") == str(script.resolve()), what="the processor to load the script")
    old = _proc(daemon)
    controller = daemon.actor("controller").pid
    c.note_on(60)
    new = wait_for(lambda: (p := _proc(daemon)).pid not in (0, old.pid) and p.state == "running" and p.restarts >= 1
                   and p.stats and p, what="the processor to be restarted")
    wait_for(lambda: not pid_alive(old.pid), 10, what="the blocked processor to be gone")
    detail = new.detail
    assert "Processor wedged: on_note blocked past the processor's hard limit of 1000 ms" in detail, detail
    assert "cannot be interrupted" in detail and "the processor was restarted" in detail, detail
    assert f"{script.resolve()}:5 in on_note" in detail, detail
    assert any("on_note blocked" in e for e in daemon.status().daemon.counters["script_errors_recent"])
    start = new.stats["blocks"]
    wait_for(lambda: _proc(daemon).stats["blocks"] > start + 50, what="the audio to run again")
    wait_for(lambda: _proc(daemon).stats.get("script") == str(script.resolve()), what="the script to be loaded again")
    assert daemon.actor("controller").pid == controller  # one_for_one: only the processor was restarted
    assert "Processor wedged: on_note" in daemon.cli("status").stdout
    # the same callback wedges it again within REWEDGE_S: the next processor runs without the script, and plays
    second = _proc(daemon)
    c.note_on(60)
    third = wait_for(lambda: (p := _proc(daemon)).pid not in (0, second.pid) and p.state == "running"
                     and p.restarts >= 2 and "runs without script" in p.detail and p.stats and p, 60,
                     what="the processor to be restarted without the script")
    assert "its callbacks wedged the processor twice within 60 s" in third.detail, third.detail
    start = third.stats["blocks"]
    wait_for(lambda: _proc(daemon).stats["blocks"] > start + 50, what="the audio to run without the script")
    assert not _proc(daemon).stats.get("script")
    assert "event=script-dropped side=processor" in (daemon.base / "state" / "daemon.log").read_text()
    c.load_script(str(script), wait=30)  # the user's own load: the processor runs it again
    wait_for(lambda: _proc(daemon).stats.get("script") == str(script.resolve()), what="the processor to load it again")

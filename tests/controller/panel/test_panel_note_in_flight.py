"""A note on the panel sent just before it was killed never outlives the note off the daemon sends for it.

The panel records a note before its note on leaves, and the daemon ends the
recorded notes as it reaps the killed process (``PanelExtension.child_exited``).
The note on went as a client request, on another socket than the one the
daemon learns of the death by: one still unread when the daemon reaped the
panel was carried out after the note off, and its voice sounded on (a sample
90 s long: 90 s).  Now the panel's notes go on its own child channel, which the
daemon reads only while that process lives: a note on it read before the reap
is ended by the note off, one after is dropped with the dead process's frames.

The test holds the daemon (SIGSTOP) while the page's note on leaves, kills the
panel, and lets the daemon go on (SIGCONT): it then sees the death and the
frame together, as a busy daemon would.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from typing import Callable

from tests.conftest import Daemon, pid_alive, wait_for
from tests.controller.panel.conftest import Panel, start_panel
from tests.controller.panel.test_panel_actor import Page


def _dead(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (its parent, the daemon, is stopped and has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _held(panel: Panel) -> list[int]:
    try:
        return list(json.loads((panel.daemon.base / "run" / "panel-notes.json").read_text())["notes"])
    except (FileNotFoundError, ValueError):
        return []


@pytest.mark.slow  # a panel daemon, five panel restarts: 10-15 s
def test_a_note_on_in_flight_when_the_panel_is_killed_leaves_no_voice(make_daemon: Callable[..., Daemon]) -> None:
    panel = start_panel(make_daemon(extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "100"}))  # five kills in 10 s
    d = panel.daemon
    c = d.client()
    c.upload_sample((0.1 * np.sin(np.arange(90 * 48000) * 0.05)).astype(np.float32), "long", 48000)
    voices = lambda: d.actor("processor").stats["active_voices"]  # noqa: E731
    for note in (60, 62, 64, 65, 67):  # a few rounds: each a new panel process, the note on caught in flight
        pid = wait_for(lambda: (a := d.actor("panel")).state == "running" and a.stats.get("port") == panel.port
                       and a.pid, 60, what="the panel to serve")
        with Page(panel) as page:
            page.send({"op": "note_on", "note": note - 12, "velocity": 100, "seq": "first"})  # one it holds, acked
            page.until(lambda s: any(r.get("seq") == "first" for r in page.replies), what="the first note's ack")
            wait_for(lambda: voices() >= 1, what="the first note to sound")
            os.kill(d.pid, signal.SIGSTOP)
            try:
                page.send({"op": "note_on", "note": note, "velocity": 100, "seq": "in flight"})
                wait_for(lambda: note in _held(panel), 10, what="the panel to record the note as it sends it")
                time.sleep(0.1)  # the frame leaves the panel for the daemon's socket
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: _dead(pid), 10, what="the panel to die")
            finally:
                os.kill(d.pid, signal.SIGCONT)
        wait_for(lambda: voices() == 0, 10, what="no voice of the killed panel to sound (the 90 s sample)")
        assert pid_alive(d.pid)


@pytest.mark.slow  # a panel daemon, held a few seconds
def test_a_note_on_is_not_held_up_behind_requests_waiting_on_a_stalled_daemon(panel: Panel) -> None:
    """A note on ran on the thread of the panel's client, behind any snapshot or action waiting on the daemon: with
    the daemon slow, the note waited (up to the client's 10 s timeout per request queued before it), unrecorded
    should the panel die meanwhile (the test above failed so under load).  Notes ask the daemon nothing and have
    their own thread: here two pages' cancels wait on a stopped daemon while a third page's note on is recorded
    and acknowledged at once, and sounds once the daemon goes on."""
    d = panel.daemon
    voices = lambda: d.actor("processor").stats["active_voices"]  # noqa: E731
    wait_for(lambda: d.actor("panel").state == "running", 60, what="the panel to serve")
    with Page(panel) as player, Page(panel) as first, Page(panel) as second:
        os.kill(d.pid, signal.SIGSTOP)
        try:
            first.send({"op": "cancel", "id": 1, "seq": "waits"})  # each waits on the stopped daemon for 10 s
            second.send({"op": "cancel", "id": 2, "seq": "waits"})
            player.send({"op": "note_on", "note": 60, "velocity": 100, "seq": "note"})
            wait_for(lambda: 60 in _held(panel), 8, what="the panel to record the note while requests wait")
            player.until(lambda s: any(r.get("seq") == "note" for r in player.replies), 8, what="the note's ack")
        finally:
            os.kill(d.pid, signal.SIGCONT)
        assert next(r for r in player.replies if r.get("seq") == "note")["type"] == "ack"
        wait_for(lambda: voices() >= 1, 30, what="the note to sound once the daemon goes on")
        player.send({"op": "note_off", "note": 60, "seq": "off"})
        wait_for(lambda: voices() == 0 and 60 not in _held(panel), 30, what="the note off to end it")

"""The panel's process ended alone (SIGTERM, SIGKILL): the supervisor restarts it and it serves again.

Against a real daemon started with its panel, over real HTTP; the panel is
found by its pid in the daemon's status, as a user would find it.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from tests.conftest import pid_alive, wait_for
from tests.controller.panel.conftest import EXAMPLES, Panel, kill_panel, loaded
from tests.controller.panel.test_panel_actor import Page


def _restarted(panel: Panel, old_pid: int) -> object:
    """The panel's ActorInfo once a process other than ``old_pid`` runs and listens on the panel's port."""
    a = panel.daemon.actor("panel")
    return a.state == "running" and a.pid != old_pid and a.stats.get("port") == panel.port and a


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_panel_terminated_alone_comes_back_serving_the_same_address_and_token(panel: Panel) -> None:
    """SIGTERM to the panel's process (not the daemon's) removed panel.json on the way out, so every restart
    exited at once ("no panel.json") until the supervisor gave up; now the restart serves the same port and
    token, and stopping the daemon (SIGTERM to it, which it passes on as its Stop) still takes the token file
    with it."""
    d = panel.daemon
    settings = (d.base / "run" / "panel.json").read_text()
    before = d.actor("panel")
    os.kill(before.pid, signal.SIGTERM)
    after = wait_for(lambda: _restarted(panel, before.pid), timeout=60, what="a new panel process serving")
    assert (d.base / "run" / "panel.json").read_text() == settings  # the same address and token
    status, _, body = panel.request("GET", "/", {"X-Ensemble-Token": panel.token})
    assert status == 200 and b"<html" in body.lower(), (status, body[:200])
    status, _, _ = panel.request("GET", "/ws")  # still behind the token
    assert status == 403
    assert d.actor("panel").pid == after.pid  # it stays up (no crash loop behind the first answer)
    os.kill(d.pid, signal.SIGTERM)  # SIGTERM to the daemon: it stops in order, its panel too (Stop "SIGTERM")
    wait_for(lambda: not pid_alive(d.pid) and not pid_alive(after.pid), what="the daemon and its panel to exit")
    assert not (d.base / "run" / "panel.json").exists()  # the token file goes with the daemon, as documented


def test_a_token_file_an_earlier_daemon_left_is_removed_when_the_next_one_starts(make_daemon: Any) -> None:
    """A panel killed while its daemon stopped (or a daemon killed) leaves panel.json; the next daemon removes it
    as it starts its children (the token of a panel that is gone is not left readable in the run directory)."""
    d = make_daemon()
    run = d.base / "run"
    run.mkdir(mode=0o700)
    stale = run / "panel.json"
    stale.write_text(json.dumps({"host": "127.0.0.1", "port": 1, "token": "t" * 43, "serial": 1}))
    d.up()
    assert not stale.exists()
    assert "panel" not in d.status().daemon.counters  # no panel was asked for


def test_notes_a_killed_panel_held_are_ended_by_the_panel_that_replaces_it(panel: Panel) -> None:
    """A page held a note when its panel was killed (SIGKILL: no note off from it); the note sounded on, for
    ever, through the restart.  The panel records the notes its pages hold (panel-notes.json, before each note
    on leaves), and the process the supervisor starts in its place ends them before anything else."""
    import numpy as np

    d = panel.daemon
    c = loaded(panel, EXAMPLES / "download_panel.py")
    # a note of the built-in sound ends by itself within 2 s; one of this sample sounds for 90 s unless ended
    c.upload_sample((0.1 * np.sin(np.arange(90 * 48000) * 0.05)).astype(np.float32), "long", 48000)
    voices = lambda: d.actor("processor").stats["active_voices"]  # noqa: E731
    notes = d.base / "run" / "panel-notes.json"
    with Page(panel) as page:
        page.send({"op": "note_on", "note": 64, "velocity": 100, "seq": "on"})
        page.until(lambda s: any(r.get("seq") == "on" for r in page.replies), what="the note on's ack")
        wait_for(lambda: voices() >= 1, what="the held note to sound")
        before = kill_panel(d)
        wait_for(lambda: _restarted(panel, before.panel.pid), timeout=60, what="a new panel process serving")
        wait_for(lambda: voices() == 0, what="the note the killed panel held to end")
    assert before.others_untouched(d)  # the processor was not restarted: the note off ended the voice
    assert not notes.exists()  # nothing held any more
    log = (d.base / "state" / "daemon.log").read_text()
    assert "event=panel-notes-released notes=[64] reason=the panel process that held them ended" in log

"""A panel that is not started again ends the notes its pages held all the same.

The panel records the notes its pages hold (``panel-notes.json``); a panel
process the supervisor starts in its place ends them, but one the supervisor
gave up on, or one that exits at start-up, never did: the notes sounded on.
The panel's extension now ends them as the supervisor reaps the process
(``Extension.child_exited``).  Against a real daemon started with its panel,
over real HTTP, with a 90 s sample so that a note left sounding shows.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from tests.conftest import Daemon, wait_for
from tests.controller.panel.conftest import EXAMPLES, Kill, Panel, kill_panel, loaded, start_panel
from tests.controller.panel.test_panel_actor import Page


def _voices(d: Daemon) -> int:
    return int(d.actor("processor").stats["active_voices"])


def _killed_holding_a_note(panel: Panel, before_kill: Callable[[], None] = lambda: None) -> Kill:
    """A page plays note 64 of a 90 s sample and holds it; the panel is SIGKILLed (no note off from it)."""
    d = panel.daemon
    c = loaded(panel, EXAMPLES / "download_panel.py")
    c.upload_sample((0.1 * np.sin(np.arange(90 * 48000) * 0.05)).astype(np.float32), "long", 48000)
    with Page(panel) as page:
        page.send({"op": "note_on", "note": 64, "velocity": 100, "seq": "on"})
        page.until(lambda s: any(r.get("seq") == "on" for r in page.replies), what="the note on's ack")
        wait_for(lambda: _voices(d) >= 1, what="the held note to sound")
        assert (d.base / "run" / "panel-notes.json").exists()
        before_kill()
        return kill_panel(d)


def _released(d: Daemon) -> bool:
    log = (d.base / "state" / "daemon.log").read_text()
    return "event=panel-notes-released notes=[64] reason=the panel process that held them ended" in log


def test_notes_a_panel_the_supervisor_gave_up_on_held_are_ended(make_daemon: Callable[..., Any]) -> None:
    """No restart is allowed (``max_restarts = 0``): the supervisor gives up on the killed panel at once, and no
    panel process is left to read the held notes' file.  The notes end all the same, the processor untouched."""
    # a heartbeat missed on a loaded machine (2 s in the tests) would end the processor or panel for good at `up`:
    # this test's panel ends by a kill, which the supervisor sees at once whatever the timeout
    panel = start_panel(make_daemon(extra_env={"ENSEMBLE_SUPERVISION_MAX_RESTARTS": "0",
                                               "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "60"}))
    d = panel.daemon
    before = _killed_holding_a_note(panel)
    wait_for(lambda: d.actor("panel").state == "failed", timeout=60, what="the supervisor to give up on the panel")
    wait_for(lambda: _voices(d) == 0, what="the note the panel held to end")
    assert before.others_untouched(d)  # the note off ended the voice, not a restart of the processor
    assert not (d.base / "run" / "panel-notes.json").exists()
    assert _released(d)


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_notes_a_panel_that_cannot_start_again_held_are_ended(panel: Panel) -> None:
    """The panel's settings file is gone when it is killed, so each process started in its place exits at
    start-up, before serving or ending anything; the notes its predecessor held end all the same."""
    d = panel.daemon
    settings = d.base / "run" / "panel.json"
    before = _killed_holding_a_note(panel, before_kill=settings.unlink)
    wait_for(lambda: _voices(d) == 0, what="the note the panel held to end")
    assert before.others_untouched(d)
    assert not (d.base / "run" / "panel-notes.json").exists()
    assert _released(d)

"""The panel's snapshots of the daemon when one fails: the pages are told, the panel goes on serving.

A real daemon paused under an open page (SIGSTOP: the panel's client gives up
on it) for a snapshot that fails for real; and, for a bug in the snapshot
code, which no daemon input reaches, the panel's server in this process with
a view whose snapshot raises.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Callable

import pytest

from controller.panel._server import PanelServer
from controller.panel._settings import PanelSettings
from tests.conftest import Daemon
from tests.controller.panel.conftest import Panel, start_panel
from tests.controller.panel.test_panel_actor import Page


@pytest.mark.slow  # the panel's client waits 10 s for a daemon that does not answer
@pytest.mark.timeout(300)
def test_a_daemon_that_stops_answering_is_an_error_on_the_page_and_the_panel_serves_on(
        make_daemon: Callable[..., Daemon]) -> None:
    """The daemon paused (SIGSTOP) under an open page: the snapshot fails (the client's timeout), the page gets
    the error, the panel still serves pages; the daemon resumed, the error clears and updates flow again.  The
    daemon's heartbeat timeout is longer than the pause, so the panel does not leave for a silent supervisor."""
    d = make_daemon(extra_env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "120"})
    panel = start_panel(d)
    with Page(panel) as page:
        page.until(lambda s: s.get("actors") and s.get("error") == "", what="a first state without error")
        os.kill(d.pid, signal.SIGSTOP)
        try:
            error = page.until(lambda s: s.get("error"), timeout=90, what="the snapshot's error on the page")
            assert "the daemon did not answer" in error, error
            assert panel.request("GET", "/", {"Cookie": panel.cookie})[0] == 200  # the panel serves on
            with Page(panel) as second:  # a page opened now gets the last state, error included
                second.until(lambda s: s.get("error") == error, what="the error on a new page")
        finally:
            os.kill(d.pid, signal.SIGCONT)
        page.until(lambda s: s.get("error") == "", timeout=60, what="the error to clear")
        d.client().scale(3)
        page.until(lambda s: s.get("daemon", {}).get("workers_wanted") == 3, what="updates after the pause")


class FlakyView:
    """A stand-in for DaemonView whose second and third snapshots raise a bug (KeyError)."""

    def __init__(self) -> None:
        self.snapshots = 0

    def collect(self) -> dict[str, Any]:
        self.snapshots += 1
        if self.snapshots in (2, 3):
            raise KeyError("a bug in the snapshot")
        return {"daemon": {"snapshot": self.snapshots}}

    def close(self) -> None:
        pass


def test_a_snapshot_that_raises_a_bug_is_an_internal_error_on_the_page_and_the_next_one_goes_out(
        caplog: pytest.LogCaptureFixture) -> None:
    """The bug is logged with its traceback, the page is told, and the broadcaster goes on (it ended)."""
    server = PanelServer(PanelSettings("127.0.0.1", 0, "t" * 43, 1), FlakyView())  # type: ignore[arg-type]
    try:
        port = server.start()
        panel = Panel(None, "", port, "t" * 43)  # type: ignore[arg-type]  # no daemon: the view stands in
        with caplog.at_level(logging.ERROR, "ensemble.panel"), Page(panel) as page:
            page.until(lambda s: s.get("error", "").startswith("internal error in the panel while taking a snapshot"),
                       what="the bug as an error on the page")
            page.until(lambda s: s.get("error") == "" and s["daemon"]["snapshot"] > 3, what="the next snapshots")
            assert panel.request("GET", "/", {"Cookie": panel.cookie})[0] == 200
        failed = [r for r in caplog.records if "event=panel-snapshot-failed" in r.getMessage()]
        assert len(failed) == 2 and all(r.exc_info and r.exc_info[0] is KeyError for r in failed), failed
    finally:
        server.stop()

"""The panel's snapshots of the daemon when one fails: the pages are told, the panel goes on serving; and when
one is still waiting for the daemon as the panel stops: the panel leaves anyway, in one log line.

A real daemon paused under an open page (SIGSTOP: the panel's client gives up
on it) for a snapshot that fails for real, and for a panel that leaves its
silent supervisor; and, for a bug in the snapshot code, which no daemon input
reaches, and for a stop whose timing a test must hold still, the panel's
server in this process with a stand-in view.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
from typing import Any, Callable

import pytest

from controller.panel import _server
from controller.panel._server import PanelServer
from controller.panel._settings import PanelSettings
from tests.conftest import Daemon, pid_alive, wait_for
from tests.controller.panel.conftest import EXAMPLES, Panel, loaded, start_panel
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
            assert panel.request("GET", "/", {"X-Ensemble-Token": panel.token})[0] == 200  # the panel serves on
            with Page(panel) as second:  # a page opened now gets the last state, error included
                second.until(lambda s: s.get("error") == error, what="the error on a new page")
        finally:
            os.kill(d.pid, signal.SIGCONT)
        page.until(lambda s: s.get("error") == "", timeout=60, what="the error to clear")
        d.client().scale(3)
        page.until(lambda s: s.get("daemon", {}).get("workers_wanted") == 3, what="updates after the pause")


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_reload_waiting_for_its_script_holds_up_no_page_s_updates(make_daemon: Callable[..., Daemon]) -> None:
    """One page's reload waits for the script to load (the controller paused here: SIGSTOP, so the load stays
    pending); it waited on the panel's one client thread, and every page's snapshots waited behind it (up to the
    reload's 30 s).  Now a reload runs on a thread of its own: another page sees a change made meanwhile, and
    the reload is answered once the controller goes on.  The daemon's heartbeat timeout outlasts the pause."""
    d = make_daemon(extra_env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "120"})
    panel = start_panel(d)
    c = loaded(panel, EXAMPLES / "download_panel.py")
    load = lambda: c.status().daemon.counters["script_load"]  # noqa: E731  # [number, state, detail]
    controller = d.actor("controller").pid
    with Page(panel) as reloading, Page(panel) as watching:
        watching.until(lambda s: s.get("daemon", {}).get("workers_wanted") == 2, what="a first state")
        before = load()[0]
        os.kill(controller, signal.SIGSTOP)
        try:
            reloading.send({"op": "reload", "seq": "reload"})
            wait_for(lambda: load()[0] > before and load()[1] == "loading", what="the reload to be under way")
            c.scale(3)
            watching.until(lambda s: s.get("daemon", {}).get("workers_wanted") == 3, timeout=20,
                           what="the other page's update while the reload waits")
            assert load()[1] == "loading"  # the reload was still waiting all along
        finally:
            os.kill(controller, signal.SIGCONT)
        answer = reloading.until(lambda s: next((r for r in reloading.replies if r.get("seq") == "reload"), None),
                                 timeout=60, what="the reload's answer")
        assert answer["type"] == "ack", answer


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

    def close_slow(self) -> None:
        pass

    def release_left_over(self) -> None:
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
            assert panel.request("GET", "/", {"X-Ensemble-Token": panel.token})[0] == 200
        failed = [r for r in caplog.records if "event=panel-snapshot-failed" in r.getMessage()]
        assert len(failed) == 2 and all(r.exc_info and r.exc_info[0] is KeyError for r in failed), failed
    finally:
        server.stop()


def test_a_stopped_server_leaves_no_task_pending(caplog: pytest.LogCaptureFixture) -> None:
    """Its snapshot loop ended with it: asyncio said "Task was destroyed but it is pending!
    PanelServer._broadcast()" when the closed loop was collected (at the interpreter's exit)."""
    for page_open in (False, True):
        server = PanelServer(PanelSettings("127.0.0.1", 0, "t" * 43, 1), FlakyView())  # type: ignore[arg-type]
        port = server.start()
        with caplog.at_level(logging.ERROR, "asyncio"):
            if page_open:
                panel = Panel(None, "", port, "t" * 43)  # type: ignore[arg-type]  # no daemon: the view stands in
                with Page(panel) as page:
                    page.until(lambda s: s.get("daemon", {}).get("snapshot", 0) > 3, what="snapshots")
                    server.stop()
            else:
                server.stop()
            del server
            gc.collect()
        pending = [r.getMessage() for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
        assert not pending, pending


class StuckView:
    """A stand-in for DaemonView whose second snapshot waits for a daemon that does not answer, until told."""

    def __init__(self) -> None:
        self.snapshots = 0
        self.waiting = threading.Event()  # the second snapshot waits
        self.answer = threading.Event()  # ... until this is set (or 120 s, its client's own timeout here)
        self.closed = threading.Event()

    def collect(self) -> dict[str, Any]:
        self.snapshots += 1
        if self.snapshots == 2:
            self.waiting.set()
            self.answer.wait(120)
        return {"daemon": {"snapshot": self.snapshots}}

    def close(self) -> None:
        self.closed.set()

    def close_slow(self) -> None:
        pass

    def release_left_over(self) -> None:
        pass


@pytest.mark.slow  # stop() waits out its 5 s bound for the client's close on purpose
def test_stop_while_a_snapshot_waits_for_the_daemon_returns_and_says_so_in_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """stop() waited 5 s for the client to close behind a snapshot the daemon did not answer, then raised
    TimeoutError (the panel's exit logged a traceback).  Now it returns after CLOSE_WAIT s with one warning; the
    server no longer listens, and the client is closed only once its request is answered, on its own thread."""
    view = StuckView()
    server = PanelServer(PanelSettings("127.0.0.1", 0, "t" * 43, 1), view)  # type: ignore[arg-type]
    stopped = False
    try:
        port = server.start()
        panel = Panel(None, "", port, "t" * 43)  # type: ignore[arg-type]  # no daemon: the view stands in
        with caplog.at_level(logging.INFO, "ensemble.panel"), Page(panel) as page:
            page.until(lambda s: s.get("daemon"), what="a first state")
            assert view.waiting.wait(60), "the second snapshot never started"
            stopped = True
            server.stop()
        late = [r for r in caplog.records if "event=panel-stop-late" in r.getMessage()]
        assert len(late) == 1 and late[0].levelno == logging.WARNING and late[0].exc_info is None, late
        assert f"unanswered after {_server.CLOSE_WAIT:g}s" in late[0].getMessage()
        assert not view.closed.is_set()  # never closed under the request it waits on
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        view.answer.set()
        if not stopped:
            server.stop()
    assert view.closed.wait(60), "the client was not closed once its request was answered"


@pytest.mark.slow  # the panel's client waits 10 s for a daemon that does not answer
@pytest.mark.timeout(300)
def test_a_panel_that_leaves_its_silent_supervisor_under_an_open_page_exits_in_one_line(
        make_daemon: Callable[..., Daemon]) -> None:
    """The daemon paused (SIGSTOP) while a page is open: the panel hears nothing for the heartbeat timeout (1 s
    here) and leaves, its last snapshot still waiting for the daemon (10 s, the client's timeout).  Its stop
    raised after 5 s and the exit logged a traceback; now the panel exits with one line about it."""
    d = make_daemon(extra_env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "1.0"})
    panel = start_panel(d)
    log_file = d.base / "state" / "daemon.log"
    with Page(panel) as page:
        page.until(lambda s: s.get("actors") and s.get("error") == "", what="a first state without error")
        pid = d.actor("panel").pid
        offset = log_file.stat().st_size
        os.kill(d.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not pid_alive(pid), timeout=90, what="the panel to leave its silent supervisor")
        finally:
            os.kill(d.pid, signal.SIGCONT)
    with open(log_file, "rb") as f:
        f.seek(offset)
        grown = f.read().decode(errors="replace")
    mine = [ln for ln in grown.splitlines() if f" pid={pid} " in ln]
    assert any("supervisor silent" in ln for ln in mine), grown
    assert len([ln for ln in mine if "event=panel-stop-late" in ln]) == 1, grown
    assert "Traceback" not in grown, grown

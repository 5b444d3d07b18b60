"""The panel as an actor: started on demand, a client of the daemon over one WebSocket, and dispensable.

Against a real daemon, with aiohttp's WebSocket client standing in for the
page (the browser tests in test_browser.py drive the real page).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Callable

import aiohttp
import pytest

from tests.conftest import Daemon, wait_for
from tests.controller.panel.conftest import EXAMPLES, Panel, kill_panel, loaded


class Page:
    """A WebSocket to the panel on a thread-free asyncio loop: send actions, fold state pushes."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self.loop = asyncio.new_event_loop()
        self.state: dict[str, Any] = {}
        self.replies: list[dict[str, Any]] = []
        self.session: aiohttp.ClientSession | None = None
        self.ws: Any = None
        self.pushes = 0

    def __enter__(self) -> "Page":
        self.loop.run_until_complete(self._open())
        return self

    async def _open(self) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"http://127.0.0.1:{self.panel.port}/ws",
                                                headers={"Origin": self.panel.origin, "X-Ensemble-Token": self.panel.token})

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            await self.ws.close()
            assert self.session is not None
            await self.session.close()

        self.loop.run_until_complete(close())
        self.loop.close()

    def send(self, action: dict[str, Any]) -> None:
        self.loop.run_until_complete(self.ws.send_str(json.dumps(action)))

    def until(self, cond: Callable[[dict[str, Any]], Any], timeout: float = 30.0, what: str = "state") -> Any:
        """Read pushes until ``cond(state)`` is truthy (fails after ``timeout`` s)."""
        end = time.monotonic() + timeout

        async def run() -> Any:
            while time.monotonic() < end:
                value = cond(self.state)
                if value:
                    return value
                try:
                    text = await self.ws.receive_str(timeout=max(0.05, end - time.monotonic()))
                except (asyncio.TimeoutError, TypeError):
                    break
                msg = json.loads(text, parse_constant=_not_json)  # as strict as the page's JSON.parse
                if msg["type"] == "state":
                    self.state.update(msg["data"])
                    self.pushes += 1
                else:
                    self.replies.append(msg)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; replies {self.replies[-3:]}")

        return self.loop.run_until_complete(run())


def _not_json(word: str) -> Any:
    raise AssertionError(f"the panel sent {word}, which is not JSON: the page's JSON.parse refuses the message")


def _param(state: dict[str, Any], name: str) -> Any:
    return next((p["value"] for p in state.get("params", []) if p["name"] == name), None)


def _ui(state: dict[str, Any], id: str) -> dict[str, Any]:
    return next((e for e in state.get("ui", []) if e["id"] == id), {})


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_ensemble_panel_starts_it_on_demand_and_prints_the_same_url_again(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.up()
    assert not any(a.role == "panel" for a in d.status().actors)  # no web server unless asked for
    first = d.cli("panel", "--port", "0").stdout.strip()
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\?token=\S{40,}", first)
    assert m, first
    assert d.cli("panel").stdout.strip() == first  # running: the same address and token
    refused = d.cli("panel", "--port", str(int(m.group(1)) + 1 if int(m.group(1)) < 65535 else 1), check=False)
    assert refused.returncode != 0 and "already serves" in refused.stderr
    assert d.status().daemon.counters["panel"] == first.split("?")[0]  # the port it got, never the token
    d.down()
    assert not (d.base / "run" / "panel.json").exists()  # the token file goes with the daemon


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_controls_move_parameters_and_the_cli_moves_controls(shared_panel: Panel) -> None:
    panel = shared_panel
    c = loaded(panel, EXAMPLES / "download_panel.py")
    with Page(panel) as page:
        page.until(lambda s: _param(s, "seconds") is not None, what="the parameters")
        page.send({"op": "param", "name": "seconds", "value": 12.5})
        wait_for(lambda: panel.daemon.cli("param", "get", "seconds").stdout.strip() == "12.5",
                 what="`param get` to show the page's change")
        panel.daemon.cli("param", "set", "seconds", "3")
        page.until(lambda s: _param(s, "seconds") == 3.0, what="the CLI's change on the page")
        page.send({"op": "param", "name": "nope", "value": 1})
        page.until(lambda s: any(r["type"] == "error" and "no parameter named 'nope'" in r["message"]
                                 for r in page.replies), what="the refusal")
        page.send({"op": "param", "name": "seconds", "value": 10**29})  # past the wire's ints: checked, not sent
        page.until(lambda s: any(r["type"] == "error" and "parameter 'seconds': 1e+29 is outside" in r["message"]
                                 for r in page.replies), what="the refusal of a number past the wire's ints")
    c.close()


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_the_download_button_starts_and_cancels_and_the_finish_callback_shows(shared_panel: Panel) -> None:
    panel = shared_panel
    loaded(panel, EXAMPLES / "download_panel.py").set_param("seconds", 30.0)
    with Page(panel) as page:
        page.until(lambda s: _ui(s, "run").get("text") == "Run", what="the Run button")
        page.send({"op": "ui", "id": "run"})
        page.until(lambda s: _ui(s, "bar").get("value", 0) > 0.02 and _ui(s, "bar")["visible"],
                   what="the progress bar to advance")
        page.until(lambda s: s.get("loading", {}).get("task") == "DownloadTest", what="the loading bar")
        assert _ui(page.state, "run")["text"] == "Cancel"
        page.send({"op": "ui", "id": "run"})  # the second click cancels
        page.until(lambda s: _ui(s, "result").get("visible") and _ui(s, "result")["text"] == "Cancelled.",
                   what="the finish callback's change")
        assert not _ui(page.state, "bar")["visible"] and _ui(page.state, "run")["text"] == "Run"
        assert _param(page.until(lambda s: _param(s, "last_finish") == "True,True" and s), "last_finish")


def test_a_cli_job_appears_and_is_cancelled_from_the_page(shared_panel: Panel) -> None:
    panel = shared_panel
    out = panel.daemon.cli("submit", "examples.jobs:countdown", "600", "0.1").stdout
    job_id = int(re.search(r"(\d+)", out).group(1))  # type: ignore[union-attr]
    with Page(panel) as page:
        row = page.until(lambda s: next((j for j in s.get("jobs", []) if j["id"] == job_id and j["state"] == "running"
                                         and j["progress"] > 0), None), what="the job running with progress")
        assert row["fn"] == "examples.jobs:countdown"
        page.send({"op": "cancel", "id": job_id})
        page.until(lambda s: any(j["id"] == job_id and j["state"] == "cancelled" for j in s.get("jobs", [])),
                   what="the job cancelled")


def test_a_done_job_shows_100_percent_as_ensemble_jobs_shows_it(shared_panel: Panel) -> None:
    """A job that never set its progress read 0% on the page once done (``ensemble jobs`` and ``top`` said 100%)."""
    job = shared_panel.daemon.client().submit("tests.jobs:pid")
    job.result(60)
    with Page(shared_panel) as page:
        row = page.until(lambda s: next((j for j in s.get("jobs", []) if j["id"] == job.id), None), what="the job")
    assert row["state"] == "done" and row["progress"] == 1.0, row


def test_a_job_s_odd_properties_reach_the_page_as_json_it_can_read(shared_panel: Panel) -> None:
    panel = shared_panel
    c = panel.daemon.client()
    job = c.submit("tests.jobs:hold_properties", [float("nan"), float("inf"), {1, 2}, (3, 4), {(5, 6): "pair"}])
    try:
        with Page(panel) as page:
            row = page.until(lambda s: next((j for j in s.get("jobs", []) if j["id"] == job.id
                                             and len(j["properties"]) == 5), None), what="the job with its properties")
        assert row["properties"] == {"v0": "nan", "v1": "inf", "v2": [1, 2], "v3": [3, 4], "v4": {"(5, 6)": "pair"}}
    finally:
        job.cancel(block=True)


@pytest.mark.slow  # about 8 s; the browser test kills the panel too
def test_killing_the_panel_changes_nothing_for_audio_and_jobs(panel: Panel) -> None:
    d = panel.daemon
    c = d.client()
    with Page(panel) as page:
        page.until(lambda s: s.get("actors"), what="a first state")
        job = c.submit("examples.jobs:countdown", 8, 0.1)
        wait_for(lambda: job.state == "running", what="the job to run")
        before = kill_panel(d)
        after = wait_for(lambda: (a := d.actor("panel")).state == "running" and a.pid != before.panel.pid
                         and a.stats.get("port") and a, what="the supervisor to restart the panel")
        assert after.stats["port"] == panel.port and after.restarts == before.panel.restarts + 1
        assert before.others_untouched(d)
        assert job.result(60) == "done"  # the job went on
        wait_for(lambda: d.actor("processor").stats["blocks"] > before.blocks + 50, what="audio to go on")
    with Page(panel) as page:  # the same token opens the restarted panel
        page.until(lambda s: any(a["name"] == "panel" for a in s.get("actors", [])), what="state from the new panel")


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_a_dropped_wav_becomes_a_sample_and_the_page_scales_workers(shared_panel: Panel, tmp_path: Any) -> None:
    panel = shared_panel
    import io

    import numpy as np
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, (0.1 * np.sin(np.linspace(0, 200, 4800))).astype("float32"), 48000, format="WAV")
    status, _, body = panel.request("POST", "/samples?name=ping.wav",
                                    {"X-Ensemble-Token": panel.token, "Origin": panel.origin}, buf.getvalue())
    assert status == 200 and json.loads(body)["ok"], body
    c = panel.daemon.client()
    assert [(s.name, s.frames) for s in c.samples()] == [("ping", 4800)]
    with Page(panel) as page:
        page.until(lambda s: [x["name"] for x in s.get("samples", [])] == ["ping"], what="the sample on the page")
        page.send({"op": "scale", "workers": 3})
        page.until(lambda s: s.get("daemon", {}).get("workers_wanted") == 3, what="the scale from the page")
        page.send({"op": "note_on", "note": 200})
        page.until(lambda s: any("note must be an integer 0..127" in r.get("message", "") for r in page.replies),
                   what="a bad note refused with the reason")
        page.send({"op": "drop_sample", "name": "ping"})  # the daemon shared by this module keeps no segment
        page.until(lambda s: s.get("samples") == [], what="the sample dropped")


def test_every_page_action_with_awkward_values_is_answered_and_the_socket_stays_open(shared_panel: Panel) -> None:
    """The page is the browser's: whatever an action holds (wrong types, NaN, huge numbers, unknown ops, no op),
    it gets one ack or one error, and the WebSocket stays open for the next one."""
    import random

    panel = shared_panel
    loaded(panel, EXAMPLES / "download_panel.py")
    r = random.Random(20261204)
    values = [None, True, 0, -1, 127, 128, 2**62, 2**64, 1.5, float("nan"), float("inf"), "", "x" * 2000, "seconds",
              "\x00", [], [1, 2], {}, {"a": {"b": []}}]
    ops = ["note_on", "note_off", "param", "ui", "cancel", "reload", "drop_sample", "nope", None, 3, ["param"]]
    keys = ["note", "velocity", "name", "value", "id", "workers", "seq"]
    sent = 0
    with Page(panel) as page:
        for _ in range(300):
            action: dict[str, Any] = {k: r.choice(values) for k in r.sample(keys, r.randrange(len(keys)))}
            if r.random() < 0.9:
                action["op"] = r.choice(ops)
            page.send(action)
            sent += 1
        page.until(lambda s: len(page.replies) >= sent, timeout=120, what=f"an answer to each of the {sent} actions")
        assert {m["type"] for m in page.replies} <= {"ack", "error"} and len(page.replies) == sent
        assert any(m["type"] == "error" for m in page.replies) and any(m["type"] == "ack" for m in page.replies)
        page.send({"op": "note_on", "note": 60, "velocity": 100, "seq": "last"})  # the same socket still works
        page.until(lambda s: any(m.get("seq") == "last" for m in page.replies), what="the last action's ack")


def test_a_page_that_goes_away_holding_a_note_has_it_ended(shared_panel: Panel) -> None:
    """A page closed (a tab shut, the network dropped, a reconnect) while a key was down left the voice sounding:
    the panel now ends the notes a page started and did not end when that page goes."""
    panel = shared_panel
    loaded(panel, EXAMPLES / "download_panel.py")
    voices = lambda: panel.daemon.actor("processor").stats["active_voices"]  # noqa: E731
    with Page(panel) as page:
        page.send({"op": "note_on", "note": 64, "velocity": 100, "seq": "on"})
        page.send({"op": "note_on", "note": 67, "velocity": 100, "seq": "on2"})
        page.send({"op": "note_off", "note": 67, "seq": "off2"})
        page.until(lambda s: any(r.get("seq") == "off2" for r in page.replies), what="the acks")
        wait_for(lambda: voices() >= 1, what="the held note to sound")
    wait_for(lambda: voices() == 0, what="the note of the page that went away to end")
    log = (panel.daemon.base / "state" / "daemon.log").read_text()
    assert "event=panel-notes-released notes=[64]" in log


def test_reloading_a_broken_script_from_the_page_reports_the_failure(shared_panel: Panel, tmp_path: Any) -> None:
    """The page's reload was acked "reload done" before the script had loaded; a script that no longer loads
    is now reported as `ensemble reload` reports it."""
    panel = shared_panel
    script = tmp_path / "breaks.py"
    script.write_text("from controller.script import define_parameter\ndefine_parameter('x', 'X', 1.0)\n")
    loaded(panel, script)
    with Page(panel) as page:
        page.send({"op": "reload", "seq": "good"})
        page.until(lambda s: any(r.get("seq") == "good" for r in page.replies), 60, what="the first reload's answer")
        assert page.replies[-1]["type"] == "ack", page.replies[-1]
        script.write_text("def broken(:\n")
        page.send({"op": "reload", "seq": "bad"})
        page.until(lambda s: any(r.get("seq") == "bad" for r in page.replies), 60, what="the second reload's answer")
        answer = page.replies[-1]
        assert answer["type"] == "error" and "did not load" in answer["message"] and "breaks.py" in answer["message"]
    loaded(panel, EXAMPLES / "download_panel.py")  # the module's panel goes on with the usual script

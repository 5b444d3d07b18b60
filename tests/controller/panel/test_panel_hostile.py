"""The panel against a hostile page: malformed WebSocket messages, a page that stops reading, uploads that expand
or stall, requests the parser refuses, handshakes that fail; and its limits: pages open at once, uploads at a time.

Against the real panel of a real daemon (one for the module; a panel of its
own where the test changes it), over real sockets; the page is aiohttp's
WebSocket client or a raw socket.  One test runs the panel's server in this
process, with a stand-in view, to make aiohttp's handshake yield.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Iterator

import aiohttp
import numpy as np
import psutil
import pytest
import soundfile
from aiohttp import web

from controller.panel._page import SEND_TIMEOUT
from controller.panel._requestlog import BURST
from controller.panel._server import MAX_PAGES, PanelServer
from controller.panel._settings import PanelSettings
from controller.panel._sound import MAX_DECODED, MAX_UPLOAD
from controller.panel._upload import STALL_ENV
from tests.conftest import Daemon, wait_for
from tests.controller.panel.conftest import EXAMPLES, Panel, loaded, start_panel
from tests.controller.panel.test_panel_actor import Page


@pytest.fixture
def panel(shared_panel: Panel) -> Panel:
    """One daemon for the module: each test leaves it with the script of download_panel.py and no sample."""
    return shared_panel


async def _answers(panel: Panel, frames: list[str | bytes]) -> tuple[list[dict[str, Any]], bool]:
    """Send ``frames`` on one WebSocket; the answer to each (state pushes skipped) and whether it is still open."""
    answers: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{panel.port}/ws",
                                headers={"Origin": panel.origin, "X-Ensemble-Token": panel.token}) as ws:
            for frame in frames:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
                while True:
                    m = await ws.receive(timeout=60)
                    if m.type != aiohttp.WSMsgType.TEXT:
                        return answers, False  # closed: the answers so far
                    msg = json.loads(m.data)
                    if msg["type"] != "state":
                        answers.append(msg)
                        break
            return answers, not ws.closed


def test_every_malformed_websocket_message_is_answered_and_the_socket_stays_open(panel: Panel) -> None:
    """Deep nesting (RecursionError in the JSON reader), a list or an object where a value goes, a binary frame,
    a message over the action limit, no JSON at all: each gets an error naming what was wrong, then the same
    socket still carries an action."""
    loaded(panel, EXAMPLES / "download_panel.py")
    deep = '{"op": "note_on", "note": ' + "[" * 20000 + "]" * 20000 + "}"
    frames: list[str | bytes] = [
        deep,
        json.dumps({"op": "param", "name": "seconds", "value": [1, 2]}),
        json.dumps({"op": "ui", "id": "run", "value": {"a": [1]}}),
        b"\x00\x01binary",
        json.dumps({"op": "param", "name": "last_finish", "value": "x" * 70000}),
        "not json",
        "[1, 2]",
        json.dumps({"op": "note_on", "note": 60, "velocity": 100, "seq": "last"}),
    ]
    answers, still_open = asyncio.run(_answers(panel, frames))
    assert still_open and len(answers) == len(frames), answers
    wanted = ["nests too deeply", "field 'value' of an action holds a JSON list",
              "field 'value' of an action holds a JSON object", "binary message", "at most 65536 characters",
              "not JSON", "not a JSON list"]
    for answer, text in zip(answers, wanted):
        assert answer["type"] == "error" and text in answer["message"], (text, answer)
    assert answers[-1] == {"type": "ack", "op": "note_on", "detail": "note_on done", "seq": "last"}


def test_a_click_the_element_cannot_take_is_an_error_to_the_page(panel: Panel) -> None:
    """``{"op": "ui", "id": "run", "value": 1}`` was acked "ui done" and then failed in the script's
    ``on_click(1)``; a click on a label was acked and dropped.  Now each is an error naming what the element takes."""
    loaded(panel, EXAMPLES / "download_panel.py")
    frames: list[str | bytes] = [json.dumps({"op": "ui", "id": "run", "value": 1}),
                                 json.dumps({"op": "ui", "id": "result"})]
    answers, still_open = asyncio.run(_answers(panel, frames))
    assert still_open and len(answers) == 2, answers
    assert answers[0]["type"] == "error" and "button 'run' takes no value" in answers[0]["message"], answers
    assert answers[1]["type"] == "error" and "'result' is a label, which cannot be clicked" in answers[1]["message"]


def _raw_page(panel: Panel) -> socket.socket:
    """A WebSocket opened by hand that will read nothing (a small receive buffer fills at once)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", panel.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{panel.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {panel.origin}\r\n"
               f"X-Ensemble-Token: {panel.token}\r\n\r\n").encode())
    assert s.recv(12) == b"HTTP/1.1 101"
    return s


@pytest.fixture
def stalled(panel: Panel) -> Iterator[list[socket.socket]]:
    """Two pages that read nothing (closed at teardown)."""
    pages = [_raw_page(panel), _raw_page(panel)]
    try:
        yield pages
    finally:
        for s in pages:
            s.close()


def _value(state: dict[str, Any], name: str) -> Any:
    return next((p["value"] for p in state.get("params", []) if p["name"] == name), None)


def _read_for(page: Page, seconds: float) -> None:
    """Let ``page`` read its pushes for ``seconds`` (its socket answers the panel's pings while it reads)."""
    end = time.monotonic() + seconds

    async def run() -> None:
        try:
            while time.monotonic() < end:
                msg = await page.ws.receive_json(timeout=max(0.01, end - time.monotonic()))
                if msg["type"] == "state":
                    page.state.update(msg["data"])
                else:
                    page.replies.append(msg)
        except asyncio.TimeoutError:
            pass

    page.loop.run_until_complete(run())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_page_that_stops_reading_holds_up_no_other_page_and_is_closed(panel: Panel,
                                                                         stalled: list[socket.socket]) -> None:
    """Two pages read nothing while every push is 200 kB: the page that reads sees each new value (they went out
    one page after another, and the first stalled page held them all up for good); the stalled pages are closed
    once a push to them has waited SEND_TIMEOUT."""
    c = loaded(panel, EXAMPLES / "download_panel.py")
    with Page(panel) as page:
        for i in range(40):
            value = f"{i:03d}" * 70_000
            c.set_param("last_finish", value)
            page.until(lambda s: _value(s, "last_finish") == value, timeout=60, what=f"push {i} to the reading page")
        c.set_param("last_finish", "")

        def pages() -> int:
            _read_for(page, 0.5)  # the reading page goes on reading (and answering pings)
            return int(panel.daemon.actor("panel").stats["pages"])

        wait_for(lambda: pages() == 1, timeout=SEND_TIMEOUT + 90, interval=0.5,
                 what="the two pages that read nothing to be closed")
        page.send({"op": "note_off", "note": 60, "seq": "after"})
        page.until(lambda s: any(m.get("seq") == "after" for m in page.replies), what="the reading page's ack")


def _flac(frames: int, channels: int = 2, claim: int | None = None) -> bytes:
    """A FLAC file of silence (a minute is about 10 kB); ``claim``: the frame count its header says instead."""
    buf = io.BytesIO()
    with soundfile.SoundFile(buf, "w", 48000, channels, format="FLAC") as f:
        block = np.zeros((min(frames, 48000 * 10), channels), "float32")
        for done in range(0, frames, len(block)):
            f.write(block[:frames - done])
    data = bytearray(buf.getvalue())
    if claim is not None:  # STREAMINFO's 36-bit total of samples, in the 8 bytes at 18..26 of the file
        v = int.from_bytes(data[18:26], "big")
        data[18:26] = ((v & ~((1 << 36) - 1)) | claim).to_bytes(8, "big")
    return bytes(data)


def _upload(panel: Panel, name: str, body: bytes | None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, raw = panel.request("POST", f"/samples?name={name}",
                                   {"X-Ensemble-Token": panel.token, "Origin": panel.origin, **(headers or {})}, body)
    return status, json.loads(raw)


def test_an_upload_that_would_decode_past_the_limit_is_refused_before_it_is_decoded(panel: Panel) -> None:
    """A 160 kB FLAC of 14 minutes of stereo silence decodes to 308 MiB: refused from its header, with the sizes;
    so is a header that claims 10**10 frames, an empty file (it made the panel answer 500), and a body whose
    Content-Length is over the upload limit (refused before the body is read)."""
    frames = MAX_DECODED // 8 + 48000 * 60  # a minute past the limit, stereo float32
    small = _flac(frames)
    assert len(small) < 1024 * 1024
    status, body = _upload(panel, "long.flac", small)
    assert status == 400 and "decodes to" in body["error"] and "over the limit of 256.0 MiB" in body["error"], body
    status, body = _upload(panel, "liar.flac", _flac(48000, claim=10**10))
    assert status == 400 and "decodes to 74.5 GiB" in body["error"], body
    status, body = _upload(panel, "empty.wav", _empty_wav())
    assert status == 400 and "no audio frames" in body["error"], body
    status, body = _upload(panel, "huge.wav", None, {"Content-Length": str(MAX_UPLOAD + 1)})
    assert status == 413 and "upload limit" in body["error"], body
    assert panel.daemon.client().samples() == []
    status, body = _upload(panel, "fine.flac", _flac(4800))  # the limits leave a file that fits alone
    assert status == 200 and body["ok"], body
    c = panel.daemon.client()
    assert [(s.name, s.frames, s.channels) for s in c.samples()] == [("fine", 4800, 2)]
    c.drop_sample("fine")


def _empty_wav() -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((0, 1), "float32"), 48000, format="WAV")
    return buf.getvalue()


def _until_closed(s: socket.socket) -> bytes:
    """What the panel sends on ``s`` until it closes the connection."""
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def _raw_answer(panel: Panel, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; the answer (the panel closes the connection after it)."""
    with socket.create_connection(("127.0.0.1", panel.port), timeout=30) as s:
        s.sendall(request)
        return _until_closed(s)


def _oversized(panel: Panel, n: int) -> bytes:
    return (f"GET /?n={n} HTTP/1.1\r\nHost: 127.0.0.1:{panel.port}\r\nX-Fill: {'a' * 100_000}\r\n\r\n").encode()


def _log_after(panel: Panel, offset: int) -> str:
    with open(panel.daemon.base / "state" / "daemon.log", "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_a_request_the_parser_refuses_is_a_400_and_one_log_line(panel: Panel) -> None:
    """A 100 kB header line (no token): aiohttp answered 400 but logged its ~10-line traceback at ERROR, so
    anyone who reaches the port could fill daemon.log; now each is one WARNING line with the reason."""
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    for n in range(5):
        answer = _raw_answer(panel, _oversized(panel, n))
        assert answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] == b"400", answer[:200]
    wait_for(lambda: _log_after(panel, offset).count("event=panel-bad-request") == 5, what="a line per request")
    grown = _log_after(panel, offset)
    assert "Traceback" not in grown, grown
    assert len(grown.splitlines()) <= 2 * 5, grown  # one line each (a few others may come from the daemon)
    line = next(ln for ln in grown.splitlines() if "event=panel-bad-request" in ln)
    assert "WARNING" in line and "status=400" in line and "8190 bytes" in line and len(line) < 600, line
    assert panel.request("GET", "/", {"X-Ensemble-Token": panel.token})[0] == 200  # the panel serves on


def test_a_request_the_parser_refuses_never_puts_the_token_in_the_log_or_the_answer(panel: Panel) -> None:
    """The parser's reason quotes the request: ``?token=T`` in a line over 8 KiB, a bad HTTP version, a control
    character went whole into daemon.log and into the 400's body.  Now the token is masked in both."""
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    host = f"Host: 127.0.0.1:{panel.port}\r\n\r\n"
    requests = [f"GET /?token={panel.token}&pad={'b' * 9000} HTTP/1.1\r\n{host}",
                f"GET /?token={panel.token} HTTP/9.9\r\n{host}",
                f"GET /?token={panel.token}\x01 HTTP/1.1\r\n{host}"]
    for request in requests:
        answer = _raw_answer(panel, request.encode())
        assert answer.split(b" ", 2)[1:2] == [b"400"], answer[:300]
        assert panel.token[:8].encode() not in answer and panel.token[-8:].encode() not in answer, answer[:600]
    wait_for(lambda: _log_after(panel, offset).count("event=panel-bad-request") == len(requests),
             what="a line per request")
    grown = _log_after(panel, offset)
    assert panel.token[:8] not in grown and panel.token[-8:] not in grown, grown
    assert grown.count("token=<token>") == len(requests), grown


def test_a_panel_with_no_descriptor_to_spare_serves_its_page_from_memory(panel: Panel) -> None:
    """The page's files are read once, as the panel starts: a request on a connection it already holds is answered
    with no descriptor to spare.  Each request used to open its file, so under a flood of connections (which takes
    every descriptor) the token holder's request was a 500 and a traceback in the log."""
    proc = psutil.Process(panel.daemon.actor("panel").pid)
    soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    headers = {"Host": f"127.0.0.1:{panel.port}", "X-Ensemble-Token": panel.token}
    conn = http.client.HTTPConnection("127.0.0.1", panel.port, timeout=30)
    answers = []
    try:
        conn.request("GET", "/favicon.ico", headers=headers)  # keep-alive: the panel holds this connection's socket
        r = conn.getresponse()
        assert (r.status, r.read()[:4]) == (200, b"<svg"), r.status
        proc.rlimit(psutil.RLIMIT_NOFILE, (proc.num_fds(), hard))  # not one more descriptor
        try:
            for path in ("/", "/static/panel.js", "/static/panel.css"):
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
                answers.append((path, r.status, len(r.read())))
        finally:
            proc.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    finally:
        conn.close()
    assert all(status == 200 and size > 100 for _, status, size in answers), answers
    assert "Traceback" not in _log_after(panel, offset)


def test_a_flood_of_refused_requests_logs_a_bounded_number_of_lines(make_daemon: Callable[..., Daemon]) -> None:
    """Four times the log's budget of bad requests (oversized headers, requests without a token): each is
    answered (400, 403), and the log gains at most the budget's lines (plus what it regains while they come: far
    fewer than the requests), none with a traceback.  Each line is written before its answer is sent.  A panel
    of its own: the module's keeps its budget."""
    panel = start_panel(make_daemon())
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    sent = 4 * BURST
    for n in range(sent):
        if n % 2:
            assert panel.request("GET", f"/ws?n={n}")[0] == 403
        else:
            assert _raw_answer(panel, _oversized(panel, n)).split(b" ", 2)[1] == b"400"
    wait_for(lambda: "event=panel-" in _log_after(panel, offset), what="the first lines")
    assert panel.request("GET", "/", {"X-Ensemble-Token": panel.token})[0] == 200  # after the flood: served (and not logged)
    grown = _log_after(panel, offset)
    refused = [ln for ln in grown.splitlines() if "event=panel-bad-request" in ln or "event=panel-refused" in ln]
    assert "Traceback" not in grown, grown
    assert 0 < len(refused) < 2 * BURST, (len(refused), grown[-2000:])


def test_the_favicon_a_browser_asks_for_is_served_and_costs_no_line_of_the_log(panel: Panel) -> None:
    """A browser asks for /favicon.ico at every page load, without the token (the page keeps it in the tab):
    it was refused, 403, and each page load spent a line of the refused requests' budget (and filled the log).
    Now it is an icon, as the shell's files are (no daemon data in it), and the page names its own icon under
    /static/; a token that is given must still be valid there, and the WebSocket still needs one."""
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    for _ in range(2 * BURST):  # twice the budget: refused, the last ones would not even have been logged
        status, headers, body = panel.request("GET", "/favicon.ico")  # as a browser asks: Host, no token, no Origin
        assert status == 200 and headers["content-type"] == "image/svg+xml" and body.startswith(b"<svg"), status
    status, _, page = panel.request("GET", "/")
    assert status == 200 and b'<link rel="icon" href="/static/favicon.svg"' in page
    status, headers, body = panel.request("GET", "/static/favicon.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml" and body.startswith(b"<svg")
    assert panel.request("GET", "/favicon.ico?token=" + "x" * 43)[0] == 403  # a token given must be valid
    assert panel.request("GET", "/ws")[0] == 403  # what carries daemon data still needs the token
    refused = [ln for ln in _log_after(panel, offset).splitlines() if "path=/favicon.ico" in ln]
    assert len(refused) <= 1, refused  # at most the line of the wrong token (the budget may leave it out)


class HeldUpload:
    """An upload sent by hand: its headers and the first half of its body, then nothing until told."""

    def __init__(self, panel: Panel, name: str, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", panel.port), timeout=30)
        self.sock.sendall((f"POST /samples?name={name} HTTP/1.1\r\nHost: 127.0.0.1:{panel.port}\r\n"
                           f"Origin: {panel.origin}\r\nX-Ensemble-Token: {panel.token}\r\nContent-Length: {len(body)}\r\n"
                           "Expect: 100-continue\r\nConnection: close\r\n\r\n").encode())
        # the panel answers 100 Continue once the upload's handler runs: from then on it is the upload in progress
        assert self.sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.sock.sendall(body[:len(body) // 2])

    def finish(self) -> tuple[int, Any]:
        """Send the rest of the body; the panel's answer."""
        self.sock.sendall(self.body[len(self.body) // 2:])
        return self.answer()

    def answer(self) -> tuple[int, Any]:
        """The panel's answer, read until it closes the connection."""
        with self.sock:
            got = _until_closed(self.sock)
        return int(got.split(b" ", 2)[1]), json.loads(got.split(b"\r\n\r\n", 1)[1])

    def abort(self) -> None:
        self.sock.close()


def test_one_upload_at_a_time_and_the_next_one_once_it_is_done(panel: Panel) -> None:
    """An upload whose body is still coming holds the upload slot: a second one is refused (503, saying why)
    until the first completes; a first one that is aborted mid-body frees it too."""
    c = panel.daemon.client()
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    held = HeldUpload(panel, "first.flac", _flac(48000 * 5))
    status, body = _upload(panel, "second.flac", _flac(4800))
    assert status == 503 and "another upload" in body["error"], (status, body)
    assert held.finish() == (200, {"ok": True, "detail": "sample 'first': 240000 frames at 48000 Hz"})
    status, body = _upload(panel, "second.flac", _flac(4800))
    assert status == 200 and body["ok"], body
    held = HeldUpload(panel, "aborted.flac", _flac(48000 * 5))
    assert _upload(panel, "third.flac", _flac(4800))[0] == 503
    held.abort()
    wait_for(lambda: _upload(panel, "third.flac", _flac(4800))[0] == 200, what="an upload after the aborted one")
    assert sorted(s.name for s in c.samples()) == ["first", "second", "third"]
    for name in ("first", "second", "third"):
        c.drop_sample(name)
    grown = _log_after(panel, offset)
    assert "Traceback" not in grown, grown


@pytest.mark.slow  # waits out the stall limit: ~3.5 s
def test_an_upload_whose_body_stalls_is_abandoned_and_the_next_one_is_taken(
        make_daemon: Callable[..., Daemon]) -> None:
    """An upload that sent its headers and half its body, then nothing, without closing: it held the upload slot
    until its client closed the connection (every other upload got 503 meanwhile).  Now, once no byte came for
    the stall limit (shortened to 2 s for this panel), it is answered 408 and closed, one log line says so, and
    the next upload is taken.  A panel of its own: the limit is read from its environment."""
    panel = start_panel(make_daemon(extra_env={STALL_ENV: "2"}))
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    held = HeldUpload(panel, "stalled.flac", _flac(48000 * 5))
    statuses: list[int] = []

    def next_upload() -> bool:
        statuses.append(_upload(panel, "next.flac", _flac(4800))[0])
        return statuses[-1] == 200

    wait_for(next_upload, timeout=90, interval=0.2, what="an upload taken while the stalled one's client stays")
    assert set(statuses[:-1]) <= {503}, statuses  # refused while the slot was held, never failed
    status, body = held.answer()
    assert status == 408 and "no byte of the file came for 2s" in body["error"], (status, body)
    assert [s.name for s in panel.daemon.client().samples()] == ["next"]
    wait_for(lambda: "event=panel-upload-stalled" in _log_after(panel, offset), what="the stall's log line")
    grown = _log_after(panel, offset)
    stalled = [ln for ln in grown.splitlines() if "event=panel-upload-stalled" in ln]
    assert len(stalled) == 1 and "name='stalled.flac'" in stalled[0] and "for 2s" in stalled[0], stalled
    assert "Traceback" not in grown, grown


def _upgrade_headers(panel: Panel) -> dict[str, str]:
    return {"Origin": panel.origin, "X-Ensemble-Token": panel.token, "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version": "13"}


def test_at_most_max_pages_are_open_and_a_closed_one_makes_room(panel: Panel) -> None:
    """MAX_PAGES + 4 pages open at once: MAX_PAGES get their socket (and their first state), the others a 503
    saying why; once one closes, a new page opens."""

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            async def page() -> Any:
                try:
                    return await s.ws_connect(f"http://127.0.0.1:{panel.port}/ws",
                                              headers={"Origin": panel.origin, "X-Ensemble-Token": panel.token})
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

            opened = await asyncio.gather(*(page() for _ in range(MAX_PAGES + 4)))
            pages = [p for p in opened if not isinstance(p, int)]
            try:
                assert len(pages) == MAX_PAGES and sorted(set(opened) - set(pages)) == [503], opened
                for ws in pages:  # each of them is a live page
                    assert (await ws.receive_json(timeout=60))["type"] == "state"
                status, _, body = await asyncio.to_thread(panel.request, "GET", "/ws", _upgrade_headers(panel))
                assert status == 503 and f"{MAX_PAGES} pages are open; close one" in body.decode(), (status, body)
                await pages.pop().close()
                await asyncio.to_thread(wait_for, lambda: panel.daemon.actor("panel").stats["pages"] == MAX_PAGES - 1,
                                        what="the closed page to be gone")
                pages.append(await s.ws_connect(f"http://127.0.0.1:{panel.port}/ws",
                                                headers={"Origin": panel.origin, "X-Ensemble-Token": panel.token}))
                assert (await pages[-1].receive_json(timeout=60))["type"] == "state"
            finally:
                for ws in pages:
                    await ws.close()

    asyncio.run(run())
    wait_for(lambda: panel.daemon.actor("panel").stats["pages"] == 0, what="every page closed")


def _hang_up_mid_handshake(panel: Panel) -> None:
    """An upgrade request whose sender resets the connection at once: the panel cannot write its 101."""
    s = socket.create_connection(("127.0.0.1", panel.port), timeout=30)
    headers = "".join(f"{k}: {v}\r\n" for k, v in _upgrade_headers(panel).items())
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{panel.port}\r\n{headers}\r\n".encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends a reset
    s.close()


async def _open_pages(url: str, headers: dict[str, str], s: aiohttp.ClientSession, n: int) -> list[Any]:
    """``n`` pages opened at once, each its first state read; a refusal fails the test (it shows its status)."""
    async def page() -> Any:
        try:
            ws = await s.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        assert (await ws.receive_json(timeout=60))["type"] == "state"
        return ws

    opened = await asyncio.gather(*(page() for _ in range(n)))
    pages = [p for p in opened if not isinstance(p, int)]
    if len(pages) < n:
        for ws in pages:
            await ws.close()
        raise AssertionError(f"{n - len(pages)} of {n} pages were refused: {opened}")
    return pages


def test_handshakes_that_fail_leave_no_slot_taken_and_log_no_traceback(panel: Panel) -> None:
    """Many upgrades at once while pages open and close: some whose page resets the connection before the
    panel's 101 (aiohttp logged a traceback at ERROR for each), some with a WebSocket version aiohttp refuses
    (400).  None keeps a place among the MAX_PAGES: then exactly MAX_PAGES pages open at once, and one more is
    refused; nothing is logged with a traceback."""
    offset = (panel.daemon.base / "state" / "daemon.log").stat().st_size
    url = f"http://127.0.0.1:{panel.port}/ws"
    headers = {"Origin": panel.origin, "X-Ensemble-Token": panel.token}
    bad_version = {**_upgrade_headers(panel), "Sec-WebSocket-Version": "12"}

    async def open_and_close(s: aiohttp.ClientSession) -> None:
        for ws in await _open_pages(url, headers, s, MAX_PAGES // 2):
            await ws.close()

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            hang_ups = (asyncio.to_thread(_hang_up_mid_handshake, panel) for _ in range(MAX_PAGES // 2))
            refused = (asyncio.to_thread(panel.request, "GET", "/ws", bad_version) for _ in range(MAX_PAGES // 2))
            _, answers, _ = await asyncio.gather(asyncio.gather(*hang_ups), asyncio.gather(*refused),
                                                 open_and_close(s))
            assert [a[0] for a in answers] == [400] * (MAX_PAGES // 2), answers
            await asyncio.to_thread(wait_for, lambda: panel.daemon.actor("panel").stats["pages"] == 0,
                                    what="the pages opened meanwhile to be closed")
            pages = await _open_pages(url, headers, s, MAX_PAGES)
            try:
                status, _, body = await asyncio.to_thread(panel.request, "GET", "/ws", _upgrade_headers(panel))
                assert status == 503 and b"pages are open" in body, (status, body)
                await asyncio.to_thread(wait_for, lambda: panel.daemon.actor("panel").stats["pages"] == MAX_PAGES,
                                        what="the panel to count MAX_PAGES pages")
            finally:
                for ws in pages:
                    await ws.close()

    asyncio.run(run())
    wait_for(lambda: panel.daemon.actor("panel").stats["pages"] == 0, what="every page closed")
    grown = _log_after(panel, offset)
    assert "Traceback" not in grown and "Error handling request" not in grown, grown


class StillView:
    """A stand-in for DaemonView: the same small snapshot every time."""

    def collect(self) -> dict[str, Any]:
        return {"daemon": {"name": "stand-in"}}

    def close(self) -> None:
        pass

    def close_slow(self) -> None:
        pass

    def release_left_over(self) -> None:
        pass


def test_a_page_counts_against_the_limit_from_before_its_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages were counted once through aiohttp's handshake (WebSocketResponse.prepare), so the limit held only
    while prepare did not yield to the loop.  Here it yields, as it may (a write that has to wait), until every
    upgrade has entered it or been refused, and 4 of them then fail (their page went away).  Of MAX_PAGES + 8
    upgrades at once, 8 are refused before their handshake (none was, and MAX_PAGES + 4 pages opened); the failed
    ones give their places back, so topping up opens exactly MAX_PAGES, and one more is refused.  The panel's
    server in this process, with a stand-in view: no daemon makes aiohttp yield there."""
    total, failing = MAX_PAGES + 8, 4
    entered = 0
    gate = threading.Event()
    handshake = web.WebSocketResponse.prepare

    async def yielding_prepare(ws: web.WebSocketResponse, request: web.BaseRequest) -> Any:
        nonlocal entered
        entered += 1
        deadline = time.monotonic() + 60
        while not gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if "fail" in request.query:
            raise ConnectionResetError("the page went away mid-handshake")
        return await handshake(ws, request)

    monkeypatch.setattr(web.WebSocketResponse, "prepare", yielding_prepare)
    server = PanelServer(PanelSettings("127.0.0.1", 0, "t" * 43, 1), StillView())  # type: ignore[arg-type]
    port = server.start()
    panel = Panel(None, "", port, "t" * 43)  # type: ignore[arg-type]  # no daemon: the view stands in
    url = f"http://127.0.0.1:{port}/ws"
    headers = {"Origin": panel.origin, "X-Ensemble-Token": panel.token}

    async def run() -> None:
        refused: list[int] = []
        async with aiohttp.ClientSession() as s:
            async def page(n: int) -> Any:
                try:
                    return await s.ws_connect(url + ("?fail=1" if n < failing else ""), headers=headers)
                except aiohttp.WSServerHandshakeError as exc:
                    refused.append(exc.status)
                    return exc.status

            attempts = asyncio.gather(*(page(n) for n in range(total)))
            deadline = time.monotonic() + 60
            while entered + refused.count(503) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            gate.set()
            opened = await attempts
            pages = [p for p in opened if not isinstance(p, int)]
            try:
                assert refused.count(503) == total - MAX_PAGES and len(pages) + refused.count(400) == MAX_PAGES, \
                    (refused, len(pages))
                pages += await _open_pages(url, headers, s, MAX_PAGES - len(pages))  # the failed handshakes' places
                with pytest.raises(aiohttp.WSServerHandshakeError) as one_more:
                    pages.append(await s.ws_connect(url, headers=headers))
                assert one_more.value.status == 503 and server.stats()["pages"] == MAX_PAGES
            finally:
                for ws in pages:
                    await ws.close()

    try:
        asyncio.run(run())
        wait_for(lambda: server.stats()["pages"] == 0, what="every page closed")
    finally:
        gate.set()
        server.stop()

"""The panel against a hostile page: malformed WebSocket messages, a page that stops reading, uploads that expand.

Against the real panel of a real daemon (one for the module), over real
sockets; the page is aiohttp's WebSocket client or a raw socket.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import time
from typing import Any, Iterator

import aiohttp
import numpy as np
import pytest
import soundfile

from controller.panel._page import SEND_TIMEOUT
from controller.panel._sound import MAX_DECODED, MAX_UPLOAD
from tests.conftest import wait_for
from tests.controller.panel.conftest import EXAMPLES, Panel, loaded
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
                                headers={"Origin": panel.origin, "Cookie": panel.cookie}) as ws:
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


def _raw_page(panel: Panel) -> socket.socket:
    """A WebSocket opened by hand that will read nothing (a small receive buffer fills at once)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", panel.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{panel.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {panel.origin}\r\n"
               f"Cookie: {panel.cookie}\r\n\r\n").encode())
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
                                   {"Cookie": panel.cookie, "Origin": panel.origin, **(headers or {})}, body)
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

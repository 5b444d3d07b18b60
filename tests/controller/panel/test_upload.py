"""Reading an upload's body (``controller.panel._upload``): whole, within the size limit, and never stalled for long.

Pure: an aiohttp StreamReader this test feeds, no sockets (test_panel_hostile.py
stalls an upload to a real panel).
"""

from __future__ import annotations

import asyncio
from typing import Callable
from unittest.mock import Mock

import pytest
from aiohttp import StreamReader

from controller.panel._upload import (
    DEFAULT_STALL, MIN_RATE, STALL_ENV, BodyStalled, BodyTooLarge, BodyTooSlow, read_body, stall_limit,
)


def test_the_stall_limit_is_the_environments_when_it_is_a_number_above_zero() -> None:
    assert stall_limit({}) == DEFAULT_STALL == 20.0
    assert stall_limit({STALL_ENV: "2"}) == 2.0
    assert stall_limit({STALL_ENV: "0.5"}) == 0.5
    for ignored in ("", "0", "-1", "nan", "inf", "two"):
        assert stall_limit({STALL_ENV: ignored}) == DEFAULT_STALL, ignored


def _read(feed: Callable[[StreamReader], None], limit: int = 1000, stall: float = 30.0) -> bytes:
    """What read_body returns from a body that ``feed`` gives (on the loop, once the read waits)."""
    async def run() -> bytes:
        content = StreamReader(Mock(), 2**16, loop=asyncio.get_running_loop())
        asyncio.get_running_loop().call_soon(feed, content)
        return await read_body(content, limit, stall)

    return asyncio.run(run())


def _pieces(*chunks: bytes, eof: bool = True, error: BaseException | None = None) -> Callable[[StreamReader], None]:
    """A feeder that gives ``chunks`` one loop iteration apart, then the end of the body (or ``error``)."""
    def feed(content: StreamReader, rest: tuple[bytes, ...] = chunks) -> None:
        if rest:
            content.feed_data(rest[0])
            asyncio.get_running_loop().call_soon(feed, content, rest[1:])
        elif error is not None:
            content.set_exception(error)
        elif eof:
            content.feed_eof()

    return feed


def test_a_body_that_comes_in_pieces_is_read_whole() -> None:
    assert _read(_pieces(b"RIFF", b"x" * 500, b"end")) == b"RIFF" + b"x" * 500 + b"end"
    assert _read(_pieces()) == b""


def test_a_body_that_stops_coming_is_given_up_after_the_stall_limit() -> None:
    """Half a body, then nothing and no end (a client gone quiet without closing)."""
    with pytest.raises(BodyStalled) as stalled:
        _read(_pieces(b"x" * 300, b"y" * 200, eof=False), stall=0.05)
    assert (stalled.value.received, stalled.value.seconds) == (500, 0.05)
    assert "no byte of the body came for 0.05s (500 bytes had come)" in str(stalled.value)


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_a_body_that_trickles_is_given_up_once_it_falls_under_the_rate_past_the_stall_limit() -> None:
    """A byte every 10 ms never stalls (the limit is 1 s) and would hold the slot for ever; past its first second
    it must have averaged MIN_RATE bytes a second."""
    def trickle(content: StreamReader) -> None:
        content.feed_data(b"x")
        asyncio.get_running_loop().call_later(0.01, trickle, content)

    async def run() -> float:
        content = StreamReader(Mock(), 2**16, loop=asyncio.get_running_loop())
        asyncio.get_running_loop().call_soon(trickle, content)
        start = asyncio.get_running_loop().time()
        with pytest.raises(BodyTooSlow) as slow:
            await read_body(content, 10**9, 1.0)
        assert isinstance(slow.value, BodyStalled)  # the server frees the slot as for a stall
        assert slow.value.received < MIN_RATE * (slow.value.seconds - 1.0), (slow.value.received, slow.value.seconds)
        assert f"under the {MIN_RATE} bytes a second an upload must average after its first 1s" in str(slow.value)
        return asyncio.get_running_loop().time() - start

    assert asyncio.run(run()) >= 1.0  # never before the first stall limit passed

    def steady(content: StreamReader, left: int = 15) -> None:  # 8 KiB every 100 ms for 1.5 s: past the first 1 s
        if not left:
            content.feed_eof()
            return
        content.feed_data(b"x" * 2 * MIN_RATE)
        asyncio.get_running_loop().call_later(0.1, steady, content, left - 1)

    assert _read(steady, limit=10**6, stall=1.0) == b"x" * 2 * MIN_RATE * 15


def test_a_body_past_the_limit_is_refused_as_it_passes_it() -> None:
    """Chunked: no length up front; the read stops at the chunk that passes the limit, not at the end."""
    with pytest.raises(BodyTooLarge):
        _read(_pieces(b"x" * 600, b"x" * 600, eof=False), limit=1000)
    assert len(_read(_pieces(b"x" * 600, b"x" * 400), limit=1000)) == 1000


def test_a_client_that_goes_away_mid_body_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError):
        _read(_pieces(b"x" * 300, error=ConnectionResetError("Connection lost")))

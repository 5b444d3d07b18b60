"""Reading the body of an upload (``POST /samples``) within the panel's limits: its size, and how long it may stall.

The panel takes one upload at a time, so a body that stops arriving (a
client that sent its headers and part of the file, then went quiet without
closing the connection) would hold every other upload back for as long as
that client kept the connection open.  :func:`read_body` reads the body as
it comes and gives up once no byte of it came for :data:`UPLOAD_STALL`
seconds (:class:`BodyStalled`), as a page's send gives up after
``_page.SEND_TIMEOUT``; the server then answers 408 and frees the slot.  A
body that passes the upload limit is refused as it passes it
(:class:`BodyTooLarge`): a body sent in chunks names no length up front.
A body that never stalls but trickles (a byte every few seconds) would hold
the slot as long; past its first :data:`UPLOAD_STALL` seconds a body must
have kept :data:`MIN_RATE` bytes a second on average (:class:`BodyTooSlow`).

:data:`UPLOAD_STALL` is read once, when the module is imported, from
:data:`STALL_ENV` (tests shorten it that way, for a real panel process);
without it, or with anything but a number above 0, it is
:data:`DEFAULT_STALL`.  The variable's name starts with an underscore: it is
no configuration key (those are ``ENSEMBLE_*``, see ``actors.config``).

Runs on the panel server's event loop.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Mapping

from aiohttp import StreamReader

STALL_ENV = "_ENSEMBLE_PANEL_UPLOAD_STALL"
DEFAULT_STALL = 20.0  # seconds without a byte of the body (as a page's send limit, _page.SEND_TIMEOUT)
MIN_RATE = 4096  # bytes a second a body must average once its first stall limit passed (32 kbit/s)


class BodyStalled(Exception):
    """No byte of an upload's body came for the stall limit (the client went quiet without closing)."""

    def __init__(self, received: int, seconds: float) -> None:
        super().__init__(f"no byte of the body came for {seconds:g}s ({received} bytes had come)")
        self.received = received
        self.seconds = seconds


class BodyTooSlow(BodyStalled):
    """An upload's body came slower than :data:`MIN_RATE` on average, past its first stall limit (a trickle)."""

    def __init__(self, received: int, seconds: float, grace: float) -> None:
        Exception.__init__(self, f"{received} bytes of the body came in {seconds:.0f}s: under the {MIN_RATE} bytes "
                                 f"a second an upload must average after its first {grace:g}s")
        self.received = received
        self.seconds = seconds


class BodyTooLarge(Exception):
    """An upload's body passed the upload limit while it was read."""


def stall_limit(env: Mapping[str, str]) -> float:
    """Seconds an upload's body may go without a byte: ``env[STALL_ENV]`` if it is a number above 0, else the default.

    Pure; never raises (a value that is no such number is ignored).
    """
    try:
        seconds = float(env.get(STALL_ENV, ""))
    except ValueError:
        return DEFAULT_STALL
    return seconds if 0 < seconds and math.isfinite(seconds) else DEFAULT_STALL


UPLOAD_STALL = stall_limit(os.environ)


async def read_body(content: StreamReader, limit: int, stall: float | None = None) -> bytes:
    """The whole body from ``content``, read as it arrives.

    ``stall``: seconds it may go without a byte (:data:`UPLOAD_STALL` when
    None).  Holds at most ``limit`` bytes and one chunk.  Raises
    :class:`BodyStalled` when no byte came for ``stall`` seconds,
    :class:`BodyTooSlow` when, past the first ``stall`` seconds, fewer than
    :data:`MIN_RATE` bytes a second came on average,
    :class:`BodyTooLarge` past ``limit`` bytes, and ConnectionError when the
    client went away mid-body.
    """
    seconds = UPLOAD_STALL if stall is None else stall
    clock = asyncio.get_running_loop().time
    start = clock()
    body = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(content.readany(), seconds)
        except asyncio.TimeoutError:
            raise BodyStalled(len(body), seconds) from None
        if not chunk:
            return bytes(body)
        body.extend(chunk)
        elapsed = clock() - start
        if len(body) < MIN_RATE * (elapsed - seconds):
            raise BodyTooSlow(len(body), elapsed, seconds)
        if len(body) > limit:
            raise BodyTooLarge(f"the body passed {limit} bytes")

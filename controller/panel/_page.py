"""One open page's WebSocket and what waits to go to it, so that a page that stops reading costs a bounded amount.

Each page has its own writer task (:class:`PageSocket`).  State pushes are
coalesced: the sections not yet sent keep only their newest value, so a page
that reads slowly gets fewer, fuller messages and the panel holds at most one
state for it.  Answers to its actions wait in a queue of
:data:`MAX_REPLIES`; once full, the page's own reader waits (its actions are
no longer read: TCP holds them back), never another page's.  A send that does
not finish within :data:`SEND_TIMEOUT` seconds (the page reads nothing) closes
the page: its WebSocket is closed with a reason if that can still be sent,
then its connection is dropped.

Runs on the panel server's event loop only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiohttp import WSCloseCode, web

from actors.jsontext import json_text

log = logging.getLogger("ensemble.panel")
MAX_REPLIES = 64
SEND_TIMEOUT = 20.0  # seconds one message may take to leave (as the WebSocket heartbeat's interval)


class PageSocket:
    """A page's WebSocket with its pending state (coalesced) and its pending answers (bounded)."""

    def __init__(self, ws: web.WebSocketResponse, transport: Any, on_sent: Callable[[], None]) -> None:
        self.ws = ws
        self._on_sent = on_sent
        self._transport = transport  # dropped when the page stops reading (a close frame would never leave)
        self._state: dict[str, Any] = {}
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_REPLIES)
        self._ready = asyncio.Event()
        self.sent = 0
        self.notes: set[int] = set()  # notes the page started and has not ended: ended for it when it goes away
        self.closed = False
        self._closing: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference to a task
        self._handler = asyncio.current_task()  # the request's task, reading the page's messages
        self._task = asyncio.get_running_loop().create_task(self._write())

    def push_state(self, sections: dict[str, Any]) -> None:
        """Queue state sections for the page (newer values replace ones not yet sent).  Never waits."""
        if not self.closed:
            self._state.update(sections)
            self._ready.set()

    async def reply(self, message: dict[str, Any]) -> None:
        """Queue an answer to one of the page's actions; waits while :data:`MAX_REPLIES` are unsent."""
        if not self.closed:
            await self._replies.put(message)
            self._ready.set()

    def stop(self) -> None:
        """The page went away: stop its writer (what was pending is dropped)."""
        self.closed = True
        self._task.cancel()

    async def close(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop writing and close the WebSocket (within 1 s, else drop the connection)."""
        self.closed = True
        self._task.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), 1.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            self._drop()

    def _drop(self) -> None:
        """Drop the connection and end the request's task (its read may never learn of a close)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()  # a graceful close waits for data the page may never read
        if self._handler is not None and self._handler is not asyncio.current_task() and not self._handler.done():
            self._handler.cancel()

    async def _write(self) -> None:
        try:
            while not self.closed:
                await self._ready.wait()
                self._ready.clear()
                while not self._replies.empty():
                    await self._send(self._replies.get_nowait())
                if self._state:
                    sections, self._state = self._state, {}
                    await self._send({"type": "state", "data": sections})
        except asyncio.CancelledError:
            return
        except asyncio.TimeoutError:
            log.warning("event=panel-page-closed reason=it read nothing for %gs (its pushes are dropped)",
                        SEND_TIMEOUT)
            self._closing = asyncio.get_running_loop().create_task(
                self.close(WSCloseCode.POLICY_VIOLATION, f"the page read nothing for {SEND_TIMEOUT:g}s"))
        except (ConnectionError, RuntimeError):  # closed under it (by the page, or by a heartbeat without answer)
            self._drop()

    async def _send(self, message: dict[str, Any]) -> None:
        text = json_text(message)  # never NaN, which the page's JSON.parse refuses (a job's property may be one)
        await asyncio.wait_for(self.ws.send_str(text), SEND_TIMEOUT)
        self.sent += 1
        self._on_sent()

"""The panel's web server (aiohttp): the page, its assets, one WebSocket per page, sample uploads.

Runs an asyncio loop on a thread of the panel process
(:class:`PanelServer`).  Every request and WebSocket upgrade passes
:func:`controller.panel._security.refusal` first; a refused request, and one
aiohttp cannot parse, is one log line within a budget
(:mod:`controller.panel._requestlog`).  Live updates are
coalesced: while at least one page is connected, a broadcaster takes one
snapshot of the daemon every ``TICK`` seconds (:class:`~controller.panel._view.DaemonView`,
on the client thread, a one-thread executor) and hands each page the sections that changed; each
page's own writer (:class:`~controller.panel._page.PageSocket`) sends them as
one JSON message, coalescing while the page reads slowly, so a page that stops
reading holds up nobody else.  Without pages the panel asks the daemon nothing.
What may wait long on the daemon (a reload waiting for its script, an
upload) runs on a second thread with a client of its own (the slow thread),
so that it holds up no page's updates.  Notes (:data:`~controller.panel._view.NOTE_OPS`)
go on a third thread, which asks the daemon nothing: a note on is never held up
behind a snapshot or an action waiting on a slow daemon.  The first thing the
notes thread does is end the notes an earlier panel process left sounding
(:mod:`controller.panel._held`).

Every connection passes a gate first (:mod:`controller.panel._connections`):
one that has shown no token :data:`~controller.panel._connections.HEADER_TIMEOUT`
seconds after its accept is closed, and their number is capped with a reserve
for connections that showed the token.

Limits on what pages cost: at most :data:`MAX_PAGES` WebSockets, each counted
from before its handshake until it ends; one upload at a time, whose body may
go :data:`~controller.panel._upload.UPLOAD_STALL` seconds without a byte before
it is abandoned (408) and the next upload may start.

Whatever a page sends gets an answer on its socket: an action is parsed by
:func:`~controller.panel._view.parse_action`, a malformed one is answered
with the reason, a bug while doing it is logged with its traceback and
answered as an internal error; the socket stays open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import functools
import json
import logging
import threading
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from actors import EnsembleError
from controller.panel._connections import ConnectionGate, GatedSite
from controller.panel._page import PageSocket
from controller.panel._requestlog import request_logger
from controller.panel._security import COOKIE, WS_PROTOCOL, given_tokens, refusal
from controller.panel._settings import PanelSettings
from controller.panel._sound import MAX_UPLOAD
from controller.panel._upload import BodyStalled, BodyTooLarge, BodyTooSlow, read_body
from controller.panel._view import MAX_ACTION, NOTE_OPS, SLOW_OPS, ActionError, DaemonView, parse_action

log = logging.getLogger("ensemble.panel")
TICK = 0.25  # seconds between two snapshots while a page is open (as `ensemble top` refreshes)
ASSETS = {"panel.js": "text/javascript", "panel.css": "text/css", "index.html": "text/html",
          "favicon.svg": "image/svg+xml"}
# Paths of the page's shell: the same bytes for everyone, nothing of the daemon in them, served without a token.
# /favicon.ico is asked for by browsers on their own (and by any client that shows an icon): without it, each
# page load cost a line of the refused requests' budget.
SHELL_PATHS = ("/", "/favicon.ico")
# A WebSocket message over MAX_ACTION characters is answered with an error; one over MAX_WS_MESSAGE bytes is not
# even read: aiohttp closes the WebSocket with 1009 (message too big).
MAX_WS_MESSAGE = 16 * MAX_ACTION
MAX_PAGES = 32  # open WebSockets; one more is refused (each holds a socket, a writer task and pending state)
CLOSE_WAIT = 5.0  # seconds stop() waits for the daemon's client to close (it may be waiting for an answer)
STOP_TASKS_WAIT = 2.0  # seconds the server's thread gives its tasks to end once cancelled, as it stops


@functools.cache
def _asset(name: str) -> bytes:
    """The bytes of one of the page's files, read once: :meth:`PanelServer._serve` reads them all before it listens,
    so serving one never needs a descriptor (a flood of connections can take every one the process may open)."""
    return resources.files("controller.panel").joinpath("static", name).read_bytes()


class Hub:
    """The open pages, how many count against MAX_PAGES, and the last state of each section (what a new page gets)."""

    def __init__(self) -> None:
        self.pages: dict[web.WebSocketResponse, PageSocket] = {}
        self.admitted = 0  # pages counted against MAX_PAGES: open, or admitted and not through their handshake yet
        self.state: dict[str, Any] = {}
        self.pushes = 0  # messages sent to pages
        self.snapshots = 0
        self.wake = asyncio.Event()

    def changed(self, snap: dict[str, Any]) -> dict[str, Any]:
        """The sections of ``snap`` that differ from the last state (which becomes ``snap``)."""
        diff = {k: v for k, v in snap.items() if self.state.get(k) != v}
        self.state.update(diff)
        return diff

    def admit(self) -> bool:
        """Count one more page against :data:`MAX_PAGES` (before its handshake); False if that many are counted.

        Each True is followed by one :meth:`release`, whatever becomes of the page.
        """
        if self.admitted >= MAX_PAGES:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        """A page admitted ended (closed, or its handshake failed): its place goes to the next one."""
        self.admitted -= 1

    def sent(self) -> None:
        self.pushes += 1


class PanelServer:
    """The web server on its own thread and loop; ``start()`` binds (raises OSError if it cannot), ``stop()`` ends it."""

    def __init__(self, settings: PanelSettings, view: DaemonView) -> None:
        self.settings = settings
        self.view = view
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="panel-client")
        self.slow_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="panel-slow")  # SLOW_OPS, uploads
        # NOTE_OPS and the note offs of pages gone: in their order, and never behind a request to the daemon
        self.notes_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="panel-notes")
        self.loop = asyncio.new_event_loop()
        self.hub: Hub | None = None
        self._uploading: asyncio.Lock | None = None
        self.gate = ConnectionGate()
        self.port = 0
        self.error = ""
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="panel-http", daemon=True)

    # ------------------------------------------------------------------ lifecycle (main thread)
    def start(self, timeout: float = 10.0) -> int:
        """Bind and serve; returns the port.  Raises OSError when the address cannot be bound.

        First queues, on the notes thread, the note offs an earlier panel
        process owed (it died holding notes): they go out before any page's
        action, and whether or not the address can be bound.
        """
        self.notes_pool.submit(self.view.release_left_over)
        self.thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the panel's server did not start within {timeout:g}s")
        if self._bind_error is not None:
            raise self._bind_error
        return self.port

    def stop(self) -> None:
        """Close every page's WebSocket and the listening socket, end the thread, close the client.

        Blocks for at most 10 s plus :data:`CLOSE_WAIT`.  Each client is closed
        on its own thread, after the request it may be waiting on (a snapshot
        while a page is open, a reload).  When the daemon leaves that request
        unanswered for CLOSE_WAIT seconds (it is paused, or gone silent, which
        is why the panel stops), stop() says so in one log line and returns;
        the client then closes after that request, unless the process has
        exited first.
        """
        if self.thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            try:
                fut.result(5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        closed = [self.pool.submit(self.view.close), self.slow_pool.submit(self.view.close_slow)]
        _, late = concurrent.futures.wait(closed, CLOSE_WAIT)
        if late:
            log.warning("event=panel-stop-late reason=a request to the daemon is still unanswered after %gs; the "
                        "panel stops without waiting for it", CLOSE_WAIT)
        for pool in (self.pool, self.slow_pool, self.notes_pool):
            pool.shutdown(wait=False)  # each client closes after its request, unless the process is gone first

    def stats(self) -> dict[str, Any]:
        """For the actor's heartbeat: where it listens and how busy it is (never the token)."""
        hub = self.hub
        return {"host": self.settings.host, "port": self.port, "pages": len(hub.pages) if hub else 0,
                "pushes": hub.pushes if hub else 0, "snapshots": hub.snapshots if hub else 0, "error": self.error}

    # ------------------------------------------------------------------ the server's thread
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self.gate.exception_handler)  # a failed accept: one line in the budget
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._bind_error = exc if isinstance(exc, OSError) else OSError(str(exc))
            if self._runner is not None:  # set up, then the bind failed: nothing of it stays open
                self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        # the snapshot loop and any request still in progress end here, not as "destroyed but pending" tasks
        # when the closed loop is collected; a task that will not end within STOP_TASKS_WAIT is left
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=STOP_TASKS_WAIT))
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    async def _serve(self) -> None:
        for name in ASSETS:
            _asset(name)
        self.hub = Hub()
        self._uploading = asyncio.Lock()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_UPLOAD)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/favicon.ico", self._favicon)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/samples", self._upload)
        # what aiohttp logs of a request it cannot parse: one line, within the refusals' budget (_requestlog)
        # (the token masked in those lines and in the 400 aiohttp answers: the panel never logs or echoes it)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     logger=request_logger(self.settings.token))
        await self._runner.setup()
        site = GatedSite(self._runner, self.settings.host, self.settings.port, self.gate, self.settings.token)
        await site.start()
        self.port = site.port
        self.settings = dataclasses.replace(self.settings, port=self.port)  # port 0 asked: Host checks need the real one
        self.loop.create_task(self._broadcast())

    async def _shutdown(self) -> None:
        hub = self.hub
        if hub is not None:
            for page in list(hub.pages.values()):
                await page.close(reason="panel stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ requests
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        shell = request.path in SHELL_PATHS or request.path.startswith("/static/")  # the same bytes for everyone
        why = refusal(self.settings, request.method, request.headers, request.query.get("token"),
                      websocket=request.headers.get("Upgrade", "").lower() == "websocket", shell=shell)
        if why:
            request_logger().warning("event=panel-refused path=%s reason=%s", request.path[:100], why)
            return web.Response(status=403, text=f"ensemble panel: refused: {why}\n")
        if given_tokens(request.headers, request.query.get("token")):  # it showed a valid token (refusal checked it)
            self.gate.trust(request.transport)  # no header deadline for its connection now
        try:
            response: web.StreamResponse = await handler(request)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # the process is out of descriptors (a flood of connections holds them): a line within the budget and
            # an answer that says to retry, not a traceback in the log for each request
            request_logger().warning("event=panel-out-of-descriptors path=%s reason=%s", request.path[:100], exc)
            return web.Response(status=503, text=f"ensemble panel: out of file descriptors ({exc.strerror}); "
                                                 "retry once the connections holding them close\n",
                                headers={"Retry-After": "1"})
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        """The page's shell.  The page takes ``?token=`` into its tab's sessionStorage and out of the address bar."""
        response = web.Response(body=_asset("index.html"), content_type="text/html",
                                headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                         "Referrer-Policy": "no-referrer",
                                         "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; "
                                                                    "frame-ancestors 'none'"})
        if "token" in request.query:  # a cookie an earlier release set went to every port of this host: gone
            response.del_cookie(f"{COOKIE}_{self.port}", path="/")
        return response

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=ASSETS[name])

    async def _favicon(self, request: web.Request) -> web.StreamResponse:
        """The icon a browser asks for by convention (the page names ``/static/favicon.svg`` as its icon)."""
        return web.Response(body=_asset("favicon.svg"), content_type=ASSETS["favicon.svg"],
                            headers={"Cache-Control": "max-age=86400"})

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """A sound file in the body; one upload at a time, the body read only if it may be taken.

        A body that stops arriving gives the slot back after
        :data:`~controller.panel._upload.UPLOAD_STALL` seconds without a byte
        (408, one log line); the next upload may start then.
        """
        if request.content_length is not None and request.content_length > MAX_UPLOAD:
            return _refuse(413, f"the file is {request.content_length} bytes; the upload limit is {MAX_UPLOAD} "
                                f"bytes ({MAX_UPLOAD // (1024 * 1024)} MiB)")
        lock = self._uploading
        assert lock is not None
        if lock.locked():
            return _refuse(503, "another upload is in progress (the panel takes one at a time); send this file "
                                "when it is done")
        name = request.query.get("name", "")
        async with lock:
            try:
                data = await read_body(request.content, MAX_UPLOAD)
            except BodyTooLarge:
                return _refuse(413, f"the file is over the upload limit of {MAX_UPLOAD // (1024 * 1024)} MiB")
            except BodyTooSlow as exc:  # a trickle: as a stall, the slot is the next upload's
                request_logger().warning("event=panel-upload-too-slow name=%r received=%d expected=%s seconds=%.0f "
                                         "reason=%s; the upload is abandoned and the next one may start",
                                         name[:100], exc.received, request.content_length, exc.seconds, exc)
                return await _answer_and_close(request, _refuse(408, f"{exc}; the upload was abandoned (send the "
                                                                     "file again over a faster link)"))
            except BodyStalled as exc:  # the client went quiet without closing: the slot is the next upload's
                request_logger().warning("event=panel-upload-stalled name=%r received=%d expected=%s reason=no byte "
                                         "of the body for %gs; the upload is abandoned and the next one may start",
                                         name[:100], exc.received, request.content_length, exc.seconds)
                return await _answer_and_close(request, _refuse(408, f"no byte of the file came for {exc.seconds:g}s; "
                                                                     "the upload was abandoned (send the file again)"))
            except ConnectionError:  # the page went away mid-body (aiohttp would log a traceback): nobody to answer
                request_logger().info("event=panel-upload-aborted name=%r", name[:100])
                return _refuse(400, "the upload ended before its body did")
            try:
                text = await self.loop.run_in_executor(self.slow_pool, self.view.load_wav, name, data)
            except ActionError as exc:
                return _refuse(400, str(exc))
            except Exception:  # noqa: BLE001 - a bug: said in the log with its traceback, the server goes on
                log.exception("event=panel-upload-failed")
                return _refuse(500, "internal error in the panel while loading the file (the daemon's log has it)")
        return web.json_response({"ok": True, "detail": text})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        """A page's WebSocket: counted against MAX_PAGES from before its handshake until it ends."""
        hub = self.hub
        assert hub is not None
        if not hub.admit():
            return web.Response(status=503, text=f"ensemble panel: {MAX_PAGES} pages are open; close one\n")
        try:
            return await self._page(request, hub)
        finally:
            hub.release()

    async def _page(self, request: web.Request, hub: Hub) -> web.StreamResponse:
        """The handshake, then the page's messages until it closes (its slot in the hub already taken)."""
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_WS_MESSAGE, protocols=(WS_PROTOCOL,))
        try:
            await ws.prepare(request)
        except ConnectionError:  # the page went away mid-handshake (aiohttp would log a traceback): nobody to answer
            return web.Response(status=400, text="ensemble panel: the connection closed during the handshake\n")
        page = PageSocket(ws, request.transport, hub.sent)
        hub.pages[ws] = page
        hub.wake.set()
        if hub.state:
            page.push_state(dict(hub.state))
        try:
            async for m in ws:
                if m.type == WSMsgType.TEXT:
                    await page.reply(await self._answer(m.data, page.notes))
                    hub.wake.set()  # show the action's effect at once rather than at the next tick
                elif m.type == WSMsgType.BINARY:
                    await page.reply(_error(f"the panel reads actions as JSON text; a binary message "
                                            f"({len(m.data)} bytes) was ignored"))
        finally:
            hub.pages.pop(ws, None)
            page.stop()
            self._release_notes(page.notes)
            if request.transport is not None and request.transport.get_write_buffer_size():
                request.transport.abort()  # ended with data the page never read (its heartbeat failed): drop it
        return ws

    def _release_notes(self, notes: set[int]) -> None:
        """A page went away (closed, dropped, the panel stopping) holding ``notes``: their note offs, on the notes
        thread (queued there, not awaited: the page's task may be cancelled)."""
        if not notes:
            return
        held = sorted(notes)
        notes.clear()
        try:
            self.notes_pool.submit(self.view.release_notes, held)
        except RuntimeError:  # the pool is shut down: the panel's process is ending
            log.warning("event=panel-notes-held notes=%s reason=the panel stopped before their note offs", held)

    async def _answer(self, text: str, notes: set[int]) -> dict[str, Any]:
        """The answer to one action: an ack, or an error saying what was wrong (never raises).

        ``notes``: the notes this page holds, kept up to date by its note ons and offs.
        """
        seq: Any = None
        try:
            msg = parse_action(text)
            seq = msg.get("seq")
            seq = seq[:100] if isinstance(seq, str) else seq
            op = msg.get("op")  # a reload holds up no snapshot, and a slow daemon no note
            pool = self.notes_pool if op in NOTE_OPS else self.slow_pool if op in SLOW_OPS else self.pool
            detail = await self.loop.run_in_executor(pool, self.view.act, msg)
            if msg.get("op") == "note_on":
                notes.add(msg["note"])
            elif msg.get("op") == "note_off":
                notes.discard(msg["note"])
        except ActionError as exc:
            return _error(str(exc), seq)
        except Exception:  # noqa: BLE001 - a bug: said in the log with its traceback, the page's socket stays
            log.exception("event=panel-action-failed action=%r", text[:200])
            return _error("internal error in the panel while doing this action (the daemon's log has it)", seq)
        return {"type": "ack", "op": msg.get("op"), "detail": detail, "seq": seq}

    async def _broadcast(self) -> None:
        """Every TICK while pages are open: one snapshot, each page gets the changed sections in one message."""
        hub = self.hub
        assert hub is not None
        while True:
            if not hub.pages:
                hub.wake.clear()
                await hub.wake.wait()
            try:
                snap = await self.loop.run_in_executor(self.pool, self.view.collect)
                self.error = ""
            except EnsembleError as exc:
                self.error = str(exc).splitlines()[0][:300]
                snap = {"error": self.error}
            except Exception:  # noqa: BLE001 - a bug: said in the log; the pages keep their last state
                log.exception("event=panel-snapshot-failed")
                self.error = "internal error in the panel while taking a snapshot (the daemon's log has it)"
                snap = {"error": self.error}
            else:
                snap["error"] = ""
            hub.snapshots += 1
            diff = hub.changed(snap)
            if diff:
                for page in list(hub.pages.values()):
                    page.push_state(diff)
            hub.wake.clear()
            try:
                await asyncio.wait_for(hub.wake.wait(), TICK)
                await asyncio.sleep(0.03)  # a burst of actions still makes one snapshot
            except asyncio.TimeoutError:
                pass


def _error(message: str, seq: Any = None) -> dict[str, Any]:
    return {"type": "error", "message": message[:500], "seq": seq}


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` now, then close the connection (aiohttp would wait up to 10 s for the rest of the body)."""
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:  # the client went away meanwhile: nobody to answer
        pass
    request.protocol.force_close()  # the transport sends what was written, then closes
    return response

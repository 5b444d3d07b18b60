"""The panel's web server (aiohttp): the page, its assets, one WebSocket per page, sample uploads.

Runs an asyncio loop on a thread of the panel process
(:class:`PanelServer`).  Every request and WebSocket upgrade passes
:func:`controller.panel._security.refusal` first.  Live updates are
coalesced: while at least one page is connected, a broadcaster takes one
snapshot of the daemon every ``TICK`` seconds (:class:`~controller.panel._view.DaemonView`,
on a one-thread executor) and sends each page only the sections that changed,
as one JSON message.  Without pages the panel asks the daemon nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import threading
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from actors import EnsembleError
from controller.panel._security import cookie_name, refusal
from controller.panel._settings import PanelSettings
from controller.panel._view import ActionError, DaemonView

log = logging.getLogger("ensemble.panel")
TICK = 0.25  # seconds between two snapshots while a page is open (as `ensemble top` refreshes)
ASSETS = {"panel.js": "text/javascript", "panel.css": "text/css", "index.html": "text/html"}
MAX_WS_MESSAGE = 64 * 1024


def _asset(name: str) -> bytes:
    return resources.files("controller.panel").joinpath("static", name).read_bytes()


class Hub:
    """The connected pages and the last state each section had (what a new page gets first)."""

    def __init__(self) -> None:
        self.sockets: set[web.WebSocketResponse] = set()
        self.state: dict[str, Any] = {}
        self.pushes = 0  # messages sent to pages
        self.snapshots = 0
        self.wake = asyncio.Event()

    def changed(self, snap: dict[str, Any]) -> dict[str, Any]:
        """The sections of ``snap`` that differ from the last state (which becomes ``snap``)."""
        diff = {k: v for k, v in snap.items() if self.state.get(k) != v}
        self.state.update(diff)
        return diff

    async def send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        try:
            await ws.send_str(json.dumps(payload, default=str))
            self.pushes += 1
        except (ConnectionError, RuntimeError):
            self.sockets.discard(ws)


class PanelServer:
    """The web server on its own thread and loop; ``start()`` binds (raises OSError if it cannot), ``stop()`` ends it."""

    def __init__(self, settings: PanelSettings, view: DaemonView) -> None:
        self.settings = settings
        self.view = view
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="panel-client")
        self.loop = asyncio.new_event_loop()
        self.hub: Hub | None = None
        self.port = 0
        self.error = ""
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="panel-http", daemon=True)

    # ------------------------------------------------------------------ lifecycle (main thread)
    def start(self, timeout: float = 10.0) -> int:
        """Bind and serve; returns the port.  Raises OSError when the address cannot be bound."""
        self.thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the panel's server did not start within {timeout:g}s")
        if self._bind_error is not None:
            raise self._bind_error
        return self.port

    def stop(self) -> None:
        """Close every page's WebSocket and the listening socket, end the thread, close the client."""
        if self.thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            try:
                fut.result(5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        self.pool.submit(self.view.close).result(5)
        self.pool.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        """For the actor's heartbeat: where it listens and how busy it is (never the token)."""
        hub = self.hub
        return {"host": self.settings.host, "port": self.port, "pages": len(hub.sockets) if hub else 0,
                "pushes": hub.pushes if hub else 0, "snapshots": hub.snapshots if hub else 0, "error": self.error}

    # ------------------------------------------------------------------ the server's thread
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
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
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    async def _serve(self) -> None:
        self.hub = Hub()
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024 * 1024 + 4096)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/samples", self._upload)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        self.settings = dataclasses.replace(self.settings, port=self.port)  # port 0 asked: Host checks need the real one
        self.loop.create_task(self._broadcast())

    async def _shutdown(self) -> None:
        hub = self.hub
        if hub is not None:
            for ws in list(hub.sockets):
                await ws.close(code=1001, message=b"panel stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ requests
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        why = refusal(self.settings, request.method, request.headers, request.query.get("token"),
                      request.cookies.get(cookie_name(self.settings)),
                      websocket=request.headers.get("Upgrade", "").lower() == "websocket")
        if why:
            log.warning("event=panel-refused path=%s reason=%s", request.path[:100], why)
            return web.Response(status=403, text=f"ensemble panel: refused: {why}\n")
        response: web.StreamResponse = await handler(request)
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if "token" in request.query:  # the first visit: the token becomes a cookie and leaves the address bar
            response = web.HTTPSeeOther("/")
            response.set_cookie(cookie_name(self.settings), self.settings.token, httponly=True, samesite="Strict",
                                path="/")
            return response
        return web.Response(body=_asset("index.html"), content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                     "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; "
                                                                "frame-ancestors 'none'"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=ASSETS[name])

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("name", "")
        data = await request.read()
        try:
            text = await self.loop.run_in_executor(self.pool, self.view.load_wav, name, data)
        except ActionError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "detail": text})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        assert hub is not None
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_WS_MESSAGE)
        await ws.prepare(request)
        hub.sockets.add(ws)
        hub.wake.set()
        if hub.state:
            await hub.send(ws, {"type": "state", "data": hub.state})
        try:
            async for m in ws:
                if m.type != WSMsgType.TEXT:
                    continue
                await self._action(ws, m.data)
        finally:
            hub.sockets.discard(ws)
        return ws

    async def _action(self, ws: web.WebSocketResponse, text: str) -> None:
        assert self.hub is not None
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict):
                raise ActionError("an action is a JSON object")
            detail = await self.loop.run_in_executor(self.pool, self.view.act, msg)
            reply: dict[str, Any] = {"type": "ack", "op": msg.get("op"), "detail": detail, "seq": msg.get("seq")}
        except (ActionError, ValueError) as exc:
            reply = {"type": "error", "message": str(exc)[:500], "seq": None}
        await self.hub.send(ws, reply)
        self.hub.wake.set()  # show the action's effect at once rather than at the next tick

    async def _broadcast(self) -> None:
        """Every TICK while pages are open: one snapshot, each page gets the changed sections in one message."""
        hub = self.hub
        assert hub is not None
        while True:
            if not hub.sockets:
                hub.wake.clear()
                await hub.wake.wait()
            try:
                snap = await self.loop.run_in_executor(self.pool, self.view.collect)
                self.error = ""
            except EnsembleError as exc:
                self.error = str(exc).splitlines()[0][:300]
                snap = {"error": self.error}
            else:
                snap["error"] = ""
            hub.snapshots += 1
            diff = hub.changed(snap)
            if diff:
                for ws in list(hub.sockets):
                    await hub.send(ws, {"type": "state", "data": diff})
            hub.wake.clear()
            try:
                await asyncio.wait_for(hub.wake.wait(), TICK)
                await asyncio.sleep(0.03)  # a burst of actions still makes one snapshot
            except asyncio.TimeoutError:
                pass

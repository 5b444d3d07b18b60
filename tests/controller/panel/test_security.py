"""Who may use the panel: every request and WebSocket refused without the token, a foreign Host or Origin.

The rules are pure functions (first tests); then each refusal against the
real panel actor of a real daemon, over real sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import psutil
import pytest

from controller.panel._security import refusal
from controller.panel._settings import PanelSettings, is_loopback
from tests.controller.panel.conftest import Panel

S = PanelSettings("127.0.0.1", 8765, "secret-token")


@pytest.fixture
def panel(shared_panel: Panel) -> Panel:
    """One daemon for the module: these tests only knock on its door."""
    return shared_panel
HOST = {"Host": "127.0.0.1:8765"}
TOKEN = {"X-Ensemble-Token": "secret-token"}
ORIGIN = {"Origin": "http://127.0.0.1:8765"}


@pytest.mark.parametrize("headers, query, ws, method, shell, why", [
    (HOST, None, False, "GET", False, "no valid token"),
    (HOST, "wrong", False, "GET", False, "no valid token"),
    ({**HOST, "X-Ensemble-Token": "wrong"}, None, False, "GET", False, "no valid token"),
    (HOST, "", False, "GET", False, "no valid token"),
    (HOST, "wrong", False, "GET", True, "no valid token"),  # the shell needs no token, but a wrong one is refused
    ({**HOST, "Cookie": "ensemble_panel_8765=secret-token"}, None, False, "GET", False, "no valid token"),
    ({**HOST, **ORIGIN, "Sec-WebSocket-Protocol": "ensemble-panel, token.wrong"}, None, True, "GET", False,
     "no valid token"),
    ({**HOST, **ORIGIN, "Sec-WebSocket-Protocol": "ensemble-panel"}, None, True, "GET", True, "no valid token"),
    ({**HOST, **ORIGIN}, None, False, "POST", True, "no valid token"),  # only a GET of the shell goes without
    ({"Host": "evil.example:8765"}, "secret-token", False, "GET", False, "not this panel's address"),
    ({"Host": "evil.example:8765"}, None, False, "GET", True, "not this panel's address"),
    ({**HOST, **TOKEN}, None, True, "GET", False, "needs an Origin"),
    ({**HOST, **TOKEN, "Origin": "http://evil.example"}, None, True, "GET", False, "is not this panel's"),
    ({**HOST, **TOKEN}, None, False, "POST", False, "needs an Origin"),
    ({**HOST, **TOKEN, "Origin": "http://127.0.0.1:9999"}, None, False, "POST", False, "is not this panel's"),
])
def test_refusals(headers: dict[str, str], query: str | None, ws: bool, method: str, shell: bool, why: str) -> None:
    assert why in refusal(S, method, headers, query, websocket=ws, shell=shell)


@pytest.mark.parametrize("headers, query, ws, method, shell", [
    (HOST, "secret-token", False, "GET", False),
    ({"Host": "localhost:8765", **TOKEN}, None, False, "GET", False),
    (HOST, None, False, "GET", True),  # the page's shell: the same bytes for everyone
    ({**HOST, **ORIGIN, "Sec-WebSocket-Protocol": "ensemble-panel, token.secret-token"}, None, True, "GET", False),
    ({**HOST, **ORIGIN, **TOKEN}, None, True, "GET", False),
    ({**HOST, **ORIGIN, **TOKEN}, None, False, "POST", False),
])
def test_allowed(headers: dict[str, str], query: str | None, ws: bool, method: str, shell: bool) -> None:
    assert refusal(S, method, headers, query, websocket=ws, shell=shell) == ""


def test_only_loopback_counts_as_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert not PanelSettings("0.0.0.0", 1, "t").loopback


# ---------------------------------------------------------------------------- against the real panel
def test_what_carries_the_daemon_is_refused_without_the_token_and_the_shell_is_not(panel: Panel) -> None:
    """The WebSocket, uploads and any other path need the token; the page's shell (the same bytes for everyone,
    nothing of the daemon) is served without one, so that a reload finds the token its tab kept."""
    for method, path in (("GET", "/ws"), ("GET", "/nothing"), ("POST", "/samples?name=x.wav")):
        status, _, body = panel.request(method, path, {"Origin": panel.origin} if method == "POST" else {}, b"")
        assert status == 403 and b"no valid token" in body, path
    for path in ("/", "/static/panel.js", "/static/panel.css"):
        assert panel.request("GET", path)[0] == 200, path
    assert panel.request("GET", "/?token=not-the-token")[0] == 403


def test_the_token_opens_the_page_and_no_cookie_carries_it(panel: Panel) -> None:
    """A cookie of 127.0.0.1 goes to every port of 127.0.0.1 (any local web server had the token): none is set,
    one an earlier release set is deleted, and a cookie opens nothing."""
    status, headers, body = panel.request("GET", f"/?token={panel.token}")
    assert status == 200 and b"ensemble panel" in body
    assert panel.token not in headers.get("set-cookie", "")
    assert headers["set-cookie"].startswith(f"ensemble_panel_{panel.port}=") and "Max-Age=0" in headers["set-cookie"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert panel.request("GET", "/ws", {"Cookie": f"ensemble_panel_{panel.port}={panel.token}"})[0] == 403


def test_a_foreign_host_header_is_refused_even_with_the_token(panel: Panel) -> None:
    status, _, body = panel.request("GET", "/", {"Host": f"rebind.example:{panel.port}", "X-Ensemble-Token": panel.token})
    assert status == 403 and b"not this panel's address" in body


def test_an_upload_needs_the_panel_origin(panel: Panel) -> None:
    status, _, body = panel.request("POST", "/samples?name=x.wav", {"X-Ensemble-Token": panel.token}, b"RIFF")
    assert status == 403 and b"Origin" in body
    status, _, body = panel.request("POST", "/samples?name=x.wav",
                                    {"X-Ensemble-Token": panel.token, "Origin": "http://evil.example"}, b"RIFF")
    assert status == 403
    status, _, body = panel.request("POST", "/samples?name=x.wav", {"X-Ensemble-Token": panel.token, "Origin": panel.origin},
                                    b"not a wav file")
    assert status == 400 and b"not a sound file" in body  # past the guard, refused for what it is


async def _ws(panel: Panel, headers: dict[str, str]) -> Any:
    async with aiohttp.ClientSession() as s:
        try:
            async with s.ws_connect(f"http://127.0.0.1:{panel.port}/ws", headers=headers) as ws:
                msg = await ws.receive_json(timeout=20)
                return msg
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def test_the_websocket_is_refused_without_the_token_or_with_a_foreign_origin(panel: Panel) -> None:
    assert asyncio.run(_ws(panel, {"Origin": panel.origin})) == 403
    assert asyncio.run(_ws(panel, {"Origin": panel.origin, "X-Ensemble-Token": "x"})) == 403
    assert asyncio.run(_ws(panel, {"Origin": panel.origin, "Cookie": f"ensemble_panel_{panel.port}={panel.token}"})) == 403
    assert asyncio.run(_ws(panel, {"Origin": "http://evil.example", "X-Ensemble-Token": panel.token})) == 403
    assert asyncio.run(_ws(panel, {"X-Ensemble-Token": panel.token})) == 403  # no Origin at all
    first = asyncio.run(_ws(panel, {"Origin": panel.origin, "X-Ensemble-Token": panel.token}))
    assert first["type"] == "state" and {"daemon", "actors", "jobs", "params", "ui"} <= set(first["data"])
    # as the page sends it (a browser's WebSocket sets no header): a subprotocol, answered without the token
    offered = {"Origin": panel.origin, "Sec-WebSocket-Protocol": f"ensemble-panel, token.{panel.token}"}
    assert asyncio.run(_ws(panel, offered))["type"] == "state"
    assert asyncio.run(_ws(panel, {**offered, "Sec-WebSocket-Protocol": "ensemble-panel, token.wrong"})) == 403


def test_it_listens_on_loopback_only(panel: Panel) -> None:
    actor = panel.daemon.actor("panel")
    addrs = {c.laddr for c in psutil.Process(actor.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert addrs == {("127.0.0.1", panel.port)}
    assert actor.stats["host"] == "127.0.0.1" and "token" not in str(actor.stats)  # status never shows the token

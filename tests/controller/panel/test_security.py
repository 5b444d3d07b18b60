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


@pytest.mark.parametrize("headers, query, cookie, ws, method, why", [
    (HOST, None, None, False, "GET", "no valid token"),
    (HOST, "wrong", None, False, "GET", "no valid token"),
    (HOST, None, "wrong", False, "GET", "no valid token"),
    (HOST, "", "", False, "GET", "no valid token"),
    ({"Host": "evil.example:8765"}, "secret-token", None, False, "GET", "not this panel's address"),
    (HOST, None, "secret-token", True, "GET", "needs an Origin"),
    ({**HOST, "Origin": "http://evil.example"}, None, "secret-token", True, "GET", "is not this panel's"),
    (HOST, None, "secret-token", False, "POST", "needs an Origin"),
    ({**HOST, "Origin": "http://127.0.0.1:9999"}, None, "secret-token", False, "POST", "is not this panel's"),
])
def test_refusals(headers: dict[str, str], query: str | None, cookie: str | None, ws: bool, method: str,
                  why: str) -> None:
    assert why in refusal(S, method, headers, query, cookie, websocket=ws)


@pytest.mark.parametrize("headers, query, cookie, ws, method", [
    (HOST, "secret-token", None, False, "GET"),
    ({"Host": "localhost:8765"}, None, "secret-token", False, "GET"),
    ({**HOST, "Origin": "http://127.0.0.1:8765"}, None, "secret-token", True, "GET"),
    ({**HOST, "Origin": "http://127.0.0.1:8765"}, None, "secret-token", False, "POST"),
])
def test_allowed(headers: dict[str, str], query: str | None, cookie: str | None, ws: bool, method: str) -> None:
    assert refusal(S, method, headers, query, cookie, websocket=ws) == ""


def test_only_loopback_counts_as_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert not PanelSettings("0.0.0.0", 1, "t").loopback


# ---------------------------------------------------------------------------- against the real panel
def test_the_page_and_its_assets_are_refused_without_the_token(panel: Panel) -> None:
    for path in ("/", "/static/panel.js", "/static/panel.css", "/ws", "/nothing"):
        status, _, body = panel.request("GET", path)
        assert status == 403, path
        assert b"no valid token" in body
    status, _, _ = panel.request("GET", "/?token=not-the-token")
    assert status == 403


def test_the_token_in_the_url_becomes_a_cookie_that_opens_the_page(panel: Panel) -> None:
    status, headers, _ = panel.request("GET", f"/?token={panel.token}")
    assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert cookie.startswith(panel.cookie) and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, headers, body = panel.request("GET", "/", {"Cookie": panel.cookie})
    assert status == 200 and b"ensemble panel" in body
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert panel.request("GET", "/static/panel.js", {"Cookie": panel.cookie})[0] == 200


def test_a_foreign_host_header_is_refused_even_with_the_token(panel: Panel) -> None:
    status, _, body = panel.request("GET", "/", {"Host": f"rebind.example:{panel.port}", "Cookie": panel.cookie})
    assert status == 403 and b"not this panel's address" in body


def test_an_upload_needs_the_panel_origin(panel: Panel) -> None:
    status, _, body = panel.request("POST", "/samples?name=x.wav", {"Cookie": panel.cookie}, b"RIFF")
    assert status == 403 and b"Origin" in body
    status, _, body = panel.request("POST", "/samples?name=x.wav",
                                    {"Cookie": panel.cookie, "Origin": "http://evil.example"}, b"RIFF")
    assert status == 403
    status, _, body = panel.request("POST", "/samples?name=x.wav", {"Cookie": panel.cookie, "Origin": panel.origin},
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


def test_the_websocket_is_refused_without_cookie_or_with_a_foreign_origin(panel: Panel) -> None:
    assert asyncio.run(_ws(panel, {"Origin": panel.origin})) == 403
    assert asyncio.run(_ws(panel, {"Origin": panel.origin, "Cookie": "ensemble_panel_1=x"})) == 403
    assert asyncio.run(_ws(panel, {"Origin": "http://evil.example", "Cookie": panel.cookie})) == 403
    assert asyncio.run(_ws(panel, {"Cookie": panel.cookie})) == 403  # no Origin at all
    first = asyncio.run(_ws(panel, {"Origin": panel.origin, "Cookie": panel.cookie}))
    assert first["type"] == "state" and {"daemon", "actors", "jobs", "params", "ui"} <= set(first["data"])


def test_it_listens_on_loopback_only(panel: Panel) -> None:
    actor = panel.daemon.actor("panel")
    addrs = {c.laddr for c in psutil.Process(actor.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert addrs == {("127.0.0.1", panel.port)}
    assert actor.stats["host"] == "127.0.0.1" and "token" not in str(actor.stats)  # status never shows the token

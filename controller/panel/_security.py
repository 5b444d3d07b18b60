"""Who may use the panel: the token (in the URL once, then a cookie), the Host and the Origin.

Pure functions over a request's parts, testable without sockets; the server
(``controller.panel._server``) calls :func:`refusal` for every HTTP request
and WebSocket upgrade and answers 403 with the reason when it returns one.

* **Token**: ``?token=T`` on the first visit or the cookie set then; compared
  in constant time.  Without either, everything is refused (the page, its
  assets, the WebSocket, uploads).
* **Host**: on loopback, the ``Host`` header must name the loopback address
  the panel serves (a page on another site that resolves its own name to
  127.0.0.1 — DNS rebinding — sends its own name and is refused).
* **Origin**: a WebSocket upgrade and every request that changes something
  (POST) must carry an ``Origin`` equal to the panel's own; browsers send it
  and scripts of other sites cannot forge it.
"""

from __future__ import annotations

import hmac
from typing import Mapping

from controller.panel._settings import LOOPBACK_NAMES, PanelSettings

COOKIE = "ensemble_panel"


def cookie_name(settings: PanelSettings) -> str:
    """The cookie's name (per port: two panels on one host keep their own)."""
    return f"{COOKIE}_{settings.port}"


def allowed_hosts(settings: PanelSettings) -> frozenset[str]:
    """Host header values that name this panel."""
    names = set(LOOPBACK_NAMES) | {"[::1]"} if settings.loopback else {settings.host}
    if ":" in settings.host and not settings.host.startswith("["):
        names.add(f"[{settings.host}]")
    return frozenset(f"{n}:{settings.port}" for n in names)


def token_ok(settings: PanelSettings, given: str | None) -> bool:
    """Whether ``given`` is the panel's token (constant-time compare; an empty token never matches)."""
    return bool(given) and bool(settings.token) and hmac.compare_digest(given.encode(), settings.token.encode())  # type: ignore[union-attr]


def refusal(settings: PanelSettings, method: str, headers: Mapping[str, str], query_token: str | None,
            cookie_token: str | None, websocket: bool) -> str:
    """Why this request is refused, or "" if it may go on."""
    host = headers.get("Host", "")
    if settings.loopback and host not in allowed_hosts(settings):
        return f"Host {host[:100]!r} is not this panel's address"
    origin = headers.get("Origin")
    if origin is not None or websocket or method not in ("GET", "HEAD"):
        if origin is None:
            return "a WebSocket or a change needs an Origin header (a browser sends it)"
        if origin != f"http://{host}":
            return f"Origin {origin[:100]!r} is not this panel's ({'http://' + host!r})"
    if not (token_ok(settings, query_token) or token_ok(settings, cookie_token)):
        return "no valid token: open the URL `ensemble panel` prints (it carries ?token=...)"
    return ""

"""Who may use the panel: the token (sent explicitly with every request that needs it), the Host and the Origin.

Pure functions over a request's parts, testable without sockets; the server
(``controller.panel._server``) calls :func:`refusal` for every HTTP request
and WebSocket upgrade and answers 403 with the reason when it returns one.

* **Token**: ``?token=T`` in the URL, the :data:`TOKEN_HEADER` header (the
  page's uploads), or, on a WebSocket, the subprotocol
  ``token.T`` offered beside :data:`WS_PROTOCOL` (a browser's WebSocket can
  set no header); compared in constant time.  There is no cookie: browsers
  send a cookie of 127.0.0.1 to every port of 127.0.0.1, so any local web
  server would have received it.  The page keeps the token in its tab's
  ``sessionStorage``, which only this scheme, host and port can read.
  Without a token the WebSocket and uploads are refused.  The page's shell
  (``/`` and its static files, the same bytes for everyone, nothing of the
  daemon in them) is served without one, so that a reload finds the token
  the tab kept; a token that is given must be valid, there too.
* **Host**: on loopback, the ``Host`` header must name the loopback address
  the panel serves (a page on another site that resolves its own name to
  127.0.0.1 — DNS rebinding — sends its own name and is refused).
* **Origin**: a WebSocket upgrade and every request that changes something
  (POST) must carry an ``Origin`` equal to the panel's own; browsers send it
  and scripts of other sites cannot forge it.
"""

from __future__ import annotations

import hmac
import re
from typing import Mapping

from controller.panel._settings import LOOPBACK_NAMES, PanelSettings

COOKIE = "ensemble_panel"  # the cookie earlier releases kept the token in (ensemble_panel_<port>); deleted on sight
TOKEN_HEADER = "X-Ensemble-Token"
WS_PROTOCOL = "ensemble-panel"  # the subprotocol the panel answers with (never the token's)
WS_TOKEN_PREFIX = "token."  # the subprotocol that carries the token: token.<T> (a token is URL-safe base64)
MASK = "<token>"  # what stands for a token in what the panel logs or echoes
# A value given for a token, as it shows in raw request text: ?token=V (or &token=V), the header "X-Ensemble-Token: V",
# the subprotocol token.V.  The value runs to the next separator of a query, a header, a repr'd bytes literal.
_TOKEN_FIELD = re.compile(rf"(token\s*=\s*|{re.escape(TOKEN_HEADER)}\s*:\s*|{re.escape(WS_TOKEN_PREFIX)})([^&\s'\",;]*)",
                          re.IGNORECASE)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")  # URL-safe base64: what a token is made of
MIN_PIECE = 8  # a cut-off piece of the token this long (48 bits) or longer is masked too


def allowed_hosts(settings: PanelSettings) -> frozenset[str]:
    """Host header values that name this panel."""
    names = set(LOOPBACK_NAMES) | {"[::1]"} if settings.loopback else {settings.host}
    if ":" in settings.host and not settings.host.startswith("["):
        names.add(f"[{settings.host}]")
    return frozenset(f"{n}:{settings.port}" for n in names)


def token_ok(settings: PanelSettings, given: str | None) -> bool:
    """Whether ``given`` is the panel's token (constant-time compare; an empty token never matches)."""
    return bool(given) and bool(settings.token) and hmac.compare_digest(given.encode(), settings.token.encode())  # type: ignore[union-attr]


def given_tokens(headers: Mapping[str, str], query_token: str | None) -> list[str]:
    """The tokens a request carries: in its URL, its :data:`TOKEN_HEADER`, its WebSocket subprotocols."""
    tokens = [t for t in (query_token, headers.get(TOKEN_HEADER)) if t is not None]
    for offered in headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(WS_TOKEN_PREFIX):
            tokens.append(offered[len(WS_TOKEN_PREFIX):])
    return tokens


def mask_tokens(text: str, token: str = "") -> str:
    """``text`` with every token in it replaced by :data:`MASK`: for what the panel logs or echoes of a request.

    Masks the value of any ``token=``, ``X-Ensemble-Token:`` or ``token.``
    field (whatever it holds: a bad request's text may be cut or garbled),
    and ``token`` itself wherever it appears, whole or cut off at either end
    (a parser's reason quotes the request cut short) down to
    :data:`MIN_PIECE` characters.  Pure; cost linear in ``len(text)``.
    """
    text = _TOKEN_FIELD.sub(lambda m: m.group(1) + MASK, text)
    if not token:
        return text
    text = text.replace(token, MASK)
    return _TOKEN_CHARS.sub(lambda m: _mask_piece(m.group(0), token), text)


def _mask_piece(run: str, token: str) -> str:
    """A run of token characters with the end that is the token's start, or the start that is its end, masked."""
    if len(run) < MIN_PIECE:
        return run
    for n in range(min(len(run), len(token)), MIN_PIECE - 1, -1):
        if run.endswith(token[:n]):
            return run[:-n] + MASK
    for n in range(min(len(run), len(token)), MIN_PIECE - 1, -1):
        if run.startswith(token[-n:]):
            return MASK + run[n:]
    return run


def refusal(settings: PanelSettings, method: str, headers: Mapping[str, str], query_token: str | None,
            websocket: bool, shell: bool = False) -> str:
    """Why this request is refused, or "" if it may go on.

    ``shell``: a GET of the page's shell (``/``, its static files), which
    needs no token, though one given must be valid.
    """
    host = headers.get("Host", "")
    if settings.loopback and host not in allowed_hosts(settings):
        return f"Host {host[:100]!r} is not this panel's address"
    origin = headers.get("Origin")
    if origin is not None or websocket or method not in ("GET", "HEAD"):
        if origin is None:
            return "a WebSocket or a change needs an Origin header (a browser sends it)"
        if origin != f"http://{host}":
            return f"Origin {origin[:100]!r} is not this panel's ({'http://' + host!r})"
    tokens = given_tokens(headers, query_token)
    if shell and not websocket and method in ("GET", "HEAD") and not tokens:
        return ""
    if not any(token_ok(settings, t) for t in tokens):
        return "no valid token: open the URL `ensemble panel` prints (it carries ?token=...)"
    return ""

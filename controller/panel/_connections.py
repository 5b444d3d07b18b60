"""The panel's connections before the token: a deadline for each, a cap on them all, and quiet accept errors.

Anyone who can reach the panel's port can open connections, token or not.
aiohttp has no limit on how long a request's headers may take, nor on how
many connections are open, so a peer that opens connections and never
finishes a request's headers held each one, and its file descriptor, for
ever; once the process had none left, asyncio logged a traceback for every
accept that failed (thousands a second: 155 MB of daemon log in 50 s) and
the token holder's requests timed out.  So every connection passes a
:class:`Gate`:

* a connection is **untrusted** from its accept until a request on it passes
  the panel's checks (:func:`controller.panel._security.refusal`, token
  included); one still untrusted :data:`HEADER_TIMEOUT` seconds after its
  accept is closed (a request without the token is answered 403 and keeps the
  connection untrusted, so it closes too);
* at most :func:`limits` connections are open: a new one past the total is
  closed at once; untrusted ones may take all but a reserve of
  :data:`RESERVE`, and a new one past that closes the oldest untrusted
  connection instead, so a token holder's fresh connection is the last to go
  and the reserve stays for connections that showed the token;
* an accept that fails for want of descriptors (the process's limit, the
  system's) is one log line within the refused requests' budget
  (:mod:`controller.panel._requestlog`), not a traceback each time;
* aiohttp's answer to a request it cannot parse echoes the parser's reason,
  which quotes the request: :class:`MaskingRequestHandler` masks the token
  in it (:func:`controller.panel._security.mask_tokens`).

:class:`Gate` is bookkeeping over opaque connection handles with an
injectable clock (testable without sockets); :class:`GatedProtocol` puts
it in front of aiohttp's protocol, and :class:`GatedSite` serves through it.
Runs on the panel server's event loop only.
"""

from __future__ import annotations

import asyncio
import collections
import resource
from typing import Any, Callable

from aiohttp import web

from controller.panel._requestlog import request_logger
from controller.panel._security import mask_tokens

HEADER_TIMEOUT = 10.0  # seconds a connection may stay open without a request that passed the checks
CONNECTIONS = 256  # connections open at once (lower when the process's descriptor limit is low)
RESERVE = 64  # of those, kept for connections that showed the token (pages, uploads, their keep-alive)
CHECK_EVERY = 1.0  # seconds between two sweeps for untrusted connections past their deadline
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for an accept that found no descriptor


def limits(soft_nofile: int | None = None) -> tuple[int, int]:
    """``(total, untrusted)``: connections open at once, and how many of them may be untrusted.

    The total is :data:`CONNECTIONS`, or half the open-files limit when that
    is lower (the other half for the daemon's client and the process itself).
    """
    if soft_nofile is None:
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_nofile == resource.RLIM_INFINITY:
            soft_nofile = 1 << 20
    total = max(8, min(CONNECTIONS, soft_nofile // 2))
    return total, max(4, total - min(RESERVE, total // 4))


class Gate:
    """Which connections are open, which showed the token, and when each untrusted one must go.

    Connections are opaque handles; the caller closes what :meth:`opened`
    and :meth:`expired` name.  ``limits``: ``(total, untrusted)``, as
    :func:`limits` gives them.
    """

    def __init__(self, limits: tuple[int, int], timeout: float = HEADER_TIMEOUT,
                 clock: Callable[[], float] = lambda: asyncio.get_running_loop().time()) -> None:
        self.total, self.untrusted_cap = limits
        self.timeout = timeout
        self.clock = clock
        self.untrusted: collections.OrderedDict[Any, float] = collections.OrderedDict()  # handle -> deadline, oldest first
        self.trusted: set[Any] = set()
        self.refused = 0  # connections closed at once: the total was reached
        self.evicted = 0  # untrusted connections closed for a newer one
        self.timed_out = 0  # untrusted connections closed at their deadline

    def open(self) -> int:
        return len(self.untrusted) + len(self.trusted)

    def opened(self, conn: Any) -> list[Any]:
        """A connection was accepted: what to close now (``[conn]`` itself past the total, else maybe the oldest
        untrusted one), and ``conn`` is counted unless it is closed."""
        if self.open() >= self.total:
            self.refused += 1
            return [conn]
        drop: list[Any] = []
        if len(self.untrusted) >= self.untrusted_cap:
            oldest, _ = self.untrusted.popitem(last=False)
            self.evicted += 1
            drop.append(oldest)
        self.untrusted[conn] = self.clock() + self.timeout
        return drop

    def trust(self, conn: Any) -> None:
        """A request on ``conn`` passed every check: it keeps its place until it closes."""
        if self.untrusted.pop(conn, None) is not None:
            self.trusted.add(conn)

    def closed(self, conn: Any) -> None:
        self.untrusted.pop(conn, None)
        self.trusted.discard(conn)

    def expired(self) -> list[Any]:
        """The untrusted connections past their deadline (no longer counted: the caller closes them)."""
        now = self.clock()
        gone = [c for c, deadline in self.untrusted.items() if deadline <= now]
        for c in gone:
            del self.untrusted[c]
        self.timed_out += len(gone)
        return gone


class GatedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the gate: counted, closed when the gate says so."""

    def __init__(self, gate: "ConnectionGate", make: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.make = make
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.gate.admit(transport):
            self.inner = self.make()
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.lost(self.transport)
        if self.inner is not None:
            self.inner.connection_lost(exc)


class ConnectionGate:
    """The :class:`Gate` on the server's loop: closes what it names, sweeps deadlines, logs within the budget."""

    def __init__(self, gate: Gate | None = None) -> None:
        self.gate = gate or Gate(limits())
        self._sweeper: asyncio.TimerHandle | None = None
        self.accept_failures = 0

    def protocol(self, make: Callable[[], asyncio.Protocol]) -> GatedProtocol:
        return GatedProtocol(self, make)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection; False if it was closed at once (the total reached)."""
        drop = self.gate.opened(transport)
        for conn in drop:
            conn.abort()
        if transport in drop:
            if _milestone(self.gate.refused):
                _note("event=panel-connection-refused open=%d cap=%d reason=the panel holds as many connections as "
                      "it may; new ones are closed until some close (count %d)", self.gate.open(), self.gate.total,
                      self.gate.refused)
            return False
        if drop and _milestone(self.gate.evicted):
            _note("event=panel-connection-dropped untrusted=%d cap=%d reason=the oldest connection without a request "
                  "that showed the token was closed for a new one (count %d)", len(self.gate.untrusted),
                  self.gate.untrusted_cap, self.gate.evicted)
        self._sweep_later()
        return True

    def trust(self, transport: Any) -> None:
        self.gate.trust(transport)

    def lost(self, transport: Any) -> None:
        self.gate.closed(transport)

    def _sweep_later(self) -> None:
        if self._sweeper is None and self.gate.untrusted:
            self._sweeper = asyncio.get_running_loop().call_later(CHECK_EVERY, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        gone = self.gate.expired()
        for conn in gone:
            conn.abort()
        if gone:
            _note("event=panel-connection-timeout closed=%d reason=no request that showed the token within %gs of "
                  "the accept (count %d)", len(gone), self.gate.timeout, self.gate.timed_out)
        self._sweep_later()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: a failed accept is one budgeted line; anything else as asyncio logs it."""
        if context.get("message") == ACCEPT_FAILED:
            self.accept_failures += 1
            if _milestone(self.accept_failures):
                _note("event=panel-accept-failed reason=%s open=%d count=%d detail=asyncio retries the accept every "
                      "second", str(context.get("exception"))[:200], self.gate.open(), self.accept_failures)
            return
        loop.default_exception_handler(context)


def _milestone(count: int) -> bool:
    """Whether the ``count``-th connection closed for the cap is logged (the 1st, 10th, 100th, 1000th, every 10,000th)."""
    return count in (1, 10, 100, 1000) or count % 10_000 == 0


def _note(fmt: str, *args: Any) -> None:
    request_logger().warning(fmt, *args)  # within the refused requests' budget


class MaskingRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, whose error answers never echo the token.

    aiohttp answers a request it cannot parse (a line over 8 KiB, a bad
    request line, a control character) 400 with the parser's reason as the
    body, and the reason quotes the request: ``?token=T`` included.
    """

    def __init__(self, manager: web.Server, token: str, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.token = token

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if message is not None:
            message = mask_tokens(message, self.token)
        return super().handle_error(request, status, exc, message)


class GatedSite(web.BaseSite):
    """aiohttp's TCPSite, with every connection passed through a :class:`ConnectionGate`.

    ``token``: the panel's, masked in what aiohttp answers to a request it
    cannot parse (:class:`MaskingRequestHandler`).
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate, token: str = "") -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._gate = gate
        self._token = token
        self.port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        handler = self._runner.server
        assert handler is not None
        loop = asyncio.get_running_loop()
        # what web.Server() makes, but masking: the runner's handler arguments (logger, access_log) as it keeps them
        kwargs = dict(handler._kwargs)

        def make() -> MaskingRequestHandler:
            return MaskingRequestHandler(handler, self._token, loop=loop, **kwargs)

        server = await loop.create_server(lambda: self._gate.protocol(make), self._host, self._port,
                                          reuse_address=True)
        self._server = server
        if server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._gate.close()
        await super().stop()

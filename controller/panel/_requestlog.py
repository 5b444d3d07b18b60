"""What the panel logs about requests it refuses: one line each, and a bounded number of them.

Anyone who can reach the panel's port can send requests, token or not.
aiohttp logs a request it cannot parse (a header line over 8 KiB, a
malformed request line, an invalid header) at ERROR with its full
traceback, about ten lines each, and the panel logs one line for each
request it refuses (no token, a foreign Host or Origin): either way the
sender decides how fast the daemon's log grows.  The web server logs
through :func:`request_logger`, whose :class:`RequestLines` filter

* turns aiohttp's record of a request it could not parse (an
  ``HttpProcessingError``: the client's fault) into one WARNING line
  naming the peer, the status answered and the reason, with every token
  in it masked (:func:`~controller.panel._security.mask_tokens`: the
  reason quotes the request, ``?token=`` included, and the panel never
  puts the token in the log);
* lets such lines, and the panel's own refusals, through within a budget
  (:class:`Budget`: :data:`BURST` at once, refilled at :data:`PER_MINUTE`
  a minute); the next line that goes out says how many were left out.

Anything else on that logger passes unchanged: a bug in a handler keeps its
traceback and is never left out.  Pure bookkeeping over log records (no
sockets); runs on the server's thread.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from aiohttp.http_exceptions import HttpProcessingError

from controller.panel._security import mask_tokens

LOGGER = "ensemble.panel.http"
BURST = 20  # lines about refused requests that may go out at once
PER_MINUTE = 20  # lines the budget regains per minute
REASON_CHARS = 200  # of the parser's reason (it quotes the client's bytes)


class Budget:
    """A token bucket of log lines: :meth:`take` says whether one more may go out, and how many did not."""

    def __init__(self, burst: int = BURST, per_minute: float = PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.left_out = 0  # lines refused since the last one that went out

    def take(self) -> int | None:
        """None if the line must be left out (counted); else how many were left out before it (then reset)."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            self.left_out += 1
            return None
        self.tokens -= 1.0
        left_out, self.left_out = self.left_out, 0
        return left_out


class RequestLines(logging.Filter):
    """The filter of :func:`request_logger`: a client's bad request in one line, and every such line budgeted."""

    def __init__(self, budget: Budget | None = None, token: str = "") -> None:
        super().__init__()
        self.budget = budget or Budget()
        self.token = token  # the panel's: masked in every line that goes out (set by request_logger)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not isinstance(exc, HttpProcessingError):
            return True  # a bug: its traceback, always
        left_out = self.budget.take()
        if left_out is None:
            return False
        if isinstance(exc, HttpProcessingError):
            text = _bad_request(record, exc, self.token)
        else:
            text = mask_tokens(record.getMessage(), self.token) if self.token else record.getMessage()
        if left_out:
            text += f" (and {left_out} more refused requests not logged)"
        record.msg, record.args = text, None
        return True


def _bad_request(record: logging.LogRecord, exc: HttpProcessingError, token: str) -> str:
    """aiohttp's record of a request it could not parse, as one WARNING line (its traceback dropped, tokens masked)."""
    record.exc_info = record.exc_text = record.stack_info = None
    record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
    reason = mask_tokens(" ".join(str(exc.message).split()), token)[:REASON_CHARS]
    return f"event=panel-bad-request status={exc.code} reason={reason} detail={mask_tokens(record.getMessage(), token)}"


def request_logger(token: str | None = None) -> logging.Logger:
    """The logger the panel's web server (and aiohttp under it) logs requests to, with its filter (added once).

    ``token``: the panel's, which the filter masks from then on wherever it
    shows in a line (the server gives it as it starts; None keeps the one set).
    """
    logger = logging.getLogger(LOGGER)
    lines = next((f for f in logger.filters if isinstance(f, RequestLines)), None)
    if lines is None:
        lines = RequestLines()
        logger.addFilter(lines)
    if token is not None:
        lines.token = token
    return logger

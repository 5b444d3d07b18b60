"""The log lines of refused requests (``controller.panel._requestlog``): one line each, within a budget.

Pure: log records through a real logger with a fake clock, no sockets
(test_panel_hostile.py sends the requests to a real panel).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

import pytest
from aiohttp.http_exceptions import BadStatusLine, LineTooLong

from actors._logging import OneLineFormatter
from controller.panel._requestlog import Budget, RequestLines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@contextlib.contextmanager
def _filtered(lines: RequestLines) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own with the filter ``lines``, and what it wrote (one line a record)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.requestlog.{id(out)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.addFilter(lines)
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def logged(clock: Clock) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with the filter (a budget of 3 lines, one regained a second) and what it wrote."""
    with _filtered(RequestLines(Budget(3, 60, clock))) as made:
        yield made


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - for its traceback
        return caught


def test_the_budget_lets_a_burst_through_then_regains_lines_and_counts_those_left_out(clock: Clock) -> None:
    budget = Budget(3, 60, clock)  # one line a second
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 1.0
    assert budget.take() == 2 and budget.take() is None  # the line that goes out says how many did not
    clock.now += 3600.0
    assert [budget.take() for _ in range(4)] == [1, 0, 0, None]  # never more than the burst at once


def test_a_request_the_parser_refused_is_one_warning_line_with_the_reason(
        logged: tuple[logging.Logger, io.StringIO]) -> None:
    """As aiohttp logs it: ``logger.exception("Error handling request from %s", peer, exc_info=exc)``."""
    logger, out = logged
    exc = _raised(LineTooLong(b"a" * 100_000, "8190"))
    logger.exception("Error handling request from %s", "192.0.2.7", exc_info=exc)
    exc = _raised(BadStatusLine("GET\r\n/ Traceback (most recent call last):"))  # the client's bytes in the reason
    logger.exception("Error handling request from %s", "192.0.2.8", exc_info=exc)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "Traceback (most recent call last):\n" not in out.getvalue(), out.getvalue()
    first = lines[0]
    assert first.startswith("WARNING event=panel-bad-request status=400 reason=Got more than 8190 bytes"), first
    assert first.endswith("detail=Error handling request from 192.0.2.7") and len(first) < 400, first
    assert lines[1].startswith("WARNING event=panel-bad-request status=400 reason=Bad status line"), lines[1]


def test_a_flood_is_cut_to_the_budget_and_the_next_line_says_how_many_were_left_out(
        logged: tuple[logging.Logger, io.StringIO], clock: Clock) -> None:
    logger, out = logged
    for n in range(10):
        logger.warning("event=panel-refused path=/%s reason=no valid token", n)
    assert len(out.getvalue().splitlines()) == 3
    clock.now += 1.0
    logger.exception("Error handling request from %s", "192.0.2.7", exc_info=_raised(LineTooLong(b"x", "8190")))
    last = out.getvalue().splitlines()[-1]
    assert "event=panel-bad-request" in last and last.endswith("(and 7 more refused requests not logged)"), last


def test_a_bug_keeps_its_traceback_and_is_never_left_out(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    for n in range(5):
        logger.warning("event=panel-refused path=/%s reason=no valid token", n)
    logger.exception("Error handling request from %s", "127.0.0.1", exc_info=_raised(KeyError("bug")))
    text = out.getvalue()
    assert "ERROR Error handling request from 127.0.0.1\nTraceback (most recent call last):" in text, text
    assert "KeyError: 'bug'" in text


TOKEN = "Zq3_kV9-mW2xLp7RtY4bNc8HdJ6sFg1AeU5oQiX0vKw"  # as secrets.token_urlsafe(32) makes them


def test_a_token_in_a_refused_requests_reason_is_masked_whole_cut_or_in_any_field(clock: Clock) -> None:
    """aiohttp's reason quotes the request: ``?token=T`` went to daemon.log whole (and cut off, for a long line)."""
    with _filtered(RequestLines(Budget(100, 60, clock), token=TOKEN)) as (logger, out):
        reasons: list[BaseException] = [
            LineTooLong(bytearray(f"/?token={TOKEN}&pad={'b' * 9000}".encode()), "8190"),
            LineTooLong(bytearray(f"/?pad=1&token={TOKEN}".encode())[:30], "8190"),  # cut inside the token
            BadStatusLine(error=f"Invalid HTTP version: b'GET /?token={TOKEN} HTTP/9.9'"),
            BadStatusLine(error=f"Invalid header value char: b'GET /?token={TOKEN}\\x01 HTTP/1.1'"),
            BadStatusLine(error=f"Invalid header: b'X-Ensemble-Token: {TOKEN[:-3]}'"),  # a field, cut short
            BadStatusLine(error=f"b'Sec-WebSocket-Protocol: ensemble-panel, token.{TOKEN}'"),
            BadStatusLine(error=f"b'/{TOKEN[5:]}'"),  # the token alone, its start cut off
            BadStatusLine(error="b'/?token=not-the-panels-but-masked-all-the-same'"),
        ]
        for exc in reasons:
            logger.exception("Error handling request from %s", "127.0.0.1", exc_info=_raised(exc))
        logger.warning("event=panel-refused path=/%s reason=no valid token", TOKEN)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(reasons) + 1, out.getvalue()
    for line in lines:
        assert TOKEN[:8] not in line and TOKEN[-8:] not in line and "not-the-panels" not in line, line
        assert "<token>" in line, line
    assert "reason=Got more than 8190 bytes when reading: bytearray(b'/?token=<token>&pad=bbb" in lines[0], lines[0]
    assert "HTTP/9.9" in lines[2] and "/<token>" in lines[6], lines

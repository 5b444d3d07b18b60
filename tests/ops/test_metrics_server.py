"""The metrics port against peers that hold connections, trickle requests or find the address taken.

A daemon with ``[daemon] metrics_port`` serves at most :data:`CAP`
connections at once: one accepted beyond them is closed at once, a silent one
is dropped after ``READ_TIMEOUT`` (5 s) and every exchange ends within
``EXCHANGE_TIMEOUT`` (10 s).  Before, prometheus_client's server gave every
connection a thread and kept it for ever: 240 idle connections took the
daemon's 200 descriptors and libzmq aborted it.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from typing import Any, Iterator

import pytest

from tests.conftest import wait_for

CAP = 16  # actors._metrics.CONNECTIONS (pinned in test_the_cap_is_the_documented_one)
FLOOD = 4 * CAP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


def _closed(conn: socket.socket) -> bool:
    """Whether the server closed ``conn`` (what it sent before is read and dropped); never blocks."""
    conn.setblocking(False)
    try:
        while conn.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


def _count(pid: int, what: str) -> int:
    return len(os.listdir(f"/proc/{pid}/{what}"))


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    """Connections a test opens; closed at its end."""
    conns: list[socket.socket] = []
    yield conns
    for conn in conns:
        conn.close()


def _open(port: int, n: int, into: list[socket.socket]) -> None:
    """``n`` connections to ``port``, every other one with half a request (its request line, no blank line)."""
    for i in range(n):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        into.append(conn)
        if i % 2:
            conn.sendall(b"GET /metrics HTTP/1.1\r\n")
        conn.setblocking(False)  # for _closed


def test_connections_over_the_cap_are_closed_at_once_and_the_daemon_goes_on(
        make_daemon: Any, held: list[socket.socket]) -> None:
    """64 idle connections: all but 16 are closed, the daemon's descriptors and threads stay bounded, it answers."""
    port = _free_port()
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_METRICS_PORT": str(port)})
    d.up()
    wait_for(lambda: _scrape(port), what="a first scrape")
    fds, threads = _count(d.pid, "fd"), _count(d.pid, "task")
    _open(port, FLOOD, held)
    wait_for(lambda: sum(map(_closed, held)) >= FLOOD - CAP, what=f"{FLOOD - CAP} connections over the cap closed")
    assert _count(d.pid, "fd") <= fds + CAP + 2  # the held ones, and one accepted to be closed
    assert _count(d.pid, "task") <= threads + CAP
    assert d.status().daemon.pid == d.pid
    for conn in held:
        conn.close()
    wait_for(lambda: _scrape(port), what="a scrape once the connections are gone")


@pytest.mark.slow
def test_silent_connections_and_half_requests_are_dropped_after_the_read_timeout(
        make_daemon: Any, held: list[socket.socket]) -> None:
    """16 connections that send nothing or half a request hold every place for 5 s, then scrapes are served again.

    During those 5 s a scrape is refused (closed at once): the cap is what
    keeps the daemon's descriptors; the timeout is what gives the places back.
    """
    port = _free_port()
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_METRICS_PORT": str(port)})
    d.up()
    wait_for(lambda: _scrape(port), what="a first scrape")
    _open(port, CAP, held)
    wait_for(lambda: all(_closed(conn) for conn in held), what="the silent connections dropped by the daemon")
    assert "ensemble_workers" in _scrape(port)  # ours are still open on this side: the daemon gave the places back


def test_a_taken_metrics_port_stops_up_with_one_line_naming_the_setting(make_daemon: Any) -> None:
    """Before: ``ensemble: error: OSError: [Errno 98] Address already in use``, and a traceback in daemon.err."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = make_daemon(workers=0, jobs_only=True, extra_env={"ENSEMBLE_METRICS_PORT": str(port)})
        proc = d.cli("up", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"ensemble: error: [daemon] metrics_port {port} on 127.0.0.1 cannot be bound: the port is in use (another "
        "program listens there); choose another port, or stop that program")
    err = (d.config.state_dir / "daemon.err").read_text()
    assert "Traceback" not in err
    assert not d.socket_files()


@pytest.mark.parametrize(("host", "says"), [
    ("no-such-host.invalid", "the name does not resolve"),
    ("192.0.2.1", "no interface of this host has that address"),  # TEST-NET-1: never a local address
])
def test_a_metrics_host_that_cannot_be_bound_names_the_setting(host: str, says: str) -> None:
    """Before: ``socket.gaierror: [Errno -2] Name or service not known``, ``OSError: [Errno 99] ...``."""
    from actors._errors import ConfigError
    from actors._metrics import Metrics

    m = Metrics()
    with pytest.raises(ConfigError) as caught:
        m.start(0, host)
    m.stop()
    text = str(caught.value)
    assert text.startswith(f"[daemon] metrics_host {host!r} (metrics_port 0) cannot be bound: ")
    assert says in text
    assert text.endswith("choose another host: an address of this host (127.0.0.1: this host only)")


def test_the_cap_is_the_documented_one() -> None:
    from actors import _metrics

    assert (_metrics.CONNECTIONS, _metrics.READ_TIMEOUT, _metrics.EXCHANGE_TIMEOUT) == (CAP, 5.0, 10.0)


def test_a_trickled_request_is_cut_at_the_exchange_deadline(held: list[socket.socket]) -> None:
    """A peer sending a byte at a time, never silent for the read timeout, is closed at the whole exchange's deadline."""
    from actors._metrics import _BoundedServer

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server = _BoundedServer.bind("127.0.0.1", 0, app, read_timeout=30.0, exchange_timeout=0.5)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    loop.start()
    try:
        conn = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        held.append(conn)
        request = iter(b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100_000)

        def trickled_until_closed() -> bool:
            try:
                conn.send(bytes([next(request)]))
            except OSError:  # reset by the server
                return True
            return _closed(conn)

        wait_for(trickled_until_closed, interval=0.01, what="the trickled connection to be cut")
        wait_for(lambda: server.connections() == 0, what="its thread to end")
        assert urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/", timeout=10).read() == b"ok\n"
    finally:
        server.shutdown()
        loop.join()
        server.server_close()

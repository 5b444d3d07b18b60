"""A cap on tcp connections: no network peer can take every file descriptor of the daemon.

Every connection to a tcp endpoint holds a descriptor in the daemon from its
accept on, before any key is checked (the CURVE handshake comes after it),
and an unauthenticated one holds it until the handshake times out.  With
every descriptor taken, libzmq aborts the whole process at the next local
connection (``Too many open files (src/ipc_listener.cpp:297)``) and the
daemon's own reads fail: on 2026-12-05 about 330 connections from one peer
without a key took down a daemon whose limit was 300 descriptors.

So the connections of the tcp endpoints are counted through ZeroMQ's socket
monitor (accepted, disconnected), and one accepted while :func:`cap` are open
is shut down at once (``shutdown(2)`` of its descriptor, after checking it is
a tcp socket on that endpoint's port): libzmq sees the peer leave and closes
it.  The cap leaves a quarter of the open-files limit (at least 256) to local
clients, workers and the journal; the connections already open are
untouched.  A handshake that has not succeeded within :data:`HANDSHAKE_MS`
is dropped by ZeroMQ itself (``ZMQ_HANDSHAKE_IVL``; its default is 30 s), so
a peer without a key must keep opening connections to hold its place.
"""

from __future__ import annotations

import collections
import logging
import resource
from typing import Any

import zmq

log = logging.getLogger("ensemble.supervisor")
HANDSHAKE_MS = 10_000  # ZMQ_HANDSHAKE_IVL of the tcp endpoints
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_POLLIN = int(zmq.POLLIN)


def cap() -> int:
    """Connections the tcp endpoints may hold together: the open-files limit now, less a reserve."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - max(256, soft // 4))


def limit_handshake(sock: zmq.Socket[bytes]) -> None:
    """A connection that has not completed its handshake within :data:`HANDSHAKE_MS` is closed.  Before ``bind``:
    libzmq copies the option into the listener then, and one set after it held silent connections 30 s (its
    default), not 10."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)


class ConnectionCap:
    """The open connections of each tcp endpoint, from its socket monitor; those over :func:`cap` shut."""

    def __init__(self, counters: "collections.Counter[str]") -> None:
        self.monitors: dict[Any, tuple[int, set[int]]] = {}  # monitor socket -> (endpoint's port, open fds)
        self.counters = counters

    def watch(self, sock: zmq.Socket[bytes]) -> zmq.Socket[Any]:
        """Count the connections of a bound tcp socket; returns its monitor, for the caller's poller.

        Its handshake limit is :func:`limit_handshake`'s, set before the bind (libzmq reads it then).
        """
        port = int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])  # type: ignore[union-attr]
        monitor = sock.get_monitor_socket(_EVENTS)
        self.monitors[monitor] = (port, set())
        return monitor

    def open(self) -> int:
        return sum(len(fds) for _, fds in self.monitors.values())

    def events(self, monitor: zmq.Socket[Any]) -> None:
        """Read a monitor's events; shut each connection accepted over the cap."""
        # (imported here: zmq.utils.monitor imports asyncio, 14 ms a daemon with no tcp endpoint need not pay)
        from zmq.utils.monitor import recv_monitor_message

        port, fds = self.monitors[monitor]
        limit = cap()
        while monitor.getsockopt(zmq.EVENTS) & _POLLIN:  # type: ignore[operator]
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                if self.open() < limit:
                    fds.add(fd)
                elif _shut(fd, port):
                    self.counters["tcp_refused"] += 1
                    if self.counters["tcp_refused"] in (1, 10, 100, 1000) or self.counters["tcp_refused"] % 10_000 == 0:
                        log.warning("event=tcp-refused count=%d open=%d cap=%d detail=every descriptor but the "
                                    "reserve is a tcp connection; new ones are shut until some close",
                                    self.counters["tcp_refused"], self.open(), limit)
            else:  # disconnected (closed by the peer, a failed or timed-out handshake, or shut here)
                fds.discard(fd)


def _shut(fd: int, port: int) -> bool:
    """``shutdown(2)`` a connection libzmq accepted, if ``fd`` is still a tcp socket on ``port`` (libzmq closes it
    when it sees the peer leave; closing it here would pull it from under libzmq)."""
    import socket  # (here: a daemon with no connection over the cap never needs it, 1.5 ms to import)

    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # closed since (not a socket now)
        return False
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.getsockname()[1] != port:
            return False
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        sock.detach()

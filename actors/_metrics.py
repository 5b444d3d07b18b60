"""Prometheus metrics on an opt-in port (``[daemon] metrics_port``), served by a bounded HTTP server of our own.

The supervisor thread never blocks on a scrape: it hands :class:`Metrics` a
fresh status snapshot about once a second (a reference swap) and reports each
finished job's duration; a custom collector builds the families from the last
snapshot when Prometheus scrapes.  The audio callback time is exported as a
summary of the quantiles the processor measures (p50, p99, p99.9 and max over
its last blocks, 8,192 at most).

The HTTP side is prometheus_client's WSGI application (content negotiation,
gzip, 405 for other methods, any path) behind :class:`_BoundedServer`, not
``start_http_server``: that one starts a thread per connection and never
drops an idle one, so a few hundred silent connections to the port took every
descriptor of the daemon and libzmq aborted it (``Too many open files``), and
with a high limit its threads grew without end.  Here at most
:data:`CONNECTIONS` are served at once (one thread each; more are closed as
soon as they are accepted), a request must arrive within
:data:`READ_TIMEOUT` seconds of silence and the whole exchange end within
:data:`EXCHANGE_TIMEOUT`, so the server holds at most ``CONNECTIONS + 1``
descriptors: inside the reserve the daemon keeps beside its tcp endpoints'
connections (a quarter of its open-files limit, at least 256; see
``actors/supervisor/_tcpcap.py``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from actors._errors import ConfigError
from actors._state import FINAL
from actors.messages import StatusReply

log = logging.getLogger("ensemble.metrics")

CONNECTIONS = 16  # scrapes served at once; a connection accepted beyond them is closed at once
READ_TIMEOUT = 5.0  # seconds a connection may stay silent (before and while its request arrives, while it is answered)
EXCHANGE_TIMEOUT = 10.0  # seconds from accept to the last byte of the answer, at most (a trickled request too)

_JOB_STATES: tuple[str, ...] = tuple(sorted(str(s) for s in FINAL))
# every state a worker's slot can show in status (actors/supervisor/_children.py, Supervisor.status): each one is
# exported, 0 when no worker is in it, so that `ensemble_workers{state="running"} < 1` fires when none runs
_WORKER_STATES = ("pending", "starting", "running", "restarting", "retiring", "stopping", "failed")
_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)


class Metrics:
    """The daemon's metrics; ``start(port)`` serves them on ``host:port``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self.snapshot: StatusReply | None = None
        self.durations = Histogram("ensemble_job_duration_seconds", "Job run time from start to end",
                                   buckets=_DURATION_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(self))
        self._server: _BoundedServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve the metrics on every path of ``host:port`` from a thread; returns the bound port (0 picks a free one).

        Blocks for the name lookup of ``host``.  Raises ConfigError, naming
        the setting, when the address cannot be bound (a name that does not
        resolve, an address of no interface here, a port in use).
        """
        from prometheus_client import make_wsgi_app

        self._server = _BoundedServer.bind(host, port, make_wsgi_app(self.registry))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)
        self._thread.start()
        return self._server.server_port

    def update(self, status: StatusReply) -> None:
        """Take a new snapshot (supervisor thread; a reference swap)."""
        self.snapshot = status

    def job_finished(self, seconds: float) -> None:
        """Record one job's run time."""
        if seconds >= 0:
            self.durations.observe(seconds)

    def stop(self) -> None:
        """Stop serving: the listening socket and every connection are closed (blocks half a second at most)."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._thread is not None:
            server.shutdown()
            self._thread.join()
            self._thread = None
        server.server_close()


class _Handler(WSGIRequestHandler):
    """One exchange on one connection, each read and write waited for :data:`READ_TIMEOUT` at most; logs nothing."""

    server: _BoundedServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Log nothing (a scrape a second would flood the daemon's log)."""


class _BoundedServer(WSGIServer):
    """A WSGI server with a cap on its connections, each given a thread and a deadline.

    ``serve_forever`` (one thread) accepts; a connection accepted while
    ``cap`` are open is closed at once; every other one is served by a thread
    of its own, which ends with the exchange.  Every ``poll_interval`` the
    accepting thread shuts the connections whose deadline passed
    (``shutdown(2)``, which wakes their thread's read or write), so that no
    peer holds a thread or a descriptor for longer than ``exchange_timeout``.
    """

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: connections waiting there hold no descriptor of the daemon

    def __init__(self, family: int, address: tuple[Any, ...], app: Callable[..., Any], cap: int = CONNECTIONS,
                 read_timeout: float = READ_TIMEOUT, exchange_timeout: float = EXCHANGE_TIMEOUT) -> None:
        self.address_family = family
        self.cap = cap
        self.read_timeout = read_timeout
        self.exchange_timeout = exchange_timeout
        self.refused = 0  # connections closed for the cap
        self._live: dict[socket.socket, float] = {}  # open connection -> its deadline (time.monotonic)
        self._lock = threading.Lock()  # _live, and closing a connection (never shut one whose descriptor is reused)
        super().__init__(address, _Handler)  # binds; on an error the socket is closed and the error raised
        self.set_app(app)

    @classmethod
    def bind(cls, host: str, port: int, app: Callable[..., Any], **kw: Any) -> _BoundedServer:
        """A server listening on ``host:port``; ConfigError naming ``[daemon] metrics_host``/``metrics_port`` if not."""
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
            return cls(family, sockaddr, app, **kw)
        except OSError as exc:
            raise ConfigError(bind_refusal(host, port, exc)) from exc

    def server_bind(self) -> None:
        """Bind, without HTTPServer's reverse name lookup of the address (which can block on DNS)."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` from a thread of its own, or close it at once when ``cap`` are open."""
        with self._lock:
            room = len(self._live) < self.cap
            if room:
                self._live[request] = time.monotonic() + self.exchange_timeout
        if not room:
            self.shutdown_request(request)
            self.refused += 1
            if self.refused in (1, 10, 100, 1000) or self.refused % 10_000 == 0:
                log.warning("event=metrics-refused count=%d cap=%d detail=every metrics connection is taken; new "
                            "ones are closed until some end (each within %g s)", self.refused, self.cap,
                            self.exchange_timeout)
            return
        try:
            threading.Thread(target=self._serve_one, args=(request, client_address), name="metrics-scrape",
                             daemon=True).start()
        except RuntimeError:  # no thread can be started now (a tasks limit): not served
            self._close(request)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a silent or vanished peer (a timeout, a reset): nothing to report
            pass
        finally:
            self._close(request)

    def _close(self, request: Any) -> None:
        with self._lock:
            self._live.pop(request, None)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Shut every connection past its deadline (the accepting thread, every ``poll_interval``)."""
        now = time.monotonic()
        with self._lock:
            for conn, deadline in self._live.items():
                if now >= deadline:
                    _shut(conn)

    def server_close(self) -> None:
        """Close the listening socket and shut every connection (their threads end at once)."""
        super().server_close()
        with self._lock:
            for conn in self._live:
                _shut(conn)

    def connections(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._live)


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:  # the peer is gone already
        pass


def bind_refusal(host: str, port: int, exc: OSError) -> str:
    """Why ``host:port`` cannot be bound for the metrics: one line naming the setting, the address and the fix."""
    host_is = f"[daemon] metrics_host {host!r} (metrics_port {port}) cannot be bound"
    port_is = f"[daemon] metrics_port {port} on {host} cannot be bound"
    here = "choose another host: an address of this host (127.0.0.1: this host only)"
    if isinstance(exc, socket.gaierror):
        return f"{host_is}: the name does not resolve ({exc.strerror or exc}); {here}"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_is}: {reason} (no interface of this host has that address); {here}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{port_is}: the port is in use (another program listens there); choose another port, or stop that "
                "program")
    if exc.errno == errno.EACCES:
        return f"{port_is}: {reason} (ports below 1024 need privileges); choose another port, from 1024 up"
    return f"[daemon] metrics_host/metrics_port {host}:{port} cannot be bound: {reason}; choose another port or host"


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.metrics.snapshot
        if snap is None:
            return
        d = snap.daemon
        jobs = CounterMetricFamily("ensemble_jobs", "Jobs that ended, by final state", labels=["state"])
        for state in _JOB_STATES:
            jobs.add_metric([state], float(d.counters.get(f"jobs_{state}", 0)))
        yield jobs
        yield CounterMetricFamily("ensemble_jobs_submitted", "Jobs accepted",
                                  value=float(d.counters.get("jobs_submitted", 0)))
        yield GaugeMetricFamily("ensemble_queue_depth", "Jobs waiting for a worker", value=float(d.queued))
        yield GaugeMetricFamily("ensemble_jobs_running", "Workers running a job", value=float(d.running))
        yield _workers(snap)
        restarts = CounterMetricFamily("ensemble_actor_restarts", "Restarts per actor", labels=["actor", "role"])
        for a in snap.actors:
            restarts.add_metric([a.name, a.role], float(a.restarts))
        yield restarts
        yield CounterMetricFamily("ensemble_bad_frames", "Malformed frames received",
                                  value=float(d.counters.get("bad_frames", 0)))
        proc = next((a for a in snap.actors if a.role == "processor" and a.stats), None)
        if proc is not None:
            s = proc.stats
            yield _callback_summary([(q, s.get(k, 0.0) / 1000.0) for q, k in
                                     (("0.5", "callback_p50_ms"), ("0.99", "callback_p99_ms"),
                                      ("0.999", "callback_p999_ms"), ("1", "callback_max_ms"))])
            for key, help_text in (("xruns", "Output underflows reported by the audio device"),
                                   ("late_events", "Events that arrived after their block"),
                                   ("deadline_misses", "Audio callbacks longer than the block period")):
                yield CounterMetricFamily(f"ensemble_audio_{key}", help_text, value=float(s.get(key, 0)))
            yield GaugeMetricFamily("ensemble_audio_voices", "Voices sounding", value=float(s.get("active_voices", 0)))


def _workers(snap: StatusReply) -> Any:
    """``ensemble_workers``: every state, 0 where no worker is (a state not known here is added when seen)."""
    from prometheus_client.core import GaugeMetricFamily

    states = dict.fromkeys(_WORKER_STATES, 0)
    for a in snap.actors:
        if a.role == "worker":
            states[a.state] = states.get(a.state, 0) + 1
    workers = GaugeMetricFamily("ensemble_workers", "Workers by state", labels=["state"])
    for state, n in states.items():
        workers.add_metric([state], float(n))
    return workers


def _callback_summary(quantiles: list[tuple[str, float]]) -> Any:
    """The audio callback's time as a summary of quantiles only (the processor keeps no running sum or count)."""
    from prometheus_client.metrics_core import Metric

    m = Metric("ensemble_audio_callback_seconds",
               "Audio callback time quantiles over the processor's last blocks (8192 at most)", "summary")
    for q, v in quantiles:
        m.add_sample("ensemble_audio_callback_seconds", {"quantile": q}, v)
    return m

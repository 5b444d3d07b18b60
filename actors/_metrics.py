"""Prometheus metrics on an opt-in port (``[daemon] metrics_port``), served by prometheus_client's thread.

The supervisor thread never blocks on a scrape: it hands :class:`Metrics` a
fresh status snapshot about once a second (a reference swap) and reports each
finished job's duration; a custom collector builds the families from the last
snapshot when Prometheus scrapes.  The audio callback time is exported as the
quantiles the processor measures (a summary: p50, p99, p99.9 and max over its
last 8192 blocks).
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from actors._state import FINAL
from actors.messages import StatusReply

_JOB_STATES: tuple[str, ...] = tuple(sorted(str(s) for s in FINAL))
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
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics``; returns the bound port (0 picks a free one)."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def update(self, status: StatusReply) -> None:
        """Take a new snapshot (supervisor thread; a reference swap)."""
        self.snapshot = status

    def job_finished(self, seconds: float) -> None:
        """Record one job's run time."""
        if seconds >= 0:
            self.durations.observe(seconds)

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


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
        workers = GaugeMetricFamily("ensemble_workers", "Workers by state", labels=["state"])
        states: dict[str, int] = {}
        for a in snap.actors:
            if a.role == "worker":
                states[a.state] = states.get(a.state, 0) + 1
        for state, n in sorted(states.items()):
            workers.add_metric([state], float(n))
        yield workers
        restarts = CounterMetricFamily("ensemble_actor_restarts", "Restarts per actor", labels=["actor", "role"])
        for a in snap.actors:
            restarts.add_metric([a.name, a.role], float(a.restarts))
        yield restarts
        yield GaugeMetricFamily("ensemble_bad_frames", "Malformed frames received",
                                value=float(d.counters.get("bad_frames", 0)))
        proc = next((a for a in snap.actors if a.role == "processor" and a.stats), None)
        if proc is not None:
            s = proc.stats
            quantiles = [(q, s.get(k, 0.0) / 1000.0) for q, k in
                         (("0.5", "callback_p50_ms"), ("0.99", "callback_p99_ms"), ("0.999", "callback_p999_ms"),
                          ("1", "callback_max_ms"))]
            yield _summary(quantiles, float(s.get("timed_blocks", s.get("blocks", 0))))
            for key, help_text in (("xruns", "Output underflows reported by the audio device"),
                                   ("late_events", "Events that arrived after their block"),
                                   ("deadline_misses", "Audio callbacks longer than the block period")):
                yield CounterMetricFamily(f"ensemble_audio_{key}", help_text, value=float(s.get(key, 0)))
            yield GaugeMetricFamily("ensemble_audio_voices", "Voices sounding", value=float(s.get("active_voices", 0)))


def _summary(quantiles: list[tuple[str, float]], count: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    g = GaugeMetricFamily("ensemble_audio_callback_seconds",
                          f"Audio callback time quantiles over the last {int(count)} blocks", labels=["quantile"])
    for q, v in quantiles:
        g.add_metric([q], v)
    return g

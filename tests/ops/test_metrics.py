"""Prometheus metrics from a running daemon, scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for

WORKER_STATES = {"pending", "starting", "running", "restarting", "retiring", "stopping", "failed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _families(port: int) -> dict[str, Any]:
    """Every family of one scrape, by name (a counter's without its ``_total``, as the parser names it)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _scrape(port: int) -> dict[str, list[Any]]:
    return {name: f.samples for name, f in _families(port).items()}


def test_daemon_exports_jobs_queue_workers_restarts_and_audio(make_daemon: Any) -> None:
    port = _free_port()
    d = make_daemon(extra_env={"ENSEMBLE_METRICS_PORT": str(port)})
    d.up()
    c = d.client()
    assert c.submit("examples.jobs:add", 1, 2).result(30) == 3
    families = wait_for(lambda: (f := _scrape(port)) and any(
        s.labels.get("state") == "done" and s.value >= 1 for s in f.get("ensemble_jobs", [])) and f,
        what="the finished job in the metrics")
    assert families["ensemble_queue_depth"][0].value == 0
    workers = {s.labels["state"]: s.value for s in families["ensemble_workers"]}
    assert workers == {state: 2 if state == "running" else 0 for state in WORKER_STATES}
    assert any(s.labels["actor"] == "processor" for s in families["ensemble_actor_restarts"])
    assert any(s.name == "ensemble_job_duration_seconds_count" and s.value >= 1
               for s in families["ensemble_job_duration_seconds"])
    quantiles = {s.labels["quantile"] for s in families["ensemble_audio_callback_seconds"]}
    assert quantiles == {"0.5", "0.99", "0.999", "1"}
    assert "ensemble_audio_xruns" in families


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_types_and_help_texts_stay_what_monitoring_expects(make_daemon: Any) -> None:
    """The callback time is a summary whose HELP never changes; bad frames a counter (``ensemble_bad_frames_total``).

    Before, the callback time was a gauge whose HELP named the blocks it
    covered (a new text on every scrape), and bad frames a gauge.
    """
    port = _free_port()
    d = make_daemon(workers=1, extra_env={"ENSEMBLE_METRICS_PORT": str(port)})
    d.up()
    first = wait_for(lambda: (f := _families(port)) and "ensemble_audio_callback_seconds" in f and f,
                     what="the audio callback time in the metrics")
    blocks = d.actor("processor").stats["blocks"]
    wait_for(lambda: d.actor("processor").stats["blocks"] > blocks + 400, what="the processor to render more blocks")
    second = _families(port)  # a snapshot taken several heartbeats later, over other blocks
    for families in (first, second):
        summary = families["ensemble_audio_callback_seconds"]
        assert summary.type == "summary"
        bad = families["ensemble_bad_frames"]
        assert bad.type == "counter"
        assert [s.name for s in bad.samples] == ["ensemble_bad_frames_total"]
    assert first["ensemble_audio_callback_seconds"].documentation == \
        second["ensemble_audio_callback_seconds"].documentation


def test_every_worker_state_is_exported_even_with_no_worker(make_daemon: Any) -> None:
    """With no worker, ``ensemble_workers{state="running"}`` is 0 (before: no sample, so ``< 1`` never fired)."""
    port = _free_port()
    d = make_daemon(workers=0, jobs_only=True, extra_env={"ENSEMBLE_METRICS_PORT": str(port)})
    d.up()
    samples = wait_for(lambda: _scrape(port).get("ensemble_workers"), what="the workers in the metrics")
    assert {s.labels["state"]: s.value for s in samples} == dict.fromkeys(WORKER_STATES, 0.0)


def test_metrics_are_off_by_default(daemon: Any) -> None:
    assert daemon.config.daemon.metrics_port == 0


def test_a_worker_that_failed_leaves_running_at_zero() -> None:
    """The only worker failed: ``{state="running"}`` reads 0 and ``{state="failed"}`` 1 (before, running vanished)."""
    from prometheus_client import generate_latest

    from actors._metrics import Metrics
    from actors.messages import ActorInfo, DaemonInfo, StatusReply

    m = Metrics()
    daemon = DaemonInfo("t", 1, "0", 1.0, "/run", "/state", "/log", 1, 0, 0, 0)
    m.update(StatusReply(daemon, [ActorInfo("worker-1", "worker", 0, "failed", 0.0, 5, 0.0, 0)]))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    workers = {s.labels["state"]: s.value for s in families["ensemble_workers"].samples}
    assert workers == {state: 1.0 if state == "failed" else 0.0 for state in WORKER_STATES}

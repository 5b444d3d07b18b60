"""Prometheus metrics from a running daemon, scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, list[Any]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


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
    assert {s.labels["state"]: s.value for s in families["ensemble_workers"]} == {"running": 2}
    assert any(s.labels["actor"] == "processor" for s in families["ensemble_actor_restarts"])
    assert any(s.name == "ensemble_job_duration_seconds_count" and s.value >= 1
               for s in families["ensemble_job_duration_seconds"])
    quantiles = {s.labels["quantile"] for s in families["ensemble_audio_callback_seconds"]}
    assert quantiles == {"0.5", "0.99", "0.999", "1"}
    assert "ensemble_audio_xruns" in families


def test_metrics_are_off_by_default(daemon: Any) -> None:
    assert daemon.config.daemon.metrics_port == 0

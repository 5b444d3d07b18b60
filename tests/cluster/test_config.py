"""Ray stays optional: imported only when configured, one clear error when configured but missing (no cluster needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import free_port


@pytest.mark.slow  # ~3 s
def test_ray_configured_but_missing_is_one_clear_error(make_daemon: Any, tmp_path: Path) -> None:
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    d = make_daemon(workers=0, extra_env={
        "ENSEMBLE_TCP": f"tcp://127.0.0.1:{free_port()}", "ENSEMBLE_CLUSTER_RAY": "auto", "ENSEMBLE_EXTENSIONS": "",
        "PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    d.cli("keys", "init")
    out = d.cli("up", check=False)
    assert out.returncode != 0
    assert "pip install 'ensemble-rt[ray]'" in out.stderr and "[cluster] ray" in out.stderr


def test_ray_options_map_resource_names_to_ray_s() -> None:
    from actors._ray_driver import ray_options

    assert ray_options({"CPU": 1.0}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert ray_options({"GPU": 1.0, "memory": 2e9, "accel": 4.0}) == {
        "num_cpus": 0.0, "num_gpus": 1.0, "memory": 2e9, "resources": {"accel": 4.0}}


def test_the_runtime_never_imports_ray_unless_configured() -> None:
    """The daemon, client and worker modules load without importing ray (it comes only with [cluster] ray)."""
    import subprocess
    import sys

    code = "import actors.supervisor, actors.client, actors.worker, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.strip() == "False"

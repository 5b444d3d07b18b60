"""The systemd units in deploy/ pass `systemd-analyze verify` (skipped where systemd-analyze is absent)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent.parent / "deploy" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["ensemble.service", "ensemble-worker@.service"])
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    # verify needs the ExecStart binary: point the unit at this environment's `ensemble`
    exe = shutil.which("ensemble")
    if exe is None:
        pytest.skip("the ensemble console script is not installed (pip install -e .)")
    text = (UNITS / unit).read_text().replace("/usr/local/bin/ensemble", exe)
    name = unit.replace("@.service", "@test.service")
    (tmp_path / name).write_text(text)
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="warning")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / name)], capture_output=True,
                          text=True, timeout=60, env=env)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if name in line or "ensemble" in line.lower()]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_daemon_unit_has_the_required_settings() -> None:
    text = (UNITS / "ensemble.service").read_text()
    for needle in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=", "NoNewPrivileges=yes",
                   "ensemble up --foreground"):
        assert needle in text

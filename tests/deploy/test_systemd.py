"""deploy/systemd: `systemd-analyze verify` and `security --offline` on the real unit files, and what the
runtime needs from them (realtime limit, sound devices, the directories it is told to use, the notify
protocol, command lines the CLI accepts).

systemd-analyze runs on the unit files as shipped except for the path of the
ensemble executable, which must exist for verify: it is pointed at a stub in a
temporary directory. Without systemd-analyze those tests skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy._files import SYSTEMD, known_env, parse_cli, split_exec, unit, unit_has, unit_values

DAEMON = SYSTEMD / "ensemble.service"
WORKER = SYSTEMD / "ensemble-worker@.service"
EXE = "/usr/local/bin/ensemble"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


def _staged(tmp_path: Path) -> list[Path]:
    """Both units in tmp_path, ExecStart pointing at an executable stub; the template as an instance."""
    stub = tmp_path / "bin" / "ensemble"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    out = []
    for src, name in ((DAEMON, "ensemble.service"), (WORKER, "ensemble-worker@w1.service")):
        text = src.read_text()
        assert EXE in text, f"{src.name}: ExecStart should use {EXE}"
        (units / name).write_text(text.replace(EXE, str(stub)))
        out.append(units / name)
    return out


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="info", SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    return subprocess.run([ANALYZE or "systemd-analyze", *args], capture_output=True, text=True, timeout=60,
                          env=env)


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = _staged(tmp_path)
    proc = _run(["verify", "--man=no", *map(str, units)])
    # verify exits 0 on unknown keys and bad values and only warns: any line about our units fails
    ours = [line for line in (proc.stdout + proc.stderr).splitlines()
            if str(tmp_path) in line or "ensemble" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt key and a bad value are reported."""
    daemon, _ = _staged(tmp_path)
    daemon.write_text(daemon.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes\nProtectHome=perhaps"))
    proc = _run(["verify", "--man=no", str(daemon)])
    text = proc.stdout + proc.stderr
    assert "NoNewPrivilege" in text and "perhaps" in text, text


@needs_analyze
@pytest.mark.parametrize("index", [0, 1], ids=["daemon", "worker"])
def test_security_exposure_is_low(tmp_path: Path, index: int) -> None:
    """`systemd-analyze security` scores exposure 0-10; both units stay at or under 3.0 ("OK")."""
    path = _staged(tmp_path)[index]
    proc = _run(["security", "--offline=true", "--threshold=30", "--no-pager", str(path)])
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert proc.returncode == 0 and level is not None, proc.stdout[-2000:] + proc.stderr
    assert float(level.group(1)) <= 3.0


def test_daemon_is_a_notify_service_with_a_watchdog() -> None:
    assert unit_values(DAEMON, "Type") == ["notify"]
    # the supervisor itself (the main process) sends READY/WATCHDOG: `up --foreground` does not fork
    assert unit_values(DAEMON, "NotifyAccess") == ["main"]
    assert unit_values(DAEMON, "Restart") == ["on-failure"]
    watchdog = unit_values(DAEMON, "WatchdogSec")
    assert watchdog and re.fullmatch(r"\d+s", watchdog[0]) and int(watchdog[0][:-1]) >= 2
    argv = split_exec(unit_values(DAEMON, "ExecStart")[0], {})
    assert argv == [EXE, "up", "--foreground"]


def test_daemon_can_render_in_realtime_on_the_sound_card() -> None:
    from audio._realtime import DEFAULT_PRIORITY

    # SCHED_FIFO at the processor's priority is allowed by the rtprio limit alone
    assert int(unit_values(DAEMON, "LimitRTPRIO")[0]) >= DEFAULT_PRIORITY
    for breaks_audio in ("RestrictRealtime", "PrivateDevices", "MemoryDenyWriteExecute", "PrivateIPC"):
        assert not unit_has(DAEMON, breaks_audio), f"{breaks_audio}= would break the processor"
    assert "audio" in unit_values(DAEMON, "SupplementaryGroups")[0].split()
    if unit_values(DAEMON, "DevicePolicy") in (["closed"], ["strict"]):
        assert any(v.startswith("char-alsa") and "rw" in v for v in unit_values(DAEMON, "DeviceAllow"))
    # no capability is handed to the actors (workers run job code)
    assert unit_values(DAEMON, "AmbientCapabilities") == []
    assert unit_has(DAEMON, "CapabilityBoundingSet") and unit_values(DAEMON, "CapabilityBoundingSet") == []


def test_daemon_uses_the_directories_systemd_makes_writable() -> None:
    assert unit_values(DAEMON, "ProtectSystem") == ["strict"]
    env = dict(v.split("=", 1) for v in unit_values(DAEMON, "Environment"))
    runtime = unit_values(DAEMON, "RuntimeDirectory")[0]
    state = unit_values(DAEMON, "StateDirectory")[0]
    assert env["ENSEMBLE_RUN_DIR"].startswith(f"/run/{runtime}/")
    assert env["ENSEMBLE_STATE_DIR"].startswith(f"/var/lib/{state}/")
    for path in (DAEMON, WORKER):
        names = {v.split("=", 1)[0] for v in unit_values(path, "Environment")}
        assert names <= known_env(), f"{path.name}: {names - known_env()} is read by nothing"
    assert unit_values(DAEMON, "NoNewPrivileges") == ["yes"]
    assert unit_values(DAEMON, "User") == ["ensemble"]


def test_worker_template_runs_a_remote_worker_with_its_key(tmp_path: Path) -> None:
    assert unit_values(WORKER, "Restart") == ["always"]
    creds = dict(v.split(":", 1) for v in unit_values(WORKER, "LoadCredential"))
    assert creds == {"worker.key_secret": "/etc/ensemble/keys/%i.key_secret",
                     "server.key": "/etc/ensemble/keys/server.key"}
    argv = split_exec(unit_values(WORKER, "ExecStart")[0], {
        "${ENSEMBLE_DAEMON}": "tcp://daemon.example:7700", "%d": "/run/credentials/ensemble-worker@w1.service",
        "%i": "w1"})
    assert argv[:4] == [EXE, "worker", "--connect", "tcp://daemon.example:7700"]
    # every credential the command names is one that LoadCredential= provides
    for opt in ("--key", "--server-key"):
        value = argv[argv.index(opt) + 1]
        assert value.startswith("/run/credentials/ensemble-worker@w1.service/")
        assert value.rsplit("/", 1)[1] in creds
    assert argv[argv.index("--worker-name") + 1] == "w1"
    assert parse_cli(argv, tmp_path) == ["ensemble", "worker"]
    assert unit_values(WORKER, "EnvironmentFile") == ["/etc/ensemble/worker-%i.env"]  # sets ENSEMBLE_DAEMON


def test_daemon_command_line_is_one_the_cli_accepts(tmp_path: Path) -> None:
    argv = split_exec(unit_values(DAEMON, "ExecStart")[0], {})
    assert parse_cli(argv, tmp_path) == ["ensemble", "up"]
    assert unit(DAEMON)["Install"] == [("WantedBy", "multi-user.target")]

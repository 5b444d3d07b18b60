"""Where the CLI takes its options and configuration: --name/--config on either side of the command, the
XDG config file, and ENSEMBLE_* variables checked like TOML keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from actors import ConfigError
from actors.config import OTHER_VARIABLES, load_config
from tests.conftest import ROOT, Daemon, pid_alive, wait_for


def _ensemble(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actors", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # a dozen CLI processes against a daemon: run by .ci/run's slow pass (default suite < 5 min)
def test_name_and_config_work_before_and_after_the_command(short_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    env.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(short_tmp / "r"), XDG_STATE_HOME=str(short_tmp / "s"),
               XDG_CONFIG_HOME=str(short_tmp / "c"), ENSEMBLE_WORKERS="1", ENSEMBLE_AUDIO_BACKEND="null",
               ENSEMBLE_EXTENSIONS="")  # jobs only: quick to start
    (short_tmp / "r").mkdir(mode=0o700)
    cfg = short_tmp / "placed.toml"
    cfg.write_text('[daemon]\nname = "placed"\n')
    up = _ensemble(env, "up", "--name", "placed")  # as the README shows it
    assert up.returncode == 0, up.stderr
    pid = int((short_tmp / "r" / "ensemble" / "placed" / "daemon.pid").read_text())
    try:
        for args in (("status", "--json", "-n", "placed"), ("-n", "placed", "status", "--json"),
                     ("status", "--json", "--config", str(cfg)), ("-c", str(cfg), "status", "--json"),
                     ("-n", "elsewhere", "status", "--json", "--name", "placed")):  # after the command wins
            out = _ensemble(env, *args)
            assert out.returncode == 0, (args, out.stderr)
            assert json.loads(out.stdout)["daemon"]["name"] == "placed"
        missing = _ensemble(env, "status")
        assert missing.returncode == 1 and "no daemon named 'default'" in missing.stderr
        assert _ensemble(env, "jobs", "-n", "placed").returncode == 0
    finally:
        down = _ensemble(env, "down", "-n", "placed")
        if pid_alive(pid):
            os.kill(pid, 9)
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not pid_alive(pid), 30, what="the daemon to stop")


def test_submit_names_its_job_with_job_name_and_name_stays_the_daemon_s(module_daemon: Daemon) -> None:
    out = module_daemon.cli("submit", "examples.jobs:add", "2", "2", "--job-name", "sum", "--wait")
    assert out.stdout.strip().splitlines()[-1] == "4"
    assert any(j.name == "sum" for j in module_daemon.client().jobs())
    env = dict(module_daemon.env, ENSEMBLE_RUN_DIR=str(module_daemon.base / "nowhere"))
    wrong = subprocess.run([sys.executable, "-m", "actors", "submit", "examples.jobs:add", "1", "1", "--name", "sum"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "no daemon named 'sum'" in wrong.stderr


def test_the_default_config_file_is_read_from_xdg_config_home(tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    (home / "ensemble").mkdir(parents=True)
    (home / "ensemble" / "config.toml").write_text('[daemon]\nworkers = "3"\n[jobs]\nwindow = 5\n')
    assert load_config(env={"XDG_CONFIG_HOME": str(home)}).daemon.workers == "3"
    env = {"XDG_CONFIG_HOME": str(home), "ENSEMBLE_WORKERS": "4"}  # the environment over the file
    assert (load_config(env=env).daemon.workers, load_config(env=env).jobs.window) == ("4", 5)
    other = tmp_path / "other.toml"
    other.write_text('[daemon]\nworkers = "2"\n')
    assert load_config(env={"XDG_CONFIG_HOME": str(home), "ENSEMBLE_CONFIG": str(other)}).jobs.window != 5
    assert load_config(env={"XDG_CONFIG_HOME": str(tmp_path / "empty")}).daemon.workers == "auto"
    (home / "ensemble" / "config.toml").write_text('[daemon]\nworkres = "3"\n')
    with pytest.raises(ConfigError, match=r"config\.toml.*unknown key 'workres'"):
        load_config(env={"XDG_CONFIG_HOME": str(home)})


def test_the_home_config_is_the_default_without_xdg_config_home(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config" / "ensemble").mkdir(parents=True)
    (tmp_path / ".config" / "ensemble" / "config.toml").write_text('[daemon]\nworkers = "7"\n')
    assert load_config(env={}).daemon.workers == "7"


def test_an_ensemble_variable_naming_no_setting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ENSEMBLE_WORKRES names no setting; did you mean ENSEMBLE_WORKERS"):
        load_config(env={"ENSEMBLE_WORKRES": "4"})
    with pytest.raises(ConfigError, match="ENSEMBLE_JOBS_WINDO names no setting"):
        load_config(env={"ENSEMBLE_JOBS_WINDO": "4"})
    with pytest.raises(ConfigError, match=r"ENSEMBLE_BOGUS names no setting \(a setting is"):
        load_config(env={"ENSEMBLE_BOGUS": "1"})  # was: "did you mean ENSEMBLE_FIGURES?" (a tests' variable)
    known = {name: "1" for name in OTHER_VARIABLES if name != "ENSEMBLE_CONFIG"}
    assert load_config(env={**known, "ENSEMBLE_DAEMON_WORKERS": "2", "OTHER_THING": "x"}).daemon.workers == "2"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    out = _ensemble(dict(env, PYTHONPATH=str(ROOT), ENSEMBLE_WORKRES="4"), "status")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "ensemble: error: environment variable ENSEMBLE_WORKRES names no setting; did you mean ENSEMBLE_WORKERS? "
        "(a setting is ENSEMBLE_<SECTION>_<KEY>, a [daemon] key also ENSEMBLE_<KEY>); unset it or fix its name"]


def test_every_ensemble_variable_the_code_uses_is_known() -> None:
    from actors.config import _env_names

    known = set(_env_names()) | set(OTHER_VARIABLES)
    used: set[str] = set()
    for top in ("actors", "audio", "controller", "ensemble", "tests", "bench", "deploy", "examples", ".ci"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in ("", ".py", ".service", ".yaml", ".env", ".sh", ".toml") \
                    and path != Path(__file__):  # this file misspells names on purpose
                text = path.read_text(errors="replace")
                used |= set(re.findall(r"(?<![A-Za-z_])ENSEMBLE_[A-Z0-9_]+", text))
    used -= {"ENSEMBLE_"}
    assert used - known == set(), "add these to actors.config.OTHER_VARIABLES (or fix their names)"


def test_python_m_actors_cli_runs_the_command_line() -> None:
    """``python -m actors.cli`` (the module itself, beside ``python -m actors``): the installed packages' commands
    imported a second copy of it, half built, and it failed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "actors.cli", "--help"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: ensemble"), out.stdout

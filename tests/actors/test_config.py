"""Configuration: one typed object from TOML, then ENSEMBLE_* environment, then flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from actors._errors import ConfigError, EnsembleError
from actors._errors import JobRefused
from actors._jobfn import check_allowed
from actors.config import DEFAULT_ALLOW, Config, load_config
from tests.conftest import ROOT, Daemon


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "ensemble.toml"
    p.write_text(text)
    return str(p)


def test_defaults_work_on_a_laptop() -> None:
    cfg = load_config(env={})
    assert isinstance(cfg, Config)
    assert cfg.name == "default"
    assert cfg.daemon.workers == "auto"
    assert cfg.worker_count == len(os.sched_getaffinity(0))
    assert cfg.supervision.max_restarts == 5 and cfg.supervision.restart_period == 10.0
    assert cfg.daemon.max_frame == 64 * 1024 * 1024
    assert cfg.jobs.allow == DEFAULT_ALLOW
    check_allowed("examples.jobs:add", cfg.jobs.allow)  # side-effect-free examples are open to remote clients
    with pytest.raises(JobRefused):
        check_allowed("tests.jobs:pid", cfg.jobs.allow)  # test jobs never are


def test_config_is_frozen() -> None:
    cfg = load_config(env={})
    with pytest.raises(AttributeError):  # msgspec's frozen Struct, as a frozen dataclass would
        cfg.daemon.name = "x"  # type: ignore[misc]


def test_precedence_is_toml_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nname = "fromtoml"\nworkers = "3"\nlog_level = "debug"\n'
                          '[supervision]\nmax_restarts = 7\nheartbeat_timeout = 9.0\n')
    cfg = load_config(path, env={})
    assert (cfg.name, cfg.daemon.workers, cfg.supervision.max_restarts) == ("fromtoml", "3", 7)

    env = {"ENSEMBLE_NAME": "fromenv", "ENSEMBLE_SUPERVISION_MAX_RESTARTS": "2"}
    cfg = load_config(path, env=env)
    assert (cfg.name, cfg.daemon.workers, cfg.supervision.max_restarts) == ("fromenv", "3", 2)
    assert cfg.daemon.log_level == "debug" and cfg.supervision.heartbeat_timeout == 9.0

    cfg = load_config(path, overrides={"daemon": {"name": "fromflag", "workers": None}}, env=env)
    assert (cfg.name, cfg.daemon.workers) == ("fromflag", "3")  # None: the flag was not given


def test_env_names_the_section_or_for_the_daemon_only_the_key() -> None:
    cfg = load_config(env={"ENSEMBLE_DAEMON_WORKERS": "4", "ENSEMBLE_JOBS_QUEUE_LIMIT": "10",
                           "ENSEMBLE_JOBS_ALLOW": "mypkg.*, other:fn", "ENSEMBLE_MAX_FRAME": "2048"})
    assert cfg.worker_count == 4
    assert cfg.jobs.queue_limit == 10
    assert cfg.jobs.allow == ("mypkg.*", "other:fn")
    assert cfg.daemon.max_frame == 2048


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nname = 'viaenv'\n")
    assert load_config(env={"ENSEMBLE_CONFIG": path}).name == "viaenv"


def test_run_dir_is_private_under_xdg_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cfg = load_config(overrides={"daemon": {"name": "abc"}}, env={})
    assert cfg.run_dir == tmp_path / "ensemble" / "abc"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert cfg.run_dir.name == "abc" and cfg.run_dir.parent.name == f"ensemble-{os.getuid()}"


def test_json_round_trip_for_children() -> None:
    cfg = load_config(env={"ENSEMBLE_NAME": "x", "ENSEMBLE_JOBS_ALLOW": "a.*,b.*"})
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("text, fragment", [
    ("[daemon\nname = 1", "is not valid TOML"),
    ("[nosuchsection]\nx = 1", "unknown section [nosuchsection]"),
    ("[daemon]\nnosuchkey = 1", "unknown key 'nosuchkey'"),
    ("[supervision]\nmax_restarts = 'many'", "'many' is not a valid int"),
    ("[supervision]\nheartbeat_interval = true", "is not a valid float"),
    ("[supervision]\nmax_restarts = 2.5", "is not a valid int"),
    ("[jobs]\nallow = 5", "is not a valid list of strings"),
    ("daemon = 3", "must be a table"),
    ("[daemon]\nname = 'no spaces allowed'", "daemon name"),
    ("[daemon]\nworkers = 'lots'", "workers 'lots' is invalid"),
    ("[supervision]\nheartbeat_interval = 2.0\nheartbeat_timeout = 1.0", "heartbeat_timeout must be greater"),
    ("[daemon]\nmax_frame = 10", "too small"),
    ("[audio]\nbackend = 'wave'", "audio backend 'wave' is invalid"),
])
def test_bad_files_and_values_raise_one_clear_config_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert fragment in message
    assert isinstance(info.value, EnsembleError)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize("env, fragment", [
    ({"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "soon"}, "'soon' is not a valid float"),
    ({"ENSEMBLE_WORKERS": "-1"}, "workers '-1' is invalid"),
    ({"ENSEMBLE_NAME": "../escape"}, "daemon name"),
])
def test_bad_environment_values_are_clear_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(env=env)


# --------------------------------------------------------------------------------- through the CLI
def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "actors", *args], env=full, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("toml, env", [
    ("[daemon\n", {}),
    ("[supervision]\nmax_restarts = 'x'\n", {}),
    ("", {"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "soon"}),
    ("", {"ENSEMBLE_WORKERS": "many"}),
])
def test_cli_reports_a_bad_config_in_one_line_and_exits_non_zero(tmp_path: Path, toml: str, env: dict[str, str]) -> None:
    path = write(tmp_path, toml)
    env = {"ENSEMBLE_RUN_DIR": str(tmp_path / "run"), "ENSEMBLE_STATE_DIR": str(tmp_path / "state"), **env}
    for args in (["--config", path, "status"], ["--config", path, "up"]):
        proc = run_cli(args, env)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("ensemble: error: ")
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\n")
    proc = run_cli(["--debug", "--config", path, "status"], {})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_cli_flags_beat_environment_beat_toml(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2, config_text='[daemon]\nworkers = "3"\n[jobs]\nqueue_limit = 77\n')
    assert d.config.worker_count == 2  # ENSEMBLE_WORKERS=2 beats the file's 3
    d.up("--workers", "1")  # the flag beats both
    st = d.status()
    assert sum(a.role == "worker" for a in st.actors) == 1
    assert st.daemon.workers_wanted == 1
    d.down()


def cfg_with(**sections: Any) -> Config:
    return load_config(overrides=sections, env={})


def test_overrides_are_validated_like_everything_else() -> None:
    with pytest.raises(ConfigError, match="workers"):
        cfg_with(daemon={"workers": "x"})
    assert cfg_with(daemon={"workers": 3}).worker_count == 3


# -- [cluster] -------------------------------------------------------------------------------------
def test_cluster_section_reads_ray_workers_and_resources(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[daemon]\ntcp = "tcp://0.0.0.0:7700"\n'
                                      '[cluster]\nray = "auto"\nworkers = 3\nworker_resources = {CPU = 2, GPU = 1}\n'),
                      env={})
    assert (cfg.cluster.ray, cfg.cluster.workers) == ("auto", 3)
    assert cfg.cluster.worker_resources == {"CPU": 2.0, "GPU": 1.0}
    assert Config.from_json(cfg.to_json()) == cfg  # children get it as JSON
    env = {"ENSEMBLE_DAEMON_TCP": "tcp://0.0.0.0:7700", "ENSEMBLE_CLUSTER_RAY": "ray://head:10001",
           "ENSEMBLE_CLUSTER_WORKER_RESOURCES": "CPU=1,accel=4"}
    cfg = load_config(env=env)
    assert cfg.cluster.ray == "ray://head:10001" and cfg.cluster.worker_resources == {"CPU": 1.0, "accel": 4.0}
    assert load_config(env={}).cluster.ray == ""  # off by default: Ray is never imported


@pytest.mark.parametrize("text, words", [
    ('[cluster]\nray = "auto"\n', "[daemon] tcp"),  # the nodes need an endpoint to connect back to
    ('[cluster]\nworkers = 2\n', 'ray = "auto"'),
    ('[daemon]\ntcp = "tcp://0.0.0.0:1"\n[cluster]\nray = "http://x"\n', "ray://HOST:PORT"),
    ('[daemon]\ntcp = "tcp://0.0.0.0:1"\n[cluster]\nray = "auto"\nworker_resources = {GPU = -1}\n', "GPU"),
    ('[daemon]\ntcp = "tcp://0.0.0.0:1"\n[cluster]\nray = "auto"\nworker_resources = 4\n', "name = amount"),
    ('[daemon]\ntcp = "tcp://0.0.0.0:1"\n[cluster]\nray = "auto"\nworkers = 5000\n', "0..1024"),
])
def test_cluster_mistakes_are_one_clear_line(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert words in str(err.value) and "\n" not in str(err.value)

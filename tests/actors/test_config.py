"""Configuration: one typed object from TOML, then ENSEMBLE_* environment, then flags."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable

import pytest

from actors._errors import ConfigError, EnsembleError
from actors._errors import JobRefused
from actors._jobfn import check_allowed
from actors.config import DEFAULT_ALLOW, Config, load_config
from tests.conftest import ROOT, Daemon, processes_mentioning


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
                           "ENSEMBLE_JOBS_ALLOW": "mypkg.*, other:fn", "ENSEMBLE_MAX_FRAME": "70000"})
    assert cfg.worker_count == 4
    assert cfg.jobs.queue_limit == 10
    assert cfg.jobs.allow == ("mypkg.*", "other:fn")
    assert cfg.daemon.max_frame == 70000


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
    ("log_level = 'debug'", ": log_level = 'debug' is outside every section: put it under [daemon]"),
    ("nosuchkey = 1", ": nosuchkey = 1 is outside every section: keys go in a section: [daemon], "),
    ("[supervision]\nheartbeat_timeout = 0.2", "heartbeat_interval, here [supervision] heartbeat_interval = 0.5 "
                                               "(the default)"),
    ("[daemon]\nname = 'no spaces allowed'", "[daemon] name = 'no spaces allowed' is invalid"),
    ("[daemon]\nworkers = 'lots'", "[daemon] workers = 'lots' is invalid"),
    ("[supervision]\nheartbeat_interval = 2.0\nheartbeat_timeout = 1.0", "heartbeat_timeout must be greater"),
    ("[daemon]\nmax_frame = 10", "[daemon] max_frame = 10 is invalid: give a whole number 65536.."),
    ("[audio]\nbackend = 'wave'", "[audio] backend = 'wave' is invalid"),
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
    ({"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "soon"},
     "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT='soon' ([supervision] heartbeat_timeout) is not a valid float"),
    ({"ENSEMBLE_WORKERS": "-1"}, "ENSEMBLE_WORKERS='-1' ([daemon] workers) is invalid"),
    ({"ENSEMBLE_MAX_FRAME": "1e9"},  # (it said "is not a valid int", and not what would be)
     "ENSEMBLE_MAX_FRAME='1e9' ([daemon] max_frame) is not a valid int: give a whole number 65536..4294967296"),
    ({"ENSEMBLE_NAME": "../escape"}, "ENSEMBLE_NAME='../escape' ([daemon] name) is invalid"),
])
def test_bad_environment_values_are_clear_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(env=env)


@pytest.mark.parametrize("args, fragment", [
    (["up", "--workers", "-1"], "--workers '-1' ([daemon] workers) is invalid: give 'auto' or a whole number"),
    (["up", "--name", "a/b"], "--name 'a/b' ([daemon] name) is invalid"),
    (["--name", "../x", "status"], "--name '../x' ([daemon] name) is invalid"),
])
def test_a_bad_flag_is_named_as_the_flag_not_as_a_config_key(tmp_path: Path, args: list[str], fragment: str) -> None:
    """``up --workers -1`` said "config: [daemon] workers = '-1' is invalid", as if a file held it."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path)}
    env.pop("ENSEMBLE_NAME", None)
    out = subprocess.run([sys.executable, "-m", "actors.cli", *args], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and out.stderr.startswith(f"ensemble: error: {fragment}"), out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started


# -- every key's range, from the file and from the environment -------------------------------------
BAD_VALUES = [
    # section, key, a bad value in TOML, the same or another in the environment (None: no variable can hold it)
    ("daemon", "name", "'a b'", "a b"),
    ("daemon", "workers", "'-1'", "²"),
    ("daemon", "run_dir", r'"a\u0000b"', None),
    ("daemon", "state_dir", r'"a\u0000b"', None),
    ("daemon", "log_level", "'bogus'", "bogus"),
    ("daemon", "max_frame", "9223372036854775807", "10"),
    ("daemon", "tcp", "'tcp://0.0.0.0'", "http://0.0.0.0:7700"),
    ("daemon", "client_tcp", "'tcp://127.0.0.1:70000'", "tcp://127.0.0.1"),
    ("daemon", "keys_dir", r'"a\u0000b"', None),
    ("daemon", "metrics_port", "65536", "-1"),
    ("daemon", "metrics_host", "'local host'", "local host"),
    ("daemon", "metrics_host", "''", ""),  # (bound by the daemon, an empty host failed as socket.gaierror)
    ("daemon", "extensions", "['au dio']", "audio,con/troller"),
    ("supervision", "heartbeat_interval", "nan", "0"),
    ("supervision", "heartbeat_timeout", "inf", "-1"),
    ("supervision", "max_restarts", "-1", "10000000"),
    ("supervision", "restart_period", "0.0", "nan"),
    ("supervision", "stop_grace", "-0.5", "inf"),
    ("supervision", "term_grace", "nan", "1e300"),
    ("supervision", "worker_nice", "20", "-21"),
    ("jobs", "allow", "['os;system']", "examples.jobs:add,os system"),
    ("jobs", "queue_limit", "0", str(2**41)),
    ("jobs", "queue_bytes", "10", str(2**51)),
    ("jobs", "retention", "-1.0", "nan"),
    ("jobs", "window", "0", "65537"),
    ("jobs", "inline_array_limit", "-1", str(2**33)),
    ("jobs", "reconnect_wait", "-1.0", "inf"),
    ("audio", "backend", "'wave'", "wave"),
    ("audio", "device", r'"hw\u0000"', None),
    ("audio", "samplerate", "0", "-1"),
    ("audio", "blocksize", "8193", "0"),
    ("audio", "channels", "0", "٣"),  # a digit, but not an ASCII one
    ("audio", "max_voices", "0", "100000"),
    ("audio", "steal", "'random'", "random"),
    ("audio", "script", r'"a\u0000.py"', None),
    ("audio", "script_dirs", r'["a\u0000"]', None),
    ("audio", "autoconnect", "'maybe'", "maybe"),
    ("audio", "midi_in", "['(unclosed']", "(unclosed"),
    ("audio", "jack_ahead", "17", "-1"),
    ("cluster", "ray", "'http://head'", "http://head"),
    ("cluster", "workers", "5000", "-1"),
    ("cluster", "worker_resources", "{GPU = -1}", "GPU=-1"),
    ("cluster", "max_workers", "0", "1025"),
    ("cluster", "connect", "'udp://head:1'", "tcp://head"),
    ("cluster", "object_store_min_bytes", "-1", str(2**51)),
    ("cluster", "join_wait", "0.0", "nan"),
]


def test_every_key_of_every_section_has_a_check_and_a_bad_value_here() -> None:
    from actors.config import _RULES, _SECTIONS

    keys = {(section, key) for section, cls in _SECTIONS.items() for key in typing.get_type_hints(cls)}
    assert {(section, key) for section, rules in _RULES.items() for key in rules} == keys
    assert {(section, key) for section, key, _, _ in BAD_VALUES} == keys


@pytest.mark.parametrize("section, key, toml", [(s, k, t) for s, k, t, _ in BAD_VALUES])
def test_a_bad_value_in_the_file_is_refused_naming_its_key_and_value(tmp_path: Path, section: str, key: str,
                                                                    toml: str) -> None:
    text = f"[{section}]\n{key} = {toml}\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    value = tomllib.loads(text)[section][key]
    message = str(info.value)
    assert message.startswith(f"config file {path}: [{section}] {key} = {value!r}"), message
    assert "\n" not in message


@pytest.mark.parametrize("section, key, value", [(s, k, e) for s, k, _, e in BAD_VALUES if e is not None])
def test_a_bad_value_in_the_environment_is_refused_naming_its_variable_and_value(section: str, key: str,
                                                                                value: str) -> None:
    variable = f"ENSEMBLE_{section.upper()}_{key.upper()}"
    with pytest.raises(ConfigError) as info:
        load_config(env={variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}={value!r} ([{section}] {key})"), message
    assert "\n" not in message


@pytest.mark.parametrize("variable, value, key, allowed", [  # what the reviewer found getting through
    ("ENSEMBLE_AUDIO_BLOCKSIZE", "0", "[audio] blocksize", "give a whole number 1..8192 frames"),
    ("ENSEMBLE_AUDIO_SAMPLERATE", "-1", "[audio] samplerate", "give a whole number 8000..768000 Hz"),
    ("ENSEMBLE_SUPERVISION_HEARTBEAT_INTERVAL", "nan", "[supervision] heartbeat_interval",
     "give a finite number of seconds, above 0"),
    ("ENSEMBLE_MAX_FRAME", "9223372036854775807", "[daemon] max_frame", "give a whole number 65536..4294967296 bytes"),
    ("ENSEMBLE_LOG_LEVEL", "bogus", "[daemon] log_level", "give debug, info, warning, error or critical (any case)"),
    ("ENSEMBLE_WORKERS", "²", "[daemon] workers", "give 'auto' or a whole number 0..1024"),
])
def test_the_values_that_got_through_are_refused_saying_what_is_allowed(variable: str, value: str, key: str,
                                                                        allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={variable: value})
    assert str(info.value).startswith(f"{variable}={value!r} ({key}) is invalid: {allowed}"), str(info.value)


@pytest.mark.parametrize("variable, lowest, highest", [
    ("ENSEMBLE_AUDIO_BLOCKSIZE", 1, 8192),
    ("ENSEMBLE_AUDIO_SAMPLERATE", 8000, 768000),
    ("ENSEMBLE_AUDIO_CHANNELS", 1, 256),
    ("ENSEMBLE_AUDIO_MAX_VOICES", 1, 1024),
    ("ENSEMBLE_MAX_FRAME", 65536, 2**32),
    ("ENSEMBLE_METRICS_PORT", 0, 65535),
    ("ENSEMBLE_SUPERVISION_MAX_RESTARTS", 0, 1_000_000),
    ("ENSEMBLE_SUPERVISION_WORKER_NICE", -20, 19),
    ("ENSEMBLE_JOBS_QUEUE_LIMIT", 1, 2**40),
    ("ENSEMBLE_JOBS_WINDOW", 1, 65536),
    ("ENSEMBLE_CLUSTER_MAX_WORKERS", 1, 1024),
])
def test_whole_number_ranges_include_their_ends_and_nothing_past_them(variable: str, lowest: int,
                                                                      highest: int) -> None:
    for good in (lowest, highest):
        load_config(env={variable: str(good)})
    for bad in (lowest - 1, highest + 1):
        with pytest.raises(ConfigError, match=re.escape(f"{variable}='{bad}' (")):
            load_config(env={variable: str(bad)})


@pytest.mark.parametrize("variable, good, bad", [
    ("ENSEMBLE_LOG_LEVEL", ["debug", "INFO", "Warning", "error", "CRITICAL", "warn"], ["verbose", "", "10"]),
    ("ENSEMBLE_WORKERS", ["auto", "0", "1024", "007"], ["1025", "²", "٣", "+4", "4.0", "AUTO"]),
    ("ENSEMBLE_SUPERVISION_STOP_GRACE", ["0", "0.25", "3e1"], ["inf", "-inf", "nan", "-0.1", "1e300"]),
    ("ENSEMBLE_JOBS_RETENTION", ["0", "86400"], ["nan", "-1", "1e12"]),
    ("ENSEMBLE_TCP", ["", "tcp://0.0.0.0:7700", "tcp://[::1]:7700", "tcp://127.0.0.1:*"],
     ["tcp://0.0.0.0", "tcp://h:65536", "ipc:///tmp/x"]),
])
def test_text_values_are_read_as_documented(variable: str, good: list[str], bad: list[str]) -> None:
    for value in good:
        load_config(env={variable: value})
    for value in bad:
        with pytest.raises(ConfigError, match=re.escape(f"{variable}={value!r} (")):
            load_config(env={variable: value})


def test_keys_that_must_agree_are_named_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "[supervision]\nheartbeat_interval = 2.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "1.5"})
    assert str(info.value) == ("ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT=1.5 ([supervision] heartbeat_timeout) is "
                               "invalid: heartbeat_timeout must be greater than heartbeat_interval, here "
                               f"config file {path}: [supervision] heartbeat_interval = 2.0")
    with pytest.raises(ConfigError, match=re.escape("[cluster] max_workers = 64 (the default)")):
        load_config(env={"ENSEMBLE_TCP": "tcp://0.0.0.0:1", "ENSEMBLE_CLUSTER_RAY": "auto",
                         "ENSEMBLE_CLUSTER_WORKERS": "65"})


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


def test_up_with_a_zero_blocksize_exits_with_one_line_and_starts_nothing(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.env["ENSEMBLE_AUDIO_BLOCKSIZE"] = "0"  # the processor would refuse it after `up` said the daemon was up
    proc = d.cli("up", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "ensemble: error: ENSEMBLE_AUDIO_BLOCKSIZE='0' ([audio] blocksize) is invalid: give a whole number 1..8192 "
        "frames (8192: JACK's largest period)"]
    assert proc.stdout == ""
    assert not (d.base / "run").exists() and not (d.base / "state").exists()
    assert processes_mentioning(str(d.base)) == []


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


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small read-only tmpfs (needs root)")
def test_a_state_directory_on_a_read_only_file_system_is_one_line_naming_it(tmp_path: Path) -> None:
    """`up` with its state directory on a read-only mount printed a traceback (`daemon.err` could not be
    made); it is refused as a directory that cannot be created is, naming it and the setting."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(ro)], check=True)
    try:
        (ro / "state").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        cfg = load_config(env={"ENSEMBLE_STATE_DIR": str(ro / "state")})
        with pytest.raises(ConfigError, match=r"state directory .*/ro/state cannot be written: it is on a "
                                              r"read-only file system; set ENSEMBLE_STATE_DIR"):
            cfg.make_state_dir()
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_an_extension_no_installed_package_provides_is_refused_naming_those_installed() -> None:
    """``extensions = ["audo"]`` started a daemon with no audio and said nothing; its clients then read "unknown
    message kind 65"."""
    from actors.extensions import load_extensions

    with pytest.raises(ConfigError, match=r"^\[daemon\] extensions names 'audo', which no installed package "
                                          r"provides; installed: audio, controller, panel"):
        load_extensions(["audo", "controller"])
    assert [cls.name for cls in load_extensions(["controller"])] == ["controller"]

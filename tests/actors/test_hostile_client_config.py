"""Configuration under hostile input: bytes that are not UTF-8 in ``ENSEMBLE_*`` variables, NUL characters in
TOML strings, a config path that is missing, holds a NUL or is not UTF-8 text.

A value :func:`load_config` accepts must reach the daemon as it is (its config crosses as JSON; ZeroMQ takes
endpoints as UTF-8): anything else is one ConfigError naming the key as written and what to do.  Each test
fails on the code before its fix (``ensemble up`` died in a traceback, UnicodeEncodeError in ``to_json``).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Callable

import pytest

from actors import ConfigError
from actors.client import Client
from actors.config import _SECTIONS, Config, _env_names, load_config
from tests.actors.test_cli import one_line_error
from tests.conftest import Daemon

Make = Callable[..., Daemon]

# every setting that holds text: a string, a list of strings, a table of names
_TEXT_KEYS = [(section, key, hint) for section, cls in _SECTIONS.items()
              for key, hint in typing.get_type_hints(cls).items() if hint is str or typing.get_origin(hint)
              in (tuple, dict)]
_HOSTILE = ["", " ", "-1", "-0", "1e400", "nan", "9" * 400, "a\udcffb", "0x10", "1_000", "True", "[1]", "\u0663",
            "a,b", "CPU=1,GPU=0.5", "tcp://h:1", "auto"]


def _variable(section: str, key: str) -> str:
    return f"ENSEMBLE_{section.upper()}_{key.upper()}"


@pytest.mark.parametrize("section, key, hint", _TEXT_KEYS, ids=[f"{s}.{k}" for s, k, _ in _TEXT_KEYS])
def test_bytes_that_are_not_utf8_in_a_variable_are_one_config_error_naming_it(section: str, key: str,
                                                                              hint: Any) -> None:
    value = "a\udcffb=1" if typing.get_origin(hint) is dict else "a\udcffb"  # (b"a\xffb" in the environment)
    var = _variable(section, key)
    with pytest.raises(ConfigError) as info:
        load_config(env={var: value})
    assert str(info.value) == (f"{var}={value!r} ([{section}] {key}) is invalid: it holds bytes that are not UTF-8 "
                               "(the \\udcXX above); write it in UTF-8")


@pytest.mark.parametrize("section, key, hint", _TEXT_KEYS, ids=[f"{s}.{k}" for s, k, _ in _TEXT_KEYS])
def test_a_nul_in_any_toml_text_is_one_config_error_naming_the_key(tmp_path: Path, section: str, key: str,
                                                                   hint: Any) -> None:
    text = {str: '"a\\u0000b"', tuple: '["a\\u0000b"]', dict: '{"a\\u0000b" = 1}'}[typing.get_origin(hint) or hint]
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{key} = {text}\n")
    with pytest.raises(ConfigError, match=rf"config file {path}: \[{section}\] {key} = .* is invalid: it cannot "
                                          "hold a NUL character"):
        load_config(path, env={})


def test_every_value_a_variable_may_take_crosses_to_the_daemon_unchanged() -> None:
    """Whatever load_config accepts, to_json carries and from_json reads back equal (what a daemon is started
    with); the rest is a ConfigError."""
    accepted = 0
    for var in sorted(_env_names()):
        for value in _HOSTILE:
            try:
                cfg = load_config(env={var: value})
            except ConfigError:
                continue
            accepted += 1
            assert Config.from_json(cfg.to_json()) == cfg, (var, value)
    assert accepted > 100  # (the loop ran)


def test_ensemble_up_with_a_variable_not_utf8_is_refused_in_one_line_and_starts_nothing(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True)
    d.env["ENSEMBLE_AUDIO_DEVICE"] = "a\udcffb"  # subprocess passes it as the bytes b"a\xffb"
    out = d.cli("up", check=False, timeout=60)
    one_line_error(out, "ENSEMBLE_AUDIO_DEVICE='a\\udcffb' ([audio] device) is invalid: it holds bytes that are "
                        "not UTF-8")  # was: a UnicodeEncodeError traceback from Config.to_json
    assert not (d.base / "run" / "daemon.pid").exists()


def test_a_private_client_with_a_variable_not_utf8_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_METRICS_HOST", "h\udcff")
    with pytest.raises(ConfigError, match="ENSEMBLE_METRICS_HOST='h\\\\udcff' .* not UTF-8"):
        Client(private=True, max_workers=1)  # was: UnicodeEncodeError while starting its daemon


@pytest.mark.parametrize("how", ["argument", "variable"])
def test_a_missing_config_file_says_where_its_path_came_from_and_what_to_do(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        if how == "argument":
            load_config(missing, env={})
        else:
            load_config(env={"ENSEMBLE_CONFIG": str(missing)})
    expected = (f"config file {missing} does not exist; give a TOML file" if how == "argument" else
                f"ENSEMBLE_CONFIG={str(missing)!r} does not exist; point it at a TOML file or unset it")
    assert str(info.value) == expected


def test_a_config_path_with_a_nul_is_a_config_error_not_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="its path holds a NUL character; give a TOML file"):
        load_config(f"{tmp_path}/c.toml\0x", env={})  # was: ValueError: embedded null byte


def test_a_config_file_that_is_not_utf8_says_which_byte_and_to_save_it_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[daemon]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (f"config file {path} cannot be read: byte b'\\xe9' at offset 20 is not UTF-8; "
                               "save it as UTF-8 (TOML files are)")

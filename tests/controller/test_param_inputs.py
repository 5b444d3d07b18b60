"""A parameter value the script would refuse is refused to the caller of ``param set``, never acknowledged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import OutOfRange
from tests.conftest import Daemon, wait_for

SCRIPT = '''
from controller.script import define_parameter

define_parameter("gain", "Gain", 0.5, 0.0, 1.0)
define_parameter("count", "Count", 3, 0, 16)
define_parameter("mode", "Mode", "a", choices=["a", "b"])
'''


def _loaded(d: Daemon) -> Any:
    script = d.base / "params.py"
    script.write_text(SCRIPT)
    c = d.client()
    c.load_script(str(script))
    wait_for(lambda: {p.name for p in c.params()} == {"gain", "count", "mode"}, what="the script's parameters")
    return c


def _refused(d: Daemon, name: str, value: str, reason: str) -> None:
    """``ensemble param set NAME VALUE`` fails with ``reason`` and does not claim the value was set."""
    proc = d.cli("param", "set", "--", name, value, check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert reason in proc.stderr, proc.stderr
    assert f"{name} = " not in proc.stdout


def _log(d: Daemon) -> str:
    return (d.base / "state" / "daemon.log").read_text()


def _state(d: Daemon) -> str:
    path = d.base / "state" / "script-state.json"
    return path.read_text() if path.exists() else ""


def test_a_float_parameter_refuses_nan_and_infinity(daemon: Daemon) -> None:
    c = _loaded(daemon)
    for text in ("NaN", "Infinity", "-Infinity", "1e999"):
        _refused(daemon, "gain", text, "a parameter value must be a finite number")
    with pytest.raises(OutOfRange, match="finite"):
        c.set_param("gain", float("nan"))
    daemon.cli("param", "set", "gain", "0.25")
    wait_for(lambda: c.get_param("gain") == 0.25, what="a good value to be applied")
    wait_for(lambda: '"gain": 0.25' in _state(daemon), what="the good value to be persisted")
    assert "NaN" not in _state(daemon) and "Infinity" not in _state(daemon)


def test_an_int_parameter_refuses_what_is_no_int_in_range_without_an_internal_error(daemon: Daemon) -> None:
    c = _loaded(daemon)
    _refused(daemon, "count", "1e999", "a parameter value must be a finite number")
    _refused(daemon, "count", "2.5", "an int parameter takes a whole number")
    _refused(daemon, "count", str(2**63), "an int parameter must fit in 64 bits")
    _refused(daemon, "count", "17", "outside 0..16")
    assert "request-failed" not in _log(daemon) and "internal error" not in _log(daemon)
    daemon.cli("param", "set", "count", "7")
    wait_for(lambda: c.get_param("count") == 7, what="a good value to be applied")


def test_a_choice_parameter_refuses_a_value_it_does_not_offer(daemon: Daemon) -> None:
    c = _loaded(daemon)
    _refused(daemon, "mode", "bogus", "'bogus' is not one of ['a', 'b']")
    with pytest.raises(OutOfRange, match="is not one of"):
        c.set_param("mode", 1)
    assert daemon.cli("param", "set", "mode", "b").stdout.strip() == "mode = b"
    wait_for(lambda: c.get_param("mode") == "b", what="an offered value to be applied")
    assert "script-error" not in _log(daemon)  # the controller never had a value to refuse

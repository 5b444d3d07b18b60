"""Switching scripts in a running daemon: each script's own parameter values.

The tests share the module's daemon: each loads scripts of its own (in its own ``tmp_path``, so its entries in
``script-state.json`` are its own) and waits for the outcome of its own load by its number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Daemon, wait_for

SCRIPT_A = """from controller.script import define_parameter

define_parameter("gain", "Gain", 0.5, 0.0, 1.0)
define_parameter("only_a", "Only in A", "a's default")
"""

SCRIPT_B = """from controller.script import define_parameter

define_parameter("gain", "Gain", 0.25, 0.0, 1.0)
"""


def _values(c: Any) -> dict[str, Any]:
    return {p.name: p.value for p in c.params()}


def _set(c: Any, name: str, value: Any) -> None:
    c.set_param(name, value)
    wait_for(lambda: c.get_param(name) == value, what=f"{name} to be {value!r}")


def _saved(d: Daemon, script: Path) -> Any:
    """``script``'s entry in the daemon's ``script-state.json`` (None while it has none)."""
    try:
        return json.loads((d.base / "state" / "script-state.json").read_text()).get(str(script.resolve()))
    except (FileNotFoundError, ValueError):
        return None


def _load_state(d: Daemon) -> list[Any]:
    return list(d.status().daemon.counters.get("script_load", [0, "", ""]))


def _script_in(d: Daemon, actor: str) -> str:
    return str(d.actor(actor).stats.get("script", ""))


def test_another_script_starts_from_its_own_values_and_a_reload_keeps_the_live_ones(shared_daemon: Daemon,
                                                                                    tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(SCRIPT_A)
    b.write_text(SCRIPT_B)
    c = shared_daemon.client()
    c.load_script(str(a), wait=30)
    _set(c, "gain", 0.9)
    _set(c, "only_a", "set in a")
    c.load_script(str(b), wait=30)
    assert _values(c) == {"gain": 0.25}  # B's default, not A's 0.9
    _set(c, "gain", 0.3)
    wait_for(lambda: _saved(shared_daemon, b) == {"params": {"gain": 0.3}}, what="b's own entry, without only_a")
    c.load_script(str(a), wait=30)
    assert _values(c) == {"gain": 0.9, "only_a": "set in a"}  # A's own saved values
    c.load_script(str(b), wait=30)
    assert _values(c) == {"gain": 0.3}
    _set(c, "gain", 0.35)
    c.reload_script(wait=30)  # the same script: its live values stay
    assert _values(c) == {"gain": 0.35}
    c.load_script(str(b), wait=30)  # loaded again by its path: the same
    assert _values(c) == {"gain": 0.35}

"""The installed entry points: scanned once by the supervisor and passed down to the children it spawns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actors.extensions import GROUPS, PASSED_ENV, _entry_points, pass_down


def _scan_in_child(env: dict[str, str]) -> dict[str, list[list[str]]]:
    """Each group's entry points as a fresh interpreter finds them, with ``env`` as its environment."""
    code = ("import json\nfrom actors.extensions import GROUPS, _entry_points\n"
            "print(json.dumps({g: [list(e) for e in _entry_points(g)] for g in GROUPS}))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_child_reads_the_supervisor_s_scan_and_loads_the_same_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    scanned = {g: [list(e) for e in _entry_points(g)] for g in GROUPS}
    assert scanned["ensemble.script_hosts"], "this checkout's packages provide a processor script host"
    monkeypatch.delenv(PASSED_ENV, raising=False)
    pass_down()
    passed = json.loads(os.environ[PASSED_ENV])
    assert passed["groups"] == scanned
    assert _scan_in_child(dict(os.environ)) == scanned
    host = _entry_points("ensemble.script_hosts")[0].load()
    from controller._processor_side import processor_host

    assert host is processor_host


def test_a_scan_from_another_interpreter_or_not_ours_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv(PASSED_ENV, raising=False)
    truth = _scan_in_child(dict(os.environ))
    forged = {"python": "/some/other/python", "groups": {"ensemble.script_hosts": [["processor", "os:system"]]}}
    for value in (json.dumps(forged), "not json", "[1, 2]", json.dumps({"python": sys.executable})):
        assert _scan_in_child({**os.environ, PASSED_ENV: value}) == truth, value

"""``ensemble render`` and ``ensemble param list`` say what is wrong with a user's input in one line.

Real CLI processes.  A script whose module code raises in either context is
refused as ``ensemble load`` refuses it: it did not load, in which context,
with file and line, and no traceback (a processor-only failure used to print
its bare message, or a traceback for a KeyError).  A ``--set`` time the
render never reaches (inf, nan, negative, past the end) is refused naming
the option, the time and the times allowed (it used to raise OverflowError).
A long parameter value is cut in ``param list``, whole in ``param get``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, Daemon, wait_for

# module code that raises in one context only: (source, context, line that raises, what it says)
FAILING = {
    "processor-runtime": ('from controller.script import *\n\nif get_context() == "Processor":\n'
                          '    raise RuntimeError("proc only boom")\n', "Processor", 4, "RuntimeError"),
    "processor-keyerror": ('from controller.script import *\nTABLE = {}\nif get_context() == "Processor":\n'
                           '    TABLE["missing"]\n', "Processor", 4, "KeyError"),
    "processor-exit": ('import sys\nfrom controller.script import *\nif get_context() == "Processor":\n'
                       '    sys.exit(3)\n', "Processor", 4, "SystemExit"),
    "controller-keyerror": ('from controller.script import *\nTABLE = {}\nif get_context() == "Controller":\n'
                            '    TABLE["missing"]\n', "Controller", 4, "KeyError"),
}
LEVEL = 'from controller.script import *\ndefine_parameter("lvl", "Level", 0.5, 0.0, 1.0)\n'


def _render(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ensemble render ARGS -o tmp/out.wav`` (no daemon: a render runs in the command's own process)."""
    env = {**os.environ, "ENSEMBLE_RUN_DIR": str(tmp / "run"), "ENSEMBLE_STATE_DIR": str(tmp / "state"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "actors", "render", *args, "-o", str(tmp / "out.wav")],
                          env=env, capture_output=True, text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused render prints: exit 1, nothing else on stderr, no traceback, no file written."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble: error: "), proc.stderr
    assert "wrote" not in proc.stdout
    return lines[0]


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_script_that_raises_in_its_module_code_did_not_load(tmp_path: Path, case: str) -> None:
    source, context, line, kind = FAILING[case]
    script = tmp_path / f"{case.replace('-', '_')}.py"
    script.write_text(source)
    error = _one_error_line(_render(tmp_path, str(script), "--seconds", "0.1"))
    assert f"script {script} did not load: {context} load-failed: {kind} " in error
    assert f"({script.resolve()}:{line} in <module>)" in error
    assert not (tmp_path / "out.wav").exists()


BAD_TIMES = {  # the time after @ -> what the refusal says of it
    "inf": "the time inf is not a finite number",
    "1e400": "the time inf is not a finite number",
    "nan": "the time nan is not a finite number",
    "-1": "the time -1.0 is before the start",
    "0.5": "the time 0.5 is at or past the render's end (0.2 s)",
    "soon": "the time 'soon' is not a number of seconds",
}


def test_a_set_time_the_render_never_reaches_is_refused_naming_the_option(tmp_path: Path) -> None:
    script = tmp_path / "level.py"
    script.write_text(LEVEL)
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip(BAD_TIMES, pool.map(
            lambda when: _render(tmp_path / when, str(script), "--seconds", "0.2", "--set", f"lvl=0.7@{when}"),
            BAD_TIMES)))
    for when, says in BAD_TIMES.items():
        error = _one_error_line(runs[when])
        assert error.startswith(f"ensemble: error: --set 'lvl=0.7@{when}': {says}"), error
        if when != "soon":
            assert "give a time in seconds from 0 to less than the render's length (--seconds 0.2)" in error
    ok = _render(tmp_path, str(script), "--seconds", "0.2", "--set", "lvl=0.7@0.1")
    assert ok.returncode == 0 and ok.stdout.startswith("wrote "), ok.stderr


def test_a_set_time_without_seconds_is_held_to_the_longest_render(tmp_path: Path) -> None:
    script = tmp_path / "level.py"
    script.write_text(LEVEL)
    error = _one_error_line(_render(tmp_path, str(script), "--set", "lvl=0.7@1e300"))
    assert "the time 1e+300 is at or past the render's end (86400 s)" in error
    assert "from 0 to less than the longest render (86400 s)" in error


def test_param_list_cuts_a_long_value_and_param_get_gives_it_whole(shared_daemon: Daemon, tmp_path: Path) -> None:
    long = "BEGIN" + "y" * 99_990 + "END.."  # 100,000 characters
    script = tmp_path / "long_text.py"
    script.write_text(f'from controller.script import *\ndefine_parameter("text", "Text", {long!r})\n')
    c = shared_daemon.client()
    c.load_script(str(script), wait=60)
    wait_for(lambda: [p.name for p in c.params()] == ["text"], what="the script's parameter")
    listed = shared_daemon.cli("param", "list").stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith("text = 'BEGINyyy"), listed[0][:300]
    assert len(listed[0]) < 1000
    assert listed[0].count("(99802 characters left out)") == 2, listed[0]  # the value and the default
    assert "END..'" in listed[0]
    assert json.loads(shared_daemon.cli("param", "get", "text").stdout) == long
    assert json.loads(shared_daemon.cli("param", "list", "--json").stdout)[0]["value"] == long

"""A long value a user gives the ``ensemble`` command is clipped in its error line, never echoed whole.

Real CLI processes, no daemon (every command here is refused before it would reach one): a 100,000-character
argument made a 100,000-character error line, from the command's own messages, click's, and those it passes
on from the config.  Now each long value shows its start and its end around an ellipsis, then its length.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from tests.conftest import ROOT

LONG = "BEGIN" + "x" * 99_990 + "END.."  # 100,000 characters
SPACED = "word " * 20_000  # 100,000 characters, spaces in them (quoted where it is echoed)
CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "an argument (the command's own check)": (["scale", LONG], {}),
    "an option's value (click's own check)": (["scale", "2", "--on", LONG], {}),
    "a command name": ([LONG], {}),
    "an option name": (["status", f"--{LONG}"], {}),
    "a value with spaces": (["submit", "m:f", "--kw", SPACED], {}),
    "a script command's argument (controller/_cli.py)": (["param", "bind", "p", LONG], {}),
    "an environment variable (the config's message)": (["status"], {"ENSEMBLE_NAME": LONG}),
    "a short value": (["scale", "abc"], {}),
}


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Each case's ``ensemble`` run, a few at a time."""
    run_dir = tmp_path_factory.mktemp("long-values") / "run"

    def run(case: tuple[list[str], dict[str, str]]) -> subprocess.CompletedProcess[str]:
        args, extra = case
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
        env.update({"PYTHONPATH": str(ROOT), "ENSEMBLE_NAME": "nobody-home", "ENSEMBLE_RUN_DIR": str(run_dir), **extra})
        return subprocess.run([sys.executable, "-m", "actors", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    with ThreadPoolExecutor(4) as pool:
        yield dict(zip(CASES, pool.map(run, CASES.values())))


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble: error: ") and "Traceback" not in proc.stderr, \
        proc.stderr[:2000]
    return lines[0]


@pytest.mark.parametrize("case, says", [
    ("an argument (the command's own check)", "Invalid value for 'WORKERS': 'BEGINxxx"),
    ("an option's value (click's own check)", "Invalid value for '--on': 'BEGINxxx"),
    ("a command name", "No such command 'BEGINxxx"),
    ("an option name", "No such option '--BEGINxxx"),
    ("a script command's argument (controller/_cli.py)", "controller 'BEGINxxx"),
    ("an environment variable (the config's message)", "ENSEMBLE_NAME='BEGINxxx"),
])
def test_a_long_value_is_shown_by_its_start_and_end_and_its_length(
        errors: dict[str, subprocess.CompletedProcess[str]], case: str, says: str) -> None:
    line = _error_line(errors[case])
    assert len(line) < 600 and says in line, line[:2000]
    shown = re.search(r"'((--)?BEGINx+\.\.\.x+END\.\.)' \((\d+) characters\)", line)
    assert shown is not None, line
    dashes = 2 if case == "an option name" else 0  # click echoes the option with its dashes, inside the quotes
    assert len(shown[1]) == 200 + len("...") and int(shown[3]) == len(LONG) + dashes, line


def test_what_the_line_says_around_the_value_stays_whole(errors: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _error_line(errors["an argument (the command's own check)"])
    assert line.endswith("(100000 characters) is not an integer; give 0 to 1024 (the daemon runs at most 1024 "
                         "workers) (see `ensemble scale --help`)"), line
    line = _error_line(errors["a script command's argument (controller/_cli.py)"])
    assert line.endswith("(100000 characters): give ccN with N in 0..127, e.g. cc74"), line


def test_a_long_value_with_spaces_is_clipped_in_its_quotes(errors: dict[str, subprocess.CompletedProcess[str]]) -> None:
    line = _error_line(errors["a value with spaces"])
    assert len(line) < 600 and line.startswith("ensemble: error: --kw 'word word ") and line.endswith(
        "word ' (100000 characters) must look like NAME=VALUE"), line


def test_a_short_value_is_echoed_whole_as_before(errors: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert _error_line(errors["a short value"]) == (
        "ensemble: error: Invalid value for 'WORKERS': 'abc' is not an integer; give 0 to 1024 (the daemon runs at "
        "most 1024 workers) (see `ensemble scale --help`)")


def test_up_to_the_limit_a_value_is_whole_past_it_clipped_to_the_limit() -> None:
    from actors.cli import _clipped

    assert _clipped("a" * 200) == "a" * 200
    assert _clipped("a" * 150 + "b" * 51) == "a" * 150 + "..." + "b" * 50 + " (201 characters)"
    assert _clipped("abc", quote="'") == "'abc'"

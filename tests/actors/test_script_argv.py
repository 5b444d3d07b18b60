"""A worker that loads the user's script (as ``__mp_main__``) gives it the script's command line, as spawn does.

A worker not forked from the script (a replacement, every worker of a
spawned private daemon) runs the script's top level before a function of it
can run; a script that parses its arguments there found the worker's own
``sys.argv`` (the daemon's configuration as JSON): argparse failed, or
worse, parsed something else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

_SCRIPT = '''\
import argparse
import sys

from actors.client import Executor

parser = argparse.ArgumentParser()
parser.add_argument("--size", type=int, required=True)
ARGS = parser.parse_args()  # at import: a worker that loads this script parses too


def scaled(x):
    return x * ARGS.size


def argv():
    return sys.argv


def leave():
    raise SystemExit(3)


if __name__ == "__main__":
    with Executor(1) as ex:
        print(ex.submit(scaled, 2).result(60), flush=True)
        print(ex.submit(argv).result(60) == sys.argv, flush=True)
        print(list(ex.map(scaled, [1, 2])), flush=True)
'''


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_script_parsing_its_arguments_at_import_gets_its_own_in_every_worker(start: str, tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(_SCRIPT)
    env = {**os.environ, "ENSEMBLE_NAME": "nobody-home", "ENSEMBLE_RUN_DIR": str(tmp_path / "run"),
           "PYTHONPATH": str(ROOT), "ENSEMBLE_PRIVATE_START": start}
    proc = subprocess.run([sys.executable, "main.py", "--size", "3"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["6", "True", "[3, 6]"]

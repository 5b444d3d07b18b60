"""``ensemble completion bash|zsh|fish`` prints click's completion script, and the script completes the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _ensemble(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actors", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _ensemble_completion ensemble"),
    ("zsh", "#compdef ensemble"),
    ("fish", "complete --no-files --command ensemble"),
])
def test_completion_prints_the_script_for_each_shell(shell: str, marker: str) -> None:
    out = _ensemble("completion", shell)
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout
    assert f"_ENSEMBLE_COMPLETE={shell}_complete" in out.stdout
    # the same script click prints for the environment variable
    same = _ensemble(env={"_ENSEMBLE_COMPLETE": f"{shell}_source"})
    assert same.stdout == out.stdout


def test_an_unknown_shell_is_one_error_line() -> None:
    out = _ensemble("completion", "tcsh")
    assert out.returncode == 2
    assert out.stderr.startswith("ensemble: error:") and len(out.stderr.strip().splitlines()) == 1


def test_the_script_completes_commands_and_choices() -> None:
    def complete(words: str, cword: int) -> list[str]:
        out = _ensemble(env={"_ENSEMBLE_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
        assert out.returncode == 0, out.stderr
        return [line.split(",", 1)[1] for line in out.stdout.splitlines()]

    assert complete("ensemble sub", 1) == ["submit"]
    assert "completion" in complete("ensemble ", 1)
    assert complete("ensemble completion ", 2) == ["bash", "fish", "zsh"]
    assert sorted(complete("ensemble keys add-", 2)) == ["add-admin", "add-client", "add-worker"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_accepts_the_script() -> None:
    script = _ensemble("completion", "bash").stdout
    out = subprocess.run(["bash", "-c", f"{script}\ncomplete -p ensemble"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "_ensemble_completion" in out.stdout

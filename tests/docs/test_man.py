"""The ``ensemble(1)`` man page: generated from the click commands, current, valid roff, shipped as data."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import tomllib

import click
import pytest

from actors.cli import main
from tests.conftest import ROOT

PAGE = ROOT / "man" / "ensemble.1"


def _render() -> str:
    return str(runpy.run_path(str(ROOT / "man" / "generate.py"))["render"]())


def test_the_page_generates_and_names_every_command() -> None:
    text = _render()
    assert text.startswith(".TH ENSEMBLE 1 ")

    def walk(group: click.Group, path: str) -> list[str]:
        out = []
        for name, cmd in group.commands.items():
            if not cmd.hidden:
                out.append(f"{path} {name}")
                if isinstance(cmd, click.Group):
                    out += walk(cmd, f"{path} {name}")
        return out

    headings = [line.removeprefix(".SS ").replace("\\-", "-") for line in text.splitlines() if line.startswith(".SS ")]
    for command in walk(main, "ensemble"):
        assert any(h == command or h.startswith(command + " ") for h in headings), f"{command} not in the man page"
    for option in ("--connect", "--server-key", "--wait", "--priority"):
        assert option.replace("-", "\\-") in text


def test_the_shipped_page_is_current() -> None:
    assert PAGE.read_text() == _render(), "man/ensemble.1 is out of date with the CLI; run: python man/generate.py"


def test_the_page_is_installed_with_the_package() -> None:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert "man/ensemble.1" in data_files["share/man/man1"]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (Debian: apt-get install groff-base)")
def test_groff_renders_it_without_warnings() -> None:
    out = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr

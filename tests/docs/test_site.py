"""The documentation site builds with ``mkdocs build --strict``, and its references are complete.

Strict mode fails the build on a broken link, a missing page or anchor, a
reference mkdocstrings cannot resolve, and a stale ``docs/script-api.md``
(``docs/hooks/ensemble_docs.py``). On top of that, every public name of
``actors``, ``audio`` and ``controller.script`` must have its entry with its
docstring in the API reference, and every command its entry in the CLI
reference. Skipped, saying so, when the docs extra is not installed.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # a strict MkDocs build (.ci/run builds the site too)

_NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_click")
REFERENCES = {"actors": "reference/actors", "audio": "reference/audio", "controller.script": "reference/script"}


def _missing_docs_extra() -> list[str]:
    missing = []
    for name in _NEEDED:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once for this module, with --strict, into a temporary directory."""
    missing = _missing_docs_extra()
    if missing:
        pytest.skip(f"the docs extra is not installed (missing {', '.join(missing)}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
                           "--config-file", str(ROOT / "mkdocs.yml")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _text(page: Path) -> str:
    """A page's visible text, tags stripped and whitespace collapsed."""
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


def _words(doc: str, n: int = 4) -> list[str]:
    """The first ``n`` words of a docstring's first line, as they read once rendered (no roles, no backticks)."""
    first = inspect.cleandoc(doc).splitlines()[0]
    first = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", first).replace("`", "")
    return first.split()[:n]


def test_the_site_builds_strict(site: Path) -> None:
    for page in ("index.html", "guides/getting-started/index.html", "reference/cli/index.html",
                 "script-api/index.html", "security/index.html", "changelog/index.html"):
        assert (site / page).is_file(), f"{page} missing from the built site"


@pytest.mark.parametrize("module", sorted(REFERENCES))
def test_every_public_name_is_in_the_api_reference_with_its_docstring(site: Path, module: str) -> None:
    page = site / REFERENCES[module] / "index.html"
    ids, text = _ids(page), _text(page)
    mod = importlib.import_module(module)
    for name in mod.__all__:
        obj = getattr(mod, name)
        anchors = {f"{module}.{name}"}  # the public path, or where a lazily exported object is defined
        if inspect.isclass(obj) or inspect.isroutine(obj):
            anchors.add(f"{obj.__module__}.{obj.__qualname__}")
        assert anchors & ids, f"{module}.{name} has no entry in docs/{REFERENCES[module]}.md (anchors {anchors})"
        if inspect.isclass(obj) or inspect.isroutine(obj):
            doc = inspect.getdoc(obj)
            assert doc, f"{module}.{name} has no docstring"
            assert " ".join(_words(doc)) in text, f"the docstring of {module}.{name} is not on its reference page"


def test_every_command_is_in_the_cli_reference(site: Path) -> None:
    import click

    from actors.cli import main

    text = _text(site / "reference" / "cli" / "index.html")

    def walk(group: click.Group, path: str) -> list[str]:
        out = []
        for name, cmd in group.commands.items():
            out.append(f"{path} {name}")
            if isinstance(cmd, click.Group):
                out += walk(cmd, f"{path} {name}")
        return out

    commands = walk(main, "ensemble")
    assert "ensemble completion" in commands
    missing = [c for c in commands if c not in text]
    assert not missing, f"commands missing from the CLI reference: {missing}"

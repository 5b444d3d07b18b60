"""The layers point one way: actors <- audio <- controller <- ensemble, through public names only.

``actors`` is the runtime and knows nothing of audio or scripts; ``audio``
builds on it; ``controller`` (scripts) on both; ``ensemble`` is the facade over all three.  Packages reach each other
only through public modules and names (never ``pkg._private``); the
runtime finds the others through entry points (``actors/extensions.py``).
Imports placed inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"actors": set(), "audio": {"actors"}, "controller": {"actors", "audio"},
           "ensemble": {"actors", "audio", "controller"}}


def _imports() -> list[tuple[str, int, str, str]]:
    out = []
    for pkg in ALLOWED:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    mods = [node.module]
                else:
                    continue
                out += [(pkg, node.lineno, str(f.relative_to(ROOT)), m) for m in mods]
    return out


def test_no_import_points_against_the_layers() -> None:
    bad = [f"{path}:{line} imports {mod}" for pkg, line, path, mod in _imports()
           if mod.split(".")[0] in ALLOWED and mod.split(".")[0] != pkg
           and mod.split(".")[0] not in ALLOWED[pkg]]
    assert not bad, "imports against actors <- audio <- controller:\n" + "\n".join(bad)


def test_no_package_reaches_into_another_s_private_modules() -> None:
    bad = [f"{path}:{line} imports {mod}" for pkg, line, path, mod in _imports()
           if mod.split(".")[0] in ALLOWED and mod.split(".")[0] != pkg
           and any(part.startswith("_") for part in mod.split(".")[1:])]
    assert not bad, "imports of another package's private modules (use its public names):\n" + "\n".join(bad)

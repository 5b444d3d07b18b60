"""Readers for the files in deploy/ (unit files, Containerfile, YAML) and the real CLI's parser."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import typing
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
CONTAINER = DEPLOY / "container"
KUBERNETES = DEPLOY / "kubernetes"


def tool(name: str) -> str | None:
    """An executable on PATH, or installed beside this interpreter (a venv's bin/ not on PATH)."""
    found = shutil.which(name)
    if found is None:
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.is_file() else None
    return found


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} (repeated keys kept in order)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if logical:
            line = logical + " " + line
            logical = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            logical = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections.setdefault(current, []).append((key.strip(), value.strip()))
    return sections


def unit_values(path: Path, key: str, section: str = "Service") -> list[str]:
    """Every value given to ``key`` in ``section`` (an empty value resets a list, as in systemd)."""
    out: list[str] = []
    for k, v in unit(path).get(section, []):
        if k == key:
            out = [] if v == "" else out + [v]
    return out


def unit_has(path: Path, key: str, section: str = "Service") -> bool:
    return any(k == key for k, _ in unit(path).get(section, []))


def containerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instr, _, args = logical.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        logical = ""
    return out


def exec_form(args: str) -> list[str]:
    """A Containerfile JSON-array argument (CMD ["a", "b"])."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def split_exec(value: str, substitutions: dict[str, str]) -> list[str]:
    """A unit's ExecStart= as argv, with specifiers and ${VARS} substituted."""
    for old, new in substitutions.items():
        value = value.replace(old, new)
    return shlex.split(value.lstrip("-@:+!"))


def parse_cli(argv: list[str], root: Path) -> list[str]:
    """Parse ``ensemble ...`` with the real click command tree without running it.

    Absolute paths in the arguments are moved under ``root`` and created there
    as empty files (options such as ``--key`` must name an existing file).
    Returns the chain of command names; raises click.UsageError (unknown
    option, missing required option, unknown command, bad value) like the CLI.
    """
    from actors.cli import main

    assert argv and Path(argv[0]).name == "ensemble", argv
    argv = [argv[0]] + [_materialise(a, root) for a in argv[1:]]
    chain = ["ensemble"]
    cmd: click.Command = main
    ctx = cmd.make_context("ensemble", list(argv[1:]))
    while isinstance(cmd, click.Group):
        rest = _remaining(ctx)
        if not rest:
            break
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no such command {name!r}", ctx)
        chain.append(name)
        cmd = sub
        ctx = cmd.make_context(name, rest, parent=ctx)
    return chain


def _materialise(arg: str, root: Path) -> str:
    if not arg.startswith("/"):
        return arg
    path = root / arg.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


def _remaining(ctx: click.Context) -> list[str]:
    """A group context's unparsed tokens (subcommand first), across click versions."""
    if "_protected_args" in vars(ctx):  # click >= 8.2 (protected_args deprecated)
        return [*ctx._protected_args, *ctx.args]
    if hasattr(ctx, "protected_args"):  # click < 8.2
        return [*ctx.protected_args, *ctx.args]
    return list(ctx.args)  # click 9: args holds everything


def known_env() -> set[str]:
    """The ENSEMBLE_* variables actors.config reads (plus ENSEMBLE_CONFIG)."""
    from actors import config

    names = {"ENSEMBLE_CONFIG"}
    for section, cls in config._SECTIONS.items():
        for key in typing.get_type_hints(cls):
            names.add(f"ENSEMBLE_{section.upper()}_{key.upper()}")
            if section == "daemon":
                names.add(f"ENSEMBLE_{key.upper()}")
    return names


def containerfile_env(path: Path) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a Containerfile (the key=value form)."""
    env: dict[str, str] = {}
    for instr, args in containerfile(path):
        if instr == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env

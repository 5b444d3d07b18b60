"""Write the ``ensemble(1)`` man page from the click commands: ``python man/generate.py``.

The page is built from the same definitions as ``ensemble --help`` (each
command's help text, usage and options, walked recursively), so it cannot say
something the CLI does not.  ``man/ensemble.1`` is the generated file; it is
installed to ``share/man/man1`` with the package (``[tool.setuptools.data-files]``
in pyproject.toml) and ``tests/docs/test_man.py`` fails when it is out of date.

    python man/generate.py              # rewrite man/ensemble.1
    python man/generate.py --stdout     # print it
    man -l man/ensemble.1               # read it without installing
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "man" / "ensemble.1"

_DESCRIPTION = """\
One supervisor daemon starts and watches separate OS processes: a controller
(the instrument script's control side), a realtime processor (audio callback,
voices, sample-accurate events) and a pool of background workers (jobs with
progress, status, abort, timeouts and external programs). They speak msgpack
over ZeroMQ; jobs are journaled in SQLite before they are acknowledged.
Every error is one line on standard error, starting with "ensemble: error:",
and a non-zero exit status; --debug shows the traceback."""

_ENVIRONMENT = [
    ("ENSEMBLE_CONFIG", "A TOML configuration file (as --config)."),
    ("ENSEMBLE_<SECTION>_<KEY>",
     "Any configuration key, e.g. ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT=2 or ENSEMBLE_JOBS_ALLOW=a.*,b:run. "
     "The [daemon] keys also answer to ENSEMBLE_<KEY>: ENSEMBLE_NAME, ENSEMBLE_WORKERS, ENSEMBLE_RUN_DIR, "
     "ENSEMBLE_STATE_DIR, ENSEMBLE_TCP, ENSEMBLE_CLIENT_TCP, ENSEMBLE_KEYS_DIR, ENSEMBLE_METRICS_PORT. "
     "Precedence, lowest first: defaults, the TOML file, the environment, command-line flags."),
    ("_ENSEMBLE_COMPLETE", "Set by the shell completion script (see the completion command)."),
]

_FILES = [
    ("$XDG_RUNTIME_DIR/ensemble/NAME/",
     "The control socket, lock and pid file (or /tmp/ensemble-UID/NAME/); mode 0700, sockets 0600."),
    ("$XDG_STATE_HOME/ensemble/NAME/",
     "The job journal (jobs.sqlite3), the log (daemon.log), saved parameters and the CURVE keys (keys/); "
     "default ~/.local/state/ensemble/NAME/."),
]


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, and a leading dot or quote."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _para(text: str) -> str:
    """A help text as roff paragraphs (click's ``\\b`` marks a block kept as written)."""
    import inspect

    blocks = inspect.cleandoc(text).split("\n\n")
    out = []
    for block in blocks:
        if block.startswith("\b"):
            out.append(".PP\n.nf\n" + _esc(block.lstrip("\b").strip("\n")) + "\n.fi")
        else:
            out.append(".PP\n" + _esc(" ".join(block.split())))
    return "\n".join(out)


def _commands(group: object, ctx: object) -> list[tuple[object, object]]:
    """``(command, context)`` for every subcommand of ``group``, depth first, in the CLI's order."""
    import click

    assert isinstance(group, click.Group) and isinstance(ctx, click.Context)
    out: list[tuple[object, object]] = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx, **cmd.context_settings)
        out.append((cmd, sub))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, sub))
    return out


def _options(cmd: object, ctx: object, with_help: bool = False) -> str:
    """The options of ``cmd`` as roff tagged paragraphs (arguments are in the usage line; ``--help`` once)."""
    import click

    assert isinstance(cmd, click.Command) and isinstance(ctx, click.Context)
    out = []
    help_option = cmd.get_help_option(ctx)
    for param in cmd.get_params(ctx):
        if isinstance(param, click.Argument) or (param is help_option and not with_help):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        out.append(f".TP\n.B {_esc(opts)}\n{_esc(help_text) if help_text else ''}".rstrip())
    return "\n".join(out)


def _usage(cmd: object, ctx: object) -> str:
    import click

    assert isinstance(cmd, click.Command) and isinstance(ctx, click.Context)
    return " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])


def render() -> str:
    """The whole man page (roff)."""
    import click

    from actors import __version__
    from actors.cli import main as cli

    root = click.Context(cli, info_name="ensemble", **cli.context_settings)
    parts = [
        '.TH ENSEMBLE 1 "" "ensemble ' + __version__ + '" "User Commands"',
        ".SH NAME\nensemble \\- " + _esc((cli.help or "").split(":", 1)[-1].strip().rstrip(".")),
        ".SH SYNOPSIS\n.B ensemble\n[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION\n" + _para(_DESCRIPTION),
        ".SH GLOBAL OPTIONS\nGiven before the command, e.g. \\fBensemble \\-\\-name studio status\\fR.\n"
        + _options(cli, root, with_help=True),
        ".SH COMMANDS",
    ]
    for cmd, ctx in _commands(cli, root):
        assert isinstance(cmd, click.Command) and isinstance(ctx, click.Context)
        parts.append(f".SS {_esc(_usage(cmd, ctx))}")
        parts.append(_para(cmd.help or cmd.short_help or ""))
        if isinstance(cmd, click.Group):
            parts.append(".PP\nCommands: " + ", ".join(_esc(n) for n in cmd.list_commands(ctx)) + ".")
        options = _options(cmd, ctx)
        if options:
            parts.append(options)
        if cmd.epilog:
            parts.append(_para(cmd.epilog))
    parts.append(".SH ENVIRONMENT")
    parts += [f".TP\n.B {_esc(name)}\n{_esc(text)}" for name, text in _ENVIRONMENT]
    parts.append(".SH FILES")
    parts += [f".TP\n.I {_esc(name)}\n{_esc(text)}" for name, text in _FILES]
    parts.append(".SH EXIT STATUS\n0 on success, 1 on an error, 2 on a usage error, 130 when interrupted.")
    parts.append(".SH SEE ALSO\nThe guides and the API reference: \\fBpip install \\-e '.[docs]' && mkdocs serve\\fR "
                 "in a clone of the repository (docs/).")
    return "\n".join(p for p in parts if p) + "\n"


def write(argv: list[str]) -> int:
    """Write ``man/ensemble.1`` (or print it with ``--stdout``)."""
    sys.path.insert(0, str(ROOT))
    text = render()
    if "--stdout" in argv:
        sys.stdout.write(text)
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(write(sys.argv[1:]))

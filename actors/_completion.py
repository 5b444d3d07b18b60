"""``ensemble completion bash|zsh|fish``: print the shell completion script.

The script is click's own (:mod:`click.shell_completion`): the shell calls
``ensemble`` back with ``_ENSEMBLE_COMPLETE=<shell>_complete`` set, and the
command line's commands, options and choices are completed from the click
definitions, so completion never drifts from the CLI.  ``eval
"$(_ENSEMBLE_COMPLETE=bash_source ensemble)"`` prints the same script.
"""

from __future__ import annotations

import click
from click.shell_completion import BashComplete, FishComplete, ShellComplete, ZshComplete

COMPLETE_VAR = "_ENSEMBLE_COMPLETE"
SHELLS: dict[str, type[ShellComplete]] = {"bash": BashComplete, "zsh": ZshComplete, "fish": FishComplete}

_EPILOG = """\b
Install it once:
  bash  eval "$(ensemble completion bash)"     in ~/.bashrc
  zsh   eval "$(ensemble completion zsh)"      in ~/.zshrc, after compinit
  fish  ensemble completion fish > ~/.config/fish/completions/ensemble.fish"""


def completion_script(cli: click.Command, shell: str, prog_name: str = "ensemble") -> str:
    """The completion script of ``cli`` for ``shell`` (bash, zsh or fish).  Raises KeyError for another shell."""
    return SHELLS[shell](cli, {}, prog_name, COMPLETE_VAR).source()


@click.command(epilog=_EPILOG)
@click.argument("shell", type=click.Choice(sorted(SHELLS)))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish)."""
    root = ctx.find_root()
    click.echo(completion_script(root.command, shell, root.info_name or "ensemble"), nl=False)

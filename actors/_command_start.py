"""Ctrl-C while the ``ensemble`` command is still starting: one line and exit 130, never a traceback.

Imported first by ``actors/__init__.py``, so that it covers the package's own
imports too (msgspec, the config, the task module: ~50 ms, more under load),
then :mod:`actors.cli`'s (click, rich, the packages' commands).  Until
:func:`actors.cli.run` puts Python's handler back, a SIGINT writes
``ensemble: error: interrupted`` and leaves with 130, the status of any other
Ctrl-C of the command.  A program that merely imports :mod:`actors` keeps its
own Ctrl-C: the handler is set only when this process is the command (its
console script, ``python -m actors`` or ``python -m actors.cli``).  Python's
own start before the first import (``site`` and its ``.pth`` files) is not
covered: a Ctrl-C there is still Python's.
"""

from __future__ import annotations

import os
import signal
import sys


def interrupted_while_starting(signum: int, frame: object) -> None:
    """SIGINT before :func:`actors.cli.run` takes over: the command's Ctrl-C line and status (130), at once.

    Nothing is open yet, so there is nothing to close: ``os._exit``.
    """
    os.write(2, b"ensemble: error: interrupted\n")
    os._exit(130)


def started_as_the_command() -> bool:
    """Whether this process is the ``ensemble`` command: its console script, ``python -m actors`` or
    ``python -m actors.cli`` (while ``-m`` imports the package, ``sys.argv[0]`` is ``"-m"``: the original
    command line says which module runs)."""
    if sys.argv[:1] == ["-m"]:  # a module run with -m is being found (`python script.py -m actors` is not this)
        orig = sys.orig_argv
        return "-m" in orig[:-1] and orig[orig.index("-m") + 1] in ("actors", "actors.cli", "actors.__main__")
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "ensemble"  # the script pip writes


def guard() -> None:
    """Set :func:`interrupted_while_starting` for SIGINT if this process is the command and Python's handler is
    in place (SIG_IGN, from a shell that runs the command in the background, is left as it is)."""
    if started_as_the_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, interrupted_while_starting)  # until actors.cli.run() starts
        except ValueError:  # imported off the main thread: not the command's start
            pass


def release() -> None:
    """From :func:`actors.cli.run`: Python's handler again (the commands handle KeyboardInterrupt themselves)."""
    if signal.getsignal(signal.SIGINT) is interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)

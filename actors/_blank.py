"""A worker process waiting for its orders, with its interpreter started and ``actors.worker`` imported.

Two kinds of process wait so, and become a worker the same way:

* the *blanks* the supervisor forks from itself at start-up, one per initial
  worker (:mod:`actors.supervisor._prefork`), orders on a pipe of their own;
* the *standby*: once the daemon has had to start a worker after start-up (a
  restart after a death, a scale-up), it keeps one fresh interpreter waiting
  (``python -m actors.worker --standby RUN_DIR``, orders on its stdin), so the next
  replacement is that process and not a new interpreter (~125 ms on the
  2-core VM).

The orders are one JSON object, then end of file: the worker's ``argv``, its
niceness (``nice``: the level it must run at), its ``log`` file, whether its
stdout and stderr are a pipe to the daemon instead (``piped``: a blank's pipe
made at its fork, or the one a standby's spawn gave it; see
:mod:`actors._childoutput`) and the ``env`` to add.  End of file with no orders (the daemon stopped without
needing this process) is a clean exit.  This module must not import the
supervisor: a standby loads only what a worker needs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

ORDERS_FD = 0  # where a standby reads its orders (its stdin, a pipe from the supervisor)


def read_orders(fd: int) -> dict[str, Any] | None:
    """Read one order from ``fd`` until end of file, and close it; None if the supervisor sent none."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks)) if chunks else None


def encode_orders(argv: list[str], nice: int, log_path: str, env: dict[str, str], piped: bool = False) -> bytes:
    """The orders that make a waiting process the worker ``python -m actors.worker ARGV`` would be."""
    return json.dumps({"argv": argv, "nice": nice, "log": log_path, "env": env, "piped": piped}).encode()


def become_worker(order: dict[str, Any], output: int | None = None) -> NoReturn:
    """Apply ``order`` as :func:`actors._spawn.spawn` would (umask, niceness, ``/``, stdio, environment) and run.

    ``output``: a blank's pipe to the daemon, its stdout and stderr if the order says ``piped``.
    """
    from actors._spawn import NEUTRAL_CWD, restore_user_umask

    restore_user_umask()
    raise_by = int(order["nice"]) - os.nice(0)  # a blank forked from the daemon runs at its level, a standby at ours
    if raise_by > 0:
        os.nice(raise_by)
    os.chdir(NEUTRAL_CWD)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if order.get("piped"):  # a blank's pipe, or the one a standby's spawn gave it (then already its 1 and 2)
        out = output
    else:
        out = os.open(order["log"] or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if output is not None:
            os.close(output)
    if out is not None:
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    os.environ.update(order["env"])
    sys.argv = ["actors.worker", *order["argv"]]
    from actors._child import child_main
    from actors.worker import Worker

    child_main(Worker)  # ends with os._exit
    os._exit(1)  # not reached


def standby_main() -> NoReturn:
    """``python -m actors.worker --standby RUN_DIR``: wait for orders on stdin, then become that worker (or exit 0)."""
    try:
        order = read_orders(ORDERS_FD)
        if order is None:  # the daemon stopped, or let this standby go
            os._exit(0)
        become_worker(order)
    except BaseException:  # noqa: BLE001 - report to the log (stderr), then leave
        import traceback

        traceback.print_exc()
    os._exit(1)

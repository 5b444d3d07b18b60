"""Starting supervised children: own process group, parent-death signal, pidfd.

A child is ``python -m <module> <config-json> <name> <role>``.  Before ``exec``
it moves into its own process group (so a kill of the group takes the
subprocesses a job started) and asks Linux to SIGKILL it when the daemon dies
(``prctl(PR_SET_PDEATHSIG)``), so no child outlives the supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_ROOT = str(Path(__file__).resolve().parent.parent)


def _child_setup(parent_pid: int, nice: int) -> None:
    # Runs in the forked child before exec: async-signal-safe work only.
    os.setpgid(0, 0)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the daemon died before prctl took effect
        os._exit(1)
    if nice:
        os.nice(nice)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def spawn(module: str, argv: list[str], *, nice: int = 0, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m module *argv`` as a supervised child and return its Popen."""
    parent = os.getpid()
    env = dict(os.environ)
    env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            close_fds=True,
            env=env,
            preexec_fn=lambda: _child_setup(parent, nice),
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a child's whole process group (the child and everything it started)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

"""Processes as Linux's ``/proc`` shows them: one process's stat line, and scans over every process.

The runtime reads them to tell a live daemon from a stale run directory and to
find what a keeper must kill; the tests and the benchmarks read them to prove
that nothing was left behind.  A zombie counts as gone everywhere here (it
only waits to be reaped), except where :func:`zombies_of` asks for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator


def stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None if the process is gone.

    ``[0]`` is the state letter (``"Z"`` a zombie), ``[1]`` the parent's pid,
    ``[2]`` the process group, ``[16]`` the nice value, ``[19]`` the start time
    in clock ticks (``proc(5)`` numbers them from 3).  The command name is cut
    at its last ``)``, so one holding spaces or parentheses does not shift them.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"


def each() -> Iterator[tuple[int, list[str]]]:
    """``(pid, stat fields)`` of every process that still exists as it is read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(int(entry))) is not None:
            yield int(entry), fields


def children(parent: int) -> list[int]:
    """The live (not zombie) child processes of ``parent``."""
    return [pid for pid, f in each() if f[0] != "Z" and int(f[1]) == parent]


def zombies_of(parent: int) -> list[int]:
    """Children of ``parent`` that exited and were never reaped."""
    return [pid for pid, f in each() if f[0] == "Z" and int(f[1]) == parent]


def descendants(root: int) -> set[int]:
    """The live processes below ``root``, from one pass over ``/proc``."""
    return set(tree(root))


def tree(root: int) -> dict[int, list[str]]:
    """The live processes below ``root`` with their :func:`stat` fields as that one pass over ``/proc`` read them."""
    fields: dict[int, list[str]] = {}
    below: dict[int, list[int]] = {}
    for pid, f in each():
        if f[0] != "Z":
            fields[pid] = f
            below.setdefault(int(f[1]), []).append(pid)
    found: dict[int, list[str]] = {}
    todo = [root]
    while todo:
        for pid in below.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = fields[pid]
                todo.append(pid)
    return found


def group_members(pgids: Iterable[int]) -> list[int]:
    """Live processes in any of the given process groups."""
    wanted = set(pgids)
    return [pid for pid, f in each() if f[0] != "Z" and int(f[2]) in wanted]


def processes_mentioning(text: str) -> list[int]:
    """Live processes but this one whose command line contains ``text`` (a private directory, say)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if text in cmd and alive(int(entry)):
            out.append(int(entry))
    return out

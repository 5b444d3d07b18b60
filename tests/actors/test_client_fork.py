"""A Client or Executor used in a fork's child: an immediate error that says so, and the parent unaffected.

The child's connection was the parent's: its I/O thread is not in the child,
so every call waited out its timeout (``TransportError: the daemon did not
acknowledge the submit within 5s``) and an Executor's future never ended;
closing it there unlinked the parent's shared memory.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from typing import Any

import numpy as np

from tests.conftest import Daemon, wait_for


def _in_fork(child: Any) -> Any:
    """Run ``child()`` in an ``os.fork()`` of this process; what it returned (JSON through a pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave at once (no pytest, no atexit)
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(child()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, 60, what="the forked child to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    with os.fdopen(read_end, "rb") as f:
        return json.loads(f.read() or b"null")


def _error_of(call: Any) -> list[str]:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - reported
        return [type(exc).__name__, str(exc)]
    return ["no error"]


def test_a_client_used_in_a_fork_child_fails_at_once_and_the_parent_goes_on(shared_daemon: Daemon) -> None:
    c = shared_daemon.client(timeout=3)
    h = c.submit("examples.jobs:add", 1, 2)
    assert h.result(30) == 3
    arr = c.empty((4,))
    arr[:] = [1, 2, 3, 4]

    def child() -> dict[str, Any]:
        got = {"ping": _error_of(c.ping), "submit": _error_of(lambda: c.submit("examples.jobs:add", 1, 2)),
               "status": _error_of(c.status)}
        c.close()  # lets go of the parent's connection: its sockets and shared memory stay the parent's
        return got

    got = _in_fork(child)
    for call, (kind, message) in got.items():
        assert kind == "WrongContextError", (call, kind, message)
        assert f"belongs to process {os.getpid()}" in message and "make a new Client()" in message
    assert c.ping().pid == shared_daemon.pid
    assert c.submit("tests.jobs:numpy_sum", arr).result(30)["sum"] == 10.0  # (its segment is still there)


def _submit_in_child(ex: Any, out: Any) -> None:
    try:
        out.put(["value", ex.submit(pow, 2, 3).result(10)])
    except Exception as exc:  # noqa: BLE001 - reported
        out.put([type(exc).__name__, str(exc)])


def test_an_executor_used_in_a_multiprocessing_fork_child_fails_at_once(shared_daemon: Daemon) -> None:
    from ensemble import Executor

    with Executor(config=shared_daemon.config) as ex:
        assert ex.submit(pow, 2, 5).result(30) == 32
        ctx = multiprocessing.get_context("fork")
        out = ctx.SimpleQueue()
        proc = ctx.Process(target=_submit_in_child, args=(ex, out))
        proc.start()
        try:
            kind, message = wait_for(lambda: out.get() if not out.empty() else None, 60, what="the child's report")
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        assert kind == "WrongContextError", (kind, message)
        assert f"belongs to process {os.getpid()}" in message
        assert ex.submit(pow, 2, 4).result(30) == 16
    out.close()

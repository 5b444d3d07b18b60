"""The daemon keeps running when its file descriptors run out, and no network peer can make them run out.

A daemon's open-files limit is lowered here with ``prlimit`` (its soft limit
only: its children get the user's limits back, as always).  Found on
2026-12-05: about 330 tcp connections from one peer without a key took down a
daemon whose limit was 300 (libzmq aborts the process when a local client's
connection cannot be accepted), and a worker that could not be restarted for
want of descriptors took the daemon with it.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import Daemon, wait_for
from tests.security.conftest import Remote, free_port, issue_keys


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _set_soft_limit(pid: int, soft: int) -> int:
    """Set a process's soft open-files limit (its hard one unchanged); returns the soft limit it had."""
    old, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    return int(old)


@pytest.mark.slow  # 400 connections: ~2.4 s
def test_a_flood_of_tcp_connections_without_a_key_cannot_take_the_daemon_down(
        make_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_CLIENT_TCP": f"tcp://127.0.0.1:{port}"})
    keys = issue_keys(d, {"client": ("c1",)})
    d.up()
    pid = d.status().daemon.pid
    _set_soft_limit(pid, 300)  # the cap: 300 less a reserve of 256 = 44 tcp connections
    flood: list[socket.socket] = []
    try:
        for _ in range(400):
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:  # the kernel's backlog is full while the daemon shuts the newest
                break
        wait_for(lambda: d.status().daemon.counters.get("tcp_refused", 0) > 0, 60,
                 what="connections over the cap to be shut")
        # a new local client: without the cap libzmq aborted the daemon at this accept
        st = d.status()
        assert st.daemon.pid == pid and _alive(pid)
        assert d.client().submit("examples.jobs:add", 2, 3).result(60) == 5
        assert len(os.listdir(f"/proc/{pid}/fd")) < 300
    finally:
        for s in flood:
            s.close()
    remote = Remote(d, f"tcp://127.0.0.1:{port}", "", keys, str(d.base / "state" / "keys" / "server.key"))
    c = remote.client("c1", timeout=60)
    assert wait_for(lambda: c.submit("examples.jobs:add", 1, 1).result(60) == 2, 90,
                    what="a key holder to be served once the flood is gone")


def test_a_worker_that_cannot_be_restarted_for_want_of_descriptors_leaves_the_daemon_running(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2, jobs_only=True)
    d.up()
    c = d.client(timeout=60)  # connected now: it needs no new descriptor in the daemon later
    st = c.status()
    pid = st.daemon.pid
    victim = next(a for a in st.actors if a.name == "worker-1")
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    old = _set_soft_limit(pid, in_use - 8)  # no new descriptor at all, even after the dead worker's are closed
    try:
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: any(a.name == "worker-1" and a.state == "pending" and "could not start" in a.detail
                             for a in c.status().actors), 60, what="the worker's restart to fail and wait")
        assert _alive(pid)
        assert c.submit("examples.jobs:add", 2, 3).result(60) == 5  # the other worker goes on
        assert c.status().daemon.counters.get("spawn_failed", 0) >= 1
    finally:
        _set_soft_limit(pid, old)
    wait_for(lambda: any(a.name == "worker-1" and a.state == "running" and a.pid != victim.pid
                         for a in c.status().actors), 60, what="the worker to start once descriptors are back")
    assert not any(a.detail.startswith("could not start") for a in c.status().actors)

"""The daemon's Ray driver (``actors._ray_driver``): one that waits on Ray stays; one stopped, hung or gone is replaced.

The driver is a child of the daemon that joins the cluster and carries out
its commands.  It reads them on a thread of its own and answers the daemon's
pings there, whatever its Ray calls do.  Marked slow: each test starts a
cluster (a head and two one-CPU nodes).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tests.cluster.conftest import ray_workers, remote_client_daemon
from tests.conftest import Daemon, children, pid_alive, wait_for

pytestmark = pytest.mark.slow
MIB = 1 << 20


def counters(d: Daemon) -> dict[str, Any]:
    return dict(d.status().daemon.counters)


def driver_pid(d: Daemon) -> int:
    """The pid of the daemon's Ray driver process (a child of the daemon)."""
    def find() -> int:
        for pid in children(d.pid):
            try:
                if b"actors._ray_driver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        return 0

    return int(wait_for(find, 60, what="the daemon's Ray driver process"))


def joined_with_two_workers(d: Daemon) -> bool:
    return counters(d).get("ray_cluster") == "joined" and len(ray_workers(d)) == 2


@pytest.mark.timeout(600)
def test_a_driver_waiting_on_the_object_store_is_not_taken_for_broken_and_its_jobs_run_once(
        make_daemon: Callable[..., Daemon], ray_cluster: Any) -> None:
    """The driver read its link on the thread that made its Ray calls: while a ``ray.put`` waited on the object
    store (a big array, a node slow to answer), the daemon's next big write went unread, and after 5 s the daemon
    took the driver for broken: every Ray worker lost, their jobs retried or failed.  (A remote client's arrays
    are the daemon's big writes: their bytes cross the link; a local client's segment crosses as a descriptor.)"""
    with remote_client_daemon(make_daemon, ray_cluster, 2) as (d, c):
        wait_for(lambda: joined_with_two_workers(d), 120, what="two Ray-placed workers to join")
        raylet = ray_cluster.head_node.all_processes["raylet"][0].process.pid  # the head's: the driver's store
        arrays = [np.arange(MIB // 2, dtype="<i8") * k for k in (1, 2)]  # 4 MiB each: more than the link holds
        os.kill(raylet, signal.SIGSTOP)  # its object store answers nothing: the driver's ray.put waits
        try:
            handles = [c.submit("tests.jobs:reverse_array", a) for a in arrays]
            wait_for(lambda: counters(d).get("ray_cluster") != "joined"
                     or counters(d).get("ray_driver_busy_s", 0) >= 8,
                     90, what="the driver to have waited 8 s on its ray.put (past the 5 s a write may wait)")
            seen = counters(d)
        finally:
            os.kill(raylet, signal.SIGCONT)
        assert seen.get("ray_cluster") == "joined", seen.get("ray_error")
        assert seen["ray_driver_busy"] == "put"  # status says what it waits on
        for a, h in zip(arrays, handles):
            back, total = h.result(120)
            assert np.array_equal(back, a[::-1]) and total == float(a.sum())
            assert h.info.attempts == 1  # nothing was retried: no worker was taken for lost
        assert "ray-cluster-unreachable" not in (d.base / "state" / "daemon.log").read_text()
        wait_for(lambda: "ray_driver_busy" not in counters(d), 30, what="status to say the driver waits no more")


@pytest.mark.timeout(900)
def test_a_stopped_driver_is_taken_for_hung_a_killed_one_for_gone_and_each_is_replaced(
        ray_daemon: tuple[Daemon, Any]) -> None:
    """Only a write that could not be made told the daemon that its driver no longer read: a stopped driver with
    nothing to carry out stayed 'joined' for good, its workers' deaths unreported."""
    d, _ = ray_daemon
    c = d.client(timeout=120)
    first = driver_pid(d)
    os.kill(first, signal.SIGSTOP)  # alive, and reads nothing
    wait_for(lambda: counters(d).get("ray_cluster") == "unreachable", 60,
             what="status to say the stopped driver's cluster is unreachable")
    assert "answered no ping" in counters(d)["ray_error"], counters(d)["ray_error"]
    wait_for(lambda: not pid_alive(first), 30, what="the stopped driver to be ended")
    wait_for(lambda: joined_with_two_workers(d), 180, what="a new driver to join and place two workers")

    second = driver_pid(d)
    assert second != first
    os.kill(second, signal.SIGKILL)  # gone: its link closes
    wait_for(lambda: counters(d).get("ray_cluster") == "unreachable", 60,
             what="status to say the killed driver's cluster is unreachable")
    assert "its Ray driver ended" in counters(d)["ray_error"], counters(d)["ray_error"]
    wait_for(lambda: joined_with_two_workers(d), 180, what="a third driver to join and place two workers")
    assert c.submit("tests.jobs:pid").result(120)  # no local workers: it ran on a Ray-placed one

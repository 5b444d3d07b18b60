"""A Ray-placed worker that cannot reach the daemon: past ``[cluster] join_wait`` the log says where it runs and why.

The daemon's workers connect back to ``[cluster] connect`` (else its
``[daemon] tcp``).  With an address the nodes cannot reach, Ray runs each
actor, its worker never joins, and nothing said so: the daemon's log showed
the worker added and then nothing.  Now, once a worker has not joined within
``join_wait``, the daemon asks Ray where its actor runs and logs one
``event=ray-worker-not-joined`` line naming the node, the address and where
the worker's messages are.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from tests.cluster.conftest import free_port, ray_workers
from tests.conftest import Daemon, wait_for


def _lines(d: Daemon, event: str) -> list[str]:
    return [ln for ln in (d.base / "state" / "daemon.log").read_text(errors="replace").splitlines() if event in ln]


@pytest.mark.slow  # a Ray cluster of its own: 15-40 s
@pytest.mark.timeout(300)
def test_a_worker_that_cannot_reach_the_daemon_is_named_with_its_node_and_the_address(
        make_daemon: Callable[..., Daemon], ray_cluster: Any) -> None:
    unreachable = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    d = make_daemon(workers=0, extra_env={
        "ENSEMBLE_TCP": f"tcp://127.0.0.1:{free_port()}", "ENSEMBLE_CLUSTER_RAY": ray_cluster.address,
        "ENSEMBLE_CLUSTER_WORKERS": "2", "ENSEMBLE_CLUSTER_CONNECT": unreachable,
        "ENSEMBLE_CLUSTER_JOIN_WAIT": "2", "ENSEMBLE_EXTENSIONS": ""})
    d.cli("keys", "init")
    d.up()
    try:
        wait_for(lambda: len(_lines(d, "event=ray-worker-not-joined")) == 2, 120,
                 what="a line for each of the two workers that cannot join")
        for line in _lines(d, "event=ray-worker-not-joined"):
            assert "WARNING" in line and unreachable in line and "ray-driver.log" in line, line
            assert "host=" in line and "Ray runs its actor on " in line and "(pid " in line, line
        error = str(dict(d.status().daemon.counters).get("ray_worker_error", ""))
        assert unreachable in error and "has not joined" in error, error
        shown = " ".join(d.cli("status").stdout.split())  # (rich wraps long lines)
        assert "a Ray-placed worker has not joined:" in shown and unreachable in shown, shown
        assert ray_workers(d) == []
        end = time.monotonic() + 3  # said once per worker, not again at each tick
        wait_for(lambda: time.monotonic() > end, what="three more seconds of ticks")
        assert len(_lines(d, "event=ray-worker-not-joined")) == 2
    finally:
        d.cleanup()

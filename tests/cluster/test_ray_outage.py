"""The daemon and a Ray cluster that goes away, is not there, or refuses it: the daemon lives, says why, runs jobs.

The Ray driver runs in a child of the daemon (``actors._ray_driver.driver_main``):
Ray's core worker ends its driver a minute after the cluster's GCS went
away, and a daemon that was the driver ended with it.  Marked slow: each
test starts a cluster of its own (or waits for Ray to give up joining one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.cluster.conftest import STORE, free_port, ray_workers
from tests.conftest import Daemon, pid_alive, wait_for

pytestmark = pytest.mark.slow


def counters(d: Daemon) -> dict[str, Any]:
    return dict(d.status().daemon.counters)


def make_cluster(port: int) -> Any:
    """A head with no CPUs whose GCS listens on ``port``, and one node of one CPU."""
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install -e '.[ray]')")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False, "gcs_server_port": port})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def ray_daemon_env(address: str, workers: int = 1) -> dict[str, str]:
    return {"ENSEMBLE_TCP": f"tcp://127.0.0.1:{free_port()}", "ENSEMBLE_CLUSTER_RAY": address,
            "ENSEMBLE_CLUSTER_WORKERS": str(workers), "ENSEMBLE_EXTENSIONS": ""}


@pytest.mark.timeout(900)
def test_the_daemon_outlives_its_ray_cluster_loses_nothing_and_joins_it_again_when_it_is_back(
        make_daemon: Callable[..., Daemon]) -> None:
    """The daemon was Ray's driver: a minute after the cluster stopped, Ray's core worker ended the daemon's
    process, with its jobs and its local workers."""
    port = free_port()
    clusters = [make_cluster(port)]
    # Ray's core worker gives a GCS gone 60 s before it ends the driver: 10 s here (the driver's only)
    d = make_daemon(workers=1, extra_env={**ray_daemon_env(clusters[0].address),
                                          "RAY_gcs_rpc_server_reconnect_timeout_s": "10"})
    try:
        d.cli("keys", "init")
        d.up()
        wait_for(lambda: len(ray_workers(d)) == 1, 120, what="the Ray-placed worker to join")
        c = d.client(timeout=60)
        go = d.base / "go"
        jobs = [c.submit("tests.jobs:wait_file", str(go), 600.0, retries=1) for _ in range(2)]
        wait_for(lambda: all(j.refresh().state == "running" for j in jobs), 120, what="both jobs to start")
        on_ray = [j for j in jobs if j.info.worker.startswith("remote:ray-")]
        assert len(on_ray) == 1, [j.info.worker for j in jobs]  # one on the local worker, one on Ray's

        clusters.pop().shutdown()  # the GCS and every raylet stop, as `ray stop` does
        wait_for(lambda: counters(d).get("ray_cluster") == "unreachable", 240,
                 what="status to say the Ray cluster is unreachable")
        error = counters(d)["ray_error"]
        assert f":{port}" in error and "unreachable" in error, error
        assert pid_alive(d.pid) and not ray_workers(d)  # the daemon lives; the Ray worker is taken for lost
        go.touch()
        infos = [j.wait(120) for j in jobs]
        assert [i.state for i in infos] == ["done", "done"]  # nothing lost: the Ray one ran again, here
        assert on_ray[0].info.attempts == 2
        assert c.submit("examples.jobs:add", 1, 2).result(60) == 3  # and it runs new jobs on its own worker
        assert "event=ray-cluster-unreachable" in (d.base / "state" / "daemon.log").read_text()

        clusters.append(make_cluster(port))  # the cluster is back at its address: the daemon joins it again
        wait_for(lambda: len(ray_workers(d)) == 1, 240, what="a Ray-placed worker to join the cluster come back")
        assert counters(d).get("ray_cluster") == "joined" and "ray_error" not in counters(d)
        assert c.submit("examples.jobs:add", 2, 2).result(60) == 4
        assert pid_alive(d.pid)
    finally:
        d.cleanup()
        for cluster in clusters:
            cluster.shutdown()


@pytest.mark.timeout(400)
def test_an_unreachable_ray_address_does_not_hold_up_start_and_is_named_in_status(
        make_daemon: Callable[..., Daemon]) -> None:
    """`ray.init` to an address where nothing answers retried for minutes inside the daemon's start: `up` gave
    up after 30 s ("not ready"), and the daemon never served."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    d = make_daemon(workers=1, extra_env=ray_daemon_env(address))
    try:
        d.cli("keys", "init")
        d.up()
        assert d.client(timeout=60).submit("examples.jobs:add", 1, 2).result(60) == 3  # local workers run jobs
        assert counters(d).get("ray_cluster") in ("joining", "unreachable")
        wait_for(lambda: counters(d).get("ray_cluster") == "unreachable", 180,
                 what="status to say the Ray cluster cannot be joined")
        error = counters(d)["ray_error"]
        assert address in error and "cannot join the Ray cluster" in error, error
        assert "ray-cluster-unreachable" in (d.base / "state" / "daemon.log").read_text()
        shown = d.cli("status").stdout  # the table's reader is told too, not only --json
        assert "Ray cluster unreachable" in shown and address in shown, shown
    finally:
        d.cleanup()


_TOKEN_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": %d,
                                                  "include_dashboard": False})
try:
    print(c.address, flush=True)
    sys.stdin.read()
finally:
    c.shutdown()
"""


@pytest.fixture
def token_cluster(tmp_path: Path) -> Iterator[str]:
    """The address of a Ray cluster that asks for a token (in a process of its own: Ray keeps its authentication
    mode for the life of a process, and this one's later clusters ask none)."""
    pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install -e '.[ray]')")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "7" * 32, "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", _TOKEN_CLUSTER % STORE], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address, "the token cluster did not start"
        yield address
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(400)
def test_a_refused_ray_token_is_reported_as_an_authentication_failure(
        make_daemon: Callable[..., Daemon], token_cluster: str, tmp_path: Path) -> None:
    """Ray's own error is "Failed to connect to Ray cluster": the daemon said to start a cluster or fix the
    address, for a cluster that was there and refused its token."""
    env = ray_daemon_env(token_cluster)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32, "HOME": str(tmp_path)})
    d = make_daemon(workers=1, extra_env=env)
    try:
        d.cli("keys", "init")
        d.up()
        wait_for(lambda: counters(d).get("ray_cluster") == "unreachable", 180,
                 what="status to say the Ray cluster cannot be joined")
        error = counters(d)["ray_error"]
        assert error.startswith("authentication failed") and token_cluster in error, error
        assert "RAY_AUTH_TOKEN" in error  # what to do
        assert d.client(timeout=60).submit("examples.jobs:add", 1, 2).result(60) == 3
    finally:
        d.cleanup()

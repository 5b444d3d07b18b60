"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) and a daemon placing workers on it.

Every cluster is shut down by the test that made it (Ray's own ``shutdown``
stops the gcs server and every raylet it started); the leak check of
``tests/conftest.py`` then finds no child process of the test left.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import KEPT, Daemon, children, wait_for

STORE = 80 * 1024 * 1024  # object store per node: small, two shared cores and little use for it here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_cluster() -> Iterator[Any]:
    """A head with no CPUs (the daemon's host) and two nodes of one CPU each; shut down at teardown."""
    yield from _cluster()


@pytest.fixture(scope="module")
def module_ray_cluster() -> Iterator[Any]:
    """:func:`ray_cluster` for a whole module whose tests change no node (a cluster's start is 10-20 s of the
    slow pass); its processes are kept from the leak check until the module's last test has run."""
    before = set(children(os.getpid()))
    for cluster in _cluster():
        kept = set(children(os.getpid())) - before
        KEPT.update(kept)
        try:
            yield cluster
        finally:
            KEPT.difference_update(kept)


def _cluster() -> Iterator[Any]:
    """A fixture's body: :func:`ray_cluster`'s."""
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install -e '.[ray]')")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def add_node(cluster: Any, **kw: Any) -> Any:
    """One more node of one CPU (``kw``: more resources, e.g. ``num_gpus=1``)."""
    node = cluster.add_node(num_cpus=1, object_store_memory=STORE, **kw)
    cluster.wait_for_nodes()
    return node


def ray_workers(d: Daemon) -> list[Any]:
    """The daemon's running Ray-placed workers (their slots), as ``status`` shows them."""
    return [a for a in d.status().actors if a.name.startswith("remote:ray-")]


@pytest.fixture
def ray_daemon(make_daemon: Callable[..., Daemon], ray_cluster: Any) -> Iterator[tuple[Daemon, Any]]:
    """A jobs-only daemon with no local workers and two workers placed on ``ray_cluster``, all joined."""
    yield from two_ray_workers(make_daemon, ray_cluster)


def two_ray_workers(make_daemon: Callable[..., Daemon], ray_cluster: Any,
                    **env: str) -> Iterator[tuple[Daemon, Any]]:
    """A fixture's body: :func:`ray_daemon`'s daemon, ``env`` added to its environment (a cap, say)."""
    d = make_daemon(workers=0, extra_env={
        "ENSEMBLE_TCP": f"tcp://127.0.0.1:{free_port()}", "ENSEMBLE_CLUSTER_RAY": ray_cluster.address,
        "ENSEMBLE_CLUSTER_WORKERS": "2", "ENSEMBLE_EXTENSIONS": "", **env})
    d.cli("keys", "init")
    d.up()
    try:
        wait_for(lambda: len(ray_workers(d)) == 2, 120, what="two Ray-placed workers to join")
        yield d, ray_cluster
    finally:
        d.cleanup()  # `ensemble down` before the cluster goes (the fixture order guarantees it)


@contextlib.contextmanager
def remote_client_daemon(make_daemon: Callable[..., Daemon], ray_cluster: Any,
                         workers: int) -> Iterator[tuple[Daemon, Any]]:
    """A jobs-only daemon with ``workers`` workers placed on ``ray_cluster`` (all joined), allowed
    ``tests.jobs:reverse_array``, and a :class:`~ensemble.Client` of a key of its own on its tcp client endpoint
    (a remote client: its arrays cross inline in its frames); ``ensemble down`` at the end."""
    from ensemble import Client

    client_ep = f"tcp://127.0.0.1:{free_port()}"
    d = make_daemon(workers=0, extra_env={
        "ENSEMBLE_TCP": f"tcp://127.0.0.1:{free_port()}", "ENSEMBLE_CLIENT_TCP": client_ep,
        "ENSEMBLE_JOBS_ALLOW": "tests.jobs:reverse_array", "ENSEMBLE_CLUSTER_RAY": ray_cluster.address,
        "ENSEMBLE_CLUSTER_WORKERS": str(workers), "ENSEMBLE_EXTENSIONS": ""})
    d.cli("keys", "init")
    key = d.cli("keys", "add-client", "far").stdout.strip()
    d.up()
    try:
        wait_for(lambda: len(ray_workers(d)) == workers, 120, what=f"{workers} Ray-placed worker(s) to join")
        c = Client(config=d.config, endpoint=client_ep, curve=(key, str(d.base / "state" / "keys" / "server.key")),
                   timeout=120)
        d._clients.append(c)
        yield d, c
    finally:
        d.cleanup()

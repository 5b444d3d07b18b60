"""A Ray node that cannot import ensemble: the daemon says why its worker never joins, and places it again.

Ray creates a Ray-placed worker's actor from its class, imported on the
node (``actors._ray_host``).  On a node without ensemble, or with another
module named ``actors`` first on its path, the import fails, Ray marks the
actor dead for good, and no worker ever connects.  The daemon's log and
``status`` said nothing of it: the driver asked the dead actor to run again
five times a second and the daemon dropped each report (no slot had joined).
Here a node is started with a path whose ``actors`` is such a module (a
package would not do: ensemble's editable install still finds its
submodules): the daemon names the import error and the fix, removes the
actor and places a new one after a pause; once that node is gone and a good
one is there, the worker joins and ``status`` no longer names an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.cluster.conftest import STORE, add_node, free_port, ray_workers
from tests.conftest import Daemon, wait_for


def _log(d: Daemon) -> str:
    return (d.base / "state" / "daemon.log").read_text(errors="replace")


def _counters(d: Daemon) -> dict[str, Any]:
    return dict(d.status().daemon.counters)


@pytest.mark.slow  # a Ray cluster of its own: 20-60 s
@pytest.mark.timeout(400)
def test_a_node_that_cannot_import_ensemble_is_named_with_the_fix_and_the_worker_is_placed_again(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install -e '.[ray]')")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "actors.py").write_text('"""A module of another project named actors, first on the node\'s path."""\n')
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False})
    try:
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(shadow)  # the node's raylet, and so its workers, start with it
        try:
            bad = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before
        cluster.wait_for_nodes()
        d = make_daemon(workers=0, extra_env={
            "ENSEMBLE_TCP": f"tcp://127.0.0.1:{free_port()}", "ENSEMBLE_CLUSTER_RAY": cluster.address,
            "ENSEMBLE_CLUSTER_WORKERS": "1", "ENSEMBLE_EXTENSIONS": ""})
        d.cli("keys", "init")
        d.up()
        try:
            wait_for(lambda: _log(d).count("event=ray-worker-failed") >= 2, 180,
                     what="the daemon to say twice that the worker's actor could not start")
            lines = [ln for ln in _log(d).splitlines() if "event=ray-worker-failed" in ln]
            assert all("No module named 'actors._ray_host'" in ln and "pip install 'ensemble-rt[ray]'" in ln
                       for ln in lines), lines
            assert "Ray could not start its actor" in lines[0] and "ERROR" in lines[0], lines[0]
            error = str(_counters(d).get("ray_worker_error", ""))
            assert "No module named 'actors._ray_host'" in error, error
            shown = " ".join(d.cli("status").stdout.split())  # (rich wraps long lines)
            assert "a Ray-placed worker has not joined:" in shown and "pip install 'ensemble-rt[ray]'" in shown, shown
            assert "event=ray-worker-removed" in _log(d)  # each dead actor goes, its key revoked
            assert ray_workers(d) == []
            assert _log(d).count("event=ray-worker-added") >= 2  # placed again after the first failed

            cluster.remove_node(bad)
            add_node(cluster)
            wait_for(lambda: len(ray_workers(d)) == 1, 180, interval=0.5, what="a worker to join on the good node")
            wait_for(lambda: "ray_worker_error" not in _counters(d), 30, what="status to drop the error")
            assert d.client().submit("examples.jobs:add", 2, 3).result(60) == 5
        finally:
            d.cleanup()  # `ensemble down` before the cluster goes
    finally:
        cluster.shutdown()

"""Workers placed for queued jobs' resources, and what status says of Ray-placed workers, on a real Ray cluster.

Marked slow: the test starts its own cluster (a head and two one-CPU nodes).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from actors._procs import alive
from tests.cluster.conftest import ray_workers, two_ray_workers
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(module_ray_cluster: Any) -> Any:
    """One cluster for this module's tests: none adds, removes or stops a node."""
    return module_ray_cluster


@pytest.fixture
def capped_daemon(make_daemon: Callable[..., Daemon], ray_cluster: Any) -> Iterator[tuple[Daemon, Any]]:
    """Two Ray-placed workers joined, at most three: room for one worker placed for a job's resources."""
    yield from two_ray_workers(make_daemon, ray_cluster, ENSEMBLE_CLUSTER_MAX_WORKERS="3")


def pending_actors(cluster: Any) -> list[str]:
    """Names of the actors Ray still waits to place (their demand is what an autoscaler acts on)."""
    return sorted(a["Name"] for a in cluster.global_state.actor_table(None).values()
                  if a["State"] == "PENDING_CREATION")


def ray_workers_count(d: Daemon) -> int:
    return int(d.status().daemon.counters.get("ray_workers", 0))


def test_status_says_where_a_ray_worker_runs(capped_daemon: tuple[Daemon, Any]) -> None:
    """status showed a Ray-placed worker's pid as "-", and nothing of its node."""
    d, _ = capped_daemon

    def located() -> list[Any]:
        slots = ray_workers(d)
        return slots if all("worker pid" in a.detail for a in slots) else []

    for slot in wait_for(located, 60, what="the Ray workers' detail to say where they run"):
        assert slot.detail.startswith("on Ray node ") and " joined " in slot.detail, slot.detail
        pid = int(slot.detail.split("worker pid ")[1].split()[0])
        name = slot.name.split(":")[1].split("#")[0]
        assert alive(pid)  # the nodes are on this host here: the pid is the worker process, with its key's name
        assert f"--worker-name\0{name}\0" in open(f"/proc/{pid}/cmdline").read()
    out = d.cli("status").stdout
    assert "on Ray node" in out


def test_cancelled_jobs_take_their_placed_workers_with_them_and_the_cap_is_warned_of_once(
        capped_daemon: tuple[Daemon, Any]) -> None:
    """A worker placed for a queued job's resources stayed when the job was cancelled (its demand pending in Ray,
    where an autoscaler acts on it); at the cap, the warning came every heartbeat."""
    d, cluster = capped_daemon
    c = d.client(timeout=60)
    gpu = c.submit("tests.jobs:pid", resources={"GPU": 1})
    wait_for(lambda: ray_workers_count(d) == 3, 60, what="a worker with a GPU to be placed")
    wait_for(lambda: len(pending_actors(cluster)) == 1, 60, what="Ray to hold its placement pending")
    two = c.submit("tests.jobs:pid", resources={"GPU": 2})  # no room under the cap: warned of
    log = d.base / "state" / "daemon.log"
    wait_for(lambda: "event=ray-placement-capped" in log.read_text(), 60, what="the cap warning")

    gpu.cancel()
    assert gpu.wait(30).state == "cancelled"
    # the GPU=1 worker goes (no queued job needs it), which makes room for the GPU=2 one
    wait_for(lambda: ray_workers_count(d) == 3 and len(pending_actors(cluster)) == 1
             and "GPU=2 demand=1" in log.read_text(), 60, what="the GPU=2 worker to take its place")
    capped = [line for line in log.read_text().splitlines() if "event=ray-placement-capped" in line]
    assert len(capped) == 1 and "needs=GPU=2" in capped[0] and "GPU=1" not in capped[0], capped

    two.cancel()
    assert two.wait(30).state == "cancelled"
    wait_for(lambda: ray_workers_count(d) == 2 and not pending_actors(cluster), 60,
             what="the placed worker to be removed, in Ray too")
    assert c.submit("examples.jobs:add", 1, 2).result(60) == 3

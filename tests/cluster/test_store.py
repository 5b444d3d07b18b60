"""Big arrays to and from Ray-placed workers travel through Ray's object store, not the frame, and are freed.

Marked slow: each test starts its own cluster (a head and two one-CPU nodes).
Proof that the store was used: the daemon's ``ray_store_args`` and
``ray_store_results`` counters (``status``), and the object count and bytes
Ray's own store statistics report (``FormatGlobalMemoryInfo``, as ``ray
memory --stats-only`` reads them).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tests.cluster.conftest import ray_workers, remote_client_daemon
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(module_ray_cluster: Any) -> Any:
    """One cluster for this module's tests: none adds, removes or stops a node."""
    return module_ray_cluster
MIB = 1 << 20


def store_use(cluster: Any) -> tuple[int, int]:
    """``(objects, bytes)`` in the object stores of every node of ``cluster``."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(cluster.address)).store_stats
    return int(stats.num_local_objects), int(stats.object_store_bytes_used)


def store_settles(cluster: Any, ok: Callable[[tuple[int, int]], bool], what: str) -> None:
    """Poll the stores' use (twice a second: each look is a gRPC call) until ``ok``; fail naming the last seen."""
    seen: list[tuple[int, int]] = []

    def look() -> bool:
        seen.append(store_use(cluster))
        return ok(seen[-1])

    try:
        wait_for(look, 120, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (objects, bytes) last seen: {seen[-3:]}") from None


def counters(d: Daemon) -> dict[str, Any]:
    return dict(d.status().daemon.counters)


def test_big_arrays_cross_through_the_object_store_exactly_small_ones_in_the_frame_and_nothing_stays(
        ray_daemon: tuple[Daemon, Any]) -> None:
    d, cluster = ray_daemon
    c = d.client(timeout=120)
    base_objects, base_bytes = store_use(cluster)
    before = counters(d)
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((1024, 520)).astype("<f8"),  # 4.1 MiB
              rng.integers(-2**31, 2**31, (3, 700_000), dtype="<i4"),  # 8 MiB, 2-D
              rng.integers(0, 255, 2 * MIB + 3, dtype="u1")]  # odd size
    for a in arrays:
        back, total = c.submit("tests.jobs:reverse_array", a).result(120)
        assert back.dtype == a.dtype and back.shape == a.shape
        assert np.array_equal(back, a[::-1]) and total == float(a.sum())
    after = counters(d)
    assert after["ray_store_args"] - before.get("ray_store_args", 0) == 3
    assert after["ray_store_results"] - before.get("ray_store_results", 0) == 3
    moved = sum(a.nbytes for a in arrays) * 2
    assert after["ray_store_bytes"] - before.get("ray_store_bytes", 0) == moved

    small = rng.standard_normal(1000)  # 8 kB, below object_store_min_bytes (2 MiB): in the frame as before
    back, total = c.submit("tests.jobs:reverse_array", small).result(60)
    assert np.array_equal(back, small[::-1]) and total == float(small.sum())
    assert counters(d)["ray_store_bytes"] == after["ray_store_bytes"]

    big = rng.standard_normal(MIB // 2)  # 4 MiB each way, 40 jobs: 320 MiB through stores of 80 MiB per node
    handles = [c.submit("tests.jobs:reverse_array", big) for _ in range(40)]
    for h in handles:
        back, _ = h.result(180)
        assert np.array_equal(back, big[::-1])
    del back, handles
    # every job's objects are freed when it ends: the stores hold what they held before (Ray frees asynchronously)
    store_settles(cluster, lambda u: u[0] <= base_objects and u[1] <= base_bytes,
                  f"the object stores to shrink back to {base_objects} objects, {base_bytes} bytes")
    d.down()  # and nothing of ensemble's is left in any store
    store_settles(cluster, lambda u: u == (0, 0), "empty object stores after down")


def test_a_worker_killed_mid_job_with_a_staged_array_loses_nothing(
        ray_daemon: tuple[Daemon, Any], tmp_path: Path) -> None:
    d, cluster = ray_daemon
    c = d.client(timeout=120)
    a = np.arange(MIB, dtype="<i8")  # 8 MiB: staged in the object store
    marker = str(tmp_path / "first-attempt")
    h = c.submit("tests.jobs:reverse_array", a, marker, retries=1)
    wait_for(lambda: os.path.exists(marker), 120, what="the first attempt to read its array")
    pid, total = Path(marker).read_text().split()
    assert float(total) == float(a.sum())  # it had its array
    objects, held = store_use(cluster)
    assert objects >= 1 and held >= a.nbytes  # in the object store while its job runs (the daemon's ref)
    os.kill(int(pid), signal.SIGKILL)  # its worker dies mid-job; the host actor starts it again
    back, total2 = h.result(180)  # retried: the array is staged again from the same object
    assert np.array_equal(back, a[::-1]) and total2 == float(a.sum())
    assert h.info.attempts == 2
    assert counters(d)["ray_store_args"] == 1  # put once, staged twice
    wait_for(lambda: len(ray_workers(d)) == 2, 120, what="the killed worker's slot to come back")
    store_settles(cluster, lambda u: u[0] == 0, "the job's objects to be freed")


def test_a_remote_client_s_inline_array_goes_through_the_store_and_leaves_no_segment(
        make_daemon: Callable[..., Daemon], ray_cluster: Any) -> None:
    with remote_client_daemon(make_daemon, ray_cluster, 1) as (d, c):
        a = np.arange(3 * MIB // 8, dtype="<f8")  # 3 MiB: inline in the client's frame, then the store to the worker
        back, total = c.submit("tests.jobs:reverse_array", a).result(120)
        assert np.array_equal(back, a[::-1]) and total == float(a.sum())
        assert counters(d)["ray_store_args"] == 1 and counters(d)["ray_store_results"] == 1
        shm_key = d.config.shm_key
        assert not list(Path("/dev/shm").glob(f"ensemble.{shm_key}.*"))  # a remote client's result: no segment


def test_a_tuple_result_holding_a_big_array_comes_back_and_listings_stay_readable(
        ray_daemon: tuple[Daemon, Any]) -> None:
    """A Ray-placed job's tuple result with an array in the object store was journaled holding the store's key:
    the client got a ProtocolError instead of its result, and every later job listing failed the same way, after
    restarts too.  A resource name Ray keeps for itself passed the submit, and Ray's refusal to place a worker for
    it ended the daemon, at every later start as well (the job stayed queued)."""
    from actors import JobRefused

    d, _ = ray_daemon
    c = d.client(timeout=120)
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB: through the object store
    back = c.submit("tests.jobs:identity", (big, {1, 2})).result(120)
    assert type(back) is tuple and np.array_equal(back[0], big) and back[1] == {1, 2}
    assert [j.state for j in c.jobs(limit=5)][0] == "done"  # the listing reads
    with pytest.raises(JobRefused, match="'object_store_memory' is one Ray keeps for itself"):
        c.submit("examples.jobs:add", 1, 2, resources={"object_store_memory": 1})
    assert c.submit("examples.jobs:add", 1, 2).result(120) == 3  # the daemon lives


def rss_kib(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak) of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_a_big_result_lands_in_its_segment_with_no_copy_of_its_own_in_the_daemon(
        ray_daemon: tuple[Daemon, Any]) -> None:
    """The daemon read a big result from its Ray driver into memory of its own, then copied it into the segment
    its local client maps: the result's size twice at its peak, and a copy on every result's way."""
    d, _ = ray_daemon
    c = d.client(timeout=180)
    n = 16 * MIB  # float32: 64 MiB, through the object store
    before = rss_kib(d.pid, "VmRSS")
    out = c.submit("tests.jobs:make_shared", n).result(180)
    assert out.dtype == np.float32 and out.shape == (n,) and out[0] == out[-1] == 1.5
    assert counters(d)["ray_store_results"] == 1
    grew = (rss_kib(d.pid, "VmHWM") - before) * 1024
    assert grew < 1.5 * out.nbytes, (f"the daemon's peak grew by {grew / MIB:.0f} MiB for a "
                                     f"{out.nbytes / MIB:.0f} MiB result")


def test_a_big_argument_reaches_the_driver_as_its_segment_and_the_daemon_reads_none_of_its_bytes(
        ray_daemon: tuple[Daemon, Any]) -> None:
    """The daemon read a big argument's segment and wrote its bytes to its Ray driver, which read them into memory
    of its own before Ray copied them into its store: the daemon's loop busy with the copy, and two copies where Ray
    needs none."""
    d, _ = ray_daemon
    c = d.client(timeout=180)
    a = np.arange(8 * MIB, dtype="<i8")  # 64 MiB, in a segment of the client's
    before = rss_kib(d.pid, "VmRSS")
    assert c.submit("examples.jobs:noop", a).result(180) is None
    assert counters(d)["ray_store_args"] == 1 and counters(d)["ray_store_bytes"] == a.nbytes
    grew = (rss_kib(d.pid, "VmHWM") - before) * 1024
    assert grew < a.nbytes / 2, (f"the daemon's peak grew by {grew / MIB:.0f} MiB for a "
                                 f"{a.nbytes / MIB:.0f} MiB argument")

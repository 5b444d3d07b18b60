"""Workers on a real Ray cluster: node loss with nothing lost, jobs that wait for resources, nothing leaked.

Marked slow: each test starts its own cluster (a head and two one-CPU nodes,
about 10 s on two cores) and shuts it down.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.cluster.conftest import add_node, ray_workers
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for

pytestmark = pytest.mark.slow


def test_500_jobs_with_retries_lose_nothing_when_a_node_goes_and_its_slot_comes_back(
        ray_daemon: tuple[Daemon, Any]) -> None:
    d, cluster = ray_daemon
    c = d.client(timeout=60)
    handles = [c.submit("tests.jobs:sleep", 0.01, retries=2, name=str(i)) for i in range(500)]
    wait_for(lambda: sum(h.done() for h in handles) >= 100, 120, what="100 jobs to finish before the node goes")
    node = cluster.list_all_nodes()[1]  # one CPU: it hosts exactly one of the two workers
    cluster.remove_node(node, allow_graceful=False)
    infos = [h.wait(180) for h in handles]
    assert [i.state for i in infos] == ["done"] * 500  # 0 lost: the running job was retried, queued ones redispatched
    assert [i.result for i in infos] == [0.01] * 500
    assert len({i.id for i in infos}) == 500
    listed = {i.id: i for i in c.jobs(limit=1000)}  # the journal holds each job once, finished once
    assert all(listed[i.id].state == "done" for i in infos)
    assert len(ray_workers(d)) == 1  # its worker was declared gone (heartbeats or Ray, whichever first)
    assert "remote-worker-gone" in (d.base / "state" / "daemon.log").read_text()
    retried = [i for i in infos if i.attempts > 1]
    assert all(i.attempts <= 3 for i in infos) and all(
        any(e[1] == "requeued" for e in i.events) for i in retried)
    add_node(cluster)  # the node is gone for good: Ray restarts the actor on a new one
    wait_for(lambda: len(ray_workers(d)) == 2, 120, what="the lost worker's slot to come back")


def test_a_gpu_job_waits_until_a_node_with_a_gpu_joins_then_runs_there(ray_daemon: tuple[Daemon, Any]) -> None:
    d, cluster = ray_daemon
    c = d.client(timeout=60)
    gpu = c.submit("tests.jobs:pid", resources={"GPU": 1})
    plain = c.submit("tests.jobs:pid")
    assert plain.result(60)  # the CPU workers run what needs no GPU meanwhile
    wait_for(lambda: d.status().daemon.counters.get("ray_workers") == 3, 60,
             what="a worker asking Ray for a GPU to be placed")
    assert gpu.info.state == "queued"  # Ray keeps that worker pending: no node has a GPU
    add_node(cluster, num_gpus=1)
    gpu.result(120)
    ran_on = gpu.info.worker
    slot = next(a for a in d.status().actors if a.name == ran_on)
    assert slot.resources.get("GPU") == 1.0


def _auth_fails(secret_file: Path, server_key: Path, endpoint: str) -> bool:
    """Whether the daemon's worker endpoint refuses this key (the CURVE handshake fails on authentication)."""
    from actors._keys import curve_client

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    curve_client(s, str(secret_file), str(server_key))
    mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        s.connect(endpoint)
        if not mon.poll(30_000):
            raise AssertionError("no handshake outcome within 30 s")
        from zmq.utils.monitor import recv_monitor_message

        return bool(recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    finally:
        s.disable_monitor()
        mon.close(0)
        s.close(0)
        ctx.term()


def test_a_removed_actor_s_key_stops_working_and_down_leaves_no_ray_actor(
        ray_daemon: tuple[Daemon, Any], tmp_path: Path) -> None:
    d, cluster = ray_daemon
    keys = d.base / "state" / "keys"
    server_key, endpoint = keys / "server.key", d.config.daemon.tcp
    names = sorted(a.name.split(":")[1].split("#")[0] for a in ray_workers(d))
    kept = {}
    for name in names:  # what a removed actor had: its issued key, copied while it is valid
        kept[name] = tmp_path / f"{name}.key_secret"
        kept[name].write_bytes((keys / "issued" / f"{name}.key_secret").read_bytes())
    assert not _auth_fails(kept[names[0]], server_key, endpoint)
    d.cli("scale", "1", "--on", "ray")
    wait_for(lambda: len(ray_workers(d)) == 1 and d.status().daemon.counters.get("ray_workers") == 1, 60,
             what="one Ray worker to be retired")
    gone = next(n for n in names if not (keys / "allowed" / "worker" / f"{n}.key").exists())
    wait_for(lambda: _auth_fails(kept[gone], server_key, endpoint), 30, what="the removed actor's key to be refused")
    assert not processes_mentioning(f"--worker-name {gone}")
    d.down()
    assert not processes_mentioning("--worker-name ray-")  # no worker of theirs left
    # and no actor process on any node: Ray ends a killed actor's process on its own time, so poll for it
    wait_for(lambda: not processes_mentioning("ray::WorkerHost"), 60, what="the Ray actor processes to end")
    assert not list((keys / "allowed" / "worker").glob("ray-*.key"))  # and no key of theirs still allowed



def test_a_daemon_killed_and_started_again_replaces_its_ray_workers_and_their_keys(
        ray_daemon: tuple[Daemon, Any]) -> None:
    d, cluster = ray_daemon
    keys = d.base / "state" / "keys"
    old = sorted(a.name.split(":")[1].split("#")[0] for a in ray_workers(d))
    os.kill(d.pid, signal.SIGKILL)  # no orderly stop: its Ray driver dies with it, and Ray ends the actors it owned
    wait_for(lambda: not pid_alive(d.pid), 30, what="the daemon to die")
    wait_for(lambda: not any(processes_mentioning(f"--worker-name {n}") for n in old), 60,
             what="the old workers to go with their actors")
    d.up()
    wait_for(lambda: len(ray_workers(d)) == 2, 120, what="two new Ray-placed workers to join")
    new = sorted(a.name.split(":")[1].split("#")[0] for a in ray_workers(d))
    assert not set(new) & set(old)
    assert not [n for n in old if (keys / "allowed" / "worker" / f"{n}.key").exists()]  # revoked at the new start
    c = d.client(timeout=60)
    assert [h.result(60) for h in [c.submit("examples.jobs:add", i, 1) for i in range(10)]] == list(range(1, 11))


def test_scaling_down_retires_an_idle_worker_and_up_keeps_to_max_workers(ray_daemon: tuple[Daemon, Any]) -> None:
    """A scale-down retired the newest Ray worker even when it ran a job and an idle one was there (the job was
    not lost, but the guide says idle ones retire first); a scale-up started as many as asked, past
    [cluster] max_workers."""
    d, _ = ray_daemon
    c = d.client(timeout=120)
    job = c.submit("tests.jobs:wait_file", str(d.base / "go"), 600.0)
    wait_for(lambda: job.state == "running", 120, what="the job to start on a Ray worker")
    busy = job.refresh().worker
    out = d.cli("scale", "999", "--on", "ray", check=False)
    assert out.returncode != 0 and "at most [cluster] max_workers" in out.stderr, out.stderr
    d.cli("scale", "1", "--on", "ray")
    wait_for(lambda: [a.name for a in ray_workers(d)] == [busy], 60, what="the idle worker to retire")
    (d.base / "go").touch()
    assert job.result(120) == "released"  # the busy one finished its job

"""Remote workers over CURVE tcp between two network namespaces made by the test itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any, Iterator

import pytest

from tests.conftest import Daemon, pid_alive, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 (`ip netns`) to build two network namespaces joined by a veth pair",
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """Two namespaces joined by a veth pair: (daemon ns, worker ns, daemon address)."""
    tag = f"{os.getpid() % 100000}"
    a, b = f"ensa{tag}", f"ensb{tag}"
    octet = 10 + os.getpid() % 200
    addr_a, addr_b = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        _ip("link", "set", f"va{tag}", "netns", a)
        _ip("link", "set", f"vb{tag}", "netns", b)
        _ip("-n", a, "addr", "add", f"{addr_a}/24", "dev", f"va{tag}")
        _ip("-n", b, "addr", "add", f"{addr_b}/24", "dev", f"vb{tag}")
        for ns, dev in ((a, f"va{tag}"), (b, f"vb{tag}")):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        yield a, b, addr_a
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _start_worker(d: Daemon, ns: str, endpoint: str, key: str) -> subprocess.Popen[bytes]:
    server_key = str(d.base / "state" / "keys" / "server.key")
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "actors", "worker", "--connect", endpoint, "--key", key,
         "--server-key", server_key, "--worker-name", "box-7"],
        env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _remote(d: Daemon) -> Any:
    return next((a for a in d.status().actors if a.name.startswith("remote:") and a.state == "running"), None)


@pytest.mark.slow  # about 10 s: a network namespace and a remote worker killed mid-job
def test_remote_worker_killed_mid_job_requeues_or_fails_by_retry_policy(make_daemon: Any, netns: tuple[str, str, str]) -> None:
    ns_a, ns_b, addr = netns
    endpoint = f"tcp://{addr}:7701"
    d = make_daemon(workers=0, extra_env={"ENSEMBLE_TCP": endpoint})
    d.cli("keys", "init")
    key = d.cli("keys", "add-worker", "hostb").stdout.strip()
    # the daemon lives in namespace A: its tcp endpoint exists only on the veth there
    up = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-m", "actors", "up"], env=d.env,
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    d.pid = int((d.base / "run" / "daemon.pid").read_text())
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers.append(_start_worker(d, ns_b, endpoint, key))
        joined = wait_for(lambda: _remote(d), 60, what="the remote worker to join from the other namespace")
        # named after its key, never after what the peer says; what it calls itself is shown beside
        assert joined.name.startswith("remote:hostb#") and "calls itself 'box-7-" in joined.detail, joined
        c = d.client()
        assert c.submit("examples.jobs:add", 20, 22).result(60) == 42
        # a tuple, a set, a big int reach a worker on another host, and come back, as they were (ext 4)
        assert c.submit("tests.jobs:type_names", (1,), {2}, 2**70).result(60) == ["tuple", "set", "int"]
        back = c.submit("examples.jobs:echo", ((1, 2), {3}, 2**70)).result(60)
        assert back == ((1, 2), {3}, 2**70) and type(back) is tuple and type(back[1]) is set

        retried = c.submit("tests.jobs:sleep", 3.0, retries=1, grace=1.0)
        wait_for(lambda: retried.refresh().state == "running", 60, what="the job to run remotely")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(30)
        wait_for(lambda: _remote(d) is None, 60, what="the supervisor to notice the dead remote worker")
        workers.append(_start_worker(d, ns_b, endpoint, key))
        assert retried.result(120) == 3.0
        info = retried.refresh()
        assert info.attempts == 2 and any(e[1] == "requeued" for e in info.events)

        lost = c.submit("tests.jobs:sleep", 3.0, retries=0, grace=1.0)
        wait_for(lambda: lost.refresh().state == "running", 60, what="the second job to run remotely")
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait(30)
        final = lost.wait(120)
        assert final.state == "worker-lost"
        assert [j.state for j in c.jobs()][:3] == ["worker-lost", "done", "done"]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(30)
        d.down()
    assert not pid_alive(d.pid)

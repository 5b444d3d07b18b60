"""A daemon with both tcp endpoints on loopback and a key of every role, for the trust-boundary tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from tests.conftest import Daemon, watch_handshakes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Remote:
    """The daemon, its two endpoints and the secret key file of each issued key."""

    d: Daemon
    client_ep: str
    worker_ep: str
    keys: dict[str, str]
    server_key: str

    def client(self, key: str, timeout: float = 10.0) -> Any:
        from ensemble import Client

        c = Client(config=self.d.config, endpoint=self.client_ep, curve=(self.keys[key], self.server_key),
                   timeout=timeout)
        self.d._clients.append(c)
        return c

    def raw(self, key: str, endpoint: str, routing_id: bytes | None = None,
            monitor: list[Any] | None = None) -> zmq.Socket[bytes]:
        """A bare DEALER with a key's credentials, for frames no well-behaved client sends.

        ``monitor``: a list to append the socket's handshake monitor to, attached
        before it connects (for :func:`tests.conftest.wait_refused`).
        """
        from actors._keys import curve_client

        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        curve_client(s, self.keys[key], self.server_key)
        if routing_id is not None:
            s.routing_id = routing_id
        if monitor is not None:
            monitor.append(watch_handshakes(s))
        s.connect(endpoint)
        return s

    def start_worker(self, key: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "actors", "worker", "--connect", self.worker_ep, "--key", self.keys[key],
             "--server-key", self.server_key, "--worker-name", key],
            env=self.d.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


def issue_keys(d: Daemon, names: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The daemon's key pair and a key per name with its role, as ``ensemble keys init`` / ``keys add-ROLE``
    write them (through the functions those commands call, in this process: ``tests/actors/test_remote.py``
    runs the commands themselves); returns each name's secret key file."""
    from actors._keys import add_peer, init_keys, keys_dir

    mask = os.umask(0o077)  # as the `keys` command group sets it
    try:
        d.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = keys_dir(d.config)
        init_keys(folder, False)
        return {name: str(add_peer(folder, name, role)) for role, group in names.items() for name in group}
    finally:
        os.umask(mask)


def remote_daemon(base: Path, workers: int = 1, env: dict[str, str] | None = None) -> Iterator[Remote]:
    """A fixture's body: a daemon (1 worker) with both tcp endpoints and a key of every role, up; then stopped."""
    client_ep, worker_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    d = Daemon(base, workers=workers, extra_env={"ENSEMBLE_CLIENT_TCP": client_ep, "ENSEMBLE_TCP": worker_ep,
                                                 "ENSEMBLE_JOBS_ALLOW": "examples.jobs:add,examples.jobs:echo,"
                                                                        "tests.jobs:sleep,tests.jobs:wait_file",
                                                 **(env or {})})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        keys = issue_keys(d, {"worker": ("w1", "w2"), "client": ("c1", "c2"), "admin": ("a1",)})
        d.up()
        r = Remote(d, client_ep, worker_ep, keys, str(d.base / "state" / "keys" / "server.key"))
        r.procs = procs  # type: ignore[attr-defined]
        yield r
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        d.cleanup()


@pytest.fixture
def remote(short_tmp: Path) -> Iterator[Remote]:
    """A remote-ready daemon of the test's own (for a test that scales it or joins workers to it)."""
    yield from remote_daemon(short_tmp)


@pytest.fixture(scope="module")
def shared_remote() -> Iterator[Remote]:
    """One remote-ready daemon for a module's tests that only send requests and run jobs."""
    base = Path(tempfile.mkdtemp(prefix="ens-r"))
    try:
        yield from remote_daemon(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)

"""Case ``remote``: a remote client (tcp + CURVE) against raw pyzmq CURVE on the same loopback, in the same run.

One daemon (2 workers, jobs only) with a client tcp endpoint on a free port
of 127.0.0.1 (``ENSEMBLE_CLIENT_TCP``) and its keys in its private state
directory, written as ``ensemble keys init`` and ``ensemble keys add-client``
write them (never the user's own state directory).  The remote client is
``Client(endpoint=..., curve=(its .key_secret, the daemon's server.key))``,
what ``ensemble --connect tcp://... --key ...`` builds.  The floor is a raw
pyzmq ROUTER with CURVE (the daemon's own key pair, no ZAP handler: a key is
checked only at the handshake) in a process of its own, and a CURVE DEALER
with the client's key in this process:

* ping round trip, p50 / p99: ``Client.ping()`` against one ``send``/``recv``
  pair of the same frames (ensemble's Ping envelope and the daemon's Pong,
  packed and unpacked with msgpack as the ``ping`` case's floor does), and
  against a local client's ``ping()`` (reported), interleaved in blocks;
* no-op jobs/s: ``Client.submit_many`` (batches of 5,000) over tcp against the
  same through a local client (ipc) of the same daemon, rounds in rotating
  order;
* 200 KB results, MB/s received: ``Client.submit_many`` of jobs returning
  200,000 bytes each until every result is in the caller's hands, against the
  floor server sending the same bytes in 200 KB frames one way, and against
  the same jobs through a local client (reported: what tcp + CURVE costs on
  the job path), rounds in rotating order; the note gives the daemon's CPU
  (every thread) and this process's during the remote rounds.

Everything is stopped in ``finally``: the floor server (asked to stop, killed
after 5 s), then the daemon (:class:`~bench._daemon.BenchDaemon`).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

from bench._daemon import BenchDaemon
from bench.panel import _cpu
from bench._stats import Row, median, pct, row

RESULT = 200_000  # bytes of each job's result
BATCH = 5000  # jobs per submit_many, as the throughput case sends them

# The floor's server: one ROUTER with CURVE.  A msgpack envelope ``[version, kind, corr, fields]`` is decoded
# and answered with the daemon's own Pong envelope (its kind and fields, given as JSON, under the request's
# corr: the same bytes as the daemon's answer); ``send COUNT SIZE`` sends COUNT frames of SIZE bytes back;
# ``stop`` ends it.
FLOOR_SERVER = textwrap.dedent("""
    import json, sys, msgpack, zmq, zmq.auth
    endpoint, secret_file, (kind, fields) = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    public, secret = zmq.auth.load_certificate(secret_file)
    ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue blocks the send instead of dropping the frame
    s.setsockopt(zmq.LINGER, 0)
    s.curve_server = True; s.curve_publickey = public; s.curve_secretkey = secret
    s.bind(endpoint)
    print("ready", flush=True)
    while True:
        ident, frame = s.recv_multipart()
        if frame == b"stop":
            break
        if frame.startswith(b"send "):
            count, size = map(int, frame.split()[1:])
            blob = b"x" * size
            for _ in range(count):
                s.send_multipart([ident, blob])
            continue
        env = msgpack.unpackb(frame)
        s.send_multipart([ident, msgpack.packb([env[0], kind, env[2], fields])])
    s.close(linger=0); ctx.term()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _issue_keys(d: BenchDaemon) -> tuple[str, str]:
    """The daemon's key pair and one client key in its private keys directory (``<state dir>/keys``), through
    the functions ``ensemble keys init`` / ``keys add-client`` call; returns (client secret file, server key)."""
    from actors._keys import add_peer, init_keys, keys_dir

    mask = os.umask(0o077)  # as the `keys` command group sets it
    try:
        folder = keys_dir(d.config())
        server = init_keys(folder)
        return str(add_peer(folder, "bench", "client")), str(server)
    finally:
        os.umask(mask)


class CurveFloor:
    """The floor: a raw pyzmq CURVE ROUTER in a child process and a CURVE DEALER here.  A context manager: the
    server is asked to stop on exit (killed after 5 s) and the socket closed.

    Every receive times out after 60 s (``zmq.Again``), so a dead server cannot hang the run.
    """

    def __init__(self, endpoint: str, server_secret: str, server_public: str, client_secret: str,
                 pong: Any) -> None:
        """``pong``: the daemon's answer to a ping, which the server sends back (the same bytes)."""
        import msgpack

        from actors.messages import Ping, encode

        self.endpoint = endpoint
        _, kind, _, fields = msgpack.unpackb(encode(pong, 0))
        self.args = [server_secret, json.dumps([kind, fields])]
        self.version, self.kind, _, self.fields = msgpack.unpackb(encode(Ping(), 0))  # what the client sends
        self.curve = (client_secret, server_public)
        self.proc: subprocess.Popen[str] | None = None
        self.ctx: Any = None
        self.sock: Any = None

    def __enter__(self) -> "CurveFloor":
        import zmq

        from actors._keys import curve_client

        try:
            self.proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, self.endpoint, *self.args],
                                         stdout=subprocess.PIPE, text=True)
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 30)
            if not ready or self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the raw pyzmq CURVE echo server did not start within 30 s")
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.RCVTIMEO, 60_000)
            curve_client(self.sock, *self.curve)
            self.sock.connect(self.endpoint)
            self.ping(0)  # the CURVE handshake done before any clock starts
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        import zmq

        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    if self.sock is not None:
                        self.sock.send(b"stop", zmq.NOBLOCK)
                    self.proc.wait(5)
                except (zmq.ZMQError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self.proc is not None and self.proc.stdout is not None:
                self.proc.stdout.close()
            if self.sock is not None:
                self.sock.close(linger=0)
            if self.ctx is not None:
                self.ctx.term()

    def ping(self, corr: int) -> None:
        """One round trip: ensemble's Ping envelope and the daemon's Pong, packed and unpacked with msgpack."""
        import msgpack

        self.sock.send(msgpack.packb([self.version, self.kind, corr, self.fields]))
        msgpack.unpackb(self.sock.recv())

    def pull(self, count: int, size: int) -> int:
        """Ask for ``count`` frames of ``size`` bytes and receive them all; returns the bytes received."""
        self.sock.send(f"send {count} {size}".encode())
        return sum(len(self.sock.recv()) for _ in range(count))


def _rotate(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


def case_remote(ctx: Any) -> list[Row]:
    """A remote client over tcp + CURVE: ping, no-op throughput, 200 KB results, each beside its floor or peer."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    d = BenchDaemon(workers=2, ENSEMBLE_CLIENT_TCP=endpoint, ENSEMBLE_EXTENSIONS="",  # jobs only, as `throughput`
                    ENSEMBLE_JOBS_ALLOW="bench.jobs:noop,bench.jobs:blob")
    try:
        secret, server_key = _issue_keys(d)
    except BaseException:
        d.__exit__(None, None, None)  # nothing started yet: removes its directory
        raise
    with d:
        from ensemble import Client

        remote = Client(config=d.config(), endpoint=endpoint, curve=(secret, server_key), timeout=120)
        d.clients.append(remote)  # closed with the daemon
        pong = remote.ping()
        server_secret = str(Path(server_key).with_name("server.key_secret"))
        floor_endpoint = f"tcp://127.0.0.1:{_free_port()}"
        local = d.client(timeout=120)
        with CurveFloor(floor_endpoint, server_secret, server_key, secret, pong) as floor:
            rows = _ping(ctx, remote, floor, local)
            rows += _throughput(ctx, remote, local)
            rows += _results(ctx, remote, local, floor, d.pid)
    return rows


def _tcp_frames(local: Any) -> int:
    """Frames the daemon has read from its tcp endpoints (allowed keys only)."""
    return int(local.status().daemon.counters.get("tcp_frames", 0))


def _ping(ctx: Any, remote: Any, floor: CurveFloor, local: Any) -> list[Row]:
    case = "remote ping round trip (tcp + CURVE)"
    blocks, per = ctx.size((10, 50), (25, 200))
    ens: list[float] = []
    raw: list[float] = []
    ipc: list[float] = []
    perf = time.perf_counter

    def floor_block(out: list[float], k: int) -> None:
        for i in range(k):
            t = perf()
            floor.ping(i + 1)
            out.append(perf() - t)

    def client_block(c: Any) -> Callable[[list[float], int], None]:
        def block(out: list[float], k: int) -> None:
            for _ in range(k):
                t = perf()
                c.ping()
                out.append(perf() - t)
        return block

    sides: list[tuple[Callable[[list[float], int], None], list[float]]] = [
        (floor_block, raw), (client_block(remote), ens), (client_block(local), ipc)]
    for fn, _ in sides:  # warm-up, discarded
        fn([], 20)
    frames = _tcp_frames(local)
    for b in range(blocks):
        for fn, out in _rotate(sides, b):
            fn(out, per)
    frames = _tcp_frames(local) - frames
    if frames < len(ens):  # the remote client's pings reached the daemon through its tcp endpoint, not ipc
        raise RuntimeError(f"the daemon read {frames} tcp frames during {len(ens)} remote pings")
    us = 1e6
    peer = "raw pyzmq CURVE DEALER/ROUTER + msgpack, the same frames"
    return [
        row(case, "p50", pct(ens, 50) * us, "us", peer, pct(raw, 50) * us, "<= 1.3x floor",
            pct(ens, 50) <= 1.3 * pct(raw, 50),
            f"{len(ens)} round trips each over tcp://127.0.0.1, interleaved in blocks of {per}",
            samples={"ensemble Client.ping (tcp + CURVE)": ens, "raw pyzmq CURVE + msgpack": raw,
                     "ensemble Client.ping (local, ipc)": ipc}),
        row(case, "p99", pct(ens, 99) * us, "us", peer, pct(raw, 99) * us, "(reported)"),
        row(case, "p50 vs a local client", pct(ens, 50) * us, "us",
            "Client.ping() of a local client (ipc), same daemon", pct(ipc, 50) * us, "(reported)",
            note=f"the same blocks; local p99 {pct(ipc, 99) * us:,.0f} us"),
    ]


def _submit_and_wait(c: Any, fn: str, args: list[Any], n: int) -> list[Any]:
    """Submit ``n`` jobs in batches of :data:`BATCH`; every result, once all are in the caller's hands."""
    from actors.client import make_spec

    handles = []
    for i in range(0, n, BATCH):
        handles += c.submit_many([make_spec(fn, args, {}) for _ in range(min(BATCH, n - i))])
    return [h.result(300) for h in handles]


def _throughput(ctx: Any, remote: Any, local: Any) -> list[Row]:
    case = "remote no-op job throughput (tcp + CURVE, 2 workers)"
    rounds, n = ctx.size((2, 2000), (5, 20000))
    rates: dict[str, list[float]] = {"remote": [], "local": []}
    clients = [("remote", remote), ("local", local)]
    for _, c in clients:  # warm-up, discarded
        _submit_and_wait(c, "bench.jobs:noop", [], 500)
    for r in range(rounds):
        for name, c in _rotate(clients, r):
            t = time.perf_counter()
            _submit_and_wait(c, "bench.jobs:noop", [], n)
            rates[name].append(n / (time.perf_counter() - t))
    e, p = median(rates["remote"]), median(rates["local"])
    return [row(case, "Client.submit_many", e, "jobs/s", "the same through a local client (ipc), same daemon", p,
                ">= 0.9x local client", e >= 0.9 * p,
                f"{n} no-op jobs per round in batches of {BATCH}, until every result is in; median of {rounds} "
                "rounds in rotating order")]



def _results(ctx: Any, remote: Any, local: Any, floor: CurveFloor, daemon_pid: int) -> list[Row]:
    case = "remote 200 KB results (tcp + CURVE, 2 workers)"
    rounds, n = ctx.size((2, 20), (5, 100))
    rates: dict[str, list[float]] = {"remote": [], "local": [], "floor": []}
    busy: list[tuple[float, float]] = []  # the remote rounds' (daemon, this process) CPU / wall time

    def jobs(c: Any) -> int:
        results = _submit_and_wait(c, "bench.jobs:blob", [RESULT], n)
        if any(len(v) != RESULT for v in results):
            raise RuntimeError(f"a result of bench.jobs:blob was not {RESULT} bytes")
        return len(results) * RESULT

    def raw() -> int:
        got = floor.pull(n, RESULT)
        if got != n * RESULT:
            raise RuntimeError(f"the floor sent {got} bytes, not {n * RESULT}")
        return got

    sides: list[tuple[str, Callable[[], int]]] = [("remote", lambda: jobs(remote)), ("floor", raw),
                                                 ("local", lambda: jobs(local))]
    for _, fn in sides:  # warm-up, discarded
        fn()
    for r in range(rounds):
        for name, fn in _rotate(sides, r):
            cpu0, own0, t = _cpu(daemon_pid), time.process_time(), time.perf_counter()
            moved = fn()
            wall = time.perf_counter() - t
            rates[name].append(moved / wall / 1e6)
            if name == "remote":
                busy.append(((_cpu(daemon_pid) - cpu0) / wall, (time.process_time() - own0) / wall))
    e, p, loc = median(rates["remote"]), median(rates["floor"]), median(rates["local"])
    how = (f"{n} jobs of bench.jobs:blob ({RESULT:,} bytes each) per round, submit until every result is in; "
           f"median of {rounds} rounds, the three sides in rotating order; MB = 10^6 bytes")
    return [
        row(case, "results received", e, "MB/s", "raw pyzmq CURVE DEALER/ROUTER, 200 KB frames one way", p,
            ">= 0.5x floor", e >= 0.5 * p,
            f"{how}; during them the daemon used {median([b[0] for b in busy]):.2f} of a core, the client's "
            f"process {median([b[1] for b in busy]):.2f} (medians)"),
        row(case, "vs a local client", e, "MB/s", "the same jobs through a local client (ipc), same daemon", loc,
            "(reported)", note="what tcp + CURVE costs on the job path; the same rounds"),
    ]

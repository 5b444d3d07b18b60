"""Hostile input to every socket the daemon binds, and access control on tcp (CURVE + ZAP)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.messages import _REGISTRY, VERSION
from tests.conftest import wait_for, wait_refused, watch_handshakes
from tests.reliability.history import full, report

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # the fault-injection suite: .ci/run runs it (-m slow)
N = 10_000 if full() else 600

_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=20)
                       | st.binary(max_size=20),
                       lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.integers(-2**31, 2**31) | st.text(max_size=5),
                                                                                  kids, max_size=4), max_leaves=12)
_kinds = st.sampled_from(sorted(_REGISTRY)) | st.integers(-5, 300)
_envelopes = st.builds(lambda v, k, c, f: msgpack.packb([v, k, c, f]), st.sampled_from([VERSION, VERSION, 0, 2]),
                       _kinds, st.integers(-1, 2**40) | st.text(max_size=3), st.lists(_values, max_size=12) | _values)
_headers = st.sampled_from([b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                            b"\xdf\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01"])
_frames = (st.binary(max_size=200) | _envelopes | _envelopes.map(lambda b: b[: max(1, len(b) // 2)])
           | _headers | st.integers(1, 5000).map(lambda n: b"\x91" * n + b"\x00"))


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_generated_hostile_frames_on_every_socket(make_daemon: Any) -> None:
    limit = 1 << 20
    d = make_daemon(extra_env={"ENSEMBLE_MAX_FRAME": str(limit)})
    d.up()
    before = {a.name: a.pid for a in d.status().actors}
    ctx = zmq.Context()
    control = ctx.socket(zmq.DEALER)
    control.connect(f"ipc://{d.base}/run/control")
    internal = ctx.socket(zmq.DEALER)
    internal.setsockopt(zmq.IDENTITY, b"intruder")
    internal.connect(f"ipc://{d.base}/run/internal")
    sent = {"control": 0, "internal": 0}
    replies = [0]

    @settings(max_examples=N // 2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(_frames, st.booleans())
    def blast(frame: bytes, multipart: bool) -> None:
        for name, sock in (("control", control), ("internal", internal)):
            sock.send_multipart([frame, frame] if multipart else [frame])
            sent[name] += 1
        while control.poll(0):
            control.recv()
            replies[0] += 1

    try:
        blast()
        control.send(msgpack.packb([VERSION, 10_000, 1, []]))  # one last bad frame whose reply we wait for
        assert control.poll(30_000), "the daemon stopped answering"
        t = time.perf_counter()
        st_ = d.status()
        status_ms = (time.perf_counter() - t) * 1000
        counters = st_.daemon.counters
        figures = {"frames": sent, "error_replies": replies[0], "bad_frames": counters.get("bad_frames", 0),
                   "stray_frames": counters.get("stray_frames", 0), "status_ms": round(status_ms, 1),
                   "peak_rss_mib": round(_peak_rss(d.pid) / 2**20, 1), "frame_limit_mib": limit / 2**20}
        report("hostile frames", figures)
        assert {a.name: a.pid for a in st_.actors} == before and all(a.restarts == 0 for a in st_.actors)
        assert figures["bad_frames"] > 0 and figures["stray_frames"] >= sent["internal"]
        assert _peak_rss(d.pid) < 2 * limit + 64 * 2**20  # frame limit x2 above the daemon's own baseline
    finally:
        control.close(0)
        internal.close(0)
        ctx.term()


def test_bad_cli_input_and_bad_toml_are_one_clear_line(make_daemon: Any, tmp_path: Path) -> None:
    d = make_daemon()
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\nname = 'x'")
    for args in (("--config", str(bad), "status"), ("scale", "many"), ("submit",), ("note", "300")):
        out = d.cli(*args, check=False)
        assert out.returncode != 0 and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) <= 3, out.stderr


def test_access_control(make_daemon: Any) -> None:
    from zmq.utils import z85

    d = make_daemon(extra_env={"ENSEMBLE_CLIENT_TCP": "tcp://127.0.0.1:7791"})
    refused = d.cli("up", check=False)
    assert refused.returncode != 0 and "CURVE" in refused.stderr
    d.cli("keys", "init")
    good = d.cli("keys", "add-client", "good").stdout.strip()
    d.up()
    run = d.base / "run"
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in run.iterdir() if p.is_socket())
    server_key = str(d.base / "state" / "keys" / "server.key")

    def tcp_frames() -> int:
        return int(d.status().daemon.counters.get("tcp_frames", 0))

    start = tcp_frames()
    ctx = zmq.Context()
    socks = []
    monitors = []
    try:
        unknown_pub, unknown_sec = zmq.curve_keypair()
        wrong_server_pub, _ = zmq.curve_keypair()
        from actors._keys import load_pair, load_public

        good_pub, good_sec = load_pair(good)
        for pub, sec, srv in ((unknown_pub, unknown_sec, load_public(server_key)),  # unknown client key
                              (good_pub, good_sec, wrong_server_pub),              # wrong server key
                              (None, None, None)):                                 # NULL mechanism
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if pub is not None:
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, srv
            monitors.append(watch_handshakes(s))
            s.connect("tcp://127.0.0.1:7791")
            for i in range(5):
                s.send(msgpack.packb([VERSION, 20, i + 1, []]))  # queued behind the handshake
            socks.append(s)
        for s, mon, who in zip(socks, monitors, ("an unknown client key", "a wrong server key", "no CURVE")):
            wait_refused(s, mon, what=f"the client endpoint, to {who},")  # so none of the frames crossed
        assert all(not s.poll(0) for s in socks)
        denied = tcp_frames() - start
        from actors.client import Client

        with Client(config=d.config, endpoint="tcp://127.0.0.1:7791", curve=(good, server_key), timeout=10) as c:
            assert c.ping().version
        allowed = tcp_frames() - start - denied
        d.cli("keys", "revoke", "good")
        wait_for(lambda: "allow-list-reloaded" in (d.base / "state" / "daemon.log").read_text(), 30,
                 what="the daemon to reload its allow-list")
        with Client(config=d.config, endpoint="tcp://127.0.0.1:7791", curve=(good, server_key), timeout=3) as c:
            with pytest.raises(Exception):
                c.ping()
        report("access", {"frames_from_refused_peers": denied, "frames_from_allowed_key": allowed})
        assert denied == 0 and allowed >= 1
        _ = z85
    finally:
        for s in socks:
            s.close(0)
        ctx.term()

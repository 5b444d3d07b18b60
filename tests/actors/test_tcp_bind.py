"""A tcp endpoint that cannot be bound stops `up` with one line naming its setting."""

from __future__ import annotations

import socket
from typing import Any


def test_a_taken_tcp_port_stops_up_with_one_line_naming_the_setting(make_daemon: Any) -> None:
    """Before: ``ensemble: error: zmq.error.ZMQError: Address already in use (addr='tcp://...')`` and a
    traceback in daemon.err, naming neither ``[daemon] tcp`` nor what to do."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        d = make_daemon(workers=0, jobs_only=True, extra_env={"ENSEMBLE_TCP": endpoint})
        d.cli("keys", "init")
        proc = d.cli("up", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"ensemble: error: [daemon] tcp {endpoint} cannot be bound: Address already in "
                                   "use; choose another port, or an address of this host"), proc.stderr
    assert "Traceback" not in (d.config.state_dir / "daemon.err").read_text()
    assert not d.socket_files()

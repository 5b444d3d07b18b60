"""A remote client whose daemon went away for good says which daemon, and where it is started again.

Its config names no daemon of its own (it connects to an endpoint), yet the giving up named the config's daemon
and told the user to run `ensemble up`, which on the client's host starts another daemon altogether.
"""

from __future__ import annotations

import os
import signal

import msgspec
import pytest

from actors import DaemonError
from tests.conftest import pid_alive, processes_mentioning, wait_for
from tests.security.conftest import Remote


@pytest.mark.slow  # a daemon killed: run by .ci/run's slow pass (default suite < 5 min)
def test_a_remote_client_given_up_names_the_daemon_s_endpoint_and_its_host(remote: Remote) -> None:
    from ensemble import Client

    cfg = remote.d.config
    mine = msgspec.structs.replace(cfg, daemon=msgspec.structs.replace(cfg.daemon, name="on-this-host"),
                                   jobs=msgspec.structs.replace(cfg.jobs, reconnect_wait=2.0))
    c = Client(config=mine, endpoint=remote.client_ep, curve=(remote.keys["c1"], remote.server_key), timeout=600)
    remote.d._clients.append(c)
    job = c.submit("tests.jobs:sleep", 120.0)
    wait_for(lambda: job.refresh().state == "running", 60, what="the job to start")
    os.kill(remote.d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(remote.d.pid) and not processes_mentioning(str(remote.d.base)), 30,
             what="the daemon and its worker to die")
    wait_for(lambda: c.conn.gone is not None, 60, what="the client to give its daemon up")
    with pytest.raises(DaemonError) as got:
        c.ping()
    said = str(got.value)
    assert f"the daemon at {remote.client_ep} went away and was not back within 2 s" in said, said
    assert "on its host" in said and "on-this-host" not in said, said

"""Start, submit, stop: the README's main job through the real CLI."""

from __future__ import annotations

from tests.conftest import Daemon, processes_mentioning


def test_up_submit_down_leaves_nothing(daemon: Daemon) -> None:
    st = daemon.status()
    assert {a.role for a in st.actors} == {"controller", "processor", "worker"}
    assert all(a.state == "running" for a in st.actors)
    out = daemon.cli("submit", "examples.jobs:add", "1", "2", "--wait")
    assert out.stdout.strip() == "3"
    daemon.down()
    assert not processes_mentioning(str(daemon.base))
    assert not daemon.socket_files()

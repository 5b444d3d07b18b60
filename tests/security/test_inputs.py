"""Findings 5-13: no single input crashes the daemon, hangs a job, grows memory, or crosses a user boundary."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors import QueueFull, RemoteError
from actors.config import load_config
from tests.conftest import ROOT, Daemon, wait_for

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant files as another user")
NOBODY = 65534


def test_an_out_of_range_integer_is_refused_and_the_daemon_lives(shared_daemon: Daemon) -> None:
    out = shared_daemon.cli("submit", "examples.jobs:add", "1", "2", "--priority", str(2**63), check=False)
    assert out.returncode != 0 and "out of range" in out.stderr and "Traceback" not in out.stderr
    assert shared_daemon.client().submit("examples.jobs:add", 1, 2, priority=2**63 - 1).result(60) == 3


def test_a_local_client_cannot_pass_for_the_controller(shared_daemon: Daemon) -> None:
    """``TaskSubmit`` may name internal and script functions: only the token the controller got at its spawn opens
    it, to a local client as to a remote one (the remote roles tests send every kind from tcp)."""
    from actors import PermissionDenied
    from actors.client import make_spec
    from actors.messages import TaskSubmit

    c = shared_daemon.client()
    before = c.status().daemon.counters.get("denied_requests", 0)
    earlier = {j.id for j in c.jobs(limit=100)}
    for token in ("", "0" * 32, "not the token"):
        with pytest.raises(PermissionDenied, match="controller's own message"):
            c._call(TaskSubmit(token, [make_spec("examples.jobs:add", (1, 2), {})]))
    assert c.status().daemon.counters.get("denied_requests", 0) == before + 3
    assert not any(j.fn == "examples.jobs:add" for j in c.jobs(limit=100) if j.id not in earlier)  # none was queued
    assert c.submit("examples.jobs:add", 1, 2).result(60) == 3


@pytest.mark.slow  # restarts or waits out a detection timeout: run by .ci/run's slow pass (default suite < 5 min)
def test_a_job_whose_segment_is_gone_fails_alone_and_the_daemon_survives_restarts(make_daemon: Any) -> None:
    d = make_daemon(workers=0)
    d.up()
    from ensemble import Client

    with Client(config=d.config) as c:
        big = np.ones(1_000_000)  # pooled shared memory, unlinked when this client closes
        job = c.submit("tests.jobs:numpy_sum", big)
        job_id = job.id
    d.cli("down")
    d.up()  # the job is still queued in the journal
    d.cli("scale", "1")
    with Client(config=d.config) as c:
        info = c.job(job_id).wait(60)
        assert info.state == "failed" and "no longer exists" in info.error_message
        assert c.submit("examples.jobs:add", 2, 2).result(60) == 4


def returns_a_lock() -> Any:
    """A value neither MessagePack nor pickle can carry."""
    import threading

    return threading.Lock()


def returns_an_object() -> object:
    """A job result no codec can send (the Executor below runs it in a worker)."""
    return object()


def test_results_that_cannot_cross_fail_their_job_with_the_reason(make_daemon: Any) -> None:
    d = make_daemon(jobs_only=True, extra_env={"ENSEMBLE_MAX_FRAME": str(1 << 20)})
    d.up()
    c = d.client()
    with pytest.raises(RemoteError, match="frame limit"):
        c.submit("examples.jobs:echo", "x" * 100).result(60) and c.submit("tests.jobs:big_string", 2 << 20).result(60)
    assert c.submit("tests.jobs:int_keys").result(60) == {1: "one"}  # maps inside a value may have any keys
    from actors.client import Executor

    with Executor(config=d.config) as ex:  # and an Executor with such a job still exits
        assert ex.submit(__import__("tests.jobs", fromlist=["plain_int_keys"]).plain_int_keys).result(60) == {1: "one"}
        assert type(ex.submit(returns_an_object).result(60)) is object  # a local Executor: exact values (pickle)
        with pytest.raises(TypeError, match="pickle") as info:  # what cannot be pickled fails as under PPE
            ex.submit(returns_a_lock).result(60)
        assert isinstance(info.value.__cause__, RemoteError)
    assert type(c.submit("tests.jobs:object_result").result(60)) is object  # a local client: pickled (ext 5)
    with pytest.raises(RemoteError, match=r"result\['held'\]\[0\] cannot cross .* _thread.lock does not pickle"):
        c.submit("tests.jobs:lock_result").result(60)
    assert c.submit("examples.jobs:add", 2, 2).result(60) == 4


def test_the_queue_has_a_byte_budget(make_daemon: Any) -> None:
    d = make_daemon(workers=0, extra_env={"ENSEMBLE_JOBS_QUEUE_BYTES": str(1 << 20)})
    d.up()
    c = d.client()
    with pytest.raises(QueueFull, match="queue_bytes"):
        for _ in range(30):
            c.submit("examples.jobs:echo", "y" * 100_000)
    assert d.cli("status").returncode == 0


def test_refused_names_are_not_kept(shared_daemon: Daemon) -> None:
    from actors import JobRefused

    c = shared_daemon.client()
    before = shared_daemon.status().daemon.rss
    for i in range(10):
        with pytest.raises(JobRefused):
            c.submit(f"examples.jobs:{'x' * (4 << 20)}{i}")
    grown = shared_daemon.status().daemon.rss - before
    assert grown < 30 * 2**20, f"daemon grew by {grown / 2**20:.0f} MiB for 10 refused 4 MiB names"


@root_only
def test_a_planted_segment_of_another_user_does_not_stop_up(make_daemon: Any) -> None:
    d = make_daemon()
    planted = Path("/dev/shm") / f"ensemble.{d.config.shm_key}.x"
    planted.write_bytes(b"mine")
    os.chown(planted, NOBODY, NOBODY)
    try:
        d.up()
        assert planted.exists()  # not ours: left alone, and never used
        assert d.client().submit("examples.jobs:add", 1, 1).result(60) == 2
    finally:
        planted.unlink()


@root_only
def test_a_run_dir_another_user_planted_is_refused(make_daemon: Any, tmp_path: Path) -> None:
    d = make_daemon()
    run = Path(d.env["ENSEMBLE_RUN_DIR"])
    run.mkdir(mode=0o777)
    os.chmod(run, 0o777)
    os.chown(run, NOBODY, NOBODY)
    out = d.cli("up", check=False)
    assert out.returncode != 0 and "belongs to uid 65534" in out.stderr
    from actors import DaemonError
    from ensemble import Client

    (run / "control").touch()
    with pytest.raises(DaemonError, match="belongs to uid"):
        Client(config=d.config)
    os.chown(run, 0, 0)


def test_children_never_import_from_the_current_directory(make_daemon: Any, tmp_path: Path) -> None:
    planted = tmp_path / "cwd"
    (planted / "examples").mkdir(parents=True)
    (planted / "examples" / "__init__.py").write_text("")
    (planted / "examples" / "jobs.py").write_text(
        "from actors import Task\n\n\ndef add(task: Task, a, b):\n    return 'planted'\n")
    d = make_daemon()
    up = subprocess.run([sys.executable, "-m", "actors", "up"], env=d.env, cwd=planted, capture_output=True,
                        text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    d.pid = int((d.base / "run" / "daemon.pid").read_text())
    assert d.client().submit("examples.jobs:add", 1, 2).result(60) == 3


def test_state_files_keys_and_log_lines_stay_private_and_honest(make_daemon: Any) -> None:
    d = make_daemon()
    d.cli("keys", "init")
    state = d.base / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    out = d.cli("keys", "revoke", "../server", check=False)
    assert out.returncode != 0 and "invalid" in out.stderr
    assert (state / "keys" / "server.key").exists()
    d.up()
    for f in ("jobs.sqlite3", "jobs.sqlite3.lock", "daemon.log"):
        assert stat.S_IMODE((state / f).stat().st_mode) & 0o077 == 0, f
    c = d.client()
    from actors import ProtocolError

    with pytest.raises(ProtocolError, match="holds a control character"):  # (it was taken, and logged escaped)
        c.upload_sample(np.zeros(100_000, dtype=np.float32), "snare\n2026-01-01 CRITICAL forged", 48000)
    c.upload_sample(np.zeros(100_000, dtype=np.float32), "snare", 48000)
    wait_for(lambda: "event=sample-load" in (state / "daemon.log").read_text(), what="the sample-load line")
    log = (state / "daemon.log").read_text()
    assert not any(line.startswith("2026-01-01 CRITICAL") or line.startswith("CRITICAL forged")
                   for line in log.splitlines())


def test_a_client_maps_only_its_own_daemon_s_segments(tmp_path: Path) -> None:
    from actors import ProtocolError
    from actors.messages import ArrayHandle
    from actors.shm import SharedArray, segment_prefix

    cfg = load_config(env={"ENSEMBLE_NAME": "a", "ENSEMBLE_RUN_DIR": str(tmp_path / "a")})
    other = load_config(env={"ENSEMBLE_NAME": "b", "ENSEMBLE_RUN_DIR": str(tmp_path / "b")})
    with SharedArray.create(other.shm_key, 4) as seg:
        with pytest.raises(ProtocolError, match="not one of this daemon"):
            SharedArray.attach(seg.handle, prefix=segment_prefix(cfg.shm_key))
    with pytest.raises(ProtocolError):
        SharedArray.attach(ArrayHandle("ensemble.../x", "<f8", (1,), 0), prefix=segment_prefix(cfg.shm_key))
    _ = ROOT


def test_a_listing_of_states_no_job_has_or_of_no_jobs_is_refused_saying_so(shared_daemon: Daemon) -> None:
    """``jobs(states=["bogus"])`` answered nothing, as if no job were in it, and 500,000 states an internal error
    (too many SQL variables); ``limit=0`` listed one job.  Each is the caller's OutOfRange now, naming the fix."""
    from actors import OutOfRange, ProtocolError

    c = shared_daemon.client()
    c.submit("examples.jobs:add", 1, 2).result(60)
    with pytest.raises(OutOfRange, match="no job is in state 'bogus': give states of .*running"):
        c.jobs(states=["bogus"])
    with pytest.raises(OutOfRange, match="no job is in state"):
        c.jobs(states=[f"s{i}" for i in range(1_000)])
    with pytest.raises(ProtocolError, match=r"ListJobs.states: Expected `array` of length <= 1024"):
        c.jobs(states=[f"s{i}" for i in range(500_000)])  # refused as the frame is read
    for limit in (0, -1):
        with pytest.raises(OutOfRange, match="give a limit of 1 or more"):
            c.jobs(limit=limit)
    assert [j.state for j in c.jobs(states=["done"] * 3, limit=1)] == ["done"]  # a state named twice: once


def test_a_script_path_with_a_nul_is_refused_as_a_bad_path_not_an_internal_error(shared_daemon: Daemon) -> None:
    from actors import DaemonError

    with pytest.raises(DaemonError, match="holds a NUL character") as caught:
        shared_daemon.client().load_script("instrument\0.py")
    assert "internal error" not in str(caught.value)

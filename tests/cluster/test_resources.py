"""Jobs that need resources, on a real daemon without Ray: refused when no worker offers them, run where one does."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from actors import Executor, JobRefused
from tests.cluster.conftest import free_port
from tests.conftest import wait_for


def worker_pid(*_: Any) -> int:
    """A plain function for the Executor: the pid of the process running it."""
    return os.getpid()


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_resources_decide_the_worker_and_an_impossible_job_is_refused_at_submit(make_daemon: Any) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    d = make_daemon(workers=1, extra_env={"ENSEMBLE_TCP": endpoint, "ENSEMBLE_EXTENSIONS": ""})
    d.cli("keys", "init")
    key = d.cli("keys", "add-worker", "gpubox").stdout.strip()
    d.up()
    c = d.client()
    local = next(a for a in d.status().actors if a.role == "worker")
    assert local.resources["CPU"] >= 1 and local.resources["memory"] > 0  # what this host has
    assert c.submit("tests.jobs:pid", resources={"CPU": 1}).result(30)
    with pytest.raises(JobRefused) as err:
        c.submit("tests.jobs:pid", resources={"GPU": 1})
    assert "GPU=1" in str(err.value) and "no worker offers" in str(err.value)
    out = d.cli("submit", "tests.jobs:pid", "--resources", "GPU=1", check=False)
    assert out.returncode != 0 and "no worker offers" in out.stderr
    server_key = str(d.base / "state" / "keys" / "server.key")
    proc = subprocess.Popen([sys.executable, "-m", "actors", "worker", "--connect", endpoint, "--key", key,
                             "--server-key", server_key, "--worker-name", "gpubox", "--resources", "CPU=1,GPU=1"],
                            env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(a.name.startswith("remote:gpubox") for a in d.status().actors), 30,
                 what="the GPU worker to join")
        gpu_jobs = [c.submit("tests.jobs:pid", resources={"GPU": 1}) for _ in range(6)]
        plain = [c.submit("tests.jobs:pid") for _ in range(6)]
        assert {h.wait(30).worker.split("#")[0] for h in gpu_jobs} == {"remote:gpubox"}  # only there
        assert all(h.wait(30).state == "done" for h in plain)
        with Executor(config=d.config, resources={"GPU": 1}) as ex:  # every job of this executor needs one
            assert ex.submit(worker_pid).result(30) == gpu_jobs[0].result()  # the GPU worker's own pid
            assert set(ex.map(worker_pid, range(6), chunksize=2)) == {gpu_jobs[0].result()}  # map's chunks too
    finally:
        d.down()
        proc.wait(30)

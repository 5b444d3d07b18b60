"""A job the daemon accepted keeps the shared memory its arguments are in, after its client has gone; then it goes.

A local client's numpy arguments cross in shared memory the client made (its argument pool, its ``empty()``
arrays).  A client that exited, or was killed, took them with it: its jobs still queued failed ("shared-memory
segment ... no longer exists"), accepted jobs lost.  A daemon's start swept every segment of its key, so a live
client's pool and arrays, and the arguments of the jobs it recovered, went too.  Real processes, a real exit and a
real SIGKILL of the client and of the daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from actors.shm import SHM_DIR
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for

_SUBMIT_AND_GO = """
import os, signal, sys
import numpy as np
from ensemble import Client

c = Client()
c.submit("tests.jobs:wait_file", sys.argv[1])  # holds the one worker: the jobs below wait in the queue
pooled = c.submit("tests.jobs:numpy_sum", np.full(300_000, 2.0))  # copied into the client's argument pool
made = c.empty(300_000)
made[:] = 3.0
own = c.submit("tests.jobs:numpy_sum", made)  # an empty() array, by its handle
back = c.submit("examples.jobs:echo", np.full(300_000, 7.0))  # an argument the job returns as its result
mine = f"ensemble.{c.config.shm_key}.{os.getpid()}."
print(pooled.id, own.id, back.id, *sorted(n for n in os.listdir("/dev/shm") if n.startswith(mine)), flush=True)
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
"""  # (one that exits closes its client at exit)


@pytest.mark.parametrize("how", ["exits", "killed"])
def test_a_client_s_queued_jobs_run_on_its_arrays_after_it_has_gone_and_nothing_is_left(
        make_daemon: Callable[..., Daemon], tmp_path: Path, how: str) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    release = tmp_path / "release"
    proc = subprocess.run([sys.executable, "-c", _SUBMIT_AND_GO, str(release), how], env=d.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == (-9 if how == "killed" else 0), proc.stderr
    pooled, own, back, *names = proc.stdout.split()
    assert len(names) == 3, names  # two pooled segments (two jobs in flight at once) and the empty() array
    pid = int(names[0].split(".")[-2])
    clients = Path(d.config.run_dir) / "clients"
    wait_for(lambda: not [f for f in os.listdir(clients) if f.startswith(f"{pid}.")], 30,
             what="the daemon to take the gone client's list")
    assert all((SHM_DIR / n).exists() for n in names), names  # kept for the jobs that read them

    live = d.client(timeout=60)
    release.touch()
    assert live.job(int(pooled)).result(60)["sum"] == 600_000.0
    assert live.job(int(own)).result(60)["sum"] == 900_000.0
    echoed = live.job(int(back)).result(60)  # the gone client's pooled segment, the result's now: taken here
    assert echoed.shape == (300_000,) and float(echoed[0]) == 7.0
    wait_for(lambda: not any((SHM_DIR / n).exists() for n in names), 30,
             what=f"the gone client's segments {names} to be unlinked once its jobs ended")
    counters = d.status().daemon.counters
    assert counters.get("gone_client_segments_unlinked") == 2, counters  # the one returned went to its taker
    assert "event=client-gone pid=%d unlinked=0 kept_for_jobs=3 " % pid in (d.base / "state" / "daemon.log").read_text()


@pytest.mark.slow  # a daemon killed and brought up again
def test_a_live_client_s_arrays_and_a_recovered_job_s_argument_outlive_a_daemon_killed_and_started_again(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    release = tmp_path / "release"
    c = d.client(timeout=60)
    made = c.empty(1000)
    made[:] = 1.0
    c.submit("tests.jobs:wait_file", str(release))
    queued = c.submit("tests.jobs:numpy_sum", np.full(300_000, 2.0))  # in the client's pool, journaled, queued
    # a client killed with a job queued, and then the daemon: the next one recovers a job whose argument is
    # in the shared memory of a client that no longer lives
    proc = subprocess.run([sys.executable, "-c", _SUBMIT_AND_GO, str(release), "killed"], env=d.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    pooled, own, back, *names = proc.stdout.split()
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its worker to die")

    d.up()
    assert all((SHM_DIR / n).exists() for n in names), names  # the start's sweep kept what recovered jobs read
    release.touch()
    assert queued.result(60)["sum"] == 600_000.0  # the recovered job had its argument
    assert c.submit("tests.jobs:numpy_sum", made).result(60)["sum"] == 1000.0  # the live client's array lives on
    assert c.submit("tests.jobs:numpy_sum", np.full(300_000, 4.0)).result(60)["sum"] == 1_200_000.0  # its pool too
    # the killed client's jobs, recovered, on its arguments
    assert c.job(int(pooled)).result(60)["sum"] == 600_000.0
    assert c.job(int(own)).result(60)["sum"] == 900_000.0
    assert float(c.job(int(back)).result(60)[0]) == 7.0
    wait_for(lambda: not any((SHM_DIR / n).exists() for n in names), 30,
             what=f"the killed client's segments {names} to be unlinked once its jobs ended")



@pytest.mark.slow  # a daemon killed and brought up again
def test_a_result_array_nobody_has_taken_outlives_a_daemon_killed_and_started_again(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client(timeout=60)
    # unwatched (as `ensemble submit` without --wait): the result stays in shared memory for whoever takes it
    (job_id,) = c.conn.submit([c.spec("tests.jobs:make_shared", 1000)]).result(60)
    wait_for(lambda: any(i.id == job_id and i.state == "done" for i in c.jobs(limit=10)), 60, what="the result")
    (name,) = [n for n in os.listdir(SHM_DIR) if n.startswith(f"ensemble.{d.config.shm_key}.")]
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its worker to die")

    d.up()
    assert (SHM_DIR / name).exists()  # the journal records it as the job's result: not swept
    taken = c.job(job_id).result(60)  # (it was "already taken by a client, or the daemon restarted")
    assert taken.shape == (1000,) and float(taken[0]) == 1.5
    assert not (SHM_DIR / name).exists()  # taken: handed over once, as without a restart


def test_a_local_job_refers_to_the_names_its_packed_arguments_hold_and_to_no_longer_one() -> None:
    from actors._jobs import Job, held_spec
    from actors.messages import ArrayHandle, JobSpec
    from actors.supervisor._handed import referring

    def job(job_id: int, *args: object, owner: str = "") -> Job:
        return Job(job_id, held_spec(JobSpec("tests.jobs:numpy_sum", list(args), {})), 0.0, owner=owner)

    held = [job(1, ArrayHandle("ensemble.k.12.1", "<f8", (3,))),
            job(2, {"a": [ArrayHandle("ensemble.k.12.10", "<f8", (3,))]}),
            job(3, b"pickled ... \x8c\x10ensemble.k.12.1\x94 ..."),  # a name inside a pickled value's bytes
            job(4, ArrayHandle("ensemble.k.123.1", "<f8", (3,)), "ensemble.k.13.1"),
            job(5, "ensemble.k.12.1", "ensemble.k.12.2", owner="client:remote")]  # a remote key's: names nothing
    assert referring(held, "ensemble.k.12.", r"[0-9]{1,20}") == {"ensemble.k.12.1": {1, 3}, "ensemble.k.12.10": {2}}
    assert referring(held, "ensemble.k.") == {"ensemble.k.12.1": {1, 3}, "ensemble.k.12.10": {2},
                                              "ensemble.k.123.1": {4}, "ensemble.k.13.1": {4}}

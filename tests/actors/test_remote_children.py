"""A remote worker (``ensemble worker --connect``) leaves no process its jobs started, however it ends.

A local worker's jobs' processes die with its process group; a remote
worker's keeper (:mod:`actors._keeper`) ends them instead: on a stop, on
SIGTERM, and on a kill, when it must spare the processes of its process group
that are not its own (``ensemble worker ... | tee log``).  The remote worker
here connects over tcp to a daemon on this host (no namespaces needed).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from actors import JobCancelled
from tests import jobs
from tests.conftest import Daemon, pid_alive, wait_for

_DEADLINE = 60.0
_GPU = {"GPU": 1}  # what only the remote worker offers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def remote(make_daemon: Any) -> Iterator[tuple[Daemon, list[str]]]:
    """A jobs-only daemon listening on tcp, and the argv of a remote worker for it, which alone offers a GPU (the
    jobs here need one: they run there, not on the daemon's local worker)."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_TCP": endpoint})
    d.cli("keys", "init")
    key = d.cli("keys", "add-worker", "hostb").stdout.strip()
    d.up()
    server_key = str(d.base / "state" / "keys" / "server.key")
    yield d, [sys.executable, "-m", "actors", "worker", "--connect", endpoint, "--key", key,
              "--server-key", server_key, "--worker-name", "hostb", "--resources", "CPU=1,GPU=1"]


def _joined(d: Daemon) -> None:
    wait_for(lambda: any(a.name.startswith("remote:hostb") and a.state == "running" for a in d.status().actors),
             60, what="the remote worker to join")


def _ours(pid: int) -> bool:
    """Whether ``pid`` is still one of the processes this test made (a ``sleep 1000``, the job's child, the
    remote worker), not a pid reused since."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return pid_alive(pid) and any(mark in cmdline for mark in (b"sleep\x001000", b"time.sleep(3600)", b"hostb"))


def _end(pids: list[int], proc: subprocess.Popen[bytes] | None = None) -> None:
    """Whatever a failed test left: the processes it made (still theirs), the worker."""
    for pid in pids:
        if _ours(pid):
            os.kill(pid, signal.SIGKILL)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("how", ["down", "sigterm"])
def test_processes_a_job_left_end_with_the_remote_worker(remote: tuple[Daemon, list[str]], tmp_path: Path,
                                                           how: str) -> None:
    """A job returns with a child, the grandchild it waits on and an orphaned grandchild running; the worker
    stops (its daemon stopping, or SIGTERM) and all three are gone (before: left running, the orphan under init)."""
    d, argv = remote
    proc = subprocess.Popen(argv, env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        _joined(d)
        pids = d.client().submit(jobs.leave_processes, str(tmp_path / "pids"), deadline=_DEADLINE,
                                 resources=_GPU).result(_DEADLINE)
        assert all(pid_alive(p) for p in pids), pids
        if how == "down":
            d.down()
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(lambda: not any(pid_alive(p) for p in pids), 30,
                 what=f"the job's processes {pids} to end with the remote worker")
    finally:
        _end(pids, proc)


# Starts ARGV as a shell does the first command of a pipeline (`ARGV | tee log`): leading a process group of its
# own, in which a second process (`sleep 1000`, the pipeline's `tee`) is started too.  Prints their pids, then the
# first one's exit code when it ends, then waits for the second.
_PIPELINE = """
import os, sys
devnull = os.open(os.devnull, os.O_WRONLY)
first = os.fork()
if first == 0:
    os.setpgid(0, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.execv(sys.argv[1], sys.argv[1:])
try:
    os.setpgid(first, first)  # in both, as a shell does: whichever runs first
except OSError:
    pass
second = os.fork()
if second == 0:
    os.setpgid(0, first)
    os.dup2(devnull, 1)
    os.execvp("sleep", ["sleep", "1000"])
try:
    os.setpgid(second, first)
except OSError:
    pass
print(first, second, flush=True)
print(os.waitstatus_to_exitcode(os.waitpid(first, 0)[1]), flush=True)
os.waitpid(second, 0)
"""


def test_a_killed_remote_worker_spares_what_shares_its_group(remote: tuple[Daemon, list[str]], tmp_path: Path) -> None:
    """A job that ignores its cancel: the daemon tells the remote worker to die, and its job's process goes with
    it; a process that only shares its process group (a shell pipeline's ``tee``) lives on (before: the worker,
    leading its group, SIGKILLed the whole group)."""
    d, argv = remote
    pipeline = subprocess.Popen([sys.executable, "-c", _PIPELINE, *argv], env=d.env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    assert pipeline.stdout is not None
    worker, neighbour = map(int, pipeline.stdout.readline().split())
    child = 0
    try:
        assert os.getpgid(neighbour) == worker
        _joined(d)
        pidfile = tmp_path / "child"
        job = d.client().submit("tests.jobs:ignore_abort_with_grandchild", str(pidfile), grace=0.3, resources=_GPU)
        child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, what="the job's child's pid"))
        info = job.cancel(block=True)
        assert info is not None and info.state == "killed"
        with pytest.raises(JobCancelled):
            job.result(30)
        wait_for(lambda: not pid_alive(worker), 60, what=f"the remote worker {worker} to die")
        assert int(pipeline.stdout.readline()) != 0
        wait_for(lambda: not pid_alive(child), 30, what=f"the job's child {child} to end with the worker")
        assert pid_alive(neighbour), "a process of the worker's group that is not its own was killed"
    finally:
        _end([child, neighbour, worker])
        pipeline.stdout.close()
        pipeline.wait(30)

"""The shared memory of a client that was killed goes while the daemon runs; what it handed over stays.

A client that exits unlinks its ``empty()`` arrays and its argument pool (at exit); one killed by SIGKILL (or a
crash in C, or ``os._exit``) could not, and they stayed in ``/dev/shm`` until ``ensemble down``.  Each local
client now lists the segments it makes in the run directory, locked while it lives; the daemon unlinks what a
gone client listed.  A sample it uploaded is the daemon's registry's: not listed, not unlinked.  Real processes,
a real SIGKILL, the real daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from actors.shm import SHM_DIR
from tests.conftest import Daemon, wait_for

_KILLED_CLIENT = """
import os, signal
import numpy as np
from ensemble import Client

c = Client()
made = c.empty(1000)  # an empty() array
made[:] = 2.0
assert c.submit("examples.jobs:echo", np.ones(300_000)).result(60).shape == (300_000,)  # through the pool
c.upload_sample(np.full(1000, 0.1, np.float32), "kept")  # handed over to the daemon's registry
print(" ".join(n for n in os.listdir("/dev/shm") if n.startswith(f"ensemble.{c.config.shm_key}.{os.getpid()}.")),
      flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_client_s_segments_are_unlinked_and_what_it_handed_over_stays(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1)
    d.up()
    live = d.client()
    own = live.empty(10)  # a live client's array: never touched
    clients = Path(d.config.run_dir) / "clients"
    proc = subprocess.run([sys.executable, "-c", _KILLED_CLIENT], env=d.env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    names = proc.stdout.split()
    assert len(names) == 3, names  # its empty() array, its pooled argument segment, the sample
    (sample,) = [s.handle.name for s in live.samples() if s.name == "kept"]
    assert sample in names
    gone = [n for n in names if n != sample]
    wait_for(lambda: not any((SHM_DIR / n).exists() for n in gone), 30,
             what=f"the killed client's segments {gone} to be unlinked (they stayed until `ensemble down`)")
    assert (SHM_DIR / sample).exists() and [s.name for s in live.samples()] == ["kept"]
    assert d.status().daemon.counters.get("gone_client_segments_unlinked") == 2
    killed_pid = int(names[0].split(".")[-2])
    assert not [f for f in os.listdir(clients) if f.startswith(f"{killed_pid}.")]  # its list went with it
    assert own.shared_handle.name in os.listdir(SHM_DIR) and [f for f in os.listdir(clients)
                                                              if f.startswith(f"{os.getpid()}.")]
    assert live.submit("examples.jobs:echo", own).result(60).tolist() == [0.0] * 10  # the live one still works


def test_a_list_is_taken_only_once_its_holder_is_gone_and_shrinks_to_what_its_client_holds(tmp_path: Path) -> None:
    from actors._rundir import OwnedSegments, RunDir

    run = RunDir(tmp_path)
    mine = OwnedSegments(tmp_path)
    for i in range(OwnedSegments.REWRITE_EVERY - 1):
        assert not mine.add(f"ensemble.k.1.{i}")
    assert mine.add("ensemble.k.1.last")  # due: the client rewrites it with what it still holds
    mine.rewrite(["ensemble.k.1.last"])
    assert mine.path.read_text() == "ensemble.k.1.last\n"
    assert run.take_gone_clients() == []  # its holder lives (this process)
    child = os.fork()
    if child == 0:  # a client that is killed: its list stays, locked by nobody
        try:
            OwnedSegments(tmp_path).add(f"ensemble.k.{os.getpid()}.0")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    ((pid, names, _),) = run.take_gone_clients()
    assert (pid, names) == (child, [f"ensemble.k.{child}.0"])
    assert run.take_gone_clients() == [] and [p.name for p in (tmp_path / "clients").iterdir()] == [mine.path.name]
    mine.close()
    assert list((tmp_path / "clients").iterdir()) == []


def test_a_client_that_exits_removes_its_list(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=0, jobs_only=True)
    d.up()
    code = "import os\nfrom ensemble import Client\nc = Client()\nc.empty(10)\nprint(os.getpid())\n"
    pid = subprocess.run([sys.executable, "-c", code], env=d.env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.strip()
    assert not [f for f in os.listdir(Path(d.config.run_dir) / "clients") if f.startswith(f"{pid}.")]

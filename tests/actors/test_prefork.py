"""Workers forked at start-up (`actors/supervisor/_prefork.py`) and the standby (`actors/_blank.py`): they behave as spawned ones, and nothing is left."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any, Callable

import pytest

from actors._procs import stat
from actors._spawn import child_env, python_argv
from actors.config import load_config
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for

Make = Callable[..., Daemon]


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _ppid(pid: int) -> int:
    return int(_stat(pid)[1])


def _workers(d: Daemon) -> dict[str, Any]:
    return {a.name: a for a in d.status().actors if a.role == "worker"}


def _all_running(d: Daemon, n: int) -> dict[str, Any] | None:
    ws = _workers(d)
    return ws if len(ws) == n and all(a.state == "running" and a.pid for a in ws.values()) else None


def test_the_first_workers_are_forked_and_a_replacement_is_spawned(make_daemon: Make) -> None:
    d = make_daemon(workers=2)
    d.up()
    workers = wait_for(lambda: _all_running(d, 2), 60, what="two running workers")
    for a in workers.values():
        assert "actors.supervisor" in _cmdline(a.pid)  # a fork of the supervisor, not a new interpreter
        assert _ppid(a.pid) == d.pid  # its own child: reaped and watched as a spawned one is
        assert os.getpgid(a.pid) == a.pid  # its own process group: a kill takes what its jobs started
    with d.client() as c:
        pids = {c.submit("tests.jobs:pid").result(60) for _ in range(8)}
    assert pids <= {a.pid for a in workers.values()}

    victim = workers["worker-1"]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim.pid), 30, what="the killed worker to go")

    def replaced() -> Any:
        a = _workers(d)["worker-1"]
        return a if a.state == "running" and a.pid not in (0, victim.pid) and a.restarts >= 1 else None

    new = wait_for(replaced, 60, what="worker-1 to be replaced")
    assert "actors.worker" in _cmdline(new.pid)  # restarts spawn a fresh interpreter
    with d.client() as c:
        assert c.submit("tests.jobs:square", 7).result(60) == 49


def test_with_prefork_off_every_worker_is_spawned(make_daemon: Make) -> None:
    d = make_daemon(workers=2, extra_env={"ENSEMBLE_PREFORK": "0"})
    d.up()
    workers = wait_for(lambda: _all_running(d, 2), 60, what="two running workers")
    for a in workers.values():
        assert "actors.worker" in _cmdline(a.pid)
    with d.client() as c:
        assert c.submit("tests.jobs:square", 3).result(60) == 9


def test_a_daemon_that_cannot_start_leaves_no_forked_process(make_daemon: Make) -> None:
    """The blanks are forked before the run directory is locked: a supervisor refused the lock takes them down."""
    d = make_daemon(workers=2)
    d.up()
    before = {n: a.pid for n, a in _workers(d).items()}
    cfg = load_config(env=d.env)
    second = subprocess.run(python_argv("actors.supervisor", cfg.to_json()), env=child_env(), capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert not [pid for pid in processes_mentioning(str(d.base)) if pid != d.pid and _ppid(pid) != d.pid
                and pid not in before.values()]
    assert {n: a.pid for n, a in _workers(d).items()} == before


# --------------------------------------------------------------------------------- the standby (actors/_blank.py)
def _standbys(d: Daemon) -> list[int]:
    """The daemon's children started as a standby that are not (yet) a worker (their command line stays)."""
    workers = {a.pid for a in _workers(d).values()}
    return [p for p in processes_mentioning(str(d.base))
            if "--standby" in _cmdline(p) and _ppid(p) == d.pid and p not in workers]


def _nice(pid: int) -> int:
    return int(_stat(pid)[16])


def _stat(pid: int) -> list[str]:
    fields = stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return fields


def _replaced(d: Daemon, name: str, old: int) -> Any:
    a = _workers(d)[name]
    return a if a.state == "running" and a.pid not in (0, old) else None


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_once_a_worker_was_replaced_a_standby_waits_and_becomes_the_next_replacement(make_daemon: Make) -> None:
    d = make_daemon(workers=2)
    d.up()
    workers = wait_for(lambda: _all_running(d, 2), 60, what="two running workers")
    assert not _standbys(d) and d.status().daemon.counters["standby"] == 0  # none until one is needed
    os.kill(workers["worker-1"].pid, signal.SIGKILL)
    first = wait_for(lambda: _replaced(d, "worker-1", workers["worker-1"].pid), 60, what="worker-1 replaced")
    (standby,) = wait_for(lambda: _standbys(d), 60, what="a standby worker")
    assert d.status().daemon.counters["standby"] == 1
    assert os.getpgid(standby) == standby  # a group of its own, as every worker
    assert _nice(standby) == _nice(first.pid)  # already at the workers' niceness

    os.kill(workers["worker-2"].pid, signal.SIGKILL)
    second = wait_for(lambda: _replaced(d, "worker-2", workers["worker-2"].pid), 60, what="worker-2 replaced")
    assert second.pid == standby  # the standby became the worker: no new interpreter
    assert os.readlink(f"/proc/{standby}/cwd") == "/"
    assert _nice(standby) == _nice(first.pid)  # not lowered again by its orders
    assert d.status().daemon.counters["standby_used"] == 1
    with d.client() as c:
        ran_on = {c.submit("tests.jobs:pid").result(60) for _ in range(6)}
        assert c.submit("tests.jobs:square", 6).result(60) == 36
    assert ran_on <= {first.pid, second.pid}
    (after,) = wait_for(lambda: _standbys(d), 60, what="the next standby")
    assert after != standby
    d.down()  # the leak check there covers the standby: its command line names the run directory
    assert not pid_alive(after)


@pytest.mark.slow  # kills and waits out restarts: run by .ci/run's slow pass (default suite < 5 min)
def test_a_standby_that_dies_is_reaped_and_none_is_kept_after_three(make_daemon: Make) -> None:
    d = make_daemon(workers=1)
    d.up()
    (w,) = wait_for(lambda: _all_running(d, 1), 60, what="a running worker").values()
    os.kill(w.pid, signal.SIGKILL)
    wait_for(lambda: _replaced(d, "worker-1", w.pid), 60, what="worker-1 replaced")
    seen: set[int] = set()
    for _ in range(3):
        (standby,) = wait_for(lambda: [p for p in _standbys(d) if p not in seen], 60, what="a new standby")
        seen.add(standby)
        os.kill(standby, signal.SIGKILL)
        wait_for(lambda: not pid_alive(standby), 30, what="the killed standby to be reaped (no zombie)")
    log = d.base / "state" / "daemon.log"
    wait_for(lambda: "no more standbys" in log.read_text(), 30, what="the daemon to give up on standbys")
    assert not _standbys(d)
    (w2,) = _workers(d).values()
    os.kill(w2.pid, signal.SIGKILL)  # replacements still work, as fresh interpreters
    new = wait_for(lambda: _replaced(d, "worker-1", w2.pid), 60, what="worker-1 replaced again")
    assert new.pid not in seen
    with d.client() as c:
        assert c.submit("tests.jobs:square", 5).result(60) == 25

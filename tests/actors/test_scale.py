"""Scaling the worker pool at runtime: no running worker restarted, busy workers finish first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from actors import EnsembleError
from tests.conftest import Daemon, pid_alive, wait_for

Make = Callable[..., Daemon]


def workers(d: Daemon) -> dict[str, Any]:
    return {a.name: a for a in d.status().actors if a.role == "worker"}


def log_tail(d: Daemon, lines: int = 40) -> str:
    return "\n".join((d.base / "state" / "daemon.log").read_text().splitlines()[-lines:])


def all_running(d: Daemon, n: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        w = workers(d)
        return w if len(w) == n and all(a.state == "running" for a in w.values()) else None

    return wait_for(check, 60, what=f"{n} running workers")


def test_scale_up_and_down_without_restarting_running_workers(make_daemon: Make, tmp_path: Path) -> None:
    d = make_daemon(jobs_only=True, workers=2)
    d.up()
    before = {name: a.pid for name, a in all_running(d, 2).items()}

    out = d.cli("scale", "4")
    assert out.stdout.strip() == "workers: 4"
    grown = all_running(d, 4)
    assert {n: grown[n].pid for n in before} == before  # the first two kept running
    assert d.status().daemon.workers_wanted == 4

    c = d.client()
    go = {n: tmp_path / f"go{n}" for n in (1, 2)}
    busy = [c.submit("tests.jobs:wait_file", str(go[n])) for n in (1, 2)]
    wait_for(lambda: all(j.status_message.startswith("waiting for") for j in busy), 30, what="two busy workers")
    busy_workers = [j.refresh().worker for j in busy]
    assert len(set(busy_workers)) == 2
    busy_pids = {n: grown[n].pid for n in busy_workers}
    idle = [n for n in grown if n not in busy_workers]

    c.scale(1)  # two idle workers retire at once; one busy worker retires after its job
    def shrunk() -> dict[str, Any] | None:
        w = workers(d)
        return w if set(w) == set(busy_workers) else None

    w = wait_for(shrunk, 30, what="the idle workers to retire first")
    assert not any(pid_alive(grown[n].pid) for n in idle)
    states = sorted(a.state for a in w.values())
    assert states == ["retiring", "running"]
    assert {n: a.pid for n, a in w.items()} == busy_pids  # busy workers were not restarted
    assert all(j.state == "running" for j in busy)
    assert d.status().daemon.workers_wanted == 1

    retiring = next(n for n, a in w.items() if a.state == "retiring")
    staying = next(n for n in busy_workers if n != retiring)
    job_on_retiring = busy[busy_workers.index(retiring)]
    go[busy_workers.index(retiring) + 1].touch()
    assert job_on_retiring.result(30) == "released"  # it finished its job ...
    final = wait_for(lambda: (w := workers(d)) and set(w) == {staying} and w, 30,
                     what="the retiring worker to leave after its job")
    wait_for(lambda: not pid_alive(busy_pids[retiring]), 10, what="the retired worker to exit")
    assert final[staying].pid == busy_pids[staying]
    go[busy_workers.index(staying) + 1].touch()
    assert busy[busy_workers.index(staying)].result(30) == "released"
    assert c.submit("examples.jobs:add", 2, 2).result(30) == 4
    log = (d.base / "state" / "daemon.log").read_text()
    assert "event=scale workers=1" in log
    retired_exits = [line for line in log.splitlines() if f"event=exit name={retiring} " in line]
    assert retired_exits and all(" INFO " in line for line in retired_exits)  # a retirement is no failure


def test_scale_to_zero_queues_jobs_until_workers_return(make_daemon: Make) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    c.scale(0)
    wait_for(lambda: not workers(d), 30, what="every worker to retire")
    job = c.submit("examples.jobs:add", 3, 4)
    assert job.state == "queued" and d.status().daemon.queued == 1
    d.cli("scale", "2")
    assert job.result(60) == 7
    all_running(d, 2)


def test_an_async_client_scales_and_shuts_the_daemon_down(make_daemon: Make) -> None:
    """``scale`` and ``shutdown`` were the Client's only."""
    import asyncio

    from actors.client import AsyncClient

    d = make_daemon(jobs_only=True, workers=1)
    d.up()

    async def scale() -> None:
        async with AsyncClient(config=d.config) as c:
            await c.scale(2)
            with pytest.raises(EnsembleError, match="cannot scale to 5000 workers"):
                await c.scale(5000)

    asyncio.run(scale())
    all_running(d, 2)

    async def shutdown() -> None:
        async with AsyncClient(config=d.config) as c:
            await c.shutdown()

    asyncio.run(shutdown())
    wait_for(lambda: not pid_alive(d.pid), 60, what="the daemon to stop")


def test_bad_scale_values_are_clear_errors(module_daemon: Daemon) -> None:
    with pytest.raises(EnsembleError, match="cannot scale to 5000 workers: give 0..1024"):
        module_daemon.client().scale(5000)
    proc = module_daemon.cli("scale", "5000", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("ensemble: error: Invalid value for 'WORKERS': 5000 is out of range: give 0 to 1024 "
                                   "(the daemon runs at most 1024 workers) (see `ensemble scale --help`)")
    assert len(workers(module_daemon)) == 2


def test_workers_auto_is_the_cpu_count(make_daemon: Make) -> None:
    cpus = len(os.sched_getaffinity(0))
    if cpus > 8:
        pytest.skip(f"{cpus} CPUs: too many workers for a quick test (the config test covers 'auto')")
    d = make_daemon(jobs_only=True)
    d.up("--workers", "auto")
    assert len(all_running(d, cpus)) == cpus
    assert d.status().daemon.workers_wanted == cpus


def test_a_big_scale_up_answers_at_once_and_starts_a_few_workers_at_a_time(make_daemon: Make) -> None:
    """`scale 70` started every worker inside the request: the loop sent no heartbeat for seconds, and the
    processor, the controller and the running workers took the supervisor for dead and exited."""
    from actors.supervisor._children import STARTING_MAX

    d = make_daemon(workers=1)
    d.up()
    others = {a.name: a.pid for a in d.status().actors}
    c = d.client()
    c.scale(STARTING_MAX + 6)
    first = workers(d)
    states = [a.state for a in first.values()]
    assert states.count("pending") >= 1, states  # the rest wait for a start slot
    assert sum(s == "starting" for s in states) <= STARTING_MAX, states
    seen_starting = 0

    def grown() -> bool:
        nonlocal seen_starting
        w = workers(d)
        seen_starting = max(seen_starting, sum(a.state == "starting" for a in w.values()))
        return len(w) == STARTING_MAX + 6 and all(a.state == "running" for a in w.values())

    wait_for(grown, 120, what=f"{STARTING_MAX + 6} running workers")
    assert seen_starting <= STARTING_MAX
    after = {a.name: a for a in d.status().actors}
    for name, pid in others.items():  # nobody took the supervisor for dead
        assert after[name].pid == pid and after[name].restarts == 0, after[name]
    c.scale(2)  # the ones not started are dropped first; the rest retire
    wait_for(lambda: len(workers(d)) == 2, 60, what="2 workers after scaling down")
    assert c.submit("examples.jobs:add", 1, 2).result(30) == 3


def test_scaling_down_before_a_scale_up_started_drops_the_workers_not_started(make_daemon: Make) -> None:
    from actors.supervisor._children import STARTING_MAX

    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    c = d.client()
    c.scale(STARTING_MAX + 6)
    c.scale(1)
    assert "pending" not in [a.state for a in workers(d).values()]
    w = wait_for(lambda: (lambda w: w if len(w) == 1 and all(a.state == "running" for a in w.values()) else None)(
        workers(d)), 60, what="one running worker")
    assert list(w) == ["worker-1"]  # the running one stays: the pending and starting ones went first
    assert c.submit("examples.jobs:add", 2, 2).result(30) == 4

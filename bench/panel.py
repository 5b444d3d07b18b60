"""Case ``panel``: what an open instrument panel costs the supervisor during a burst of job updates.

A burst of N no-op jobs (10,000 in full mode: every one queued, started and
finished, 30,000 job-state updates) runs on a daemon started with its panel
(``ENSEMBLE_PANEL=127.0.0.1:0``, as ``up --panel`` does).  Each round runs the
burst three ways, in rotating order: with nobody watching (the floor), with
the status polling the panel replaces (a client asking ``status`` and the 30
newest jobs every 0.25 s, as ``ensemble top`` does), and with one page open on
the panel (a WebSocket client reading every push).  The measure is the
supervisor process's CPU time (every thread's, from /proc/PID/task/*/schedstat) over a fixed
window from the submit (longer than the burst), minus the floor's of the same
round (the three run back to back), the median over the rounds: the cost of
the observer.  The panel's pushes per window are counted too (coalesced: one message per
snapshot, not one per update).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from bench._daemon import BenchDaemon
from bench._stats import Row, median, row, skipped

TICK = 0.25  # the panel's snapshot interval and `ensemble top`'s default refresh


def _cpu(pid: int) -> float:
    """Seconds the process's threads (its loop and ZeroMQ's I/O threads) have run, in ns resolution (schedstat)."""
    import os

    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


class _Polling:
    """``ensemble top``'s requests (status + the 30 newest jobs) every TICK on a thread."""

    def __init__(self, d: BenchDaemon) -> None:
        self.client = d.client()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(TICK):
            self.client.status()
            self.client.jobs(limit=30)

    def __enter__(self) -> "_Polling":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


class _Page:
    """One page on the panel: a WebSocket reading every push on its own thread and loop."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.pushes = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.done: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True)
        self.error = ""

    async def _run(self) -> None:
        import aiohttp

        self.done = asyncio.Event()
        origin = f"http://127.0.0.1:{self.port}"
        try:
            async with aiohttp.ClientSession() as s, s.ws_connect(
                    f"{origin}/ws", headers={"Origin": origin, "X-Ensemble-Token": self.token}) as ws:
                await ws.receive_json(timeout=30)  # the first state: the page is up
                self.ready.set()
                while not self.done.is_set():
                    try:
                        await ws.receive_json(timeout=0.1)
                        self.pushes += 1
                    except asyncio.TimeoutError:
                        pass
        except Exception as exc:  # noqa: BLE001 - reported by the case
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    def __enter__(self) -> "_Page":
        self.thread.start()
        if not self.ready.wait(60) or self.error:
            raise RuntimeError(f"the page did not connect: {self.error or 'timeout'}")
        time.sleep(2 * TICK)  # settled: the first snapshots are out
        self.pushes = 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.done is not None:
            self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(10)
        self.loop.close()


def _burst(d: BenchDaemon, client: Any, n: int, window: float) -> tuple[float, float]:
    """Supervisor CPU seconds over ``window`` s from the submit of ``n`` no-op jobs, and the burst's wall seconds.

    The window is fixed (longer than the burst) so every observer is measured
    for the same time: during the burst and while the page shows its end.
    """
    from actors.messages import JobSpec

    cpu0, t0 = _cpu(d.pid), time.perf_counter()
    handles = client.submit_many([JobSpec("examples.jobs:noop") for _ in range(n)])
    for h in handles:
        h.result(300)
    wall = time.perf_counter() - t0
    time.sleep(max(0.0, window - wall))
    return _cpu(d.pid) - cpu0, wall


def _idle(d: BenchDaemon, window: float) -> float:
    """Supervisor CPU seconds over ``window`` s with no jobs (what the observer alone costs)."""
    cpu0 = _cpu(d.pid)
    time.sleep(window)
    return _cpu(d.pid) - cpu0


def case_panel(ctx: Any) -> list[Row]:
    """The ``panel`` case (see the module docstring)."""
    case = "panel open vs status polling (burst of job updates)"
    rounds, n, window = ctx.size((1, 2000, 2.0), (7, 10_000, 5.0))
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return [skipped(case, "supervisor CPU", "aiohttp is not installed")]
    cost: dict[str, list[float]] = {"none": [], "polling": [], "panel": []}
    idle: dict[str, list[float]] = {"none": [], "polling": [], "panel": []}
    pushes: list[int] = []
    walls: list[float] = []
    with BenchDaemon(workers=2, ENSEMBLE_PANEL="127.0.0.1:0") as d:
        client = d.client()
        port = _wait_port(d)
        token = json.loads((d.dir / "run" / "panel.json").read_text())["token"]
        _burst(d, client, n // 4, 0.0)  # warm-up
        order = ["none", "polling", "panel"]
        for r in range(rounds):
            for mode in order[r % 3:] + order[:r % 3]:
                if mode == "none":
                    cpu, wall = _burst(d, client, n, window)
                    idle[mode].append(_idle(d, window))
                elif mode == "polling":
                    with _Polling(d):
                        cpu, wall = _burst(d, client, n, window)
                        idle[mode].append(_idle(d, window))
                else:
                    with _Page(port, token) as page:
                        cpu, wall = _burst(d, client, n, window)
                        pushes.append(page.pushes)
                        idle[mode].append(_idle(d, window))
                cost[mode].append(cpu)
                walls.append(wall)
    floor = median(cost["none"])
    poll, pan = _added(cost, "polling"), _added(cost, "panel")
    note = (f"{n} no-op jobs per burst ({3 * n} state updates), 2 workers, {rounds} rounds in rotating order; "
            f"supervisor CPU over {window:g} s from the submit minus that of the same round's burst without an "
            f"observer ({floor * 1000:.0f} ms, median; it varies by {_spread(cost['none']) * 1000:.0f} ms between "
            f"rounds, so a difference below that is noise), median of the rounds' differences; bursts took "
            f"{median(walls):.2f} s (median); panel pushes per window: {sorted(pushes)}")
    rows = [row(case, "supervisor CPU added by the open panel", pan * 1000, "ms", "status polling every 0.25 s",
                poll * 1000, "<= 1x (no more than polling)", pan <= poll, note,
                samples={"none": cost["none"], "polling": cost["polling"], "panel": cost["panel"]})]
    i_floor = median(idle["none"])
    i_poll, i_pan = _added(idle, "polling"), _added(idle, "panel")
    rows.append(row(case, "supervisor CPU added by the open panel, no jobs", i_pan * 1000, "ms",
                    "status polling every 0.25 s", i_poll * 1000, "<= 1x (no more than polling)", i_pan <= i_poll,
                    f"{window:g} s with nothing happening after the burst, minus the same round's without an "
                    f"observer ({i_floor * 1000:.1f} ms, median; spread {_spread(idle['none']) * 1000:.1f} ms), "
                    f"median of {rounds} rounds' differences"))
    rows.append(row(case, "WebSocket pushes per burst", float(median([float(p) for p in pushes])), "messages",
                    "job-state updates in the burst", float(3 * n), "coalesced", None,
                    "one push per snapshot (every 0.25 s) whatever the number of updates"))
    return rows


def _added(cost: dict[str, list[float]], mode: str) -> float:
    """What ``mode``'s observer added: the median over rounds of its CPU minus the same round's with no observer.

    Each round runs the three modes back to back, so a slow or fast minute
    of this VM shifts all three alike; the median of medians did not pair
    them and could come out negative.
    """
    return median([c - f for c, f in zip(cost[mode], cost["none"])])


def _spread(values: list[float]) -> float:
    """Half the range of ``values``: how far the floor moves between rounds."""
    return (max(values) - min(values)) / 2 if values else 0.0


def _wait_port(d: BenchDaemon) -> int:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            a = d.actor("panel")
            if a.state == "running" and a.stats.get("port"):
                return int(a.stats["port"])
        except StopIteration:
            pass
        time.sleep(0.1)
    raise RuntimeError("the panel did not start")

"""The controller's serialised callback queue, without sockets: priority order, reload, budget."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from controller import _controller_side
from controller._controller_side import CONTROL, STATUS, TASK, TIMER, ControllerScript
from tests.conftest import wait_for


class Collect:
    """An outbox that keeps what the runtime sends (the runtime's real peer is the supervisor)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, msg: Any) -> None:
        self.items.append(msg)


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "instrument.py"
    path.write_text("from controller.script import *\n" + body)
    return path


def test_priority_order_under_a_burst(tmp_path: Path) -> None:
    rt = ControllerScript(Collect(), tmp_path)
    try:
        gate = threading.Event()
        order: list[str] = []
        rt.submit(CONTROL, gate.wait, (10,), "gate")
        wait_for(lambda: rt.busy_name == "gate", what="gate callback to start")
        burst = [(STATUS, "s1"), (TIMER, "t1"), (TASK, "k1"), (CONTROL, "c1"), (STATUS, "s2"),
                 (CONTROL, "c2"), (TIMER, "t2"), (TASK, "k2")]
        for prio, name in burst:
            rt.submit(prio, order.append, (name,), name)
        gate.set()
        wait_for(lambda: len(order) == len(burst), what="burst to run")
        assert order == ["c1", "c2", "k1", "k2", "t1", "t2", "s1", "s2"]
    finally:
        rt.stop()


def test_reload_discards_a_thousand_pending_callbacks(tmp_path: Path) -> None:
    script = _script(tmp_path, "define_parameter('n', 'N', 0, 0, 100000)\n")
    rt = ControllerScript(Collect(), tmp_path)
    try:
        from controller._host import install

        install(rt)
        rt.load(str(script), False)
        wait_for(lambda: rt.module is not None, what="script loaded")
        gate = threading.Event()
        rt.submit(CONTROL, gate.wait, (10,), "gate")
        wait_for(lambda: rt.busy_name == "gate", what="gate callback to start")
        for i in range(1000):
            rt.param_from_outside("n", i + 1)
        rt.load(str(script), True)
        gate.set()
        wait_for(lambda: rt.discarded >= 1000 and rt.generation == 2, what="reload to discard the queue")
        assert rt.discarded == 1000
        assert rt.get_parameter("n") == 0  # none of the discarded changes ran
        rt.param_from_outside("n", 7)  # the queue works after the reload
        wait_for(lambda: rt.get_parameter("n") == 7, what="a change after reload")
    finally:
        rt.stop()


def test_budget_overrun_is_stopped_and_reported(tmp_path: Path) -> None:
    out = Collect()
    rt = ControllerScript(out, tmp_path, budget_ms=200)
    try:
        def spin() -> None:
            while True:
                pass

        rt.submit(CONTROL, spin, (), "spin")
        ran: list[int] = []

        def watchdog() -> bool:
            rt.check_budget()  # the controller's main loop does this every tick
            return any(getattr(m, "kind", "") == "overrun" for m in out.items)

        wait_for(watchdog, 30, what="overrun report")
        rt.submit(CONTROL, ran.append, (1,), "after")
        wait_for(lambda: ran == [1], what="the queue to go on after the stopped callback")
        err = next(m for m in out.items if getattr(m, "kind", "") == "overrun")
        assert "spin" in err.message and "budget" in err.message
    finally:
        rt.stop()


def test_on_status_runs_periodically_at_status_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_controller_side, "STATUS_INTERVAL_MS", 50.0)  # every 50 ms, not every second: the same timer
    script = _script(tmp_path, "seen = []\ndef on_status():\n    seen.append(1)\n")
    rt = ControllerScript(Collect(), tmp_path)
    try:
        from controller._host import install

        install(rt)
        rt.load(str(script), False)
        wait_for(lambda: rt.module is not None and len(rt.module.seen) >= 2, what="on_status to run twice")
        assert "status on_status" in rt.ran
    finally:
        rt.stop()

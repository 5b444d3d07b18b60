"""The script API keeps the contract of HALion's threads and HISE's BackgroundTask (docs/script-api.md).

Each test is a deviation a review found: a controller callback that could
not ``await wait(ms)``, values that cannot be sent killing a process,
``run_sync`` in module code reaching the script before, old script code
running after a reload or a stop, an async ``run_async`` function escaping
the budget, ``run_async`` errors losing their type, a blocking abort that
returned before the task knew it had stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller._controller_side import ControllerScript
from controller._host import install
from controller.messages import RunSync, ScriptError, ScriptReady
from tests.conftest import wait_for
from tests.controller.test_callback_queue import Collect


def _script(tmp_path: Path, body: str, name: str = "instrument.py") -> str:
    path = tmp_path / name
    path.write_text("from controller.script import *\n" + body)
    return str(path)


def _loaded(tmp_path: Path, body: str, **kwargs: Any) -> tuple[ControllerScript, Collect]:
    """A controller runtime installed for the process, with ``body`` loaded (stop it in ``finally``)."""
    out = Collect()
    rt = ControllerScript(out, tmp_path, **kwargs)
    install(rt)
    rt.load(_script(tmp_path, body), False)
    wait_for(lambda: any(isinstance(m, ScriptReady) for m in out.items), what="the script to load")
    return rt, out


def _errors(out: Collect) -> list[str]:
    return [m.message for m in out.items if isinstance(m, ScriptError)]


def test_a_controller_callback_awaits_wait_and_others_run_meanwhile(tmp_path: Path) -> None:
    rt, out = _loaded(tmp_path, """
seen = []
async def on_go(v):
    seen.append("before")
    await wait(200)
    seen.append("after")
define_parameter("go", "go", False, on_change=on_go)
define_parameter("ping", "ping", 0, on_change=lambda v: seen.append("ping"))
""")
    try:
        rt.param_from_outside("go", True)
        wait_for(lambda: rt.module.seen == ["before"], what="on_go to suspend at its wait")  # type: ignore[union-attr]
        rt.param_from_outside("ping", 1)
        wait_for(lambda: rt.module.seen[-1:] == ["after"], what="on_go to resume")  # type: ignore[union-attr]
        assert rt.module.seen == ["before", "ping", "after"]  # type: ignore[union-attr]
        assert _errors(out) == []
    finally:
        rt.stop()

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

import pytest

from controller._controller_side import ControllerScript
from controller._host import install
from actors.messages import JobInfo
from controller.messages import RunAsyncResult, RunSync, ScriptError, ScriptReady
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
    """The script errors reported, less the processor's overruns (a loaded machine's clock: see tests.conftest.without_overruns)."""
    return [m.message for m in out.items if isinstance(m, ScriptError)
            and not (m.context == "Processor" and m.kind == "overrun")]


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


def test_a_value_that_cannot_be_sent_raises_at_the_call_and_render_converts_as_live(tmp_path: Path) -> None:
    """run_async/run_sync with an object() raised nothing in render and killed the process live (ProtocolError on
    send); a tuple or a set arrived unchanged in render but as a list live."""
    log = tmp_path / "log.txt"
    script = _script(tmp_path, f"""
def rec(*a):
    with open({str(log)!r}, "a") as f:
        f.write(" ".join(map(str, a)) + "\\n")
def echo(x):
    return x
def ret_set():
    return {{1, 2}}
def ret_object():
    return object()
def ps(x):
    rec("ps ran", repr(x))
async def on_init():
    for fn, arg in ((echo, object()), (echo, (1, 2)), (ret_set, None), (ret_object, None)):
        try:
            v = await (run_async(fn) if arg is None else run_async(fn, arg))
            rec("P", fn.__name__, "->", repr(v))
        except Exception as e:
            rec("P", fn.__name__, "raised", type(e).__name__, "object" in str(e) and "msgpack" in str(e))
def on_rs(v):
    try:
        run_sync(ps, object())
    except TypeError as e:
        rec("C run_sync raised TypeError", "object" in str(e))
    run_sync(ps, {{3}})
define_parameter("rs", "rs", False, on_change=on_rs)
""")
    from controller.offline import parse_set, render_script

    _, errors = render_script(script, out=tmp_path / "out.wav", seconds=0.5, sets=[parse_set("rs=true@0.1")])
    assert errors == []
    assert log.read_text().splitlines() == [
        "P echo raised TypeError True",
        "P echo -> [1, 2]",
        "P ret_set -> [1, 2]",
        "P ret_object raised TypeError True",
        "C run_sync raised TypeError True",
        "ps ran [3]",
    ]


MODULE_RUN_SYNC = """
VERSION = {version!r}
def ps(tag):
    with open({log!r}, "a") as f:
        f.write(f"ps of {{VERSION}} called by {{tag}}\\n")
if get_context() == "Controller":
    run_sync("ps", "name")
    run_sync(ps, "function")
"""


def test_run_sync_in_module_code_runs_the_loading_scripts_function(tmp_path: Path) -> None:
    """Render said "the script has no top-level function named 'ps'"; passing the function said it was not the
    script's; live, the call ran the function of the script loaded before."""
    log = tmp_path / "log.txt"
    script = _script(tmp_path, MODULE_RUN_SYNC.format(version="v1", log=str(log)))
    from controller.offline import render_script

    _, errors = render_script(script, out=tmp_path / "out.wav", seconds=0.2)
    assert errors == []
    assert log.read_text().splitlines() == ["ps of v1 called by name", "ps of v1 called by function"]


def test_run_sync_in_module_code_is_sent_after_its_scripts_ready(tmp_path: Path) -> None:
    """The processor loads a script when the daemon forwards the controller's ScriptReady: a call sent before it
    reached the script before."""
    log = str(tmp_path / "log.txt")
    rt, out = _loaded(tmp_path, MODULE_RUN_SYNC.format(version="v1", log=log))
    try:
        _script(tmp_path, MODULE_RUN_SYNC.format(version="v2", log=log))
        rt.load(str(tmp_path / "instrument.py"), True, number=2)
        wait_for(lambda: sum(isinstance(m, RunSync) for m in out.items) == 4, what="the reload's run_sync calls")
        kinds = [(type(m).__name__, getattr(m, "load", None)) for m in out.items if isinstance(m, (ScriptReady, RunSync))]
        assert kinds == [("ScriptReady", 0), ("RunSync", None), ("RunSync", None),
                         ("ScriptReady", 2), ("RunSync", None), ("RunSync", None)]
        assert _errors(out) == []
    finally:
        rt.stop()


class _Client:
    """The daemon client a script's background tasks use, as far as an abort needs it: the final snapshot."""

    def __init__(self) -> None:
        self.cancelled: list[tuple[int, bool]] = []

    def cancel(self, job_id: int, block: bool = False) -> JobInfo:
        self.cancelled.append((job_id, block))
        return JobInfo(id=job_id, fn="", name="t", state="cancelled")

    def close(self) -> None:
        pass


OLD_AND_NEW = """
seen = []
VERSION = {version!r}
async def slow():
    await wait(300)
    seen.append("slow resumed")
    set_parameter("marker", "slow of " + VERSION)
    return 5
async def on_late(v):
    await wait(600)
    seen.append("late done")
task = create_background_task("t")
task.set_finish_callback(lambda done, cancelled: seen.append(("finish", done, cancelled)))
define_parameter("marker", "marker", "")
define_parameter("late", "late", False, on_change=on_late)
"""


def test_nothing_of_the_old_script_runs_after_a_reload(tmp_path: Path) -> None:
    """An async run_async function (started with loop.create_task, never tracked) resumed after the reload and set
    a parameter of the new script; a background task's finish callback of the old module ran after the new one
    loaded."""
    rt, out = _loaded(tmp_path, OLD_AND_NEW.format(version="v1"), client_factory=_Client)
    try:
        old = rt.module
        assert old is not None
        rt.run_async_call(1, "slow", [])
        wait_for(lambda: rt.tasks and rt.busy_since == 0.0, what="slow to suspend at its wait")
        old.task.job_id = 7  # a job that started (its submission needs a daemon)
        _script(tmp_path, OLD_AND_NEW.format(version="v2"))
        rt.load(str(tmp_path / "instrument.py"), True, number=2)
        wait_for(lambda: rt.module is not old and rt.generation == 2, what="the reload")
        old.task._update(JobInfo(id=7, fn="", name="t", state="cancelled"))  # the watch reports the aborted job
        rt.param_from_outside("late", True)  # resumes 600 ms on, after the old slow would have (300 ms)
        wait_for(lambda: rt.module.seen == ["late done"], what="the new script's callback")  # type: ignore[union-attr]
        rt.barrier()
        assert old.seen == []
        assert rt.get_parameter("marker") == ""
        assert _errors(out) == []
    finally:
        rt.stop()


def test_a_stopped_script_runs_no_run_sync_call_nor_processor_on_change(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """After "script stopped: ... audio continues" the processor still ran run_sync functions and processor=True
    on_change callbacks of the stopped script."""
    import functools

    from controller import offline
    from controller._processor_side import ProcessorScript

    monkeypatch.setattr(offline, "ProcessorScript", functools.partial(ProcessorScript, hard_limit_ms=50.0))
    log = tmp_path / "log.txt"
    script = _script(tmp_path, f"""
import time
def rec(*a):
    with open({str(log)!r}, "a") as f:
        f.write(" ".join(map(str, a)) + "\\n")
async def on_init():
    end = time.monotonic() + 0.1
    while time.monotonic() < end:
        pass
    await wait(1)  # the step ends here, past the hard limit
def ps(v):
    rec("run_sync ran", v)
define_parameter("rs", "rs", 0, on_change=lambda v: run_sync(ps, v))
define_parameter("pp", "pp", 0, on_change=lambda v: rec("on_change ran", v), processor=True)
""")
    _, errors = offline.render_script(script, out=tmp_path / "out.wav", seconds=0.5,
                                      sets=[offline.parse_set("rs=1@0.1"), offline.parse_set("pp=2@0.2")])
    assert not log.exists(), (log.read_text(), errors)
    assert any("script stopped: on_init ran" in e for e in errors)
    assert any("run_sync(ps) did not run: the script is stopped" in e for e in errors)
    assert any("on_change(pp) did not run: the script is stopped" in e for e in errors)


def test_an_async_run_async_function_is_bounded_by_the_budget(tmp_path: Path) -> None:
    """Started outside the callback driver, each step of an async run_async function ran unbounded."""
    rt, out = _loaded(tmp_path, """
async def heavy():
    await wait(10)
    while True:
        pass
""", budget_ms=200)
    try:
        rt.run_async_call(1, "heavy", [])

        def answered() -> Any:
            rt.check_budget()  # the controller's main loop does this every tick
            return next((m for m in out.items if isinstance(m, RunAsyncResult)), None)

        answer = wait_for(answered, what="heavy to be stopped at the budget")
        assert not answer.ok and answer.error.startswith("ScriptTimeout")
        assert any("run_async(heavy) ran past the controller's budget" in e for e in _errors(out))
    finally:
        rt.stop()


def test_a_run_async_error_keeps_its_type_and_one_not_awaited_is_reported(tmp_path: Path) -> None:
    """An exception in fn arrived as EnsembleError('run_async function failed in the controller: ValueError: boom');
    the error of a run_async never awaited was lost silently."""
    log = tmp_path / "log.txt"
    script = _script(tmp_path, f"""
class Custom(Exception):
    pass
def rec(*a):
    with open({str(log)!r}, "a") as f:
        f.write(" ".join(map(str, a)) + "\\n")
def boom(n):
    raise ValueError(f"boom {{n}}")
def lost():
    raise KeyError("lost")
def custom():
    raise Custom("mine")
async def on_init():
    for fn in (boom, custom):
        try:
            await (run_async(fn, 1) if fn is boom else run_async(fn))
        except Exception as e:
            rec(type(e).__name__, str(e))
    run_async(lost)
""")
    from controller.offline import render_script

    _, errors = render_script(script, out=tmp_path / "out.wav", seconds=0.2)
    assert log.read_text().splitlines() == [
        "ValueError boom 1",
        "EnsembleError run_async function failed in the controller: Custom: mine",
    ]
    assert errors == ["Processor error: run_async(lost) was not awaited, and its function raised in the controller: "
                      "KeyError: lost"]


class _Jobs(_Client):
    """A client that also starts jobs (numbered from 8) and watches them (the watch never reports)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids = iter(range(8, 100))

    def _submit_task(self, *_: Any) -> int:
        return next(self.ids)

    def watch(self, job_id: int, fn: Any) -> None:
        pass


def test_a_blocking_abort_returns_with_the_task_stopped(tmp_path: Path) -> None:
    """send_abort_signal(True) returned while task.running was still True (the job's final update had not come),
    so starting it again at once raised "already running"."""
    rt, out = _loaded(tmp_path, """
seen = []
task = create_background_task("t")
task.set_finish_callback(lambda done, cancelled: seen.append(("finish", done, cancelled)))
def polite(t):
    pass
def on_restart(v):
    task.send_abort_signal(True)
    seen.append(("running after the abort", task.running))
    task.call_on_background_thread(polite)
    seen.append(("started", task.job_id))
define_parameter("restart", "restart", False, on_change=on_restart)
""", client_factory=_Jobs)
    try:
        mod = rt.module
        assert mod is not None
        mod.task.job_id = 7  # a job that started (its submission needs a daemon)
        rt.param_from_outside("restart", True)
        wait_for(lambda: len(mod.seen) == 4, what="the restart and its finish callbacks")
        assert mod.seen == [("running after the abort", False), ("started", 8), ("finish", True, True),
                            ("finish", False, False)]
        mod.task._update(JobInfo(id=7, fn="", name="t", state="cancelled"))  # job 7's watch, late
        assert mod.task.running  # job 8 runs on
        rt.barrier()
        assert len(mod.seen) == 4 and _errors(out) == []
    finally:
        rt.stop()


LIVE = """
def echo(x):
    return x
def ps(x):
    pass
async def on_note(event):
    try:
        await run_async(echo, object())
    except TypeError:
        set_parameter("proc_err", "TypeError")
def on_rs(v):
    try:
        run_sync(ps, object())
    except TypeError:
        set_parameter("ctl_err", "TypeError")
async def on_aw(v):
    await wait(50)
    set_parameter("after", True)
define_parameter("proc_err", "p", "")
define_parameter("ctl_err", "c", "")
define_parameter("after", "after", False)
define_parameter("rs", "rs", 0, on_change=on_rs)
define_parameter("aw", "aw", 0, on_change=on_aw)
"""


def test_live_unsendable_values_raise_in_the_script_and_no_process_restarts(tmp_path: Path, daemon: Any) -> None:
    """Live, run_async(echo, object()) restarted the processor and run_sync(ps, object()) the controller; an async
    on_change never resumed after its wait."""
    script = Path(_script(tmp_path, LIVE, "live.py"))
    c = daemon.client()
    c.load_script(str(script), wait=60)
    wait_for(lambda: daemon.actor("processor").stats.get("script") == str(script.resolve()), what="the processor load")
    before = {name: (daemon.actor(name).pid, daemon.actor(name).restarts) for name in ("processor", "controller")}
    c.note_on(60)
    c.set_param("rs", 1)
    c.set_param("aw", 1)
    wait_for(lambda: c.get_param("proc_err") == "TypeError", what="run_async's TypeError in on_note")
    wait_for(lambda: c.get_param("ctl_err") == "TypeError", what="run_sync's TypeError in on_rs")
    wait_for(lambda: c.get_param("after") is True, what="on_aw to resume after its wait")
    assert {name: (daemon.actor(name).pid, daemon.actor(name).restarts) for name in before} == before

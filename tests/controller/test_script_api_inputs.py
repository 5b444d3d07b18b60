"""The script API refuses a bad argument at the call, naming the function, the argument and what it takes.

Each test is a deviation a probe found: an argument accepted that later
crashed the controller (a progress bar's task), failed the load elsewhere
(a parameter read in the processor's module code, run_sync or start_timer
in module code), reached the daemon as a bad frame (a parameter named 5),
fired every millisecond (a timer of 0 ms), flooded the log (a timer failing
on every tick), or came back later with no location (set_parameter).
Socket-less: a controller runtime with an outbox that collects, or an
offline render for both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controller import _controller_side
from controller._controller_side import CONTROL, ControllerScript
from controller._context import PROCESSOR, set_thread_context
from controller._host import bind_thread, install
from controller.messages import ScriptError, ScriptReady
from controller.offline import render_script
from tests.conftest import wait_for
from tests.controller.test_callback_queue import Collect


def _script(tmp_path: Path, body: str, name: str = "instrument.py") -> str:
    path = tmp_path / name
    path.write_text("from controller.script import *\n" + body)
    return str(path)


def _runtime(tmp_path: Path) -> tuple[ControllerScript, Collect]:
    out = Collect()
    rt = ControllerScript(out, tmp_path)
    install(rt)
    return rt, out


def _load(rt: ControllerScript, out: Collect, path: str, number: int = 1) -> Any:
    """Load ``path``; the ScriptReady or the load-failed ScriptError that answered it."""
    rt.load(path, False, number)
    return wait_for(lambda: next((m for m in out.items if (isinstance(m, ScriptReady) and m.load == number)
                                  or (isinstance(m, ScriptError) and m.kind == "load-failed" and m.load == number)),
                                 None), what="the load's answer")


def _load_failure(tmp_path: Path, body: str) -> ScriptError:
    rt, out = _runtime(tmp_path)
    try:
        answer = _load(rt, out, _script(tmp_path, body))
    finally:
        rt.stop()
    assert isinstance(answer, ScriptError), f"the load was accepted: {answer}"
    return answer


def _errors(out: Collect) -> list[ScriptError]:
    return [m for m in out.items if isinstance(m, ScriptError)]


PROBE = """
RESULTS = {{}}
def _try(tag, fn):
    try:
        RESULTS[tag] = ["ok", repr(fn())]
    except Exception as exc:
        RESULTS[tag] = [type(exc).__name__, str(exc)]
def needs_one(x):
    pass
{extra}
CALLS = {{
{calls}
}}
def on_go(v):
    for tag, fn in CALLS.items():
        _try(tag, fn)
define_parameter("go", "", False, on_change=on_go)
define_parameter("x", "", 1.0, 0.0, 2.0)
define_parameter("i", "", 1, 0, 5)
"""


def _probe_controller(tmp_path: Path, calls: dict[str, str], extra: str = "") -> tuple[dict[str, list[str]], Collect]:
    """Run each call in a controller callback; what each returned or raised (type, message)."""
    body = PROBE.format(extra=extra, calls="\n".join(f"    {tag!r}: lambda: {call}," for tag, call in calls.items()))
    rt, out = _runtime(tmp_path)
    try:
        assert isinstance(_load(rt, out, _script(tmp_path, body)), ScriptReady), _errors(out)
        rt.param_from_outside("go", True)
        results = wait_for(lambda: len(rt.module.RESULTS) == len(calls) and rt.module.RESULTS,  # type: ignore[union-attr]
                           what="the calls to run")
        rt.barrier()
        return dict(results), out
    finally:
        rt.stop()


# ------------------------------------------------------------------ 1. add_progress with a task that is none
def test_add_progress_refuses_a_task_that_is_not_a_background_task(tmp_path: Path) -> None:
    """The controller's send loop raised AttributeError ('str' object has no attribute 'running') and it exited."""
    error = _load_failure(tmp_path, 'add_progress("pb", "bar", task="notatask")\n')
    assert "add_progress('pb'): task must be a background task" in error.message
    assert error.location.endswith("instrument.py:2 in <module>")


# ------------------------------------------------------------------ 2. module code reads what it defined
def test_module_code_reads_a_parameter_it_defined_on_both_sides(tmp_path: Path) -> None:
    """The processor's copy raised KeyError "no parameter named 'g'", and the script never loaded."""
    log = tmp_path / "start.txt"
    script = _script(tmp_path, f"""
define_parameter("g", "Gain", 0.5, 0.0, 1.0)
START = get_parameter("g")
set_parameter("g", 0.25)  # checked in every copy; set by the controller's
with open({str(log)!r}, "a") as f:
    f.write(f"{{get_context()}} {{START}}\\n")
""")
    _, errors = render_script(script, out=tmp_path / "out.wav", seconds=0.1)
    assert errors == []
    assert sorted(log.read_text().split("\n")[:-1]) == ["Controller 0.5", "Processor 0.5"]


def test_the_processors_module_code_reads_its_definitions_while_the_audio_thread_runs_a_callback(
        tmp_path: Path) -> None:
    """Live, the audio thread may be inside a callback of the script before while the main thread loads the next."""
    from controller._processor_side import ProcessorScript, _Task

    proc = ProcessorScript(SimpleNamespace(blocksize=256, samplerate=48000), Collect())
    proc.current, proc.thread_id = _Task(None, 0, -1, 0, "on_note"), -1  # another thread's callback in progress
    runtime_before, context_before = bind_thread(proc), set_thread_context(PROCESSOR)
    try:
        proc.load(_script(tmp_path, 'define_parameter("g", "", 0.5, 0.0, 1.0)\nSTART = get_parameter("g")\n'))
    finally:
        bind_thread(runtime_before)
        set_thread_context(context_before)
    assert proc.module.START == 0.5  # type: ignore[union-attr]


def test_module_code_reads_the_default_on_a_reload_too(tmp_path: Path) -> None:
    """The controller's copy read the live value on a reload (the processor's the default): the copies differed."""
    body = 'define_parameter("g", "Gain", 0.5, 0.0, 1.0)\nSTART = get_parameter("g")\n'
    rt, out = _runtime(tmp_path)
    try:
        path = _script(tmp_path, body)
        assert isinstance(_load(rt, out, path), ScriptReady)
        rt.param_from_outside("g", 0.8)
        wait_for(lambda: rt.get_parameter("g") == 0.8, what="the value to be set")
        assert isinstance(_load(rt, out, path, 2), ScriptReady)
        assert rt.module.START == 0.5  # type: ignore[union-attr]
        assert rt.get_parameter("g") == 0.8  # restored after the module code
    finally:
        rt.stop()


# ------------------------------------------------------------------ 3. define_parameter's arguments
@pytest.mark.parametrize(("call", "said"), [
    ("define_parameter(name=5, default=1.0)", "define_parameter: name must be a str of 1..64 characters, got 5 (int)"),
    ('define_parameter(name="", default=1.0)', "define_parameter: name must be a str of 1..64 characters"),
    ('define_parameter(name="n" * 100000, default=1.0)', "define_parameter: name must be a str of 1..64 characters"),
    ('define_parameter("ln", long_name=7, default=1.0)', "define_parameter('ln'): long_name must be a str"),
    ('define_parameter("nc", default=1.0, kind="choice", choices=[1.0, float("nan")])',
     "define_parameter('nc'): choices must not hold NaN"),
    ('define_parameter("dc", default="a", kind="choice", choices=["a", {"x": 1}])',
     "define_parameter('dc'): each of choices must be a bool, int, float or str"),
    ('define_parameter("ch", default="a", choices="abc")', "define_parameter('ch'): choices must be a list"),
    ('define_parameter("ncb", default=1.0, on_change=5)',
     "define_parameter('ncb'): on_change must be a function taking the new value, or None"),
    ('define_parameter("noarg", default=1.0, on_change=lambda: None)',
     "define_parameter('noarg'): on_change: <lambda>() cannot be called with 1 argument"),
    ('define_parameter("nanmin", default=1.0, min=float("nan"))', "min nan is not a number"),
])
def test_define_parameter_refuses_a_bad_argument_at_the_call(tmp_path: Path, call: str, said: str) -> None:
    """A parameter named 5 reached the daemon as a bad frame, and the old script's parameters stayed."""
    error = _load_failure(tmp_path, f'define_parameter("marker", "", 1.0)\n{call}\n')
    assert said in error.message
    assert len(error.message) < 400  # a name of 100,000 characters is not repeated
    assert error.location.endswith("instrument.py:3 in <module>")


# ------------------------------------------------------------------ 4. start_timer
@pytest.mark.parametrize(("call", "error", "said"), [
    ("start_timer(0, tick)", "ValueError", "start_timer: interval_ms must be a number of milliseconds 10..8.64e+07, "
                                           "got 0 (int)"),
    ('start_timer(float("nan"), tick)', "ValueError", "got nan (float)"),
    ("start_timer(-5, tick)", "ValueError", "got -5 (int)"),
    ('start_timer(float("inf"), tick)', "ValueError", "got inf (float)"),
    ("start_timer(True, tick)", "ValueError", "got True (bool)"),
    ("start_timer(100, 42)", "TypeError", "start_timer: fn must be a function taking no argument, got 42 (int)"),
    ("start_timer(100, needs_one)", "TypeError", "start_timer: fn: needs_one(x) cannot be called with 0 arguments"),
])
def test_start_timer_refuses_a_bad_interval_or_function(tmp_path: Path, call: str, error: str, said: str) -> None:
    """A 0 ms timer fired every ~1.3 ms; NaN, negative intervals and a non-callable were accepted."""
    results, _ = _probe_controller(tmp_path, {"t": call}, extra="def tick():\n    pass\n")
    assert results["t"][0] == error and said in results["t"][1], results


def test_a_timer_failing_on_every_tick_is_stopped_and_says_so_once(tmp_path: Path, monkeypatch: Any) -> None:
    """A callback raising on every tick wrote ~1,500 error lines a second, with an empty location."""
    body = """
ticks = []
def boom():
    raise RuntimeError("tick failed")
def healthy():
    ticks.append(1)
start_timer(10, boom)
start_timer(10, healthy)
"""
    rt, out = _runtime(tmp_path)
    try:
        assert isinstance(_load(rt, out, _script(tmp_path, body)), ScriptReady)
        stopped = wait_for(lambda: [e for e in _errors(out) if "the timer is stopped" in e.message],
                           what="the failing timer to stop")
        seen = len(rt.module.ticks)  # type: ignore[union-attr]
        wait_for(lambda: len(rt.module.ticks) >= seen + 10, what="ten more ticks of the healthy timer")  # type: ignore[union-attr]
        rt.barrier()
        failures = [e for e in _errors(out) if "RuntimeError in timer boom: tick failed" in e.message]
        assert len(failures) == _controller_side.TIMER_FAILURES
        assert all(e.location.endswith("instrument.py:5 in boom") for e in failures), failures
        assert len([e for e in _errors(out) if "the timer is stopped" in e.message]) == 1
        assert stopped[0].message.startswith("timer boom raised 5 times in a row: the timer is stopped")
        assert stopped[0].location.endswith("instrument.py:4 in boom")
    finally:
        rt.stop()


# ------------------------------------------------------------------ 5. set_parameter and locations
def test_set_parameter_refuses_a_bad_value_at_the_call_in_the_controller(tmp_path: Path) -> None:
    """Each returned without error; the error came later as "ValueError in param x ... at " (no location)."""
    results, out = _probe_controller(tmp_path, {
        "nan": 'set_parameter("x", float("nan"))',
        "range": 'set_parameter("x", 99.0)',
        "type": 'set_parameter("x", "abc")',
        "frac": 'set_parameter("i", 2.5)',
        "unknown": 'set_parameter("nosuch", 1)',
        "good": 'set_parameter("x", 1.5)',
    })
    assert results["nan"] == ["ValueError", "parameter 'x': nan is not a valid float: a parameter value must be a "
                                            "finite number"]
    assert results["range"] == ["ValueError", "parameter 'x': 99.0 is outside 0.0..2.0"]
    assert results["type"][0] == "ValueError" and "'abc' is not a valid float" in results["type"][1]
    assert results["frac"][0] == "ValueError" and "an int parameter takes a whole number" in results["frac"][1]
    assert results["unknown"][0] == "KeyError" and "no parameter named 'nosuch'" in results["unknown"][1]
    assert results["good"] == ["ok", "None"]
    assert [e for e in _errors(out) if "param" in e.message] == []  # nothing comes later


def test_set_parameter_refuses_a_bad_value_at_the_call_in_the_processor(tmp_path: Path) -> None:
    log = tmp_path / "said.json"
    script = _script(tmp_path, f"""
import json
import subprocess
import sys
define_parameter("x", "", 1.0, 0.0, 2.0)
def on_init():
    said = {{}}
    for tag, value in (("nan", float("nan")), ("range", 99.0), ("type", "abc"), ("inf", float("inf"))):
        try:
            set_parameter("x", value)
            said[tag] = "no error"
        except ValueError as exc:
            said[tag] = str(exc)
    try:
        set_parameter("nosuch", 1)
    except KeyError as exc:
        said["unknown"] = str(exc)
    with open({str(log)!r}, "w") as f:
        json.dump(said, f)
""")
    _, errors = render_script(script, out=tmp_path / "out.wav", seconds=0.1)
    said = json.loads(log.read_text())
    assert "a parameter value must be a finite number" in said["nan"]
    assert "is outside 0.0..2.0" in said["range"] and "is not a valid float" in said["type"]
    assert "a parameter value must be a finite number" in said["inf"]
    assert "no parameter named 'nosuch'" in said["unknown"]
    assert errors == []  # nothing reported later, without a location


def test_a_value_refused_only_when_applied_names_the_line_that_set_it(tmp_path: Path) -> None:
    """The report of a set_parameter refused when applied (its parameter gone meanwhile) had an empty location."""
    rt, out = _runtime(tmp_path)
    try:
        assert isinstance(_load(rt, out, _script(tmp_path, 'define_parameter("x", "", 1.0, 0.0, 2.0)\n')),
                          ScriptReady)
        rt.submit(CONTROL, rt._apply_param, ("gone", 1.0, 0, "/s/instrument.py:9 in on_go"), "param gone")
        error = wait_for(lambda: next((e for e in _errors(out) if "'gone'" in e.message), None),
                         what="the report")
        assert error.message == "KeyError in set_parameter('gone'): \"no parameter named 'gone'\""
        assert error.location == "/s/instrument.py:9 in on_go"
    finally:
        rt.stop()


def test_a_button_or_run_sync_that_cannot_take_its_arguments_is_refused_at_the_call(tmp_path: Path) -> None:
    """A button whose on_click needs an argument, and run_sync(fn) short of arguments, failed later, no location."""
    results, out = _probe_controller(tmp_path, {
        "button": 'add_button("arg", "Arg", needs_one)',
        "run_sync": "run_sync(needs_one)",
        "run_sync by name": 'run_sync("needs_one", 1, 2)',
        "run_sync ok": "run_sync(needs_one, 1)",
    })
    assert results["button"][0] == "ValueError"
    assert results["button"][1].startswith("add_button('arg'): on_click: needs_one(x) cannot be called with 0 arguments")
    assert results["run_sync"][0] == "TypeError"
    assert results["run_sync"][1].startswith("run_sync(needs_one): needs_one(x) cannot be called with 0 arguments")
    assert results["run_sync by name"][0] == "TypeError" and "with 2 arguments" in results["run_sync by name"][1]
    assert results["run_sync ok"] == ["ok", "None"]


def test_a_processor_callback_that_fails_before_its_first_line_is_reported_where_it_is_defined(
        tmp_path: Path) -> None:
    """A run_sync function called with arguments it cannot take (the call came by name) had an empty location."""
    from controller._processor_side import ProcessorScript

    outbox = Collect()
    proc = ProcessorScript(SimpleNamespace(blocksize=256, samplerate=48000), outbox)
    path = _script(tmp_path, "def needs_one(x):\n    pass\n")
    space: dict[str, Any] = {}
    exec(compile(Path(path).read_text(), path, "exec"), space)
    proc._start(space["needs_one"], (), 0, -1, 0, "run_sync(needs_one)")
    [error] = outbox.items
    assert error.location == f"{path}:2 in needs_one"


# ------------------------------------------------------------------ 6. bridges in module code
def test_run_sync_and_start_timer_in_module_code_load_on_both_sides(tmp_path: Path) -> None:
    """The processor's copy of the module raised WrongContextError advising `await run_async(fn)`: no load."""
    log = tmp_path / "log.txt"
    script = _script(tmp_path, f"""
def f(tag="tick"):
    with open({str(log)!r}, "a") as out:
        out.write(f"{{tag}} in {{get_context()}}\\n")
run_sync(f, "run_sync")
start_timer(100, f)
""")
    _, errors = render_script(script, out=tmp_path / "out.wav", seconds=0.1)
    assert errors == []
    assert log.read_text().splitlines()[0] == "run_sync in Processor"  # sent once, by the controller's copy


def test_a_bad_run_sync_in_module_code_is_refused_in_the_processors_copy_too(tmp_path: Path) -> None:
    from controller import _context
    from controller._context import PROCESSOR, set_thread_context
    from controller.script import run_sync, start_timer

    before = set_thread_context(PROCESSOR)
    try:
        with _context.loading_module():
            run_sync(len)  # the processor's copy: nothing is sent
            start_timer(100, lambda: None)  # nor is a timer started
            with pytest.raises(TypeError, match="run_sync: fn must be a top-level function of the script"):
                run_sync(42)
            with pytest.raises(ValueError, match="start_timer: interval_ms"):
                start_timer(0, lambda: None)
    finally:
        set_thread_context(before)


def test_a_workers_copy_of_the_module_code_loads_it_too(tmp_path: Path) -> None:
    """A background task's worker runs the module code as well: get_parameter, set_parameter, run_sync and
    start_timer there raised WrongContextError ("no script context"), and the task could not load the script."""
    script = _script(tmp_path, """
define_parameter("g", "", 0.5, 0.0, 1.0)
START = get_parameter("g")
set_parameter("g", 0.25)
def f():
    pass
run_sync(f)
start_timer(100, f)
""")
    code = f"from controller._tasks import load_script; print(load_script({script!r}).START)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "0.5", done.stderr


# ------------------------------------------------------------------ 7. messages
def test_run_sync_of_no_function_says_it_is_not_a_function(tmp_path: Path) -> None:
    """It said "42 is a lambda or a closure"."""
    results, _ = _probe_controller(tmp_path, {"int": "run_sync(42)"})
    assert results["int"][0] == "TypeError"
    assert results["int"][1] == ("run_sync: fn must be a top-level function of the script (or its name as a str), "
                                 "got 42 (int), which is not a function")
    assert "lambda" not in results["int"][1]


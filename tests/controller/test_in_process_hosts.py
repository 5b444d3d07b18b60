"""Script runtimes hosted inside one Python program, one after another: each starts clean.

An offline render runs both sides of a script in the calling process, and
tests (or a library user) run a controller runtime in-process.  A render
left its runtimes installed for the controller and processor contexts and the
calling thread named context Processor, after it finished or raised (and,
when the script did not load, its controller's script thread running): the
next runtime's module code defined its parameters in the stale controller
("parameter 'n' is defined twice" on a reload of one script).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from actors import EnsembleError
from controller import _host
from controller._context import CONTROLLER, get_context
from controller._controller_side import ControllerScript
from controller._host import install
from controller.offline import render_script
from tests.conftest import wait_for
from tests.controller.test_callback_queue import Collect

COUNT = "from controller.script import define_parameter\ndefine_parameter('n', 'N', {default}, 0, {top})\n"
FAILS_IN_THE_CONTROLLER = COUNT.format(default=1, top=10) + """
from controller.script import get_context
if get_context() == "Controller":
    raise RuntimeError("no licence in the controller")
"""


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _process_state() -> tuple[object, ...]:
    """What of the script runtimes a use in-process could leave behind: installed runtimes (for the process, for
    each context), the calling thread's runtime and context, the threads a controller runtime starts.

    Compared before and after, not with "none": another test module may have hosted a processor here before
    (tests/controller/test_note_samples.py installs one for the process, as the processor process does)."""
    threads = sorted(t.ident or 0 for t in threading.enumerate() if t.name in ("script", "state-writer"))
    bound = getattr(getattr(_host, "_thread", None), "runtime", None)  # controller._host.bind_thread
    return dict(_host._by_context), _host._current["runtime"], bound, get_context(), threads


def _assert_as_before(before: tuple[object, ...]) -> None:
    """Nothing of a render is left: no runtime installed or bound, the thread's context as it was, no thread of its."""
    wait_for(lambda: _process_state() == before, what="the process to be as before the render")


def _load_twice_in_process(tmp_path: Path) -> None:
    """A controller runtime installed for the process loads, then reloads, a script declaring ``n`` (as
    tests/controller/test_callback_queue.py does): its module code must reach this runtime both times."""
    script = _script(tmp_path, "in_process.py", COUNT.format(default=0, top=100000))
    out = Collect()
    rt = ControllerScript(out, tmp_path)
    try:
        install(rt)
        rt.load(script, False)
        wait_for(lambda: rt.generation == 1 and rt.module is not None, what="the in-process load")
        rt.load(script, True)
        wait_for(lambda: rt.generation == 2 and rt.module is not None, what="the in-process reload")
        rt.barrier()
        assert [m for m in out.items if type(m).__name__ == "ScriptError"] == []
        assert rt.get_parameter("n") == 0
    finally:
        rt.stop()
    assert _host._current["runtime"] is not rt  # a stopped runtime is installed nowhere


def test_two_renders_of_scripts_declaring_one_parameter_then_an_in_process_load(tmp_path: Path) -> None:
    before = _process_state()
    a = _script(tmp_path, "a.py", COUNT.format(default=1, top=10))
    b = _script(tmp_path, "b.py", COUNT.format(default=50, top=100))
    for name, script in (("a", a), ("b", b)):
        out, errors = render_script(script, out=tmp_path / f"{name}.wav", seconds=0.1, sets=[("n", 7, 0.0)])
        assert errors == [] and out.is_file()
        _assert_as_before(before)
    _load_twice_in_process(tmp_path)


def test_a_render_whose_script_fails_to_load_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _process_state()
    failing = _script(tmp_path, "fails.py", FAILS_IN_THE_CONTROLLER)
    with pytest.raises(EnsembleError, match="did not load: .*no licence in the controller"):
        render_script(failing, out=tmp_path / "never.wav", seconds=0.1)
    _assert_as_before(before)
    out, errors = render_script(_script(tmp_path, "b.py", COUNT.format(default=50, top=100)),
                                out=tmp_path / "b.wav", seconds=0.1)
    assert errors == [] and out.is_file()
    _assert_as_before(before)
    _load_twice_in_process(tmp_path)


def test_a_render_that_raises_while_it_renders_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _process_state()
    script = _script(tmp_path, "a.py", COUNT.format(default=1, top=10))
    with pytest.raises(Exception) as raised:  # soundfile's error: the directory does not exist
        render_script(script, out=tmp_path / "no such directory" / "a.wav", seconds=0.1)
    assert not isinstance(raised.value, EnsembleError), raised.value
    _assert_as_before(before)
    _load_twice_in_process(tmp_path)


def test_a_stopped_controller_runtime_installed_for_its_context_is_forgotten(tmp_path: Path) -> None:
    """As tests/controller/test_ui_elements.py installs one, before a test that installs one for the process."""
    rt = ControllerScript(Collect(), tmp_path)
    try:
        install(rt, CONTROLLER)
        rt.load(_script(tmp_path, "a.py", COUNT.format(default=1, top=10)), False)
        wait_for(lambda: rt.module is not None, what="the load")
    finally:
        rt.stop()
    assert rt not in _host._by_context.values()
    _load_twice_in_process(tmp_path)

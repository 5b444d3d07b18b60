"""Which job functions get the task handle first: those whose first parameter is annotated with ensemble's ``Task``.

A parameter's name decides nothing (``def handle(task)`` is ordinary pool code:
``task`` is the caller's value, as under ``ProcessPoolExecutor``), nor does a
class of the user's that is also called ``Task``.  The same from a private
``Executor``, a ``Client`` and ``ensemble submit``.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import sys
import tempfile
import textwrap
import types
from pathlib import Path
from typing import Any, Iterator

import pytest

from actors import Task
from actors._jobfn import takes_task
from actors.client import Client, Executor
from tests.conftest import ROOT, Daemon, running_daemon

# The user's ordinary code: no ensemble in sight, a parameter that happens to be named task.
_PLAIN = '''
def handle(task):
    return task["id"] * 10


def handle_scaled(task, scale=1):
    return task["id"] * scale


class Runner:
    def run(self, task):
        return task["id"] + 100
'''
# Jobs written for ensemble: the handle, asked for by ensemble's own class (a real annotation).
_REAL = '''
import actors
from actors import Task, current_task


def with_handle(task: Task, x):
    return [type(task).__module__, task is current_task(), x]


def with_dotted(handle: actors.Task, x):
    return [type(handle).__module__, handle is current_task(), x]
'''
# The same as strings (from __future__ import annotations), and a class of the user's named Task.
_STRING = '''
from __future__ import annotations

import actors
from actors import Task as EnsembleTask, current_task


def with_handle(job: EnsembleTask, x: int) -> list:  # (the class by another name: the string is "EnsembleTask")
    return [type(job).__module__, job is current_task(), x]


def with_dotted(handle: actors.Task, x: int) -> list:
    return [type(handle).__module__, handle is current_task(), x]
'''
_OWN = '''
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Task:
    id: int


def process(t: Task) -> int:
    return (t.id if isinstance(t, Task) else t["id"]) * 2


def old_countdown(task, seconds=0.0):
    return "aborted" if task.should_abort() else "done"


def old_pid(task):
    return 1
'''
_MODULES = {"tp_plain": _PLAIN, "tp_real": _REAL, "tp_string": _STRING, "tp_own": _OWN}
_HANDLE = ["actors._task", True]  # what a job that got the handle says of it: its class's module, current_task()


@pytest.fixture(scope="module")
def mods() -> Iterator[dict[str, types.ModuleType]]:
    """The job modules above, importable here (Executor, Client) and by the CLI (its PYTHONPATH)."""
    base = Path(tempfile.mkdtemp(prefix="ens-tp"))
    for name, text in _MODULES.items():
        (base / f"{name}.py").write_text(textwrap.dedent(text))
    sys.path.insert(0, str(base))
    try:
        yield {name: importlib.import_module(name) for name in _MODULES}
    finally:
        sys.path.remove(str(base))
        for name in _MODULES:
            sys.modules.pop(name, None)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tp_daemon(mods: dict[str, types.ModuleType]) -> Iterator[Daemon]:
    """A running daemon (1 worker); its CLI imports the modules above."""
    base = Path(tempfile.mkdtemp(prefix="ens-tq"))
    path = os.path.dirname(str(mods["tp_plain"].__file__))
    yield from running_daemon(base, workers=1, jobs_only=True, extra_env={"PYTHONPATH": f"{ROOT}{os.pathsep}{path}"})


def _submitted(d: Daemon, *commands: list[str]) -> list[Any]:
    """What each ``ensemble submit ... --wait`` printed as its result (JSON)."""
    got = []
    for proc in d.cli_each(*(["submit", *cmd, "--wait"] for cmd in commands)):
        assert proc.returncode == 0, proc.stderr
        got.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return got


def test_a_parameter_named_task_is_the_callers_argument_from_a_client_and_the_cli(
        tp_daemon: Daemon, mods: dict[str, types.ModuleType]) -> None:
    plain = mods["tp_plain"]
    with Client(config=tp_daemon.config) as c:
        assert c.submit(plain.handle, {"id": 4}).result(30) == 40  # was: takes 0 positional arguments after ...
        assert c.submit("tp_plain:handle_scaled", {"id": 4}, 3).result(30) == 12
        assert c.submit(plain.handle_scaled, kwargs={"task": {"id": 4}}).result(30) == 4  # was: multiple values
        assert c.submit(plain.Runner().run, {"id": 1}).result(30) == 101  # a bound method
    assert _submitted(tp_daemon, ["tp_plain:handle", '{"id": 5}'],
                      ["tp_plain:handle_scaled", "--kw", 'task={"id": 2}', "--kw", "scale=7"]) == [50, 14]


def test_a_first_parameter_annotated_with_ensembles_task_gets_the_handle_from_a_client_and_the_cli(
        tp_daemon: Daemon, mods: dict[str, types.ModuleType]) -> None:
    with Client(config=tp_daemon.config) as c:
        for name in ("tp_real", "tp_string"):
            assert c.submit(mods[name].with_handle, 3).result(30) == [*_HANDLE, 3]
            assert c.submit(f"{name}:with_dotted", 4).result(30) == [*_HANDLE, 4]
    assert _submitted(tp_daemon, ["tp_real:with_handle", "5"], ["tp_string:with_handle", "6"]) == [
        [*_HANDLE, 5], [*_HANDLE, 6]]


def test_a_users_own_class_named_task_is_no_handle(tp_daemon: Daemon, mods: dict[str, types.ModuleType]) -> None:
    own = mods["tp_own"]
    with Client(config=tp_daemon.config) as c:
        assert c.submit(own.process, own.Task(3)).result(30) == 6
    assert _submitted(tp_daemon, ["tp_own:process", '{"id": 4}']) == [8]


def test_a_private_executor_follows_the_same_rule(mods: dict[str, types.ModuleType], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))  # no daemon there: a private one
    plain, own = mods["tp_plain"], mods["tp_own"]
    with Executor(2) as ex:
        assert ex._private is not None
        assert ex.submit(plain.handle, {"id": 4}).result(30) == 40
        assert list(ex.map(plain.handle, [{"id": 1}, {"id": 2}], timeout=30)) == [10, 20]
        assert list(ex.map(plain.handle, [{"id": 3}] * 4, chunksize=2, timeout=30)) == [30] * 4
        assert ex.submit(plain.handle_scaled, task={"id": 4}).result(30) == 4
        assert ex.submit(plain.Runner().run, {"id": 2}).result(30) == 102
        assert ex.submit(own.process, own.Task(5)).result(30) == 10
        for name in ("tp_real", "tp_string"):
            assert ex.submit(mods[name].with_handle, 8).result(30) == [*_HANDLE, 8]
            assert list(ex.map(mods[name].with_dotted, [1, 2], timeout=30)) == [[*_HANDLE, 1], [*_HANDLE, 2]]


def test_a_job_written_for_the_old_rule_fails_saying_what_to_annotate(
        tp_daemon: Daemon, mods: dict[str, types.ModuleType]) -> None:
    """``def f(task, ...)`` unannotated once got the handle: now its first argument; the error says so."""
    own = mods["tp_own"]
    hint = "first parameter `task` has no annotation"
    with Client(config=tp_daemon.config) as c:
        with pytest.raises(AttributeError, match=f"no attribute 'should_abort'.*{hint}.*task: Task"):
            c.submit(own.old_countdown, 0.1).result(30)
        with pytest.raises(TypeError, match=f"missing 1 required positional argument: 'task'.*{hint}"):
            c.submit("tp_own:old_pid").result(30)
        with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given$"):  # not that mistake
            c.submit(own.old_pid, 1, 2).result(30)
        with pytest.raises(TypeError, match="not subscriptable$"):  # its own error, no hint
            c.submit(mods["tp_plain"].handle, 3).result(30)


_FORMS = """
def plain(task, x): pass
def real(t: Task, x): pass
def named(t: "Task", x): pass
def dotted(t: "ensemble.Task", x): pass
def optional(t: "Task | None", x): pass
def unknown(t: "Missing", x): pass
def later(x, t: Task): pass
def keyword_only(*, t: Task): pass
class Holder:
    def run(self, t: Task): pass
"""


@pytest.mark.parametrize("future", ["", "from __future__ import annotations\n"], ids=["objects", "strings"])
def test_the_rule_reads_annotations_in_the_functions_own_module(future: str) -> None:
    """No processes: the forms an annotation takes, as objects and as strings, resolved where the function was
    defined."""
    import ensemble

    assert ensemble.Task is Task
    scope: dict[str, Any] = {"Task": Task, "ensemble": ensemble}
    exec(compile(future + _FORMS, "<jobs>", "exec", dont_inherit=True), scope)
    assert {name: takes_task.__wrapped__(scope[name])
            for name in ("plain", "real", "named", "dotted", "optional", "unknown", "later", "keyword_only")} == {
        "plain": False, "real": True, "named": True, "dotted": True, "optional": False, "unknown": False,
        "later": False, "keyword_only": False}
    assert takes_task.__wrapped__(scope["Holder"]().run)
    assert takes_task.__wrapped__(functools.partial(scope["named"], x=1))
    assert not takes_task.__wrapped__(sorted) and not takes_task.__wrapped__(pow)
    shadowed = {"Task": type("Task", (), {})}  # a class of the user's called Task: the same text, another class
    exec(compile(future + _FORMS.replace("ensemble.Task", "Task"), "<jobs>", "exec", dont_inherit=True), shadowed)
    assert not any(takes_task.__wrapped__(shadowed[name]) for name in ("real", "named", "dotted"))

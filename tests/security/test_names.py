"""Finding 1 and 2: a job name is a function, nothing else; script jobs come only from the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import JobRefused, PermissionDenied, RemoteError
from actors._jobfn import check_allowed, check_name, compile_allow, resolve
from actors.config import DEFAULT_ALLOW

WALKS = [
    "examples.jobs:Task.run_process",
    "examples.jobs:Path.unlink",
    "tests.jobs:subprocess.getoutput",
    "tests.jobs:os.system",
    "controller._tasks:run_process_job",
    "examples.jobs:noop.__builtins__.__setitem__",
    "examples.jobs:_private",
    "os:system",
    "subprocess:getoutput",
    "builtins:eval",
    "script:/usr/lib/python3.11/subprocess.py:getoutput",
    "x" * 300 + ":f",
    "examples.jobs:add\n",  # ("$" matches before a final newline: the worker then failed to find the function)
    "examples.jobs\n:add",
]


@pytest.mark.parametrize("path", WALKS)
def test_attribute_walks_private_names_and_denied_modules_are_refused(path: str) -> None:
    with pytest.raises(JobRefused):
        check_name(path)


def test_a_star_never_crosses_a_dot() -> None:
    allow = compile_allow(["examples.*"])
    assert allow.fullmatch("examples.jobs:add")
    assert not allow.fullmatch("examples.jobs.inner:add")
    assert not allow.fullmatch("examples.jobs:Task.run_process")
    exact = compile_allow(["examples.jobs:add"])
    assert exact.fullmatch("examples.jobs:add") and not exact.fullmatch("examples.jobs:add2")
    with pytest.raises(JobRefused):
        check_allowed("examples.jobs:add\n", ["examples.jobs:add"])
    with pytest.raises(JobRefused, match="allow-list"):
        check_allowed("examples.jobs:normalize", DEFAULT_ALLOW)  # writes files: not open to remote clients
    check_allowed("examples.jobs:add", DEFAULT_ALLOW)


def test_default_allow_list_holds_no_test_bench_or_internal_module() -> None:
    for pat in DEFAULT_ALLOW:
        assert not pat.startswith(("tests", "bench", "controller", "actors", "audio")), pat


@pytest.mark.parametrize("path, why", [
    ("examples.jobs:Path", "not a function"),       # a class the module imported
    ("examples.jobs:math", "not a function"),       # a module
    ("examples.jobs:Task", "not a function"),
    ("examples.jobs:nothing_here", "defines no function"),
])
def test_the_worker_checks_the_object_too(path: str, why: str) -> None:
    with pytest.raises((JobRefused, LookupError), match=why):
        resolve(path)


def test_an_imported_function_is_not_the_module_s_own() -> None:
    import types

    import tests.jobs as tj

    assert isinstance(getattr(tj, "wait_for", None), types.FunctionType) or True
    with pytest.raises(JobRefused, match="imported into"):
        resolve("tests.security.test_names:check_name")  # actors._jobfn.check_name, imported here


def test_walks_refused_by_a_live_daemon_and_nothing_ran(module_daemon: Any, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    marker = tmp_path / "ran"
    c = module_daemon.client()
    for path, args in [
        ("examples.jobs:Task.run_process", ["/bin/sh", ["-c", f"id > {marker}"], "x"]),
        ("examples.jobs:Path.unlink", [str(victim)]),
        ("tests.jobs:os.system", [f"id > {marker}"]),
        ("tests.jobs:subprocess.getoutput", [f"id > {marker}"]),
        ("controller._tasks:run_process_job", ["/dev/null", "/bin/sh", ["-c", f"id>{marker}"], "split"]),
        ("examples.jobs:noop.__builtins__.__setitem__", ["len", None]),
        ("script:/usr/lib/python3.11/subprocess.py:getoutput", [f"id > {marker}"]),
    ]:
        with pytest.raises(JobRefused):
            c.submit(path, *args)
    # the CLI says so in one line, too
    out = module_daemon.cli("submit", "examples.jobs:Path.unlink", str(victim), check=False)
    assert out.returncode != 0 and "no attribute walk" in out.stderr
    # a name that passes the shape check but is not a function fails in the worker, with the reason
    with pytest.raises(RemoteError, match="not a function"):
        c.submit("examples.jobs:Path", str(victim)).result(timeout=60)
    assert victim.read_text() == "keep me" and not marker.exists()
    assert c.submit("examples.jobs:add", 1, 2).result(timeout=60) == 3  # the worker is fine


def test_task_submit_needs_the_controller_s_token(module_daemon: Any, tmp_path: Path) -> None:
    c = module_daemon.client()
    marker = tmp_path / "ran"
    with pytest.raises(PermissionDenied, match="controller"):
        c._submit_task("guess", "controller._tasks:run_process_job", ["/dev/null", "/bin/sh",
                       ["-c", f"id>{marker}"], "split"], "x", 1.0)
    assert not marker.exists()
    assert module_daemon.cli("status").returncode == 0

"""A local client's own code: its modules import in the workers, its cwd is theirs, and edits take effect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT


def _run(project: Path, daemon: Any, code: str) -> str:
    env = {k: v for k, v in daemon.env.items() if k != "PYTHONPATH"}  # the project is found as a user finds it
    env["PYTHONPATH"] = str(ROOT)  # only so that `import actors` works from this checkout
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=project, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_project_module_runs_with_no_setup_and_edits_take_effect(daemon: Any, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "mywork.py").write_text("def square(x):\n    return x * x\n\n\n"
                                       "def count(path):\n    return len(open(path).read().splitlines())\n")
    (project / "data.txt").write_text("3 lines\n\n\n")
    script = """
        import mywork
        from actors.client import Executor
        with Executor() as ex:
            print(sum(ex.map(mywork.square, range(100))))
            print(ex.submit(mywork.count, "data.txt").result(60))  # a relative path: the client's directory
    """
    assert _run(project, daemon, script).splitlines() == [str(sum(x * x for x in range(100))), "3"]
    workers = {a.pid for a in daemon.status().actors if a.role == "worker"}
    (project / "mywork.py").write_text("def square(x):\n    return -x\n\n\n"
                                       "def count(path):\n    return len(open(path).read().splitlines())\n")
    os.utime(project / "mywork.py", ns=(1, 1))  # a different mtime even on a coarse clock
    assert _run(project, daemon, script).splitlines()[0] == str(-sum(range(100)))  # every result on the new code
    status = daemon.status()
    assert all(a.state in ("running", "starting") for a in status.actors)
    assert {a.pid for a in status.actors if a.role == "worker"} != workers  # replaced, not failed
    assert all(a.restarts <= 2 and "failed" not in a.state for a in status.actors)
    log = (daemon.base / "state" / "daemon.log").read_text()
    assert "changed on disk" in log and "CRITICAL" not in log


def test_relative_paths_in_arguments_mean_the_client_s_directory(daemon: Any, tmp_path: Path) -> None:
    project = tmp_path / "p2"
    project.mkdir()
    (project / "lines.txt").write_text("a\nb\nc\n")
    out = subprocess.run([sys.executable, "-m", "actors", "submit", "examples.jobs:count_lines", "lines.txt",
                          "--wait"], cwd=project, env=daemon.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "3"


def test_the_command_line_submits_a_module_of_the_directory_it_runs_in(daemon: Any, tmp_path: Path) -> None:
    """`ensemble submit mywork:square 7` in a project directory, as `python -m` would import it: the installed
    `ensemble` script's own import path starts with its bin directory, not the working directory."""
    project, bin_dir = tmp_path / "p3", tmp_path / "bin"
    project.mkdir()
    bin_dir.mkdir()
    (project / "mywork.py").write_text("def square(x):\n    return x * x\n")
    script = bin_dir / "ensemble"  # what pip writes for the console script
    script.write_text("import sys\nfrom actors.cli import run\nsys.exit(run())\n")
    env = {k: v for k, v in daemon.env.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # only so that `import actors` works from this checkout
    out = subprocess.run([sys.executable, str(script), "submit", "mywork:square", "7", "--wait"], cwd=project,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "49"
    # a value of the module's own class comes back pickled: the command line reads it from where the job
    # imported it (it failed: "cannot be rebuilt here: No module named 'mywork'"), and prints it as JSON
    (project / "mywork.py").write_text("import dataclasses\nimport enum\n\n\nclass Mode(enum.Enum):\n"
                                       "    FAST = 'fast'\n\n\n@dataclasses.dataclass\nclass Report:\n"
                                       "    peak: float\n    mode: Mode\n\n\ndef report():\n"
                                       "    return Report(0.5, Mode.FAST)\n")
    out = subprocess.run([sys.executable, str(script), "submit", "mywork:report", "--wait"], cwd=project,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"peak": 0.5, "mode": "fast"}


def test_a_wrong_argument_count_is_told_in_the_caller_s_arguments_not_counting_the_task(daemon: Any) -> None:
    """``add(task, a, b)`` given three: Python says "takes 3 ... but 4 were given", counting the task handle the
    caller never passed; the message counts the caller's arguments. A TypeError the function raises is its own."""
    import pytest

    c = daemon.client()
    with pytest.raises(TypeError, match=r"^add\(\) takes 2 positional arguments after the task handle but 3 were "
                                        r"given$"):
        c.submit("examples.jobs:add", 1, 2, 3).result(60)
    with pytest.raises(TypeError, match=r"^add\(\) missing 1 required positional argument: 'b'$"):
        c.submit("examples.jobs:add", 1).result(60)
    with pytest.raises(TypeError, match="unsupported operand"):  # raised inside add: untouched
        c.submit("examples.jobs:add", 1, "x").result(60)


def test_a_directory_or_import_path_no_process_can_use_leaves_the_worker_s_code_tracking_working(tmp_path: Path) -> None:
    # the daemon refuses such a submit (tests/reliability/test_hostile_inputs.py); should one reach a worker,
    # its job runs where the worker is instead of failing the worker's job loop (it retired, and the job
    # moved to the next worker, for ever)
    from actors._freshness import UserCode

    here = os.getcwd()
    code = UserCode()
    try:
        code.use([str(tmp_path), "/no\0where"])
        code.enter("/no\0where")
        code.enter(str(tmp_path / "gone"))
        assert os.getcwd() == here
        code.note_imports()
        assert code.stale() == ""
    finally:
        sys.path[:] = [p for p in sys.path if p not in (str(tmp_path), "/no\0where")]
        os.chdir(here)


def test_a_module_edited_while_the_job_that_imported_it_runs_is_imported_again(tmp_path: Path) -> None:
    """The worker took a module's file time after the job that imported it ended: an edit made while that job
    ran was taken for the code it had imported, and every later job ran the code before the edit."""
    from tests.conftest import run_main

    module = textwrap.dedent("""
        import os, time
        VERSION = 1

        def first(started, go):
            open(started, "w").close()
            while not os.path.exists(go):
                time.sleep(0.01)
            return VERSION

        def version():
            return VERSION
    """)
    (tmp_path / "slowmod.py").write_text(module)
    script = textwrap.dedent("""
        import os, pathlib, time
        import slowmod
        from actors.client import Executor

        with Executor(max_workers=1) as ex:  # a private daemon: one worker, which runs both jobs
            f = ex.submit(slowmod.first, "started", "go")
            end = time.monotonic() + 120
            while not os.path.exists("started") and time.monotonic() < end:
                time.sleep(0.01)
            src = pathlib.Path("slowmod.py")
            src.write_text(src.read_text().replace("VERSION = 1", "VERSION = 2"))
            open("go", "w").close()
            print(f.result(60), ex.submit(slowmod.version).result(60))
    """)
    out = run_main(tmp_path, script).stdout.split()
    assert out == ["1", "2"]  # the first ran the code it imported; the next one the code on disk


def test_an_edit_is_seen_in_a_directory_the_daemon_had_on_its_path_already(make_daemon: Any, tmp_path: Path) -> None:
    """A project directory on the daemon's own PYTHONPATH (as a user who exported it before `ensemble up` has it)
    was never watched: the worker had it on its path already, so the directory was not the client's to add, and
    after an edit every job ran the old code (a new function was "not defined")."""
    project = (tmp_path / "onpath").resolve()
    project.mkdir()
    (project / "fresh_mod.py").write_text("def version():\n    return 1\n\n\ndef added():\n    return 'old'\n")
    daemon = make_daemon(workers=1, jobs_only=True, extra_env={"PYTHONPATH": f"{project}{os.pathsep}{ROOT}"})
    daemon.up()
    (project / "main.py").write_text(  # run as `python main.py`: the client's path starts with this directory
        "import fresh_mod\nfrom actors.client import Client, Executor\n"
        "with Executor() as ex:\n    print(ex.submit(fresh_mod.version).result(60))\n"
        "with Client() as c:\n    print(c.submit('fresh_mod:added').result(60))\n")
    env = {**daemon.env, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}"}

    def run() -> list[str]:
        out = subprocess.run([sys.executable, "main.py"], cwd=project, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run() == ["1", "old"]
    (project / "fresh_mod.py").write_text("def version():\n    return 2\n\n\ndef added():\n    return 'new'\n")
    os.utime(project / "fresh_mod.py", ns=(1, 1))  # a different mtime even on a coarse clock
    assert run() == ["2", "new"]


@pytest.mark.slow  # a daemon of its own and four client programs: run by .ci/run's slow pass (default suite < 5 min)
def test_two_projects_with_a_module_of_the_same_name_each_run_their_own(make_daemon: Any, tmp_path: Path) -> None:
    """A worker kept every client's directories on its path and every module it imported: a job from a second
    project ran the first project's ``shared.py``.  One worker, the two projects taking turns; a module's state
    lives on while the other project's jobs run (it is put aside, not imported again)."""
    daemon = make_daemon(workers=1, jobs_only=True)
    daemon.up()
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "shared.py").write_text(f"CALLS = []\n\n\ndef who():\n    CALLS.append(1)\n"
                                                    f"    return '{name}', len(CALLS)\n")
    script = """
        import shared
        from actors.client import Client, Executor
        with Executor() as ex:
            print(*ex.submit(shared.who).result(60))
        with Client() as c:
            print(*c.submit("shared:who").result(60))
    """
    seen = [_run(tmp_path / name, daemon, script).split("\n") for name in ("x", "y", "x", "y")]
    assert seen == [["x 1", "x 2"], ["y 1", "y 2"], ["x 3", "x 4"], ["y 3", "y 4"]]
    status = daemon.status()
    assert len([a for a in status.actors if a.role == "worker"]) == 1 and all(a.restarts == 0 for a in status.actors)

"""The public surface of ``actors``: exported names, the error tree, the task handle's methods."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

import actors
import actors.client
import actors.config
from actors import EnsembleError

EXPORTED = [
    "__version__",
    "AsyncClient",
    "Child",
    "Client",
    "Executor",
    "JobHandle",
    "ClientClosed",
    "Config",
    "ConfigError",
    "FINAL",
    "DaemonAlreadyRunning",
    "DaemonError",
    "DaemonNotRunning",
    "EnsembleError",
    "JobCancelled",
    "JobError",
    "JobLost",
    "JobNotFound",
    "JobRefused",
    "JobState",
    "JobTimeout", "NoAnswer",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "Task",
    "TransportError",
    "WaitTimeout",
    "WrongContextError",
    "child_main",
    "current_task",
    "load_config",
]


def test_actors_exports_exactly_these_names() -> None:
    assert sorted(actors.__all__) == sorted(EXPORTED)
    for name in actors.__all__:
        assert getattr(actors, name) is not None


def test_client_and_config_modules_export_their_names() -> None:
    assert sorted(actors.client.__all__) == ["AsyncClient", "AsyncJobHandle", "Client", "Executor", "JobHandle",
                                             "make_spec"]
    assert sorted(actors.config.__all__) == ["AudioConfig", "ClusterConfig", "Config", "DaemonConfig", "JobsConfig",
                                             "SupervisionConfig", "load_config"]
    for module in (actors.client, actors.config):
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name} has no docstring"


def test_clients_are_reachable_from_the_package() -> None:
    assert actors.Client is actors.client.Client  # type: ignore[attr-defined]
    assert actors.Executor is actors.client.Executor  # type: ignore[attr-defined]
    assert actors.AsyncClient is actors.client.AsyncClient  # type: ignore[attr-defined]


def test_ensemble_is_the_runtime_s_names_with_the_full_client() -> None:
    """``from ensemble import ...`` gives every public name of actors; its Client has each layer's calls."""
    import subprocess
    import sys

    import audio.client
    import controller.client
    import ensemble

    scripts_errors = ["ParamNotApplied", "ScriptLoadError"]  # plus the scripts' own errors
    assert sorted(ensemble.__all__) == sorted([*actors.__all__, *scripts_errors])
    assert ensemble.ScriptLoadError is controller.client.ScriptLoadError
    assert ensemble.ParamNotApplied is controller.client.ParamNotApplied
    for name in actors.__all__:
        if name != "Client":
            assert getattr(ensemble, name) is getattr(actors, name), name
    assert ensemble.Client is controller.client.Client
    assert issubclass(ensemble.Client, audio.client.Client) and issubclass(audio.client.Client, actors.client.Client)
    for layer, calls in ((audio.client.Client, ("note_on", "upload_sample")), (controller.client.Client, ("load_script", "set_param"))):
        assert all(call in vars(layer) for call in calls)
    assert not hasattr(actors.client.Client, "note_on")  # the runtime's client knows nothing of audio
    light = subprocess.run([sys.executable, "-c", "import ensemble, sys; print(sorted(m for m in ('numpy', 'zmq', 'audio', "
                            "'controller') if m in sys.modules))"], capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "[]"  # `import ensemble` stays light: the clients load on first use


def test_the_clients_and_the_cli_import_no_numpy_and_audio_s_names_load_on_first_use() -> None:
    import subprocess
    import sys

    script = ("import sys; from ensemble import Client; import actors.cli; print('numpy' in sys.modules); "
              "import controller.offline, audio, audio._engine; from audio import render, Engine; "
              "print(callable(render) and not isinstance(render, type(sys)), Engine is audio._engine.Engine, "
              "sorted(audio.__all__) == sorted(n for n in audio.__all__ if getattr(audio, n, None) is not None))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    # `ensemble --help` and a client need no numpy; `audio.render` stays the function, not its module
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stdout


ERRORS = [getattr(actors, n) for n in EXPORTED if isinstance(getattr(actors, n), type)
          and issubclass(getattr(actors, n), BaseException)]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_an_ensemble_error_with_a_one_line_docstring(cls: type) -> None:
    assert issubclass(cls, EnsembleError)
    doc = (cls.__doc__ or "").strip()
    assert doc and "\n" not in doc, f"{cls.__name__}: {doc!r}"


def test_the_error_tree() -> None:
    tree = {
        actors.ConfigError: EnsembleError,
        actors.DaemonError: EnsembleError,
        actors.DaemonAlreadyRunning: actors.DaemonError,
        actors.DaemonNotRunning: actors.DaemonError,
        actors.TransportError: EnsembleError,
        actors.ClientClosed: EnsembleError,
        actors.WaitTimeout: EnsembleError,
        actors.OutOfRange: EnsembleError,
        actors.PermissionDenied: EnsembleError,
        actors.ProtocolError: EnsembleError,
        actors.WrongContextError: EnsembleError,
        actors.JobError: EnsembleError,
        actors.JobRefused: actors.JobError,
        actors.QueueFull: actors.JobRefused,
        actors.JobNotFound: actors.JobError,
        actors.JobTimeout: actors.JobError,
        actors.JobCancelled: actors.JobError,
        actors.JobLost: actors.JobError,
        actors.RemoteError: actors.JobError,
    }
    for cls, parent in tree.items():
        assert cls.__mro__[1] is parent, f"{cls.__name__} should derive from {parent.__name__}"


def test_remote_error_carries_type_message_and_traceback() -> None:
    err = actors.RemoteError("ValueError", "bad", "Traceback (most recent call last):\n  ...\nValueError: bad\n")
    assert (err.type_name, err.remote_message) == ("ValueError", "bad")
    assert str(err).startswith("ValueError: bad") and "Remote traceback:" in str(err)
    assert str(actors.RemoteError("KeyError", "k")) == "KeyError: k"


BACKGROUND_TASK = {  # HISE BackgroundTask method -> Python spelling
    "setProgress": "set_progress", "getProgress": "get_progress",
    "setStatusMessage": "set_status_message", "getStatusMessage": "get_status_message",
    "setProperty": "set_property", "getProperty": "get_property",
    "shouldAbort": "should_abort", "setTimeOut": "set_timeout",
    "runProcess": "run_process", "killVoicesAndCall": "kill_voices_and_call",
}


@pytest.mark.parametrize("hise, name", list(BACKGROUND_TASK.items()))
def test_task_follows_background_task_method_by_method(hise: str, name: str) -> None:
    method = getattr(actors.Task, name)
    assert callable(method) and method.__doc__, f"Task.{name} ({hise}) is missing or undocumented"


def test_run_process_signature_matches_the_seed() -> None:
    params = list(inspect.signature(actors.Task.run_process).parameters)
    assert params == ["self", "command", "args", "log_fn"]


@pytest.mark.parametrize("name", ["submit", "job", "jobs", "cancel", "watch", "status", "scale", "ping", "shutdown",
                                  "close"])
def test_client_methods(name: str) -> None:
    assert getattr(actors.client.Client, name).__doc__


@pytest.mark.parametrize("name", ["result", "cancel", "progress", "status_message", "properties", "state",
                                  "events", "wait", "done", "refresh"])
def test_job_handle_members(name: str) -> None:
    assert getattr(actors.client.JobHandle, name).__doc__


def test_importing_actors_stays_light() -> None:
    """Job modules do ``from actors import Task``: that must not pull in ZeroMQ or the clients."""
    import subprocess
    import sys

    code = "import sys, actors; print('zmq' in sys.modules, 'actors.client' in sys.modules)"
    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_a_module_of_the_user_s_that_hides_a_package_of_ensemble_s_is_named_in_the_error(tmp_path: Path) -> None:
    """An ``actors.py`` beside the script used to fail as "cannot import name 'ClientClosed' from 'actors'"."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "work.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "run.py").write_text(
        "import work\nfrom ensemble import Executor\n"
        "if __name__ == '__main__':\n    with Executor(1) as ex:\n        print(list(ex.map(work.double, [1, 2])))\n")
    (tmp_path / "full.py").write_text("from ensemble import Client\n")

    def run(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env=env)

    (tmp_path / "actors.py").write_text("X = 1\n")
    out = run("run.py")
    assert out.returncode == 1
    assert f"ensemble cannot import its package 'actors': {tmp_path / 'actors.py'} hides it" in out.stderr
    assert "rename that module" in out.stderr
    (tmp_path / "actors.py").unlink()
    (tmp_path / "audio.py").write_text("X = 1\n")  # a jobs-only program may keep an audio.py of its own
    out = run("run.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "[2, 4]"
    out = run("full.py")  # the full client needs ensemble's audio package
    assert out.returncode == 1 and "its package 'audio'" in out.stderr and "audio.py hides it" in out.stderr

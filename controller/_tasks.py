"""Background tasks from scripts (HISE's BackgroundTask), run as jobs on workers.

``create_background_task(name)`` in the controller returns a :class:`ScriptTask`.
``call_on_background_thread(fn)`` submits ``fn`` — a top-level function of the
script — as a job; the worker loads the same script file and calls ``fn(task)``
with its own task handle.  The job names the digest of the source the
controller ran: a worker refuses a file edited since (it would run other code
than the controller's) and says to load the edit.  Progress, status and
properties the job sets are pushed back and readable here; the finish
callback runs on the controller's script thread (task priority) when the
task starts and when it stops.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from actors import FINAL, EnsembleError
from actors.messages import JobInfo
from controller._context import BACKGROUND, set_thread_context
from controller._host import ParamDef, add_param, defined_param, function_name


class ScriptTask:
    """Controller-side handle of a script's background task (every method of the seed, in Python spelling)."""

    def __init__(self, rt: Any, name: str) -> None:
        self.rt = rt
        self.name = name
        self.job_id = 0
        self._info: JobInfo | None = None
        self._timeout_ms = 500
        self._finish: Callable[[bool, bool], Any] | None = None
        self._forward = False
        self._aborted = False
        self._progress = 0.0
        self._status = ""
        self._props: dict[str, Any] = {}
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._gen = rt.generation  # of the script whose module code made it: its callbacks go when that one does

    def call_on_background_thread(self, fn: Callable[..., Any] | str) -> None:
        """Run the script function ``fn(task)`` as a job on a worker; returns at once."""
        name = function_name(self.rt.module, fn, "call_on_background_thread")
        self._submit(f"script:{self.rt.path}:{name}{_AT}{self._ran()}", [])

    def run_process(self, command: str, args: list[str] | str, log_fn: Callable[..., Any] | str) -> None:
        """Run a program on a worker; the script function ``log_fn(task, finished, line_or_code)`` sees its output."""
        log_name = function_name(self.rt.module, log_fn, "run_process")
        self._submit("controller._tasks:run_process_job", [self.rt.path, command, args, log_name, self._ran()])

    def kill_voices_and_call(self, fn: Callable[..., Any] | str) -> None:
        """On a worker: fade and kill all voices, call the script function ``fn()`` while silent, resume."""
        name = function_name(self.rt.module, fn, "kill_voices_and_call")
        self._submit("controller._tasks:kill_voices_job", [self.rt.path, name, self._ran()])

    def _ran(self) -> str:
        """The digest of the source the controller ran, as a task's job names it (see :func:`load_script`)."""
        return str(self.rt.digest)[:_DIGEST_CHARS]

    def _submit(self, fn: str, args: list[Any]) -> None:
        if self.job_id and not self._stopped.is_set():
            raise EnsembleError(f"background task {self.name!r} is already running (job {self.job_id})")
        self._aborted = False
        self._stopped.clear()
        client = self.rt.client()
        self.job_id = client._submit_task(os.environ.get("ENSEMBLE_INTERNAL_TOKEN", ""), fn, args, self.name,
                                          self._timeout_ms / 1000)  # the seed's set_timeout: the abort grace
        if self._finish is not None:
            self.rt.submit(1, self._finish, (False, False), f"finish callback {self.name}", self._gen)
        client.watch(self.job_id, self._update)

    def _update(self, info: JobInfo) -> None:
        """A snapshot of the job (client I/O thread; the script thread after a blocking abort).

        One of a job before the current one (its watch, late) is ignored.
        """
        if info.id != self.job_id:
            return
        self._info = info
        self._progress, self._status, self._props = info.progress, info.status, dict(info.properties)
        if self._forward:
            self.rt.loading_status = {"task": self.name, "progress": info.progress, "status": info.status}
        with self._lock:  # the finish callback runs once per job, whichever thread sees the end first
            stopped_now = info.state in FINAL and not self._stopped.is_set()
            if stopped_now:
                self._stopped.set()
        if stopped_now:
            if self._forward:
                self.rt.loading_status = {}
            if self._finish is not None:
                self.rt.submit(1, self._finish, (True, info.state in ("cancelled", "killed")),
                               f"finish callback {self.name}", self._gen)

    def set_finish_callback(self, fn: Callable[[bool, bool], Any]) -> None:
        """``fn(is_finished, was_cancelled)`` runs on the script thread when the task starts and when it stops."""
        self._finish = fn

    def send_abort_signal(self, block_until_stopped: bool = False) -> None:
        """Make the job's ``should_abort()`` true; with ``block_until_stopped`` wait until it has stopped.

        Blocking, it returns once the job has stopped (force-killed after its
        ``set_timeout`` grace): ``running`` is then False, the task may start
        again, and the finish callback is queued.  Blocks the script thread
        meanwhile.
        """
        self._aborted = True
        if self.job_id and not self._stopped.is_set():
            info = self.rt.client().cancel(self.job_id, block=block_until_stopped)
            if block_until_stopped and info is not None:
                self._update(info)

    def _abort_quietly(self) -> None:
        try:
            self.send_abort_signal(False)
        except EnsembleError:
            pass

    def should_abort(self) -> bool:
        """Whether an abort was signalled (reload, or send_abort_signal)."""
        return self._aborted

    def set_timeout(self, ms: int) -> None:
        """Grace (ms) between an abort and the force kill, for the next start."""
        self._timeout_ms = int(ms)

    def get_progress(self) -> float:
        """Progress the job last reported (0..1)."""
        return self._progress

    def set_progress(self, p: float) -> None:
        """Set the progress seen here (the job's own reports overwrite it)."""
        self._progress = float(p)

    def get_status_message(self) -> str:
        """Status message the job last reported."""
        return self._status

    def set_status_message(self, m: str) -> None:
        """Set the status message seen here."""
        self._status = str(m)

    def get_property(self, key: str, default: Any = None) -> Any:
        """A property the job set."""
        return self._props.get(key, default)

    def set_property(self, key: str, value: Any) -> None:
        """Set a property seen here."""
        self._props[key] = value

    def set_forward_status_to_loading_thread(self, forward: bool) -> None:
        """Mirror progress and status into the loading-status channel (``ensemble status``) while the task runs."""
        self._forward = bool(forward)

    @property
    def running(self) -> bool:
        """Whether the job was started and has not stopped."""
        return bool(self.job_id) and not self._stopped.is_set()


# ------------------------------------------------------------------ worker side
_modules: dict[tuple[str, float], tuple[ModuleType, str]] = {}  # (path, mtime) -> the module, its source's digest
_AT = "@"  # script:FILE:name@DIGEST (no function name holds one)
_DIGEST_CHARS = 16  # of the controller's SHA-256 hex digest, in a task's job


class _WorkerHost:
    """Minimal runtime for script module code executed in a worker (definitions are recorded, no audio)."""

    def __init__(self) -> None:
        self.params: dict[str, ParamDef] = {}

    def define(self, p: ParamDef) -> None:
        add_param(self.params, p)

    def get_parameter(self, name: str) -> Any:
        """The default, as every copy of the module code reads it (KeyError naming the defined ones)."""
        return self._defined(name).default

    def set_parameter(self, name: str, value: Any) -> None:
        """Module code's set_parameter: checked (KeyError, ValueError); the controller's copy sets it."""
        self._defined(name).coerce(value)

    def _defined(self, name: str) -> ParamDef:
        return defined_param(self.params, name)

    def create_background_task(self, name: str) -> Any:
        from controller._host import OffsideTask

        return OffsideTask(name, BACKGROUND)

    def print(self, text: str) -> None:
        import logging

        logging.getLogger("ensemble.script").info("event=script-print %s", text)


def load_script(path: str, digest: str = "") -> ModuleType:
    """Load (or reuse) a script file in a worker.

    ``digest``: of the source the controller ran (its ``ScriptReady``); a
    file whose source is another raises EnsembleError: it was edited since
    the controller loaded it, and its functions would run code the
    controller's do not.
    """
    from controller import _context, _host
    from controller._host import load_module

    key = (path, Path(path).stat().st_mtime)
    loaded = _modules.get(key)
    if loaded is None:
        if _host._current["runtime"] is None:
            _host.install(_WorkerHost())
        host = _host._current["runtime"]
        if isinstance(host, _WorkerHost):
            host.params = {}  # this file's module code defines its parameters afresh (a second name is refused)
        with _context.loading_module():
            loaded = _modules[key] = load_module(path)
    mod, ran = loaded
    if digest and ran[:len(digest)] != digest:
        raise EnsembleError(f"script {path} was edited since the controller loaded it: this background task would "
                            f"run the edited code beside the controller's (source {ran[:12]}, the controller's "
                            f"{digest[:12]}); `ensemble load {path}` loads the edit on every side")
    return mod


def resolve_script_fn(fn_path: str) -> Callable[..., Any]:
    """``script:/abs/path.py:function@DIGEST`` -> the function, loaded in this worker (see :func:`load_script`)."""
    _, rest = fn_path.split(":", 1)
    path, _, name = rest.rpartition(":")
    name, _, digest = name.partition(_AT)
    func = getattr(load_script(path, digest), name, None)
    if not callable(func):
        raise LookupError(f"script {path} has no function {name!r}")

    @functools.wraps(func)
    def in_background(*args: Any, **kwargs: Any) -> Any:
        with _in_background():
            return func(*args, **kwargs)

    return in_background


def run_process_job(task: Any, path: str, command: str, args: Any, log_name: str, digest: str = "") -> int:
    """Job: run a program with the script's log function (``ScriptTask.run_process``)."""
    log_fn = getattr(load_script(path, digest), log_name)
    with _in_background():
        return int(task.run_process(command, args, log_fn))


def kill_voices_job(task: Any, path: str, name: str, digest: str = "") -> bool:
    """Job: ``task.kill_voices_and_call(script.name)``."""
    fn = getattr(load_script(path, digest), name)
    with _in_background():
        return bool(task.kill_voices_and_call(fn))


@contextlib.contextmanager
def _in_background() -> Iterator[None]:
    """The job's thread runs script code of a background task meanwhile: context ``Background task``.

    So a script function called there that is available elsewhere raises
    WrongContextError with the way out a task has (see
    :func:`controller._context.way_out`), and ``get_context()`` says where it runs.
    """
    previous = set_thread_context(BACKGROUND)
    try:
        yield
    finally:
        set_thread_context(previous)



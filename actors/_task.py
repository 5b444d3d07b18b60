"""The task handle a job function receives first (HISE's BackgroundTask, in Python).

The handle lives in the worker process and is used from the job's thread.
Progress, status message, properties and timeout changes are published to the
supervisor (throttled to one update per ``_PUBLISH_EVERY`` s; the last value is
always delivered) so clients can read them while the job runs.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from typing import Any, Callable

from actors._errors import EnsembleError, WrongContextError

_PUBLISH_EVERY = 0.02
_DRAIN_AFTER_KILL = 1.0  # s run_process still reads a killed program's output, held open outside its group
MAX_TIMEOUT_MS = 86_400_000  # a job's grace period (abort to kill) of one day at most: every check of it reads this
_current: contextvars.ContextVar["Task | None"] = contextvars.ContextVar("ensemble_task", default=None)


def current_task() -> "Task":
    """The task handle of the job running in this thread.

    Available in: worker (inside a job).  Lets plain functions submitted through
    :class:`actors.Executor` report progress or check for an abort.  Raises
    :class:`EnsembleError` outside a job.
    """
    task = _current.get()
    if task is None:
        raise EnsembleError("current_task() is only available inside a job running on an ensemble worker")
    return task


class Task:
    """Handle to one running job: progress, status, properties, abort and timeout.

    Mirrors HISE's BackgroundTask: ``set_progress``/``get_progress``,
    ``set_status_message``/``get_status_message``, ``set_property``/``get_property``,
    ``should_abort``, ``set_timeout``, ``run_process`` and ``kill_voices_and_call``.
    All methods are cheap (no I/O on the calling thread) unless noted.
    """

    def __init__(self, job_id: int, timeout_ms: int, kill_voices: Callable[[Callable[[], Any]], bool] | None = None,
                 arrays: Any = None) -> None:
        self.job_id = job_id
        self._arrays = arrays
        self._lock = threading.Lock()
        self._progress = 0.0
        self._status = ""
        self._properties: dict[str, Any] = {}
        self._timeout_ms = timeout_ms
        self._aborted = False  # set by another thread; a plain attribute (an Event costs ~3 us to make per job)
        self.abort_reason = ""
        self._dirty = False
        self._last_publish = 0.0
        self._last_check: float | None = None  # monotonic time of the last should_abort()
        self._stall_reported_for: float | None = None
        self._kill_voices = kill_voices
        self.started = time.time()

    # -- progress and status -------------------------------------------------------
    def set_progress(self, progress: float) -> None:
        """Set the progress of this task, clamped to 0..1."""
        with self._lock:
            self._progress = min(1.0, max(0.0, float(progress)))
            self._dirty = True

    def get_progress(self) -> float:
        """The progress last set (0..1)."""
        return self._progress

    def set_status_message(self, message: str) -> None:
        """Set a human-readable status message, visible to clients while the job runs.

        Raises ``ValueError`` for text that cannot cross to the clients (a lone
        surrogate: it has no UTF-8 form), here in the job rather than later.
        """
        message = str(message)
        try:
            message.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"the status message cannot be sent to clients: {exc}") from None
        with self._lock:
            self._status = message
            self._dirty = True

    def get_status_message(self) -> str:
        """The status message last set."""
        return self._status

    def set_property(self, key: str, value: Any) -> None:
        """Store a value clients can read while the job runs.

        Clients read it back as it was set: None, bools, ints of any size,
        floats, complex, text, bytes, bytearray, lists, tuples, sets,
        frozensets, dicts with keys of these, ``datetime``/``date``/``time``/
        ``timedelta``, ``Decimal``, ``UUID``, ``Path`` and numeric numpy arrays
        (:mod:`actors._values`, readable by any client, remote ones too; a numpy
        scalar is read back as the Python number it holds, a ``defaultdict`` or
        a named tuple as the plain dict or tuple).  Anything else (a
        dataclass, an ``Enum`` member, an object) raises ``TypeError`` here, in
        the job, naming its type and where it sits in ``value``: properties
        are never pickled, so pass an object's fields as a dict.
        """
        if not isinstance(key, str):
            raise TypeError(f"property keys must be strings, got {type(key).__name__}")
        _check_sendable(key, value)
        with self._lock:
            self._properties[key] = value
            self._dirty = True

    def get_property(self, key: str, default: Any = None) -> Any:
        """Read a property set by this task."""
        with self._lock:
            return self._properties.get(key, default)

    # -- abort and timeout --------------------------------------------------------
    def should_abort(self) -> bool:
        """Whether the job should stop now (cancel, deadline, daemon stop or script reload).

        Call it as often as possible; the gap between two calls must stay below
        the timeout (see :meth:`set_timeout`) or the job is recorded as stalled,
        and once aborted it is force-killed when the timeout has passed.
        """
        self._last_check = time.monotonic()
        return self._aborted

    def set_timeout(self, ms: int) -> None:
        """Set the grace period (ms) between an abort request and a force kill (default 500)."""
        if not 0 < ms <= MAX_TIMEOUT_MS:  # (False for a NaN too)
            raise ValueError(f"timeout must be a number of ms in 1..{MAX_TIMEOUT_MS}, got {ms!r}")
        with self._lock:
            self._timeout_ms = int(ms)
            self._dirty = True
            self._last_publish = 0.0  # publish at once: the supervisor times kills with it

    def get_timeout(self) -> int:
        """The current grace period in ms."""
        return self._timeout_ms

    def abort(self, reason: str = "") -> None:
        """Make :meth:`should_abort` return True (called by the worker on an abort request)."""
        self.abort_reason = reason
        self._aborted = True

    @property
    def aborted(self) -> bool:
        """Whether an abort was requested."""
        return self._aborted

    # -- external programs -----------------------------------------------------------
    def run_process(
        self,
        command: str,
        args: list[str] | str = (),  # type: ignore[assignment]
        log_fn: Callable[["Task", bool, Any], Any] | None = None,
    ) -> int:
        """Run a program, call ``log_fn(task, False, line)`` per output line and ``log_fn(task, True, exit_code)`` at the end.

        ``args`` is a list, or a string split at unquoted whitespace (shell
        quoting respected).  While the program runs, an abort request kills it
        at once and this returns its exit code (negative: killed by signal).
        The program runs in a process group of its own, and the abort kills
        that group: what it started (``sh -c "a; b"``, a pipeline, a helper
        in the background) goes with it, and this returns as promptly (it
        read the output up to its end, which the program's children held
        open: the job waited out its grace and was killed).  Output still
        held open by a process that left the group is no longer waited for
        :data:`_DRAIN_AFTER_KILL` seconds after the kill.  Blocks the job (on
        the worker's main thread).  Raises ``FileNotFoundError`` when the
        program does not exist.
        """
        # imported here: only jobs that run programs pay for them (``import actors`` stays light for clients)
        import queue
        import shlex
        import signal
        import subprocess

        argv = [command, *(shlex.split(args) if isinstance(args, str) else [str(a) for a in args])]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                process_group=0,  # (still in the worker's session: the daemon's kill of a job finds it below)
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"run_process: program {command!r} was not found (searched PATH)") from exc
        except PermissionError as exc:
            raise PermissionError(f"run_process: program {command!r} is not executable: {exc}") from exc
        lines: "queue.SimpleQueue[str | None]" = queue.SimpleQueue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\r\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, name=f"run_process-{proc.pid}", daemon=True)
        reader.start()
        killed_at = 0.0
        while True:
            if self.should_abort():
                if not killed_at:
                    killed_at = time.monotonic()
                    # the group's id is the program's pid: not another's while the program is unreaped, nor
                    # while anything it left in its group lives (and holds the output this still reads)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):  # (none left in it)
                        pass
                elif time.monotonic() - killed_at > _DRAIN_AFTER_KILL:
                    break  # a process that left its group holds the output: the job returns without the rest
            try:
                line = lines.get(timeout=0.02)
            except queue.Empty:
                continue
            if line is None:
                break
            if log_fn is not None:
                log_fn(self, False, line)
        code = proc.wait()
        reader.join(timeout=1)
        if log_fn is not None:
            log_fn(self, True, code)
        return code

    def empty(self, shape: Any, dtype: Any = "float64") -> Any:
        """A new array in shared memory; returned from the job it reaches the client without a copy."""
        if self._arrays is None:
            import numpy as np

            return np.empty(shape, dtype)
        return self._arrays.empty(shape, dtype)

    def kill_voices_and_call(self, fn: Callable[[], Any]) -> bool:
        """Fade and kill all voices, keep the processor silent while ``fn()`` runs here, then resume.

        Use it when a job replaces sample buffers the instrument plays.  Returns
        whether ``fn`` ran (False when no processor is running).  Raises
        :class:`WrongContextError` in a process the job forked.
        """
        if self._kill_voices is None:
            fn()
            return True
        return self._kill_voices(fn)

    # -- in a process the job forked (worker side) ------------------------------------------
    def forked(self) -> None:
        """Make this handle the own one of a process the job forked (worker internal; the child's thread, first).

        The worker publishes nothing of the child's, so the child's updates
        stay in the child, and :meth:`should_abort` keeps the answer it had
        at the fork.  Its lock is a new one (the worker's loop thread may have
        held this one at the fork, for ever in the child), :meth:`empty` makes
        plain numpy arrays (a segment made there would be nobody's to free), and
        :meth:`kill_voices_and_call` raises :class:`WrongContextError` (the
        worker's sockets are not the child's to use).
        """
        self._lock = threading.Lock()
        self._arrays = None
        self._kill_voices = _refuse_in_forked_child

    # -- publishing (worker side) -------------------------------------------------------
    def snapshot_if_due(self, now: float, force: bool = False) -> tuple[float, str, dict[str, Any], int] | None:
        """The state to publish, if it changed and the throttle allows (worker io thread)."""
        with self._lock:
            if not self._dirty or (not force and now - self._last_publish < _PUBLISH_EVERY):
                return None
            self._dirty = False
            self._last_publish = now
            return self._progress, self._status, _wire(self._properties), self._timeout_ms

    def final_state(self) -> tuple[float, str, dict[str, Any]]:
        """Progress, status and properties at the end of the job (a task nobody touched: no lock, no copy)."""
        if not self._dirty and not self._properties:
            return self._progress, self._status, {}
        with self._lock:
            return self._progress, self._status, _wire(self._properties)

    def stalled_for(self, now: float) -> float | None:
        """Seconds since the last should_abort() if past the timeout (reported once per gap)."""
        last = self._last_check
        if last is None or self._stall_reported_for == last:
            return None
        gap = now - last
        if gap * 1000 > self._timeout_ms:
            self._stall_reported_for = last
            return gap
        return None


def _refuse_in_forked_child(fn: Callable[[], Any]) -> bool:
    """``Task.kill_voices_and_call`` in a process the job forked (see :meth:`Task.forked`): raise, saying why."""
    raise WrongContextError(f"kill_voices_and_call() runs in the job's worker process, not in process {os.getpid()} "
                            "the job forked: call it from the job itself")


_ran_jobs = False  # this process has run a job: a worker (or a process one of its jobs forked), on any thread
_home: list[Any] = [None]  # the Config of the daemon whose local worker this process is (set_home)


def set_home(cfg: Any) -> None:
    """This process is a local worker of the daemon ``cfg`` describes: a job's ``Client()`` reaches it."""
    _home[0] = cfg


def home() -> Any:
    """The Config of the daemon running this process's jobs (a local worker, a process it forked), else None."""
    return _home[0]


def activate(task: Task) -> contextvars.Token["Task | None"]:
    """Make ``task`` the current task of this thread (worker internal)."""
    global _ran_jobs
    _ran_jobs = True
    return _current.set(task)


def in_job_process() -> bool:
    """Whether this process runs jobs (a worker, or a process a job forked), whichever thread asks."""
    return _ran_jobs


def deactivate(token: contextvars.Token["Task | None"]) -> None:
    """Undo :func:`activate`."""
    _current.reset(token)


def _wire(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` as they are published: tuples, sets, big ints, datetimes... as exact values (ext 4), so a
    client reads back what the job set.  A value changed in place since its check is not checked again here: the
    encoder refuses what it cannot carry, and the update goes without the properties, saying why."""
    from actors._values import plain, to_wire

    return {k: v if plain(v) else to_wire(v, _lenient_leaf) for k, v in properties.items()}


def _lenient_leaf(value: Any) -> Any:
    try:
        return _property_leaf(value)
    except _Refused:
        return value  # (changed in place since its check: the encoder refuses it, or carries it as it can)


class _Refused(Exception):
    def __init__(self, part: Any) -> None:
        super().__init__()
        self.part = part


def _property_leaf(value: Any) -> Any:
    """What :func:`actors._values.to_wire` leaves in a property: numpy's arrays and scalars, which the encoder
    carries, and a subclass of dict, list or tuple (a ``defaultdict``, a named tuple), carried as the plain one
    (it compares equal); anything else would come back as something else (a dataclass as a dict) or not at all."""
    if type(value).__module__ == "numpy":
        return value
    from actors._values import to_wire

    for base in (dict, list, tuple):
        if isinstance(value, base):
            return to_wire(base(value), _property_leaf)
    raise _Refused(value)


def _check_sendable(key: str, value: Any) -> None:
    """Raise ``TypeError`` if a property's value cannot be published to the clients (see ``Task.set_property``)."""
    from actors._errors import ProtocolError
    from actors._values import to_wire
    from actors.messages import JobUpdate, Limits, decode, encode

    try:
        wire = to_wire(value, _property_leaf)
    except _Refused as refused:
        cls = type(refused.part)
        where = _path_to(value, refused.part, f"property {key!r}") or f"an item of property {key!r}"
        raise TypeError(f"{where} is a {cls.__module__}.{cls.__qualname__}, which a property cannot hold (it is "
                        "never pickled): pass None, bools, numbers, text, bytes, lists, tuples, sets, dicts, "
                        "datetime, Decimal, UUID, Path or numeric numpy arrays, an object as a dict of its "
                        "fields") from None
    try:
        decode(encode(JobUpdate(0, 0.0, "", {key: wire}, 1)), Limits(), handles="", stored=True)
    except ProtocolError as exc:
        raise TypeError(f"property {key!r} cannot be sent to clients: {exc}") from None


def _path_to(value: Any, part: Any, path: str, depth: int = 0) -> str | None:
    """Where ``part`` sits in ``value`` (``property 'p'[1]['k']``), or None if it is not found (a dict key)."""
    if value is part:
        return path
    if depth >= 64:
        return None
    from actors._exact import parts

    for sub_path, item in parts(value, path):
        found = _path_to(item, part, sub_path, depth + 1)
        if found is not None:
            return found
    return None

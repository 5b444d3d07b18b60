"""Clients of a running daemon: :class:`Client` (sync), :class:`Executor`, :class:`AsyncClient`.

All three share one :class:`~actors._connection.Connection` design: a
background I/O thread owns the socket, so handles and futures can be used from
any thread.  Job functions are named by import path (``"examples.jobs:sine"``)
or passed as module-level functions; lambdas and closures are refused with an
error that says what to do instead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import math
import numbers
import os
import pickle
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator, Sequence, cast

import msgspec

from actors import _map, callables
from actors._task import MAX_TIMEOUT_MS, home, in_job_process
from actors._connection import Connection
from actors._exact import PICKLE_ERRORS, dumps, dumps_arguments, loads_referencing, over, pickled_value, spill
from actors._errors import (
    POOL_BROKEN, DaemonError, EnsembleError, JobCancelled, JobError, JobLost, JobRefused, JobTimeout, NoAnswer,
    OutOfRange, ProtocolError, RemoteError, TransportError, WaitTimeout, WrongContextError, remote_error,
)
from actors._jobfn import _FUNCTION_TYPES, check_name, path_of
from actors._rundir import RunDir
from actors._state import FINAL
from actors._values import Pickled, pickled, unpickled
from actors.shm import handle_of, is_ndarray, is_ndarray_type
from actors.config import Config, load_config
from actors.messages import (
    MAX_CAP, Cancel, GetJobs, JobInfo, JobInfos, JobSpec, ListJobs, Ping, Pong, Scale, Shutdown, Status, StatusReply, Submitted,
    TaskSubmit, Watch, WorkerSetup,
)

_log = logging.getLogger("ensemble.client")
_CANCEL_WAIT = 10.0  # seconds a Future.cancel waits for its job id and the daemon's answer, at most
if TYPE_CHECKING:
    import asyncio
    from queue import SimpleQueue

    from actors._private import PrivateDaemon
TERMINAL = FINAL  # the final job states (kept under its old name)
_REFETCH_EVERY = 1.0  # seconds between fallback polls while waiting for a pushed result
_REFETCH_AT_ONCE = 64  # an AsyncClient's poll: the unfinished handles of a loop fetched at a time


def _raise_for(info: JobInfo, lost: type[Exception] = JobLost, local: bool = True) -> Any:
    """Return the job's value, or raise the error its final state stands for (``lost``: for worker-lost).
    ``local``: this client is on the daemon's host, so it may unpickle what a worker pickled for one (ext 5)."""
    if info.state == "done":
        from actors.messages import ArrayHandle
        from actors.shm import walk

        def gone(v: Any) -> Any:
            if type(v) is ArrayHandle:
                raise JobError(f"job {info.id}: its result array ({v.name}) was already taken by a client, "
                               "or the daemon was stopped since (`ensemble down` removes shared memory); results "
                               "in shared memory are handed over once")
            return v

        value = walk(info.result, gone) if info.result is not None else None
        return _unpickled_result(info, value, local) if Pickled.made else value
    if info.state == "failed":
        raised = _raised(info.result) if local and Pickled.made and type(info.result) is Pickled else None
        raise remote_error(info.error_type or "Exception", info.error_message, info.traceback, raised)
    if info.state in ("cancelled", "killed"):
        cls = JobTimeout if info.error_type == "JobTimeout" else JobCancelled
        why = info.error_message if info.error_message and info.error_message != info.state else ""
        why = why.removeprefix(f"{info.state}: ")  # (never "cancelled: cancelled", nor "killed: killed: shutdown")
        raise cls(f"job {info.id} ({_fn_of(info)}) {info.state}{f': {why}' if why else ''}")
    if info.state == "worker-lost":
        raise lost(f"job {info.id}{f' ({_fn_of(info)})' if info.fn else ''}: {info.error_message}")
    raise EnsembleError(f"job {info.id} is not finished (state {info.state})")


def _fn_of(info: JobInfo) -> str:
    """The function a job ran, as its errors name it: an Executor's pickled callable by its own name (the job's
    name, ``callables.label``), not by the runner that calls it (``actors.callables:pickled``)."""
    return info.name if info.fn == callables.PATH and info.name else info.fn


def _raised(blob: Pickled) -> BaseException | None:
    """The exception a local client's job raised, as its worker pickled it; None if it does not unpickle here."""
    try:
        raised = unpickled(blob)
    except Exception:  # noqa: BLE001 - the RemoteError with the type and text still says what happened
        return None
    return raised if isinstance(raised, BaseException) else None


def _unpickled_result(info: JobInfo, value: Any, local: bool) -> Any:
    """A result with what its worker pickled for a local client rebuilt (:func:`actors._values.unpickled`), or
    :class:`RemoteError` saying why it cannot be: this client is on another host, or the value does not
    unpickle here."""
    def refuse(value: Pickled) -> Any:
        raise RemoteError("TypeError", f"job {info.id} ({_fn_of(info)}): its value holds Python objects its worker "
                          "pickled for a client on the daemon's host; nothing that crossed tcp is unpickled here")

    try:
        return unpickled(value) if local else unpickled(value, refuse)
    except RemoteError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the value's unpickling raised
        raise RemoteError("TypeError", f"job {info.id} ({_fn_of(info)}): its return value came back but cannot be "
                          f"rebuilt here: {type(exc).__name__}: {exc}", info.traceback) from None


def _listed(infos: Sequence[JobInfo]) -> list[JobInfo]:
    """A listing's snapshots, a failed job's ``result`` left out: it is the job's exception pickled for
    ``result()`` to raise (``error_type`` and ``error_message`` say what it raised)."""
    return [i if i.state != "failed" or i.result is None else msgspec.structs.replace(i, result=None) for i in infos]


def _grace(grace: float, timeout: float | None) -> float:
    """``grace``, or the deprecated ``timeout`` it replaced (same meaning: the abort-to-kill grace)."""
    if timeout is not None:
        warnings.warn("the job option `timeout` is now `grace` (seconds between an abort and the force kill; "
                      "a run-time limit is `deadline`)", DeprecationWarning, stacklevel=3)
        return timeout
    return grace


def _unwrap(fn: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """``functools.partial(f, *a, **k)`` called with ``args``/``kwargs`` as the call of ``f`` it stands for."""
    while isinstance(fn, functools.partial):
        args, kwargs, fn = (*fn.args, *args), {**fn.keywords, **kwargs}, fn.func
    return fn, args, kwargs


def make_spec(fn: Callable[..., Any] | str, args: Iterable[Any], kwargs: dict[str, Any], *, name: str = "",
              priority: int = 0, grace: float = 0.5, deadline: float | None = None, retries: int = 0,
              resources: dict[str, float] | None = None) -> JobSpec:
    """Build a :class:`JobSpec`; ``grace`` (abort to force kill) and ``deadline`` (run-time limit) in seconds;
    ``resources`` what its worker must offer (``{"GPU": 1}``).

    Whether the function gets the task handle first is decided by the worker
    from its signature (see :func:`actors._jobfn.takes_task`), alike for every entry point.
    """
    if not (isinstance(grace, (int, float)) and 0 < grace <= MAX_TIMEOUT_MS / 1000):  # (a NaN fails every comparison)
        raise ValueError(f"grace must be positive: a finite number of seconds, at most {MAX_TIMEOUT_MS // 1000} "
                         f"(the daemon's limit), got {grace!r}")
    if deadline is not None and not (isinstance(deadline, (int, float)) and 0 <= deadline <= 1e9):
        raise ValueError(f"deadline must be a finite number of seconds, 0 to 1e9 (None or 0: no limit), "
                         f"got {deadline!r}")
    for option, value in (("priority", priority), ("retries", retries)):  # int() took 1.5, "7" and True
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise TypeError(f"{option} must be a whole number, got {value!r}")
    if not -2**63 <= priority < 2**63:
        raise ValueError(f"priority must fit in 64 bits (-2**63..2**63-1), got {priority}")
    if not isinstance(name, str):
        raise TypeError(f"name must be text, got {type(name).__name__}")
    fn, args, kwargs = _unwrap(fn, args, kwargs)  # a partial of a module-level function travels as that function
    return JobSpec(path_of(fn), list(args), dict(kwargs), name, int(priority), max(1, round(grace * 1000)),
                   float(deadline or 0.0), int(retries), True, False,
                   {k: float(v) for k, v in resources.items()} if resources else {})


def _spec_for(conn: Connection, fn: Callable[..., Any] | str, args: Iterable[Any], kwargs: dict[str, Any],
              **options: Any) -> JobSpec:
    """:func:`make_spec` for a client's ``submit``: on the daemon's host a callable without a job path (the
    script's own function, a bound method, a callable object) travels pickled, as a local Executor sends it
    (:mod:`actors.callables`), and so does a module function whose arguments hold objects of the script's own
    classes (the head then has a worker not forked from the script load it first)."""
    if not conn.local or not isinstance(fn, str) and not callable(fn):  # (make_spec refuses what is no function)
        return make_spec(fn, args, kwargs, **options)
    if isinstance(fn, str):  # a path: the worker resolves it, after loading the script when that is needed
        path, carried = fn, False
    else:
        fn, args, kwargs = _unwrap(fn, args, kwargs)
        path, carried = _route(fn)
    values = [*args, *kwargs.values()]
    script = callables.holds_script_objects({type(v) for v in values}, [values])
    if not carried and not script:
        return make_spec(path, args, kwargs, **options)
    if not carried:  # a path, its arguments holding objects of the script's classes: the head names it
        check_name(path)  # (refused here as the daemon would refuse it)
        fn = path
    try:
        head = pickled(callables.head(fn, script))
    except Exception as exc:  # noqa: BLE001 - pickle's own errors, or the callable's own __reduce__'s
        from actors._exact import unpicklable

        raise JobRefused(str(unpicklable(fn, "the function", exc))) from None
    options["name"] = options.get("name") or (fn if isinstance(fn, str) else callables.label(fn))
    return make_spec(callables.PATH, (head, *args), kwargs, **options)


_EVENT_LOCK = threading.Lock()


class _Ended:
    """A job handle's "it ended" flag, with an Event made only when somebody waits.

    Most handles of a ``submit_many`` end before anyone waits on them, and an
    Event costs ~5 us to make (a Condition and its lock).  ``set`` writes the
    flag before it looks for the Event, ``wait`` makes the Event before it
    looks at the flag again: one of the two always sees the other.
    """

    __slots__ = ("flag", "event")

    def __init__(self) -> None:
        self.flag = False
        self.event: threading.Event | None = None

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag = True
        event = self.event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None) -> bool:
        if self.flag:
            return True
        with _EVENT_LOCK:
            if self.event is None:
                self.event = threading.Event()
        return self.flag or self.event.wait(timeout)


def _keep_current(info: JobInfo) -> None:
    """A handle's listener that only keeps it current (pushes update it; nothing else to do)."""


class JobHandle:
    """A submitted job: its id, live progress and status, result and cancel."""

    def __init__(self, client: "Client", job_id: int, info: JobInfo | None = None) -> None:
        self.client = client
        self.id = job_id
        self._info = info
        self._done = _Ended()
        if info is not None and info.state in TERMINAL:
            self._done.set()
        self._callbacks: list[Callable[[JobInfo], None]] = []

    def _update(self, info: JobInfo) -> None:
        if self._done.is_set():
            # a stale snapshot (a reply or push sent before the end) must not undo it, nor a second copy of the end
            # replace the first: a refresh racing the push of the end gets its shared-memory result too, which the
            # push's import took already (handed over once), and made result() say it was taken
            return
        self._info = info
        if info.state in TERMINAL:
            self._done.set()
        for cb in list(self._callbacks):
            try:
                cb(info)
            except Exception:  # a bug of the caller's callback: in the log, never raised into watch() or a refresh
                self._callback_failed(info)

    def _callback_failed(self, info: JobInfo) -> None:
        """A watch callback raised: the first time said with its traceback, and how often at the job's end
        (a callback that fails at every update of a chatty job would flood the log)."""
        failures = getattr(self, "_failures", 0) + 1
        self._failures = failures
        if failures == 1:
            _log.exception("event=watch-callback-failed job=%d fn=%s detail=the on_update callback raised (it is "
                           "called again at the next update; later failures are counted at the job's end)",
                           self.id, info.fn)
        elif info.state in TERMINAL:
            _log.error("event=watch-callback-failed job=%d fn=%s failures=%d detail=the on_update callback raised "
                       "at %d updates of this job", self.id, info.fn, failures, failures)

    def refresh(self) -> JobInfo:
        """Fetch the job's current snapshot from the daemon."""
        return self._fetch(None)

    def _fetch(self, timeout: float | None) -> JobInfo:
        """:meth:`refresh` within ``timeout`` seconds and the client's own timeout (None: the client's)."""
        info: JobInfo
        wait = self.client.timeout if timeout is None else min(timeout, self.client.timeout)
        (info,) = self.client._call(GetJobs([self.id]), timeout=wait).jobs
        self._update(info)
        return info

    @property
    def info(self) -> JobInfo:
        """Latest known snapshot (fetched when nothing was pushed yet)."""
        if self._info is None or (self._info.state not in TERMINAL and not self._callbacks):
            return self.refresh()
        return self._info

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``done``, ``failed``, ``cancelled``, ``killed`` or ``worker-lost``."""
        return self.info.state if not self._done.is_set() else self._info.state  # type: ignore[union-attr]

    @property
    def progress(self) -> float:
        """Progress 0..1 as the job last set it."""
        return self.refresh().progress if not self._done.is_set() else self._info.progress  # type: ignore[union-attr]

    @property
    def status_message(self) -> str:
        """The job's status message."""
        return self.refresh().status if not self._done.is_set() else self._info.status  # type: ignore[union-attr]

    @property
    def properties(self) -> dict[str, Any]:
        """Properties the job set with ``task.set_property``."""
        return self.refresh().properties if not self._done.is_set() else self._info.properties  # type: ignore[union-attr]

    def events(self) -> list[tuple[float, str, str]]:
        """Events recorded on the job (``abort``, ``stalled``, ``killed``, ``requeued``), oldest first."""
        return [tuple(e) for e in self.refresh().events]

    def done(self) -> bool:
        """Whether the job reached a final state (as far as this client has heard)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> JobInfo:
        """Block until the job ends; returns its final snapshot.

        Raises :class:`WaitTimeout` when ``timeout`` seconds pass first (the job goes on).
        """
        timeout = _wait_limit(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while not self._done.is_set():
            left = _REFETCH_EVERY if end is None else min(_REFETCH_EVERY, end - time.monotonic())
            if left <= 0:
                raise WaitTimeout(f"job {self.id} did not finish within {timeout:g}s (it is still "
                                  f"{self._info.state if self._info else 'queued'}; it goes on: wait again or cancel it)")
            if not self._done.wait(left):
                try:  # fallback if a push was lost
                    self._fetch(None if end is None else max(0.1, end - time.monotonic()))
                except TransportError:  # the daemon restarted, or is slow: no news, and this wait's time is its own
                    pass  # (the connection watches the job again once the daemon is back, or ends it as lost)
        assert self._info is not None
        return self._info

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its value.

        Raises :class:`RemoteError` if the job raised (with the remote traceback),
        :class:`JobCancelled` if it was cancelled or killed, :class:`JobTimeout`
        if it passed its deadline, :class:`JobLost` if its worker died with no
        retry left, and :class:`WaitTimeout` if ``timeout`` seconds pass first.
        """
        return _raise_for(self.wait(timeout), local=self.client.conn.local)

    def cancel(self, block: bool = False, timeout: float | None = 30.0) -> JobInfo | None:
        """Ask the job to stop (``should_abort()`` turns true; force kill after its timeout).

        With ``block=True`` returns only when the job has stopped, with its final snapshot.
        """
        reply = self.client._call(Cancel(self.id, block), timeout=timeout)
        if isinstance(reply, JobInfos):
            self._update(reply.jobs[0])
            return reply.jobs[0]
        return None

    def __repr__(self) -> str:
        state = self._info.state if self._info else "?"
        return f"<JobHandle {self.id} {state}>"


def _connect(config: Config, private: "PrivateDaemon | None", endpoint: str | None = None,
             curve: tuple[str, str] | None = None) -> Connection:
    """A connection to ``config``'s daemon; the private daemon started for it stops if that fails."""
    try:
        return Connection(config, endpoint, curve, watch=private.proc.pid if private and private.proc else None)
    except BaseException:
        if private is not None:
            private.stop()
        raise


def _open(name: str | None, config: Config | None, private: bool, max_workers: int | None,
          endpoint: str | None = None, curve: tuple[str, str] | None = None
          ) -> tuple[Config, "PrivateDaemon | None", Connection]:
    """A client's config, its private daemon (when asked for one) and its connection."""
    from actors._private import PrivateDaemon

    own = PrivateDaemon(max_workers, config) if private else None
    if own is not None:
        config = own.config
    if config is None and name is None and endpoint is None:  # in a job: the daemon that runs it (whatever --name
        config = home()  # or config file it was started with; its jobs have the user's environment)
    config = config or load_config(overrides={"daemon": {"name": name}})
    return config, own, _connect(config, own, endpoint, curve)


def _check_timeout(timeout: Any, or_none: str = "") -> None:
    """ValueError unless ``timeout`` is a number of seconds, more than 0 and at most 1e9 (or None, when ``or_none``
    says so): NaN, inf, 0, a bool or a string made every later call fail with a raw error instead."""
    if timeout is None and or_none:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 1e9:  # NaN fails too
        raise ValueError(f"timeout must be {or_none}a number of seconds, more than 0 and at most 1e9, got {timeout!r}")


def _wait_limit(timeout: Any) -> float | None:
    """A wait's ``timeout`` as it is waited: None for no limit (``None`` or infinity), seconds (0 or less: look
    once); ValueError for what is no number of seconds (NaN, a bool, a string: they waited for ever, or failed
    with a raw TypeError)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or math.isnan(seconds := float(timeout)):
        raise ValueError(f"timeout must be None (no limit) or a number of seconds, got {timeout!r}")
    return None if seconds == math.inf else seconds


def _states(states: Iterable[str] | str) -> list[str]:
    """A listing's states: one state given as text is that state (``jobs("done")`` listed the states "d", "o"...)."""
    return [states] if isinstance(states, str) else list(states)


def _specs_of(specs: Any) -> list[JobSpec]:
    """``submit_many``'s specs as a list; TypeError naming the first that is no JobSpec (it raised AttributeError
    from deep inside the connection)."""
    listed: list[JobSpec] = list(specs)
    if listed and set(map(type, listed)) != {JobSpec}:  # (one pass in C)
        i, bad = next((i, s) for i, s in enumerate(listed) if type(s) is not JobSpec)
        raise TypeError(f"submit_many takes the JobSpecs spec() or make_spec() build; item {i} is a "
                        f"{type(bad).__name__}")
    return listed


def _workers_of(workers: Any) -> int:
    """``scale``'s number of workers; OutOfRange for one that is no whole number (2.5 was taken as 2)."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        if not (isinstance(workers, float) and workers.is_integer()):
            raise OutOfRange(f"cannot scale to {workers!r} workers: give a whole number 0..1024")
    return int(workers)


# Clients collected unclosed (the program dropped them): closed by one thread of their own, never where the
# collector ran (that thread may hold the connection's locks; see _close_when_dropped)
_DROPPED: "SimpleQueue[Callable[[], None]]"
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def _reaper_queue() -> "SimpleQueue[Callable[[], None]]":
    """The queue of the reaper thread, which runs what is put there, one after another (started at first use)."""
    global _DROPPED, _reaper
    reaper = _reaper
    if reaper is not None and reaper.is_alive():  # no lock once it runs: finalizers call this from wherever the
        return _DROPPED                            # collector happens to run
    with _reaper_lock:
        if _reaper is None or not _reaper.is_alive():  # (the first client; or in a fork's child, none runs)
            import queue

            if _reaper is None:
                _DROPPED = queue.SimpleQueue()
            _reaper = threading.Thread(target=_reap_dropped, name="ensemble-client-reaper", daemon=True)
            _reaper.start()
    return _DROPPED


def _close_when_dropped(client: object, conn: Connection, private: Any) -> "weakref.finalize[Any, Any]":
    """Close ``conn`` (and stop ``private``) once ``client`` is collected without ``close()``; the finalizer.

    For a :class:`Client` and an :class:`AsyncClient`.  Its I/O thread kept a
    dropped client's connection open for the life of the process (13
    descriptors and a thread here, 2 descriptors in the daemon: 1,000 dropped
    clients held 13,006 and 3,001).  The collector runs the finalizer in
    whatever thread it runs in, which may hold the connection's locks (or be
    an event loop's, which must not wait for a daemon to stop), so it only
    queues the closing for the reaper thread (``queue.SimpleQueue.put`` is
    safe there), which needs no event loop: an async client's may be closed
    by then.  A client's pending jobs keep it alive (their listeners hold its
    handles; an async client's pinger task too, while its loop runs), so it
    goes once they have ended.  Not at exit: the program's end closes what is
    left.
    """
    dropped = weakref.finalize(client, _reaper_queue().put, functools.partial(_close_dropped, conn, private))
    dropped.atexit = False
    return dropped


def _close_dropped(conn: Connection, private: Any) -> None:
    conn.close()
    if private is not None and not conn.forked:
        private.stop()


def _reap_dropped() -> None:
    """The reaper thread: close each dropped client's or executor's connection and stop its private daemon."""
    while True:
        release = _DROPPED.get()
        try:
            release()
        except Exception:  # noqa: BLE001 - one that cannot be closed must not end the reaper
            _log.exception("event=dropped-client-close-failed")


class _OnConnection:
    """What :class:`Client` and :class:`AsyncClient` do alike without asking the daemon: build a job's spec, and
    make and free shared-memory arrays."""

    conn: Connection

    def spec(self, fn: Callable[..., Any] | str, *args: Any, name: str = "", priority: int = 0, grace: float = 0.5,
             deadline: float | None = None, retries: int = 0, kwargs: dict[str, Any] | None = None,
             resources: dict[str, float] | None = None) -> JobSpec:
        """The job :meth:`submit` would send, for :meth:`submit_many`: it takes what ``submit`` takes (the
        script's own functions, bound methods and callable objects too, on the daemon's host), where
        :func:`make_spec`, which knows no daemon, takes ``"module:function"`` and module functions only."""
        return _spec_for(self.conn, fn, args, kwargs or {}, name=name, priority=priority, grace=grace,
                         deadline=deadline, retries=retries, resources=resources)

    def empty(self, shape: Any, dtype: Any = "float64") -> Any:
        """A numpy array in shared memory: passed to jobs by handle, no copy (and written in place).

        It stays allocated until :meth:`free` or :meth:`close`.
        """
        return self.conn.arrays.empty(shape, dtype)

    def free(self, array: Any) -> None:
        """Release an array from :meth:`empty`."""
        self.conn.arrays.free(array)


class Client(_OnConnection):
    """Synchronous client of a running daemon.  A context manager; close it when done.

    ``Client()`` connects to the daemon named in the config (``default``), or
    in a job to the daemon running it; ``Client(name="x")`` to another.  Raises :class:`DaemonNotRunning` when none
    runs, unless you ask for a private one: ``Client(private=True,
    max_workers=N)`` starts a jobs-only daemon of its own and stops it on
    ``close()`` (its audio and script calls need the real daemon).  Methods
    block the calling thread until the daemon answers (default timeout 30 s,
    :class:`TransportError` past it).
    """

    def __init__(self, name: str | None = None, config: Config | None = None, timeout: float = 30.0,
                 endpoint: str | None = None, curve: tuple[str, str] | None = None, *, private: bool = False,
                 max_workers: int | None = None) -> None:
        """``endpoint``: a ``tcp://`` address of a daemon on another host, with ``curve`` =
        (this client's ``.key_secret`` file, the daemon's ``server.key``).  ValueError for a ``timeout`` that is not
        a number of seconds, more than 0 and at most 1e9 (before anything starts)."""
        _check_timeout(timeout)
        self.config, self._private, self.conn = _open(name, config, private, max_workers, endpoint, curve)
        self.timeout = timeout
        self._dropped = _close_when_dropped(self, self.conn, self._private)

    # -- plumbing
    def _call(self, msg: Any, timeout: float | None = -1.0) -> Any:
        wait = self.timeout if timeout == -1.0 else timeout
        if not isinstance(msg, Watch):  # a watch must come from the socket its pushes go to
            return self.conn.request(msg, wait)
        fut = self.conn.call(msg)
        try:
            return fut.result(wait)
        except concurrent.futures.TimeoutError:
            raise NoAnswer.to(type(msg).__name__, wait) from None

    def close(self) -> None:
        """Close the connection (jobs keep running in the daemon; a private daemon stops).

        In a fork's child it only lets go: the connection and the private daemon are the parent's."""
        self._dropped.detach()
        self.conn.close()
        private, self._private = self._private, None
        if private is not None and not self.conn.forked:
            private.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs
    def submit(self, fn: Callable[..., Any] | str, *args: Any, name: str = "", priority: int = 0,
               grace: float = 0.5, deadline: float | None = None, retries: int = 0,
               kwargs: dict[str, Any] | None = None, timeout: float | None = None,
               resources: dict[str, float] | None = None) -> JobHandle:
        """Submit a job; returns once the daemon journaled it.

        ``fn`` is ``"module:function"`` or a module-level function (from the
        daemon's host also a bound method, a callable object or the script's
        own function: they travel pickled, as an ``Executor`` sends them), called with
        ``args`` and ``kwargs``; it reaches its task handle through
        :func:`actors.current_task`, or receives it first when its first parameter
        is annotated ``Task`` (``actors.Task``; a parameter merely named ``task``
        gets its argument), as from every entry point.  ``grace`` (s) is the
        time between an abort (cancel, deadline, stop) and the force kill;
        ``deadline`` (s) the run-time limit from the start; ``retries`` how often
        to rerun after a worker death.  ``timeout`` is the old name of ``grace``.
        ``resources`` (``{"GPU": 1}``): it runs only on a worker whose slot offers
        them, waiting in the queue by priority while those are busy.
        Raises :class:`JobRefused` (not allowed, bad path, lambda, resources no
        worker can ever offer) or :class:`QueueFull`; ``ValueError`` for a
        ``grace`` (``timeout``) or ``deadline`` that is not a finite number in range.
        """
        spec = self.spec(fn, *args, name=name, priority=priority, grace=_grace(grace, timeout), deadline=deadline,
                         retries=retries, kwargs=kwargs, resources=resources)
        return self.submit_many([spec])[0]

    def submit_many(self, specs: list[JobSpec]) -> list[JobHandle]:
        """Submit many jobs in one message: specs from :meth:`spec` (what ``submit`` takes) or :func:`make_spec`."""
        handles: dict[int, JobHandle] = {}
        early: dict[int, JobInfo] = {}
        lock = threading.Lock()

        def listener(info: JobInfo) -> None:
            with lock:
                h = handles.get(info.id)
                if h is None:
                    early[info.id] = info
                    return
            h._update(info)

        fut = self.conn.submit(_specs_of(specs), listener)
        try:
            ids = fut.result(self.timeout)
        except concurrent.futures.TimeoutError:
            raise TransportError(f"the daemon did not acknowledge the submit within {self.timeout:g}s"
                                 f"{self.conn.held_by_listener()}") from None
        with lock:
            for jid in ids:
                handles[jid] = JobHandle(self, jid)
                handles[jid]._callbacks.append(_keep_current)  # pushes keep it current
            pending = dict(early)
        for jid, info in pending.items():
            handles[jid]._update(info)
        return [handles[j] for j in ids]

    def _submit_task(self, token: str, fn: str, args: list[Any], name: str, grace: float) -> int:
        """The controller's own job (a script's background task): internal or script functions; returns its id.

        Needs the token the daemon gave the controller at spawn; any other
        caller gets :class:`PermissionDenied`.  Watch it with :meth:`watch`.
        """
        spec = JobSpec(fn, list(args), {}, name, 0, max(1, round(grace * 1000)))
        reply = self.conn.request(TaskSubmit(token, [spec], False), self.timeout)
        assert isinstance(reply, Submitted)
        return reply.ids[0]

    def job(self, job_id: int) -> JobHandle:
        """Reattach to a job by id (from any process); its updates are pushed from now on."""
        handle = JobHandle(self, job_id)
        self.conn.listen(job_id, handle._update)
        handle._callbacks.append(_keep_current)
        (info,) = self._call(Watch([job_id], True)).jobs
        handle._update(info)
        return handle

    def watch(self, job_id: int, on_update: Callable[[JobInfo], None]) -> JobHandle:
        """Reattach to a job and call ``on_update(info)`` for every update: the snapshot it finds here, on this
        thread; pushes on the client's I/O thread, which waits for it (a callback that blocks holds every
        other call and job of this client: hand long work to a thread of your own).  What it raises is logged
        (``event=watch-callback-failed``, with its traceback), never raised here."""
        handle = JobHandle(self, job_id)
        handle._callbacks.append(on_update)
        self.conn.listen(job_id, handle._update)
        (info,) = self._call(Watch([job_id], True)).jobs
        handle._update(info)
        return handle

    def jobs(self, states: Iterable[str] | str = (), limit: int = 100) -> list[JobInfo]:
        """Recent jobs, newest first, optionally only in the given states (one, or several)."""
        return _listed(self._call(ListJobs(_states(states), limit)).jobs)

    def cancel(self, job_id: int, block: bool = False) -> JobInfo | None:
        """Cancel a job by id (see :meth:`JobHandle.cancel`)."""
        return JobHandle(self, job_id).cancel(block)

    # -- daemon
    def ping(self) -> Pong:
        """Round trip to the daemon."""
        return self._call(Ping())  # type: ignore[no-any-return]

    def status(self) -> StatusReply:
        """The daemon's and every actor's state."""
        return self._call(Status())  # type: ignore[no-any-return]

    def scale(self, workers: int, on: str = "") -> None:
        """Change the number of workers at runtime (idle ones retire first); ``on="ray"``: the Ray-placed ones."""
        self._call(Scale(_workers_of(workers), on))

    def shutdown(self) -> None:
        """Ask the daemon to stop in order (returns once it accepted)."""
        self._call(Shutdown())


_RANGE_CHUNK = 32  # a map's chunks of a range this long or longer travel as ranges (Executor.map)
# pickled initargs over this many bytes go once into shared memory, every job carrying only their handle (see
# Executor._spec): each job carries its executor's setup, and a 1 MB table made every submit a 1 MB frame
_SETUP_INLINE = 4096


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` running plain functions on the daemon's workers.

    Drop-in for ``ProcessPoolExecutor`` code: ``submit``/``map``/``shutdown``,
    Futures that work with ``as_completed`` and ``wait``.  Functions are called
    as ``fn(*args, **kwargs)`` and reach their task handle through
    ``actors.current_task()`` (one whose first parameter is annotated
    ``Task``, ``actors.Task``, gets it first, as from ``Client.submit``).
    Submits made close together travel as one batch.

    Which daemon: with ``config`` or ``daemon="name"`` given, that one (it must
    be running).  Otherwise the default daemon if one is running, else a
    **private daemon** started for this executor (jobs only, ``max_workers``
    workers, in a private run directory) and stopped with it, as
    ``ray.init()`` does.  One log line says which.  On a shared daemon
    ``max_workers`` caps how many of this executor's jobs run at once.
    ``resources`` (``{"GPU": 1}``): every job runs only on a worker offering them.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (), *,
                 max_tasks_per_child: int | None = None, daemon: str | None = None, config: Config | None = None,
                 grace: float = 0.5, retries: int = 0, name: str | None = None,
                 timeout: float | None = None, resources: dict[str, float] | None = None) -> None:
        """``ProcessPoolExecutor``'s arguments, then ensemble's own (keyword only).

        ``mp_context`` is accepted and ignored (workers are the daemon's
        processes).  ``initializer(*initargs)`` runs in a worker before this
        executor's first job there (a module-level function; a worker may
        serve other clients too, so it runs once per executor and worker); if
        it raises, the job fails with ``BrokenProcessPool`` and so do later
        submits.  ``max_tasks_per_child``: a worker that ran that many of this
        executor's jobs retires and the daemon starts a fresh one; on a shared
        daemon that worker also stops serving the other clients (they carry on
        on its replacement).  ``daemon``/``config`` pick the daemon,
        ``grace`` and ``retries`` apply to every job (see :meth:`Client.submit`).
        """
        from actors._private import PrivateDaemon

        if callables.LOADING:  # a worker loading the user's script to find a function of it (actors.callables)
            raise RuntimeError(
                f"{callables.LOADING[-1]} starts an Executor when it is imported: a worker imports the script to "
                "find your function, as multiprocessing does; put the code that starts the Executor under "
                "`if __name__ == \"__main__\":`")
        del mp_context  # accepted for ProcessPoolExecutor code; the daemon's workers are its processes
        if max_workers is not None:  # a float failed only at the first submit, in the daemon
            if isinstance(max_workers, bool) or not hasattr(type(max_workers), "__index__"):
                raise TypeError(f"max_workers must be an int (a number of worker processes) or None, got "
                                f"{max_workers!r}")
            max_workers = int(max_workers)  # numpy's integers too
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be >= 1, got {max_tasks_per_child}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        init_path, init_carried = _route(initializer) if initializer is not None else ("", False)
        # the initializer itself travels, first among its arguments, when it has no importable name (actors.callables)
        head = (callables.head(initializer),) if init_carried else ()
        # pickled now, before a private daemon's directory is made: one that does not pickle is refused saying which
        init_blob = _dump_initargs(head, tuple(initargs)) if init_path or max_tasks_per_child else b""
        initargs = (*head, *initargs)
        daemon = daemon or name
        self._private: PrivateDaemon | None = None
        self._cap = max_workers
        if config is None and daemon is None:
            shared = load_config()
            # in a job, an executor of its own, as a process pool made in a pool's worker is a new pool: the
            # running daemon may be the job's own, whose workers would all wait for jobs queued behind them
            # (config= or daemon= still picks a running daemon)
            in_job = in_job_process()  # any of its threads: one a job started waits on the job as much
            if not in_job and RunDir(shared.run_dir).is_locked():
                config = shared
                _log.info("event=executor daemon=%s detail=attached to the running daemon", shared.name)
            else:  # started at the first submit, as ProcessPoolExecutor starts its processes (see conn)
                self._private = PrivateDaemon(max_workers, shared, start=False)
                config = self._private.config
                self._cap = None  # the pool is this executor's own
        self.config = config or load_config(overrides={"daemon": {"name": daemon}})
        self._starting = threading.Lock()
        self._start_error: BaseException | None = None
        self._conn: Connection | None = None if self._private is not None else _connect(self.config, None)
        if self._conn is not None:  # a shared daemon given up for gone ([jobs] reconnect_wait) breaks the pool too
            self._conn.gone_as = _broken_pool
            self._conn.lost_as = ("failed", POOL_BROKEN)
        # what is released if this executor is collected unshut (or is still open at exit): its connection, once
        # made, and its private daemon, made or not (its directory exists already), as a pool shuts down then
        self._owned: list[Connection] = [] if self._conn is None else [self._conn]
        self._pid = os.getpid()  # the process it serves: a fork's child may not use it, nor release it
        _reaper_queue()  # (started now, not in a finalizer: see _release_collected)
        weakref.finalize(self, _release_collected, self._owned, self._private, self._pid)
        self._acks: list[Future[list[int]]] = []  # the daemon's answers to map's submits (ids), for a clean close
        self._unacked = 0  # submits whose ids have not come back yet (under _lock; _acked tells when none)
        # local: values cross pickled, exactly (a private daemon is always local)
        self._exact = self._conn is None or not self._conn.endpoint.startswith("tcp://")
        # on a shared daemon, at most _cap of this executor's jobs dispatched or running: held by the daemon, as
        # this group's cap (JobSpec.cap)
        self._cap_group = os.urandom(8).hex()
        self._grace = _grace(grace, timeout)
        self._retries = retries
        self._resources = resources
        self._futures: dict[int, Future[Any]] = {}
        self._live: set[Future[Any]] = set()  # every future not yet done, with or without its job id
        self._cancels: list[Future[Any]] = []  # Cancel requests for cancelled futures, sent before closing
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._templates: dict[Any, JobSpec] = {}  # per function: its JobSpec without arguments (see _template)
        self._shutdown = False
        self._broken = ""  # why the pool is broken (an initializer raised, no worker left); submits then raise it
        self._setup: WorkerSetup | None = None
        if init_path or max_tasks_per_child:
            # local: pickled, arrays too, as ProcessPoolExecutor pickles them; over 4 kB it crosses once, in shared
            # memory (_share_setup), not with each job (an array sent as MessagePack went, and was journaled, with
            # each: 4 MB a job for an array of 500,000 floats, and a map's merged submits over the frame limit)
            exact = self._exact
            self._setup = WorkerSetup(os.urandom(8).hex(), init_path, [init_blob] if exact else list(initargs),
                                      exact, max_tasks_per_child or 0)
        self._maps: set[_map.MapRun] = set()  # map calls whose jobs have not all ended
        _finish_at_exit(self)

    @property
    def conn(self) -> Connection:
        """The connection to the daemon; a private one is started here, at its first use (a submit or a map).

        As ``ProcessPoolExecutor`` (fork) starts its processes at the first
        submit: a worker forked then has the functions the script defined
        after creating the executor, and an executor never used starts nothing.
        """
        conn = self._conn
        if conn is not None:
            return conn
        with self._starting:
            if self._conn is None:
                if self._start_error is not None:
                    raise self._start_error
                if os.getpid() != self._pid:  # its private daemon would start in the child, in the parent's place
                    raise WrongContextError(
                        f"this Executor belongs to process {self._pid}, and this process ({os.getpid()}) is a fork "
                        "of it: an executor does not cross a fork; make a new Executor() in this process")
                private = self._private
                assert private is not None
                try:
                    private.start()
                    conn = _connect(self.config, private)
                except BaseException as exc:
                    self._start_error = exc
                    raise
                conn.gone_as = _broken_pool  # its death breaks the pool, as a worker's does ProcessPoolExecutor's
                conn.lost_as = ("failed", POOL_BROKEN)
                self._owned.append(conn)
                self._conn = conn
            return self._conn

    def _note_broken(self, info: JobInfo) -> None:
        """A worker's initializer failed for this job, or no worker is left: the pool is broken from now on,
        as ProcessPoolExecutor's."""
        if info.error_type == POOL_BROKEN and not self._broken:
            gone = self._conn.gone if self._conn is not None else None
            self._broken = str(gone) if gone is not None else info.error_message

    def _check_open(self) -> None:
        """Raise as ``ProcessPoolExecutor`` does for a broken pool (a failed initializer) or after shutdown."""
        if self._broken:
            from concurrent.futures.process import BrokenProcessPool

            raise BrokenProcessPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; returns a Future."""
        self._check_open()
        fn, args, kwargs = _unwrap(fn, args, kwargs)
        template = self._template_of(fn)
        # local: the exact values, as ProcessPoolExecutor passes them (tuples stay tuples, sets sets, your classes
        # yours); big numpy arrays among the arguments leave the pickle and cross through shared memory
        pickled = self._exact
        fut: Future[Any] = _JobFuture(self)
        if template.fn == callables.PATH:  # the callable itself travels, first among the arguments
            args = (callables.head(fn), *args)
        if pickled:
            inline = self.conn.arrays.inline_limit
            limit = inline if any(is_ndarray(v) or over(v, inline) for v in (*args, *kwargs.values())) else None
            if limit is not None and "numpy" not in sys.modules:  # big bytes leave as arrays of bytes (actors._exact)
                import numpy  # noqa: F401
            try:
                head = template.fn == callables.PATH
                payload = dumps_arguments(template.name if head else template.fn, args, kwargs, limit, head)
                if template.fn != callables.PATH and callables.mentions_script(payload[0]):
                    # the script's own classes among the arguments: sent as a callable job, whose head has the
                    # worker load the script first when it was not forked from it (see actors.callables)
                    template = self._callable_template(fn)
                    args = (callables.head(fn, script=True), *args)
                    payload = dumps_arguments(template.name, args, kwargs, limit, head=True)
                payload = spill(payload, self.conn.limits.max_frame // 2)  # a pickle over it crosses beside the frame
            except PICKLE_ERRORS as exc:  # this job fails at once, as ProcessPoolExecutor's future would
                fut.set_exception(exc)
                return fut
            spec = msgspec.structs.replace(template, args=payload, pickled=True)
        else:
            spec = msgspec.structs.replace(template, args=list(args), kwargs=dict(kwargs))
        return self._send_job(fut, spec, pickled)

    def _send_job(self, fut: Future[Any], spec: JobSpec, pickled: bool) -> Future[Any]:
        """Send ``spec``, whose end completes ``fut``; ``fut`` (raises what sending raised: a private daemon that
        could not start).  Under a ``max_workers`` cap on a shared daemon the daemon holds back the jobs over it
        (the spec's ``cap``, see :meth:`_spec`)."""
        job = _Submitted(self, fut, spec, pickled)
        with self._lock:
            self._live.add(fut)
        fut.add_done_callback(_future_done)  # a plain function: a bound method kept here would be a cycle
        try:
            job.send()
        except BaseException as exc:  # (its private daemon could not start, say): the caller gets the error,
            fut.set_exception(exc)  # and the future ends with it, so no shutdown, nor the program's exit, waits
            raise
        return fut

    def _template_of(self, fn: Callable[..., Any]) -> JobSpec:
        """:meth:`_template`, from the cache when it is there."""
        try:
            found = self._templates.get(fn)
        except TypeError:  # an unhashable callable
            found = None
        return found or self._template(fn)

    def _callable_template(self, fn: Callable[..., Any]) -> JobSpec:
        """The JobSpec of a job that carries ``fn`` pickled (:mod:`actors.callables`), labelled by its name."""
        return self._spec(callables.PATH, callables.label(fn))

    def _spec(self, path: str, name: str = "") -> JobSpec:
        """A JobSpec of ``path`` with no arguments and this executor's job options (its worker setup too)."""
        spec = make_spec(path, (), {}, name=name, grace=self._grace, retries=self._retries, resources=self._resources)
        if self._cap is not None:  # (a max_workers over MAX_CAP caps nothing the daemon could queue)
            spec = msgspec.structs.replace(spec, cap=min(self._cap, MAX_CAP), cap_group=self._cap_group)
        setup = self._setup
        if setup is not None and setup.pickled and len(setup.initargs[0]) > _SETUP_INLINE:
            setup = self._share_setup(setup)
        return spec if setup is None else msgspec.structs.replace(spec, setup=setup)

    def _share_setup(self, setup: WorkerSetup) -> WorkerSetup:
        """``setup`` with its pickled initargs moved into shared memory: ``[b"", handle]``, as a spilled value
        (:func:`actors._exact.spill`); the segment is this executor's connection's, unlinked when it closes,
        after the executor's last job.  Done once, at the first job."""
        conn = self.conn  # (starts a private daemon: outside the lock)
        with self._lock:
            if self._setup is setup:
                import numpy as np

                blob = setup.initargs[0]
                arr = conn.arrays.empty((len(blob),), "uint8")
                arr[:] = np.frombuffer(blob, dtype=np.uint8)
                self._setup = msgspec.structs.replace(setup, initargs=[b"", handle_of(arr)])
            assert self._setup is not None
            return self._setup

    def _template(self, fn: Callable[..., Any]) -> JobSpec:
        """This executor's JobSpec for ``fn`` with no arguments yet, built once per function (name checks included).

        A callable without a ``module:function`` path a job may name (a bound method, a callable object, a
        function of the script itself, ``subprocess.run``...) is sent pickled by a local executor, as
        ``ProcessPoolExecutor`` sends every function (see :mod:`actors.callables` and :func:`_route`); a lambda
        or a closure is refused with the fix.  A remote executor sends paths only, which the daemon checks.
        """
        path, carried = _route(fn) if self._exact else (path_of(fn), False)
        spec = self._callable_template(fn) if carried else self._spec(path)
        try:
            if len(self._templates) >= 256:  # bound methods and closures made per call must not pile up
                self._templates.clear()
            self._templates[fn] = spec
        except TypeError:  # an unhashable callable: built every time
            pass
        return spec

    def _on_future_done(self, fut: Future[Any]) -> None:
        if fut.cancelled():
            _start(fut)  # CANCELLED -> CANCELLED_AND_NOTIFIED: wait() and as_completed() count it as done
            conn = self._conn
            if hasattr(fut, "job_id") and conn is not None and not conn.closed \
                    and not getattr(fut, "_ens_cancelling", False):  # (else the daemon cancelled it already)
                self._cancels.append(conn.call(Cancel(fut.job_id, False, True)))
        with self._lock:
            self._live.discard(fut)
            close_now = self._shutdown and not self._live and self._conn is not None and not self._conn.closed
        if close_now:  # shutdown(wait=False) was called and the last future just finished
            threading.Thread(target=self._close, name="ensemble-executor-close", daemon=True).start()

    def _close(self) -> None:
        # a future cancelled before the daemon named its job sends its Cancel once the id arrives: wait for the ids
        concurrent.futures.wait(list(self._acks), timeout=10)
        with self._lock:
            self._acked.wait_for(lambda: not self._unacked, timeout=10)
        concurrent.futures.wait(list(self._cancels), timeout=10)  # let the daemon hear every cancel
        with self._starting:  # none starts after this
            self._start_error = self._start_error or RuntimeError("cannot schedule new futures after shutdown")
        _release(self._owned, self._private, self._pid)

    def _cancel(self, futures: list[Future[Any]]) -> list[bool]:
        """Cancel these futures as ``ProcessPoolExecutor`` does, in one pipelined round trip: a job the daemon
        has not started is cancelled; one that started runs on (its future now says ``running()``); the
        answer for each is the future's ``cancel()``.

        A future whose submit is in flight waits for its job id first. On the connection's I/O thread (a done
        callback) nothing may wait: the future is cancelled here and its job at the daemon if still queued.
        """
        conn = self._conn
        if conn is None or conn.closed or conn.on_io_thread():
            return [Future.cancel(f) for f in futures]
        waits = []
        with self._lock:
            for f in futures:
                if getattr(f, "_ens_sent", False) and not hasattr(f, "job_id"):  # its submit in flight
                    f._ens_idwait = threading.Event()  # type: ignore[attr-defined]  # set by _Submitted.on_ids
                    waits.append(f._ens_idwait)  # type: ignore[attr-defined]
        deadline = time.monotonic() + _CANCEL_WAIT
        for ev in waits:
            ev.wait(max(0.0, deadline - time.monotonic()))
        asked: list[tuple[int, Future[Any]]] = []
        for i, f in enumerate(futures):
            jid = getattr(f, "job_id", None)
            if jid is not None and f._state == "PENDING":
                f._ens_cancelling = True  # type: ignore[attr-defined]  # its "cancelled" info is this answer's
                asked.append((i, conn.call(Cancel(jid, False, True))))
        answers = dict.fromkeys(range(len(futures)), "cancelled")  # never sent, or no id: cancelled here
        for i, call in asked:
            try:
                answers[i] = call.result(max(0.1, deadline - time.monotonic())).detail
            except Exception:  # noqa: BLE001 - no answer (the daemon gone, say): cancelled here, as before
                pass
        out = []
        for i, f in enumerate(futures):
            detail = answers[i]
            if detail == "cancelled" or detail.endswith("(cancelled)"):
                out.append(Future.cancel(f))
            else:  # it started (or ended): as the pool's call queue, it runs on; its end completes the future
                if detail == "running":
                    _start(f)
                out.append(False)
            f._ens_cancelling = False  # type: ignore[attr-defined]
        return out

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map`: ``fn`` over the zipped iterables, results in order.

        Each chunk of ``chunksize`` items is one job (as ``ProcessPoolExecutor``
        sends them), and the jobs leave in large batches with no Future per
        item (see :mod:`actors._map`).  The first failure is raised when the
        iterator reaches it; ``timeout`` (s, from this call) raises
        ``TimeoutError``; leaving the iterator early cancels what has not run.
        A ``functools.partial`` travels pickled with each chunk, as the pools
        send it (its function must be one a job may run).  Under a
        ``max_workers`` cap on a shared daemon the daemon holds back the
        chunks over it, as submits.  On a remote daemon, with numpy arrays or
        bytes over ``jobs.inline_array_limit`` among the items (they keep
        their shared-memory path) or objects of the script's own classes, it
        falls back to one job per item.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if not isinstance(chunksize, int):  # (the pools' islice raises ValueError for 1.5 too)
            raise ValueError(f"chunksize must be an int, got {chunksize!r}")
        self._check_open()
        if len(iterables) == 1:  # the common case, as the pools take it: the values, not 1-tuples of them
            only = iterables[0]
            # a list or tuple is read where it is (every chunk is cut before map returns), anything else listed once;
            # a range holds ints only (no scan), and long chunks of it travel as ranges (no int made here; a
            # pickled range costs more than a few ints, so short chunks go as lists)
            kept = type(only) in (list, tuple) or (type(only) is range and chunksize >= _RANGE_CHUNK)
            cols: list[Sequence[Any]] = [cast(Sequence[Any], only) if kept else list(only)]
            ints = type(only) is range
        else:  # zip's rule: as long as the shortest (an endless iterable beside a finite one is fine)
            items = list(zip(*iterables))
            cols = [list(c) for c in zip(*items)] if items else []
            ints = False
        n = len(cols[0]) if cols else 0
        if not n:
            return iter(())
        types: set[type] = {int} if ints else {t for c in cols for t in set(map(type, c))}  # one pass in C
        if not self._exact or callables.holds_script_objects(types, cols) \
                or any(is_ndarray_type(t) for t in types) or _big_bytes_among(types, cols, self.config):
            return super().map(fn, *cols, timeout=timeout)
        if isinstance(fn, functools.partial):  # its function passes the rules a submitted one does; it travels whole
            inner = _unwrap(fn, (), {})[0]
            path, carried = _route(inner)
            if not carried:  # what the daemon would refuse by the function's path is refused here
                check_name(path)
            spec = self._callable_template(inner)
        else:
            spec = self._template_of(fn)  # the initializer and max_tasks_per_child hold for map's jobs too
        # a chunk is the slice of each iterable: the worker runs map(fn, *chunk), as the pools' mapstar does; a
        # callable without a job path travels in each chunk, first (as the pools pickle the function with each)
        head = [callables.head(fn)] if spec.fn == callables.PATH else []
        me = weakref.ref(self)  # the run is kept here (its acks): a strong reference back would be a cycle

        def note_broken(info: JobInfo) -> None:
            ex = me()
            if ex is not None:
                ex._note_broken(info)

        run = _map.MapRun(self.conn, msgspec.structs.replace(spec, pickled=True), cols, chunksize, head,
                          self._cancels, note_broken)
        with self._lock:
            self._live.add(run.done)
            self._maps.add(run)
            self._acks = [a for a in self._acks if not a.done()] + run.acks

        def ended(_: Future[None]) -> None:
            ex = me()
            if ex is not None:
                with ex._lock:
                    ex._live.discard(run.done)
                    ex._maps.discard(run)

        run.done.add_done_callback(ended)
        return run.results(timeout, keep=self)  # the values hold this executor until read or dropped

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``wait`` block until submitted futures finish.

        Without ``wait`` it returns at once and the connection closes when the
        last pending future is done.
        """
        with self._lock:
            self._shutdown = True
            futures = list(self._live)
            maps = list(self._maps)
        if cancel_futures:
            self._cancel([f for f in futures if f._state == "PENDING" and isinstance(f, _JobFuture)])
            for run in maps:
                run.cancel()
        if wait or not futures:
            _OPEN.discard(self)
            concurrent.futures.wait(futures)
            self._close()
        # else: still in _OPEN, so a private executor's work still runs if the program ends now: the pool's
        # exit waits for its work after shutdown(wait=False) too


def _big_bytes_among(types: set[type], cols: list[Sequence[Any]], cfg: Config) -> bool:
    """Whether a map's items hold a bytes or bytearray over the inline limit: they go one job each then, and so
    through shared memory (:mod:`actors._exact`), as items that are arrays do (looked at only when bytes are
    among the items' types)."""
    if bytes not in types and bytearray not in types:
        return False
    limit = cfg.jobs.inline_array_limit
    if types <= {bytes, bytearray}:  # items of bytes only: their lengths read in C
        return any(max(map(len, c)) > limit for c in cols)
    return any(over(v, limit) for c in cols for v in c)


class _JobFuture(Future[Any]):
    """An :class:`Executor` future whose :meth:`cancel` is ``ProcessPoolExecutor``'s: it cancels a job that
    has not started, and returns False, leaving the job to finish, for one that has.

    It knows its executor until it is done, no longer: a future kept by the
    user does not keep an executor (and its private daemon) alive.
    """

    def __init__(self, ex: Executor) -> None:
        super().__init__()
        self._ens_ex: Executor | None = ex

    def cancel(self) -> bool:
        ex = self._ens_ex
        if ex is None or self._state != "PENDING":
            return super().cancel()
        return ex._cancel([self])[0]


def _future_done(fut: Future[Any]) -> None:
    """Every Executor future's done callback: its executor's bookkeeping, then the future forgets it."""
    ex = getattr(fut, "_ens_ex", None)
    if ex is not None:
        ex._on_future_done(fut)
        fut._ens_ex = None  # type: ignore[attr-defined]


_OPEN: "weakref.WeakSet[Executor]" = weakref.WeakSet()  # executors not shut down (see _finish_at_exit)


def _dump_initargs(head: tuple[Any, ...], initargs: tuple[Any, ...]) -> bytes:
    """``head + initargs`` pickled (``head``: the initializer, when it travels with them); the error of a part that
    does not pickle names it as the caller does, ``initializer`` or ``initargs[i]`` counted in ``initargs``."""
    try:
        return cast(bytes, dumps((*head, *initargs), "initargs"))
    except PICKLE_ERRORS:
        if head:  # ([fn], or [a marker of the script, fn]: see callables.head)
            dumps(head[0][-1], "initializer")
        dumps(initargs, "initargs")
        raise


def _finish_at_exit(ex: Executor) -> None:
    """Have an executor finish its submitted work when the interpreter exits, unless shut down before.

    As ``ProcessPoolExecutor`` does: a script that submits and ends without
    ``shutdown`` or ``with`` still gets its jobs run (their files written).
    A private daemon would otherwise stop with its owner and drop them; an
    executor attached to a shared daemon would never send those still in the
    batch its I/O thread had not sent (a shared daemon runs the jobs it was
    sent whether their client stays or not).
    """
    if not _OPEN:
        import atexit

        atexit.unregister(_shutdown_open)  # registered once, whatever the number of executors
        atexit.register(_shutdown_open)
    _OPEN.add(ex)


def _release(owned: list[Connection], private: "PrivateDaemon | None", pid: int) -> None:
    """Close an Executor's connection and stop its private daemon (both safe to repeat): at its shutdown, or once
    it was collected unshut (:func:`_release_collected`); from another thread when called on the connection's own
    I/O thread.  Nothing in a fork's child (not the executor's process, ``pid``): they are the parent's."""
    if os.getpid() != pid:
        return

    def release() -> None:
        for conn in owned:
            conn.close()
        if private is not None:
            private.stop()

    if any(conn.on_io_thread() for conn in owned):
        threading.Thread(target=release, name="ensemble-executor-release", daemon=True).start()
    else:
        release()


def _release_collected(owned: list[Connection], private: "PrivateDaemon | None", pid: int) -> None:
    """The finalizer of an Executor collected unshut: released at once, as at its shutdown, where that is safe;
    else on the reaper thread (see :func:`_close_when_dropped`).

    The collector runs it in whatever thread it runs in.  That thread may be
    inside a call of the connection, holding a lock of it that closing takes
    (they are not reentrant: it waited on itself for ever), or run an event
    loop, which must not wait for a private daemon to stop.  Released here,
    the results of ``list(Executor().map(...))`` are followed by the end of
    its private daemon before the next line runs.
    """
    if os.getpid() != pid:
        return
    # not `import asyncio`: the collector may run this inside the first import of asyncio (a module half made,
    # without _get_running_loop yet: "partially initialized module"), when no loop can run yet either
    running = getattr(sys.modules.get("asyncio"), "_get_running_loop", None)
    if (running is None or running() is None) and all(_free(lock) for conn in owned
                                                       for lock in (conn._lock, conn._wake_lock)):
        _release(owned, private, pid)
    else:
        _reaper_queue().put(functools.partial(_release, owned, private, pid))


def _free(lock: Any) -> bool:
    """Whether ``lock`` could be taken now (it is given back at once): False if this thread holds it, or another
    does for a moment."""
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def _shutdown_open() -> None:
    for ex in list(_OPEN):
        if ex._pid != os.getpid():  # a fork's child exiting: the parent's executor, its futures never end here
            continue
        try:
            ex.shutdown(wait=True)
        except Exception:  # noqa: BLE001 - the next executor gets its turn all the same
            _log.exception("event=executor-exit-failed")


class _Submitted:
    """One ``Executor.submit`` in flight: its future's callbacks from the I/O thread, in one object (closures
    cost six objects a job, which the collector's full passes then walk while thousands are pending)."""

    __slots__ = ("ex", "fut", "spec", "pickled", "early")

    def __init__(self, ex: Executor, fut: Future[Any], spec: JobSpec, pickled: bool) -> None:
        self.ex = ex
        self.fut = fut
        self.spec: JobSpec | None = spec  # until it is sent
        self.pickled = pickled
        self.early: list[JobInfo] | None = None  # infos that came before the job's id

    def send(self) -> None:
        ex = self.ex
        self.fut._ens_sent = True  # type: ignore[attr-defined]
        with ex._lock:
            ex._unacked += 1
        spec, self.spec = self.spec, None
        assert spec is not None, "sent twice"
        try:
            ex.conn.submit_then([spec], self.on_info, self.on_ids, progress=True)
        except BaseException:
            with ex._lock:
                ex._unacked -= 1
            raise

    def on_info(self, info: JobInfo) -> None:
        fut, ex = self.fut, self.ex
        if info.state not in TERMINAL:
            # as ProcessPoolExecutor's: running() is True, and cancel() (shutdown's cancel_futures too) leaves it
            # to finish (_start leaves a future alone unless it is pending: a retried job starts twice)
            if info.state == "running":
                _start(fut)
            return
        if info.state == "cancelled" and getattr(fut, "_ens_cancelling", False):
            return  # Executor._cancel asked for it and cancels the future with the daemon's answer
        with ex._lock:
            if not hasattr(fut, "job_id"):
                if self.early is None:
                    self.early = []
                self.early.append(info)
                return
            ex._futures.pop(info.id, None)
        ex._note_broken(info)
        _complete(fut, info, self.pickled)

    def on_ids(self, ids: list[int] | None, exc: BaseException | None) -> None:
        fut, ex = self.fut, self.ex
        with ex._lock:
            ex._unacked -= 1
            if not ex._unacked:
                ex._acked.notify_all()
        if exc is not None or not ids:
            if _start(fut):
                fut.set_exception(exc or ProtocolError("the daemon answered the submit with no job id"))
            with ex._lock:
                waiting = getattr(fut, "_ens_idwait", None)
            if waiting is not None:
                waiting.set()
            return
        (jid,) = ids
        with ex._lock:
            fut.job_id = jid  # type: ignore[attr-defined]
            ex._futures[jid] = fut
            pending, self.early = self.early, None
            waiting = getattr(fut, "_ens_idwait", None)  # a cancel waits for this id (set under this lock)
        if waiting is not None:
            waiting.set()
        if fut.cancelled():  # cancelled before the daemon named the job: cancel it there too
            ex._on_future_done(fut)
        for info in pending or ():
            self.on_info(info)


def _start(fut: Future[Any]) -> bool:
    """``set_running_or_notify_cancel`` for a pending or cancelled future only, atomically; False otherwise.

    Called on a future already running, finished, or cancelled and notified,
    ``concurrent.futures`` logs a CRITICAL "in unexpected state" line (one per
    future: hundreds for a cancelled ``map``).  The I/O thread (a job's start,
    a failed submit) and the caller's thread (a cancel) may both get here: the
    future's own lock (re-entrant) makes the look and the change one step.
    """
    with fut._condition:
        if fut._state not in ("PENDING", "CANCELLED"):
            return False
        return fut.set_running_or_notify_cancel()


def _route(fn: Any) -> tuple[str, bool]:
    """``(job path, whether fn travels pickled)`` for a local executor: a function with a job path goes by it;
    any other callable (a bound method, a callable object, the script's own function, and the standard
    library's ``subprocess.run``, ``os.stat``, ``open``, ``str.upper``...) pickled under
    ``actors.callables:pickled``, as ``ProcessPoolExecutor`` runs whatever pickles.

    A local client is the daemon's own user (it could pickle a function of its own that calls ``os.system``):
    the modules no job may *name* (``actors._jobfn.ALWAYS_DENIED``, a rule for names peers send) are no reason
    to refuse it.  Raises JobRefused for what cannot go at all (a lambda, a closure, a class defined in a
    function) and TypeError for what is no callable.
    """
    if not callable(fn):
        raise TypeError(f"{type(fn).__name__!r} object is not callable")
    qualname = getattr(fn, "__qualname__", "")
    if isinstance(fn, type):  # a class (its call builds a value): it travels pickled, no job runs a class by path
        if "<locals>" in qualname:
            raise JobRefused(f"{qualname} is a class defined in a function, which another process cannot import; "
                             "define it at module level")
        return callables.PATH, True
    try:
        path = path_of(fn)
        if _nameable(path) and isinstance(fn, _FUNCTION_TYPES):  # (a numpy ufunc has a path but is no function:
            return path, False  # a worker refuses to run it by name, so it travels pickled, as in the pool)
    except JobRefused:
        if "<lambda>" in qualname or "<locals>" in qualname:  # (its message says how to fix it)
            raise
    return callables.PATH, True


def _nameable(path: str) -> bool:
    """Whether a job path passes the name rules (else a local executor sends the callable pickled)."""
    try:
        check_name(path)
    except JobRefused:
        return False
    return True


_AS_BROKEN_POOL: dict[type[Exception], type[Exception]] = {}


def _as_broken_pool(base: type[Exception]) -> type[Exception]:
    """``base`` that is also a ``BrokenProcessPool`` (ProcessPoolExecutor's error when one of its processes
    dies), so code catching that keeps working: a DaemonError when an Executor's private daemon died, a JobLost
    when the worker running its job did (unlike that pool, this one is not broken then: the daemon replaced the
    worker, and later submits run).  Made once per base."""
    made = _AS_BROKEN_POOL.get(base)
    if made is None:
        from concurrent.futures.process import BrokenProcessPool  # imports multiprocessing: only when it happens

        made = _AS_BROKEN_POOL[base] = type("BrokenProcessPool", (base, BrokenProcessPool), {"__module__": __name__})
    return made


def _broken_pool(message: str) -> Exception:
    """The error an Executor's calls raise once its private daemon died, or its shared one was given up."""
    return _as_broken_pool(DaemonError)(message)


def _outcome(info: JobInfo, pickled: bool = False) -> Any:
    """A final job's value, or raise what it stands for: the job's own exception (pickled jobs, its remote
    traceback as the cause, as ProcessPoolExecutor re-raises it), RemoteError for a value that cannot be
    rebuilt here, else the error of its final state (:func:`_raise_for`).  One rule for futures and ``map``."""
    if pickled and info.state == "done" and type(info.result) is tuple:  # it ran on a worker of another host:
        return _raise_for(info)[0]  # its value came as MessagePack, which the daemon wrapped (never a pickle)
    crossed = pickled_value(info.result) if pickled and info.state in ("done", "failed") else None
    if crossed is not None:
        blob, refs = crossed
        try:  # from our own user's job, through our own daemon; its big arrays came through shared memory
            value = loads_referencing(blob, refs) if refs else pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - e.g. a class whose constructor wants other arguments
            what = "return value" if info.state == "done" else f"exception ({info.error_type})"
            raise RemoteError(
                "TypeError", f"job {info.id} ({_fn_of(info)}): its {what} came back but cannot be rebuilt here: "
                f"{type(exc).__name__}: {exc}", info.traceback) from None
        if info.state == "done":
            return value
        if isinstance(value, BaseException):
            value.__cause__ = RemoteError(info.error_type, info.error_message, info.traceback)
            raise value
    return _raise_for(info, _as_broken_pool(JobLost) if info.state == "worker-lost" else JobLost)


def _complete(fut: Future[Any], info: JobInfo, pickled: bool = False) -> None:
    """End ``fut`` with the job's outcome (straight from pending: a Future needs no ``running`` state first).

    A future the user cancelled stays cancelled (its notification is
    :meth:`Executor._on_future_done`'s business).
    """
    if fut.done():
        return
    end: Callable[[Any], None]
    try:
        value = _outcome(info, pickled)
    except BaseException as exc:  # noqa: BLE001 - the job's own exception, or the error its end stands for
        end, arg = fut.set_exception, exc
    else:
        end, arg = fut.set_result, value
    try:
        end(arg)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


def _aio() -> Any:
    """The asyncio module, imported on first use by the asyncio client."""
    import asyncio

    return asyncio


class AsyncJobHandle:
    """An awaitable job handle for :class:`AsyncClient`."""

    def __init__(self, client: "AsyncClient", job_id: int) -> None:
        self.client = client
        self.id = job_id
        self.info: JobInfo | None = None
        import asyncio  # only for the asyncio client: `import actors.client` stays free of asyncio (~0.1 s)

        self._final: asyncio.Future[JobInfo] = asyncio.get_running_loop().create_future()
        self._followers: list[asyncio.Queue[JobInfo]] = []  # of updates(), each its own

    def _update(self, info: JobInfo) -> None:
        if self.info is not None and self.info.state in TERMINAL:
            return  # the first end heard stays (a stale snapshot must not undo it; a second copy's result is taken)
        self.info = info
        for queue in self._followers:
            queue.put_nowait(info)
        if info.state in TERMINAL and not self._final.done():
            self._final.set_result(info)

    async def updates(self) -> "AsyncIterator[JobInfo]":
        """Every snapshot of the job as it changes (progress, status message, properties, state), ending with its
        final one: ``async for info in handle.updates(): ...``.

        The first is the job's current state, asked of the daemon; the rest
        are pushed as they happen (progress at most every 20 ms, the last
        value always), and read as :attr:`progress`, :attr:`properties`...
        too.  The value or error is still :meth:`result`'s.  It raises what
        an await of the handle would, should that end first (TransportError
        when the daemon stops answering, ClientClosed).
        """
        self._on_own_loop("follow it")  # pushes are applied on that loop: another would wait for ever
        aio = _aio()
        queue: asyncio.Queue[JobInfo] = aio.Queue()
        self._followers.append(queue)
        try:
            if not self._final.done():
                (info,) = (await self.client._call(Watch([self.id], True))).jobs  # progress is pushed from now on
                self._update(info)
            while True:
                if queue.empty() and self._final.done():  # it ended before this began (nothing more is pushed)
                    yield self._final.result()  # (or raises how it ended)
                    return
                getter = aio.ensure_future(queue.get())
                ending = self._final
                await aio.wait({getter, ending}, return_when=aio.FIRST_COMPLETED)
                if not getter.done():  # interrupted (TransportError) or closed (ClientClosed): raise it
                    getter.cancel()
                    ending.result()
                    continue
                info = getter.result()
                yield info
                if info.state in TERMINAL:
                    return
        finally:
            self._followers.remove(queue)

    def _on_own_loop(self, what: str) -> None:
        """WrongContextError unless this runs on the event loop that submitted the job (its pushes land there)."""
        if self._final.get_loop() is not _aio().get_running_loop():
            raise WrongContextError(
                f"job {self.id}'s handle belongs to the event loop that submitted it: {what} there (another "
                f"loop or thread can follow the job through a Client: `Client().job({self.id}).result()`)")

    def _known(self) -> JobInfo:
        if self.info is None:  # (a handle is made once the submit is acknowledged: its state is pushed from then on)
            return JobInfo(self.id, "", "", "queued")
        return self.info

    @property
    def state(self) -> str:
        """The job's state as this client last heard it (no round trip): its end is pushed, its progress while
        :meth:`updates` runs, and the client asks for the rest once a second (``queued`` until then); await
        :meth:`refresh` to ask the daemon now."""
        return self._known().state

    @property
    def progress(self) -> float:
        """Progress 0..1 as last heard (as :attr:`state`)."""
        return self._known().progress

    @property
    def status_message(self) -> str:
        """The job's status message as last heard (as :attr:`state`)."""
        return self._known().status

    @property
    def properties(self) -> dict[str, Any]:
        """Properties the job set with ``task.set_property``, as last heard (as :attr:`state`)."""
        return self._known().properties

    def done(self) -> bool:
        """Whether the job reached a final state (as far as this client has heard)."""
        return self._final.done()

    async def wait(self, timeout: float | None = None) -> JobInfo:
        """Await the job's end; returns its final snapshot.  WrongContextError on another event loop than the one
        that submitted it (its pushes are applied there)."""
        self._on_own_loop("await it")
        timeout = _wait_limit(timeout)
        try:
            info: JobInfo = await _aio().wait_for(_aio().shield(self._final), timeout)
            return info
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
            raise WaitTimeout(f"job {self.id} did not finish within {timeout:g}s (it goes on)") from None

    async def result(self, timeout: float | None = None) -> Any:
        """Await the job's value (errors as for :meth:`JobHandle.result`)."""
        return _raise_for(await self.wait(timeout), local=self.client.conn.local)

    def __await__(self) -> Any:
        return self.result().__await__()

    async def cancel(self, block: bool = False) -> JobInfo | None:
        """Ask the job to stop; with ``block`` return its final snapshot once it has."""
        reply = await self.client._call(Cancel(self.id, block))
        if isinstance(reply, JobInfos):
            self._update(reply.jobs[0])
            return reply.jobs[0]
        return None

    async def refresh(self) -> JobInfo:
        """Fetch the current snapshot."""
        info: JobInfo
        (info,) = (await self.client._call(GetJobs([self.id]))).jobs
        self._update(info)
        return info


class AsyncClient(_OnConnection):
    """asyncio client: ``async with AsyncClient() as c: value = await (await c.submit(...))``.

    As :class:`Client`: the named daemon, or with ``private=True`` (and
    ``max_workers``) a jobs-only daemon of its own, stopped on ``close()``.
    Every await ends:

    - a call the daemon does not answer within ``timeout`` seconds (``None``:
      no limit) raises :class:`TransportError`;
    - an await cancelled (``task.cancel()``, ``asyncio.wait_for``) leaves the
      client as it was; a submit cancelled or timed out cancels its job should
      the daemon accept it after all (nobody holds its handle);
    - while a loop has unfinished handles the client fetches them from the
      daemon once a second (64 at a time, in turn), as :meth:`JobHandle.wait`
      does should a push be lost: should the daemon not answer (killed, gone),
      each one awaited raises TransportError, and the handle stays usable
      (await it again once the daemon is back: the job is in its journal);
    - ``close()`` ends every unfinished handle with :class:`ClientClosed` (the
      jobs go on in the daemon).

    Dropped without ``close()``, it is closed once collected (a handle held
    keeps it, and so does a job it follows until the job ends), and a private
    daemon stops: by a thread of its own, without its event loop.

    Usable from several event loops, one after another or at once (a handle
    belongs to the loop that submitted it).
    """

    def __init__(self, name: str | None = None, config: Config | None = None, timeout: float | None = 30.0, *,
                 private: bool = False, max_workers: int | None = None) -> None:
        """Raises ValueError for a ``timeout`` that is not ``None`` or a number of seconds, more than 0 and at
        most 1e9 (before anything starts); :class:`DaemonNotRunning` as :class:`Client`."""
        _check_timeout(timeout, "None (no limit) or ")
        self.config, self._private, self.conn = _open(name, config, private, max_workers)
        self.timeout = timeout
        self._lock = threading.Lock()  # what follows: the client may serve loops of several threads
        self._settled = threading.Condition(self._lock)  # notified as _abandoned empties
        self._closed = False
        # submits nobody awaits any more, until answered, then the cancels of their jobs until answered: close()
        # lets them finish (closing drops what is not sent yet)
        self._abandoned: set[Future[Any]] = set()
        self._unfinished: dict[asyncio.AbstractEventLoop, set[AsyncJobHandle]] = {}  # per loop
        self._pingers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}  # per loop, while it has some
        # dropped unclosed: closed by the reaper, off every loop (the loops that used it may be closed by then)
        self._dropped = _close_when_dropped(self, self.conn, self._private)

    async def _answer(self, fut: Future[Any], what: str,
                      abandoned: Callable[[Future[Any]], None] | None = None) -> Any:
        """``fut``'s value (a Connection's future), awaited for at most :attr:`timeout` seconds.

        ``fut`` itself is never cancelled, whatever happens to this await: the
        connection resolves it on its own thread, and a cancelled one there
        failed the other submits merged with it (their jobs accepted, their
        callers told InvalidStateError).  ``abandoned(fut)`` runs should this
        await end first (cancelled or timed out).
        """
        aio = _aio()
        loop = aio.get_running_loop()
        mine: asyncio.Future[Any] = loop.create_future()

        def settle(f: Future[Any]) -> None:  # on the loop
            if mine.done():
                return
            if f.cancelled():
                mine.cancel()
                return
            error = f.exception()
            if error is not None:
                mine.set_exception(error)
            else:
                mine.set_result(f.result())

        def relay(f: Future[Any]) -> None:  # on the connection's I/O thread (or here, when done already)
            try:
                loop.call_soon_threadsafe(settle, f)
            except RuntimeError:  # the loop was closed meanwhile: nobody awaits this any more
                pass

        fut.add_done_callback(relay)
        try:
            return await aio.wait_for(mine, self.timeout)
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
            raise NoAnswer.to(what, self.timeout) from None
        finally:
            if mine.cancelled() and abandoned is not None:
                abandoned(fut)

    async def _call(self, msg: Any) -> Any:
        return await self._answer(self.conn.call(msg), type(msg).__name__)

    async def submit(self, fn: Callable[..., Any] | str, *args: Any, name: str = "", priority: int = 0,
                     grace: float = 0.5, deadline: float | None = None, retries: int = 0,
                     kwargs: dict[str, Any] | None = None, timeout: float | None = None,
                     resources: dict[str, float] | None = None) -> AsyncJobHandle:
        """Submit a job (as :meth:`Client.submit`); returns an awaitable handle.

        Raises TransportError when the daemon does not answer within
        :attr:`timeout` seconds; then, as when this await is cancelled, the job
        is cancelled should the daemon accept it later (:meth:`close` waits
        for that); ClientClosed after :meth:`close`.
        """
        spec = self.spec(fn, *args, name=name, priority=priority, grace=_grace(grace, timeout), deadline=deadline,
                         retries=retries, kwargs=kwargs, resources=resources)
        (handle,) = await self.submit_many([spec])
        return handle

    async def submit_many(self, specs: list[JobSpec]) -> list[AsyncJobHandle]:
        """Submit many jobs in one message (specs from :meth:`spec` or :func:`make_spec`); their awaitable
        handles in order, once the daemon journaled them all.  Errors and cancellation as for :meth:`submit`."""
        loop = _aio().get_running_loop()
        if self._closed:  # (close() may still be waiting for abandoned submits: the connection is open)
            from actors._errors import ClientClosed

            raise ClientClosed()
        handles: dict[int, AsyncJobHandle] = {}
        early: dict[int, list[JobInfo]] = {}

        def apply(info: JobInfo) -> None:  # on the loop, in the order pushed: before the handles exist, kept
            handle = handles.get(info.id)
            if handle is None:
                early.setdefault(info.id, []).append(info)
            else:
                handle._update(info)

        def listener(info: JobInfo) -> None:
            loop.call_soon_threadsafe(apply, info)

        ids = await self._answer(self.conn.submit(_specs_of(specs), listener), "Submit", self._abandon)
        for jid in ids:
            handles[jid] = AsyncJobHandle(self, jid)
            for info in early.pop(jid, ()):
                handles[jid]._update(info)
            self._track(loop, handles[jid])
        return [handles[jid] for jid in ids]

    def _abandon(self, submitted: Future[Any]) -> None:
        """Cancel the jobs of a submit nobody awaits any more, once the daemon has accepted them."""
        with self._lock:
            self._abandoned.add(submitted)
        submitted.add_done_callback(self._cancel_abandoned)

    def _cancel_abandoned(self, submitted: Future[Any]) -> None:
        """(``submitted`` answered, on the connection's I/O thread)"""
        cancels: list[Future[Any]] = []
        if not submitted.cancelled() and submitted.exception() is None:
            for jid in submitted.result():
                try:
                    cancels.append(self.conn.call(Cancel(jid, False)))
                except EnsembleError:  # closed meanwhile, or its private daemon died: its jobs went with it
                    break
        with self._settled:
            self._abandoned.update(cancels)  # before the submit goes: the set is never empty in between
            self._abandoned.discard(submitted)
            self._settled.notify_all()
        for cancel in cancels:
            cancel.add_done_callback(self._settle)

    def _settle(self, fut: Future[Any]) -> None:
        with self._settled:
            self._abandoned.discard(fut)
            self._settled.notify_all()

    def _wait_abandoned(self) -> None:
        """Wait until the daemon answered the submits nobody awaits and the cancels of their jobs; at most
        ``timeout`` seconds, and 10 s (a thread's: blocks)."""
        end = time.monotonic() + min(self.timeout or _CANCEL_WAIT, _CANCEL_WAIT)
        with self._settled:
            while self._abandoned and self._settled.wait(max(0.0, end - time.monotonic())):
                pass

    def _track(self, loop: asyncio.AbstractEventLoop, handle: AsyncJobHandle) -> None:
        """Keep ``handle`` until it ends, for the pings and :meth:`close` (on ``loop``, its loop)."""
        with self._lock:
            for old in [other for other in self._unfinished if other.is_closed()]:  # loops that ended
                del self._unfinished[old]
                self._pingers.pop(old, None)
            closed = self._closed
            if not closed:
                self._unfinished.setdefault(loop, set()).add(handle)
                pinger = self._pingers.get(loop)
                if pinger is None or pinger.done():
                    pinger = self._pingers[loop] = loop.create_task(self._ping_while_unfinished(loop))
                    # a loop closed by hand while it waits leaves it pending, harmlessly (it holds the client and
                    # is collected with it): asyncio logged "Task was destroyed but it is pending!" then
                    cast(Any, pinger)._log_destroy_pending = False  # (as asyncio's run_until_complete does)
        if closed:  # close() ran while the daemon answered this submit
            self._end_closed(handle)

    async def _ping_while_unfinished(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fetch ``loop``'s unfinished handles from the daemon once a second while it has some (at most
        :data:`_REFETCH_AT_ONCE` a time, in turn): the fallback, should a push be lost, that
        :meth:`JobHandle.wait` has too, and the ping: should the daemon not answer, each handle awaited raises
        TransportError (and is awaited anew after).  Runs on ``loop``; ends with the last handle."""
        turn = 0
        while True:
            await _aio().sleep(_REFETCH_EVERY)
            with self._lock:
                handles = self._unfinished.get(loop, set())
                handles.difference_update([h for h in handles if h._final.done()])
                if not handles or self._closed:
                    self._unfinished.pop(loop, None)
                    if self._pingers.get(loop) is _aio().current_task():
                        del self._pingers[loop]
                    return
                waiting = sorted(handles, key=lambda h: h.id)
            start = turn * _REFETCH_AT_ONCE % len(waiting)
            batch = waiting[start:start + _REFETCH_AT_ONCE]
            turn += 1
            try:
                reply = await self._call(GetJobs([h.id for h in batch]))
            except TransportError as exc:
                if self.conn.closed or self.conn.gone is not None:  # (a private daemon's death ends its jobs)
                    return
                for handle in waiting:
                    self._interrupt(handle, TransportError(
                        f"job {handle.id}: no answer from the daemon ({exc}); the job is kept in its journal: "
                        "await the handle again once the daemon is back"))
            except EnsembleError:  # it answered (a job it no longer knows, records over a frame): pushes go on
                if self.conn.closed or self.conn.gone is not None:
                    return
            else:
                for handle, info in zip(batch, reply.jobs):
                    handle._update(info)

    @staticmethod
    def _interrupt(handle: AsyncJobHandle, exc: Exception) -> None:
        """End the awaits of ``handle`` with ``exc``; later awaits wait anew (on the handle's loop)."""
        ending = handle._final
        if ending.done():
            return
        handle._final = ending.get_loop().create_future()
        ending.set_exception(exc)
        ending.exception()  # retrieved: asyncio would log it as never retrieved when no await was waiting

    def _end_closed(self, handle: AsyncJobHandle) -> None:
        """End ``handle`` for good with ClientClosed, on its loop (from any thread; a closed loop: nothing)."""
        from actors._errors import ClientClosed

        def end() -> None:
            if not handle._final.done():
                handle._final.set_exception(ClientClosed(
                    f"job {handle.id}: this client was closed before the job ended (it goes on in the daemon: "
                    f"`ensemble result {handle.id}`, or a new client)"))
                handle._final.exception()  # retrieved (see _interrupt)

        loop = handle._final.get_loop()
        if loop is _aio().get_running_loop():
            end()
            return
        try:
            loop.call_soon_threadsafe(end)
        except RuntimeError:  # its loop is closed: nobody can await the handle
            pass

    async def job(self, job_id: int) -> AsyncJobHandle:
        """Reattach to a job by id (submitted by any process of the same owner): an awaitable handle, its updates
        pushed from now on (as :meth:`Client.job`)."""
        loop = _aio().get_running_loop()
        handle = AsyncJobHandle(self, job_id)

        def listener(info: JobInfo) -> None:
            loop.call_soon_threadsafe(handle._update, info)

        self.conn.listen(job_id, listener)
        try:
            (info,) = (await self._call(Watch([job_id], True))).jobs
        except BaseException:
            self.conn.unlisten(job_id, listener)
            raise
        handle._update(info)
        if not handle.done():
            self._track(loop, handle)
        return handle

    async def jobs(self, states: Iterable[str] | str = (), limit: int = 100) -> list[JobInfo]:
        """Recent jobs, newest first, optionally only in the given states (as :meth:`Client.jobs`)."""
        return _listed((await self._call(ListJobs(_states(states), limit))).jobs)

    async def cancel(self, job_id: int, block: bool = False) -> JobInfo | None:
        """Cancel a job by id; with ``block`` return its final snapshot once it has stopped (as
        :meth:`Client.cancel`)."""
        return await AsyncJobHandle(self, job_id).cancel(block)

    async def ping(self) -> Pong:
        """Round trip to the daemon."""
        return await self._call(Ping())  # type: ignore[no-any-return]

    async def status(self) -> StatusReply:
        """The daemon's and every actor's state."""
        return await self._call(Status())  # type: ignore[no-any-return]

    async def scale(self, workers: int, on: str = "") -> None:
        """Change the number of workers at runtime (as :meth:`Client.scale`)."""
        await self._call(Scale(_workers_of(workers), on))

    async def shutdown(self) -> None:
        """Ask the daemon to stop in order (returns once it accepted; as :meth:`Client.shutdown`)."""
        await self._call(Shutdown())

    async def close(self) -> None:
        """Close the connection; unfinished handles raise ClientClosed (their jobs go on); a private daemon
        stops, off the event loop's thread.  Closing again does nothing.

        Waits first, off the loop too, until the daemon answered the submits cancelled or timed out and the
        cancels of their jobs (at most ``timeout`` seconds, and 10 s): closing drops what is not sent yet.
        """
        with self._lock:
            self._closed = True
            abandoned = bool(self._abandoned) and not self.conn.closed
        try:
            if abandoned:
                await _aio().to_thread(self._wait_abandoned)
        finally:  # (this await cancelled too: the connection closes all the same)
            self._close_connection()
        self._dropped.detach()  # (here, not first: a close cancelled before leaves the private daemon to it)
        private, self._private = self._private, None
        if private is not None and not self.conn.forked:  # (a fork's child: the parent's daemon)
            await _aio().to_thread(private.stop)

    def _close_connection(self) -> None:
        """Close the connection, end the unfinished handles with ClientClosed and stop the pings."""
        with self._lock:
            handles = [h for loop_handles in self._unfinished.values() for h in loop_handles]
            self._unfinished.clear()
            pingers, self._pingers = list(self._pingers.values()), {}
        self.conn.close()
        for handle in handles:
            self._end_closed(handle)
        for pinger in pingers:  # (each ends at its next ping anyway)
            try:
                pinger.get_loop().call_soon_threadsafe(pinger.cancel)
            except RuntimeError:  # its loop is closed
                pass

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncClient", "AsyncJobHandle", "Client", "Executor", "JobHandle", "make_spec"]

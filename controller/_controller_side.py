"""The controller side of a script: serialised callbacks by priority, on one thread.

Every controller callback runs on the script thread (an asyncio loop), one at
a time, taken from a priority queue: control (parameter changes, run_async
calls) before task notifications before timers before status.  A callback may
be ``async def`` and ``await wait(ms)``; other callbacks run meanwhile.  A
callback step that runs past the budget (5000 ms, as HALion's controller) is
interrupted with :class:`~controller._watchdog.ScriptTimeout` and reported, and
the script stops, as HALion's does: none of its callbacks runs, here or in
the processor, until it is loaded again (:meth:`ControllerScript._stop_script`).
A step the interrupt cannot reach (blocked in C) that still runs ``GRACE_S``
(3 s) later is wedged: :meth:`ControllerScript.check_budget` names it, and the
controller process exits to be restarted by the supervisor (see
:mod:`controller._watchdog` and :mod:`controller.actor`).
Reloading discards every pending callback and aborts the script's
background tasks; parameter values survive.  Another script starts from its
own saved values (``script-state.json``) or its defaults, never the values
of the script before.  ``ScriptReady`` says the digest of the source the
module code ran, and the parameters and UI elements sent carry the load's
number (see :mod:`controller._supervision`).  The script thread is bound to
its runtime (:func:`controller._host.bind_thread`), and a stopped runtime is
installed nowhere, so runtimes hosted one after another in a process (tests,
an offline render) never reach each other.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import logging
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import msgspec

from actors import EnsembleError, WrongContextError
from controller.messages import (
    ParamInfo, ParamValues, RunAsyncResult, RunSync, ScriptError, ScriptReady, ScriptStop, as_sent,
)
from controller._context import caller_location, loading_here
from controller._host import (
    SCRIPT_MODULE, ParamDef, add_param, bind_thread, check_arguments, defined_at, defined_param, function_name,
    load_module, uninstall,
)
from controller._ui import ScriptUi
from controller._watchdog import BUDGET_S, GRACE_S, Deadline, ScriptTimeout, wedged_text, where_blocked

log = logging.getLogger("ensemble.controller")

CONTROL, TASK, TIMER, STATUS = 0, 1, 2, 3
STATUS_INTERVAL_MS = 1000.0  # how often a script's on_status() runs
PRIORITY_NAMES = {CONTROL: "control", TASK: "task", TIMER: "timer", STATUS: "status"}
TIMER_FAILURES = 5  # a timer whose callback raises this many times in a row is stopped (reported once)


class _NotJson(ValueError):
    """What ``on_save()`` returned is not a value the state file keeps as it is."""


def _json_exact(value: Any) -> None:
    """Raise :class:`_NotJson` unless the state file keeps ``value``: None, bools, ints, finite floats, str, and
    lists (tuples: they come back lists) and str-keyed dicts of them.  An int key would come back a str, an object
    as its text and NaN as JSON's bare ``NaN``: refused, saying what and where."""
    stack, seen = [(value, "on_save()'s value")], 0
    while stack:
        v, where = stack.pop()
        seen += 1
        if v is None or type(v) in (bool, int, str):
            continue
        if type(v) is float:
            if v != v or v in (float("inf"), float("-inf")):
                raise _NotJson(f"{where} is {v!r}, which JSON cannot hold; the state saved before is kept")
            continue
        if type(v) is list or type(v) is tuple:
            if seen + len(v) > 1_000_000:
                raise _NotJson("on_save()'s value holds over a million items; the state saved before is kept")
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(v))
            continue
        if type(v) is dict:
            for k, item in v.items():
                if type(k) is not str:
                    raise _NotJson(f"{where} has the key {k!r} ({type(k).__name__}); the state file keeps str keys "
                                   "only (JSON: it would come back a str); the state saved before is kept")
                stack.append((item, f"{where}[{k!r}]"))
            continue
        raise _NotJson(f"{where} is a {type(v).__module__}.{type(v).__qualname__}, which the state file cannot keep "
                       "(it takes None, bool, int, float, str, and lists and str-keyed dicts of them); the state saved "
                       "before is kept")


class StateFile:
    """``script-state.json`` (script path -> saved parameters and ``on_save()``), written by a thread of its own.

    Why: a parameter set saves the state, and the write (a temporary file
    renamed over the old one) can wait tens of milliseconds for a busy disk:
    ext4 starts the new file's write-back at the rename.  On the script
    thread that wait delayed every callback behind it, ``run_async`` replies
    included (p99 of 67 blocks with a ``dd`` writing beside it; see
    bench/README.md).  :meth:`save` only hands the entry over; the writer
    writes the newest entries, coalescing saves made while it writes.
    :meth:`read` waits for the writes in flight, :meth:`close` writes what is
    pending.  A write that fails is logged (the values stay in memory).
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        self._pending: dict[str, str] = {}  # script path -> its entry as JSON text (the newest)
        self._then: list[Callable[[], None]] = []  # called once the pending entries are written (see save)
        self._writing = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="state-writer", daemon=True)
        self._thread.start()

    def save(self, script: str, entry: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        """Record ``script``'s newest entry (encoded now: later changes to its objects are not saved); ``then()``
        is called on the writer's thread once it is written (or its write failed, which the log says)."""
        text = json.dumps(entry, default=str)
        with self._cond:
            self._pending[script] = text
            if then is not None:
                self._then.append(then)
            self._cond.notify_all()

    def read(self, script: str) -> dict[str, Any]:
        """``script``'s saved entry ({} when none), after the writes in flight."""
        self.flush()
        try:
            data = json.loads(self.file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        entry = data.get(script, {}) if isinstance(data, dict) else {}
        return entry if isinstance(entry, dict) else {}

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every save so far is on disk (or ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._writing) and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def close(self) -> None:
        """Write what is pending and stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, {}
                then, self._then = self._then, []
                self._writing = True
            try:
                self._write(batch)
            except (OSError, ValueError) as exc:
                log.error("event=state-save-failed file=%s reason=%s", self.file, exc)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            for fn in then:
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - (the runtime stopped meanwhile): the writer goes on
                    log.warning("event=state-saved-callback-failed reason=%s", exc)

    def _write(self, batch: dict[str, str]) -> None:
        try:
            data = json.loads(self.file.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        for script, text in batch.items():
            data[script] = json.loads(text)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.file)


class ControllerScript:
    """Hosts a script in the controller process."""

    def __init__(self, outbox: Any, state_dir: Path, budget_ms: float = BUDGET_S * 1000.0, client_factory: Any = None,
                 grace_ms: float = GRACE_S * 1000.0) -> None:
        self.outbox = outbox
        self.state_dir = state_dir
        self.state = StateFile(state_dir / "script-state.json")
        self._params_lock = threading.Lock()  # the values last sent, and each send (see _send_params, _saved)
        self._params_sent: ParamValues | None = None
        self.deadline = Deadline(budget_ms / 1000.0, grace_ms / 1000.0)  # the budget's interrupt, then the grace
        self.client_factory = client_factory
        self.module: ModuleType | None = None
        self.path = ""
        self.digest = ""  # of the source the module code ran (ScriptReady.digest; "" when no script runs)
        self.params: dict[str, ParamDef] = {}
        self.values: dict[str, Any] = {}
        self.bindings: dict[str, int] = {}  # parameter name -> MIDI controller (``param bind``), persisted
        self.generation = 0  # bumped on reload; callbacks of older generations are dropped
        self.load_number = 0  # the daemon's number of the load running or last run (ScriptLoad.load), echoed back
        self.heap: list[tuple[int, int, int | None, Callable[..., Any], tuple[Any, ...], str]] = []
        self._seq = itertools.count()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.bg_tasks: list[Any] = []
        self.timers: list[_Timer] = []
        self.discarded = 0
        self.errors = 0
        self.ran: list[str] = []  # names of callbacks run, newest last (bounded)
        self.busy_since = 0.0  # when the running step began (0: none runs); a step's identity for the watchdog
        self.busy_name = ""
        self.loading_file = ""  # the script file whose module code runs now ("" when none)
        self.loading_status: dict[str, Any] = {}
        self.stopped = ""  # why the script is stopped (a callback ran past the budget); "" while it runs
        self._kept_state: dict[str, Any] = {}  # {"state": what on_save last returned}, saved while it is stopped
        self.ui = ScriptUi()  # the script's buttons, labels and progress bars (the panel draws them)
        self.loop = asyncio.new_event_loop()
        self._wakeup = asyncio.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="script", daemon=True)
        self.thread.start()
        self._ready.wait()
        self._client: Any = None
        self._held: list[Any] = []  # run_sync calls of the module code running, sent once the script is ready

    # ------------------------------------------------------------------ any thread
    def submit(self, priority: int, fn: Callable[..., Any], args: tuple[Any, ...] = (), name: str = "",
               generation: int | None = None) -> None:
        """Queue a callback (thread-safe)."""
        self.loop.call_soon_threadsafe(self._push, priority, generation, fn, args,
                                       name or getattr(fn, "__name__", "callback"))

    def _push(self, priority: int, gen: int | None, fn: Callable[..., Any], args: tuple[Any, ...], name: str) -> None:
        if gen is None:  # resolved here, on the script thread, after any reload queued before it
            gen = self.generation
        heapq.heappush(self.heap, (priority, next(self._seq), gen, fn, args, name))
        self._wakeup.set()

    def barrier(self, timeout: float = 30.0) -> None:
        """Block (another thread) until every callback queued so far has run."""
        done = threading.Event()
        self.submit(99, done.set, (), "barrier")
        if not done.wait(timeout):
            raise EnsembleError(f"the controller's queue did not drain within {timeout:g}s")

    def pending(self) -> int:
        """Callbacks waiting in the queue."""
        return len(self.heap)

    def check_budget(self) -> str:
        """Main thread: interrupt a step running past the budget; the step's name once it is wedged, else "".

        A step is wedged when it still runs ``grace_ms`` after its interrupt:
        blocked in C, where the interrupt cannot reach until the call returns.
        Nothing can stop it short of ending the process (see
        :mod:`controller._watchdog`); the caller decides.  Costs a few
        attribute reads; called every tick.
        """
        return self.busy_name if self.deadline.check(self.busy_since, self.thread.ident or 0) else ""

    def wedged(self, step: str) -> None:
        """Main thread: report that ``step`` is wedged (the controller is about to leave; see check_budget)."""
        files = tuple(f for f in (self.loading_file, getattr(self.module, "__file__", None) or "") if f)
        loc = where_blocked(self.thread.ident or 0, files)
        text = wedged_text(step, self.deadline.budget_s, self.deadline.grace_s)
        log.critical("event=script-wedged %s at %s; leaving to be restarted", text, loc)
        self.errors += 1
        self.outbox.put(ScriptError("Controller", "wedged", text, loc))

    def stop(self, wait: bool = True) -> None:
        """Abort background tasks and stop the script thread (``wait``: for it to end, at most 5 s).

        Writes the parameter values saved so far either way; a wedged script
        thread (``wait=False``) is left to end with the process.  The runtime
        is no longer installed anywhere (:func:`controller._host.uninstall`):
        a runtime made after it in the same process starts clean.
        """
        uninstall(self)
        if wait:  # (not a wedged script thread: nothing it is asked to run would run)
            self.loop.call_soon_threadsafe(self._save_before_leaving)
        for t in self.bg_tasks:
            t._abort_quietly()
        def shutdown() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)

        self.loop.call_soon_threadsafe(shutdown)
        if wait:
            self.thread.join(timeout=5)
        self.state.close()
        if self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------ script thread
    def _run(self) -> None:
        from controller._context import CONTROLLER, set_thread_context

        set_thread_context(CONTROLLER)
        bind_thread(self)  # module code and callbacks run here reach this runtime, whatever else the process hosts
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._dispatch())
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        self.loop.run_until_complete(asyncio.sleep(0))  # let cancelled tasks finish
        self.loop.close()

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.heap:
                _, _, gen, fn, args, name = heapq.heappop(self.heap)
                if gen != self.generation:
                    continue
                self._call(fn, args, name)
                await asyncio.sleep(0)  # let suspended callbacks and timers breathe between callbacks

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], name: str) -> Any:
        if self.stopped and self._of_script(fn) and self._refused(name):
            return None
        self.busy_since, self.busy_name = time.monotonic(), name
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported, never fatal
            self._report(name, exc, where=defined_at(fn))
            return None
        finally:
            self.busy_since = 0.0
        self.ran.append(name)
        del self.ran[:-2000]
        if asyncio.iscoroutine(result):
            self._track(self._run_callback(result, name))
        return result

    def _track(self, coro: Any) -> None:
        """Run ``coro`` as a task of the script: cancelled when the script is reloaded, unloaded or stopped."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_callback(self, coro: Any, name: str) -> None:
        try:
            await self._drive(coro, name, self.generation)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported, never fatal
            self._report(name, exc)

    async def _drive(self, coro: Any, name: str, gen: int) -> Any:
        """Step a coroutine callback ourselves so that each step is timed against the budget.

        Returns what the coroutine returns and raises what it raises
        (:class:`ScriptTimeout` for a step past the budget); raises
        CancelledError, after closing it, when the script it belongs to was
        reloaded or the task cancelled.  Between steps the coroutine waits
        for the future it awaited, as an asyncio Task would, and other
        callbacks run.
        """
        exc: BaseException | None = None
        while True:
            if gen != self.generation:
                coro.close()
                raise asyncio.CancelledError(f"{name}: its script was reloaded")
            self.busy_since, self.busy_name = time.monotonic(), name
            try:
                yielded = coro.throw(exc) if exc is not None else coro.send(None)
            except StopIteration as stop:
                return stop.value
            finally:
                self.busy_since = 0.0
            exc = None
            try:
                await _settle(yielded, name)
            except asyncio.CancelledError:
                coro.close()
                raise
            except BaseException as e:  # noqa: BLE001 - raised in the coroutine, where it awaited
                exc = e

    def _report(self, name: str, exc: BaseException, loading: str = "", where: str = "") -> None:
        """Send a script error to the supervisor; ``loading``: the file whose module code failed (kind load-failed).

        ``where``: the location to give when the traceback holds no line of
        the script (a call that failed before entering its function, a value
        found wrong after the call that gave it returned).
        """
        self.errors += 1
        kind = "overrun" if isinstance(exc, ScriptTimeout) else "wrong-context" if isinstance(exc, WrongContextError) else "error"
        kind = "load-failed" if loading else kind
        file = loading or getattr(self.module, "__file__", "") or ""
        tb = traceback.extract_tb(exc.__traceback__)
        loc = next((f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(tb) if f.filename == file), "")
        if isinstance(exc, SyntaxError) and exc.filename:  # where the parser stopped, not where it was called
            loc = f"{exc.filename}:{exc.lineno}"
        loc = loc or where
        overran = isinstance(exc, ScriptTimeout) and not loading
        if isinstance(exc, ScriptTimeout):  # in module code too (kind load-failed): the reason is the budget
            text = f"{name} ran past the controller's budget of {self.deadline.budget_s * 1000:.0f} ms and was stopped"
            if overran:
                text += (f"; the script is stopped: none of its controller callbacks runs until it is loaded "
                         f"again (`ensemble load {self.path or 'SCRIPT'}`), nor its processor callbacks (notes "
                         "play the default sampler)")
        else:
            text = f"{type(exc).__name__} in {name}: {exc}"
        log.error("event=script-%s %s at %s", kind, text, loc)
        self.outbox.put(ScriptError("Controller", kind, text, loc, self.load_number if loading else 0))
        if overran:
            self._stop_script(f"{name} ran past the controller's budget of {self.deadline.budget_s * 1000:.0f} ms")

    def _stop_script(self, why: str) -> None:
        """A callback ran past the budget: the script stops, as HALion's does (script thread).

        Its suspended callbacks are cancelled, its timers stopped and its
        background tasks aborted; a callback of it that comes up later (a
        parameter's ``on_change``, a timer, a click, a ``run_async`` call, a
        finish callback) does not run and is reported (:meth:`_refused`).
        Parameters stay: a change is still applied, saved and sent on (its
        ``on_change`` does not run).  A load, of this script or another,
        runs it again.  The script stops as a whole, as HALion's does: a
        :class:`~controller.messages.ScriptStop` tells the processor (through
        the daemon) to stop its callbacks too, and notes play the default
        sampler there (``ProcessorScript.handle``).
        """
        self.stopped = why
        self._halt_running()
        self.outbox.put(ScriptStop(why, self.load_number))
        log.error("event=script-stopped context=Controller reason=%s", why)

    def _halt_running(self) -> None:
        """Cancel the script's suspended callbacks and timers and abort its background tasks."""
        for t in list(self.tasks):
            t.cancel()
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        for bg in self.bg_tasks:
            bg._abort_quietly()

    def _of_script(self, fn: Any) -> bool:
        """Whether ``fn`` is the running script's code (a function, lambda or method its module defines)."""
        fn = getattr(fn, "__wrapped__", fn)  # a timer's tick: the script's function it calls
        code = getattr(fn, "__globals__", None) or getattr(getattr(fn, "__func__", None), "__globals__", None)
        return self.module is not None and code is vars(self.module)

    def _refused(self, name: str) -> bool:
        """Whether the script is stopped, so that its callback ``name`` must not run (reported if so)."""
        if not self.stopped:
            return False
        self.errors += 1
        text = (f"{name} did not run: the script is stopped ({self.stopped}); nothing of it runs in the controller "
                f"until it is loaded again")
        log.error("event=script-stopped %s", text)
        self.outbox.put(ScriptError("Controller", "stopped", text))
        return True

    # ------------------------------------------------------------------ loading (script thread)
    def load(self, path: str, reload: bool, number: int = 0) -> None:
        """Queue loading ``path`` (module code, parameters, on_load); then the processor may init.

        ``number``: the daemon's number of this load, echoed in the
        ``ScriptReady`` or ``load-failed`` ``ScriptError`` that answers it.
        Any thread; returns at once.
        """
        self.loop.call_soon_threadsafe(self._load, path, reload, number)

    def unload(self, reason: str) -> None:
        """Queue running no script: the load failed in the processor, so it failed as a whole (any thread).

        Pending callbacks are discarded and background tasks aborted, as for
        a load; the parameters go too (an empty ``ParamValues`` says so).
        The values saved so far stay in ``script-state.json``.
        """
        self.loop.call_soon_threadsafe(self._unload, reason)

    def _load(self, path: str, reload: bool, number: int = 0) -> None:
        from controller import _context

        self._save_before_leaving()
        self.load_number = number
        carried = self._acknowledged_sets()
        self._drop_callbacks()
        self.loading_file = str(Path(path).resolve())
        self.busy_since, self.busy_name = time.monotonic(), "module code"
        self._held = []
        try:
            with _context.loading_module():
                self.module, digest = load_module(path)
        except BaseException as exc:  # noqa: BLE001
            self._forget_script()
            self._report("module code", exc, loading=self.loading_file)
            for name, value, seq in carried:
                self._not_applied(name, value, f"the load of {self.loading_file} failed, and no script runs", seq)
            return
        finally:
            self.busy_since = 0.0
            self.loading_file = ""
        path = str(Path(path).resolve())
        live = self.values if path == self.path else {}  # a reload of the same script keeps its live values
        self.path, self.digest = path, digest
        saved = self.state.read(self.path)
        self.values = self._values_at_load(live, saved.get("params", {}))
        self.bindings = {name: int(cc) for name, cc in saved.get("bindings", {}).items()
                         if name in self.params and isinstance(cc, int) and 0 <= cc <= 127}
        self._kept_state = {"state": saved["state"]} if "state" in saved else {}
        on_load = getattr(self.module, "on_load", None)
        if callable(on_load) and "state" in saved:
            self._call(on_load, (saved["state"],), "on_load")
        for name, value, seq in carried:  # first in the new script's queue, after its on_load
            self._push(CONTROL, self.generation, self._apply_carried, (name, value, seq), f"param {name}")
        on_status = getattr(self.module, "on_status", None)
        if callable(on_status):  # status/paint-like notifications: lowest priority, once a second
            self.start_timer(STATUS_INTERVAL_MS, on_status, STATUS)
        self._send_params([])
        self.outbox.put(ScriptReady(self.path, number, digest))
        held, self._held = self._held, []
        for msg in held:
            self.outbox.put(msg)
        log.info("event=script-loaded path=%s reload=%s params=%d discarded=%d load=%d", self.path, reload,
                 len(self.params), self.discarded, number)

    def _values_at_load(self, live: dict[str, Any], saved: Any) -> dict[str, Any]:
        """Each declared parameter's first value it takes of: ``live`` (a reload), ``saved`` (the script's own), its default.

        Only declared parameters get a value, so that none of an earlier
        script, or of this one's earlier version, is kept or saved with it.
        """
        saved = saved if isinstance(saved, dict) else {}
        values: dict[str, Any] = {}
        for name, p in self.params.items():
            values[name] = p.default
            for source in (live, saved):
                if name in source:
                    try:
                        values[name] = p.coerce(source[name])
                        break
                    except ValueError:
                        pass
        return values

    def _acknowledged_sets(self) -> list[tuple[str, Any, int]]:
        """The clients' ``param set`` changes still queued, in order: (name, value, seq), taken out of the queue.

        The daemon acknowledged each (and forgets them when it sends a load):
        a load carries them over to the script it loads rather than
        discarding them with the other callbacks (see :meth:`_apply_carried`).
        Changes of the script's own (``set_parameter``, seq 0) go with it.
        """
        carried = sorted((args[2], args[0], args[1]) for _, _, gen, fn, args, _ in self.heap
                         if fn == self._apply_param and gen == self.generation and args[2] > 0)
        if carried:
            self.heap = [item for item in self.heap if not (item[3] == self._apply_param and item[4][2] > 0)]
            heapq.heapify(self.heap)
        return [(name, value, seq) for seq, name, value in carried]

    def _apply_carried(self, name: str, value: Any, seq: int) -> None:
        """An acknowledged change queued before a load: applied to the script loaded, else reported not applied."""
        p = self.params.get(name)
        if p is None:
            self._not_applied(name, value, f"the script loaded since ({self.path}) has no parameter {name!r}", seq)
            return
        try:
            p.coerce(value)
        except ValueError as exc:
            self._not_applied(name, value, f"the script loaded since ({self.path}) refuses it: {exc}", seq)
            return
        self._apply_param(name, value, seq)

    def _not_applied(self, name: str, value: Any, why: str, seq: int, load: bool = True) -> None:
        """Report an acknowledged ``param set`` that was not applied (status and log say so, and its sender).

        ``load``: a load came before it ran (else the controller refused it
        itself).  ``seq``: the daemon's number of the change, with which the
        daemon tells the client that sent it (``ParamState``).
        """
        self.errors += 1
        came = "a load came before it ran, and " if load else ""
        text = (f"param set {name}={value!r} was acknowledged but not applied: {came}{why}; set it again if it "
                "still matters")
        log.error("event=script-error %s", text)
        self.outbox.put(ScriptError("Controller", "error", text, "", seq=seq))

    def _unload(self, reason: str) -> None:
        carried = self._acknowledged_sets()
        for name, value, seq in carried:
            self._not_applied(name, value, f"the script was unloaded ({reason})", seq)
        self._drop_callbacks()
        self._forget_script()
        # after any ParamValues of the script; the daemon, which forgot the parameters when it sent the unload,
        # ignores this one as it does those before it (they carry the unloaded load's number)
        self._send_params([])
        log.warning("event=script-unloaded reason=%s", reason)

    def _drop_callbacks(self) -> None:
        """Discard pending callbacks, cancel tasks and timers, abort background tasks, drop UI and parameters."""
        self.generation += 1
        self.stopped = ""  # what loads next runs (a load, or none at all)
        self._kept_state = {}
        self.discarded += len(self.heap)
        self.heap.clear()
        self._halt_running()
        self.bg_tasks.clear()
        self.ui.clear(self.load_number)  # what module code adds now belongs to this load
        self.params = {}

    def _forget_script(self) -> None:
        """Run no script: no module, parameters, values, bindings or UI elements (saved values stay on disk).

        The elements module code added before it raised go too, still
        counted as the failed load's (the daemon ignores them either way).
        """
        self.module = None
        self.ui.clear(self.load_number)
        self.path = self.digest = ""
        self.params = {}
        self.values = {}
        self.bindings = {}

    # ------------------------------------------------------------------ parameters
    def define(self, p: ParamDef) -> None:
        """define_parameter in the module code of the script loading."""
        add_param(self.params, p)

    def _save_before_leaving(self) -> None:
        """The running script saves its state before it is replaced (a load, a reload) or the controller stops
        (script thread): ``on_save()`` ran only when a parameter or a binding changed, so what the script kept
        since (a click count) was lost to ``ensemble reload`` or ``down``.  Timed as any callback is."""
        if self.module is None or not self.path:
            return
        self.busy_since, self.busy_name = time.monotonic(), "on_save"
        try:
            self.save_state()
        finally:
            self.busy_since = 0.0

    def save_state(self, then: Callable[[], None] | None = None) -> None:
        """Persist parameter values and what ``on_save()`` returns (script thread); ``then()`` once written."""
        entry: dict[str, Any] = {"params": dict(self.values)}
        if self.bindings:
            entry["bindings"] = dict(self.bindings)
        on_save = getattr(self.module, "on_save", None)
        if callable(on_save) and self.stopped:
            entry.update(self._kept_state)  # no script code runs: what it last returned stays saved
        elif callable(on_save):
            try:
                state = on_save()
                _json_exact(state)
                entry["state"] = state
                self._kept_state = {"state": state}
            except _NotJson as exc:  # (it was saved as its text: an object's repr, NaN as bare NaN)
                self._report("on_save", exc, where=defined_at(on_save))
                entry.update(self._kept_state)
            except BaseException as exc:  # noqa: BLE001
                self._report("on_save", exc)
        self.state.save(self.path, entry, then)  # written by the state file's own thread

    def _param_message(self, call: list[str]) -> ParamValues:
        infos = [ParamInfo(p.name, p.long_name, self.values.get(p.name, p.default), p.default, p.min, p.max, p.kind,
                           p.processor, self.bindings.get(p.name, -1), list(p.choices)) for p in self.params.values()]
        return ParamValues(infos, call, 0, self.load_number)  # the load's number: see ParamValues.load

    def param_from_outside(self, name: str, value: Any, seq: int = 0) -> None:
        """A ``param set`` from a client or the processor: a control callback (any thread).

        ``seq``: the daemon's number for a client's change, echoed as
        ``ParamValues.applied`` once the value is applied and written to the
        state file (a control callback queued by the writer: :meth:`_saved`),
        so that the daemon knows which changes to send again to a controller
        restarted before that.  The values go out at once, without it: a
        controller killed between the two used to lose a change the daemon
        had already been told was saved.
        """
        self.submit(CONTROL, self._apply_param, (name, value, seq), f"param {name}")

    def _apply_param(self, name: str, value: Any, seq: int = 0, where: str = "") -> None:
        p = self.params.get(name)
        try:
            if p is None:
                raise KeyError(f"no parameter named {name!r}")
            value = p.coerce(value)
        except (KeyError, ValueError) as exc:
            if not seq:  # the script's own set_parameter (checked at its call: a reload came since): its error
                self._report(f"set_parameter({name!r})", exc, where=where)
                return
            # a client's, acknowledged by a daemon that did not know yet (a load failed, or unloaded the script)
            running = f"the script running ({self.path}) refuses it: " if self.path else "no script runs: "
            self._not_applied(name, value, running + (exc.args[0] if isinstance(exc, KeyError) else str(exc)), seq,
                              load=False)
            return
        self.values[name] = value
        self.save_state(functools.partial(self._saved, seq) if seq else None)
        self._send_params([name] if p.processor and p.on_change else [])
        if p.on_change is not None and not p.processor and not self._refused(f"on_change({name})"):
            self._call(p.on_change, (value,), f"on_change({name})")

    def _send_params(self, call: list[str]) -> None:
        """Send the parameters' values (script thread), kept as the last sent for :meth:`_saved`."""
        with self._params_lock:
            self._params_sent = self._param_message(call)
            self.outbox.put(self._params_sent)

    def _saved(self, seq: int) -> None:
        """The client's change numbered ``seq`` (and those before it) is on disk: the daemon hears so (the state
        file's writer thread).  The values it carries are the last sent (under the lock the script thread sends
        them under: never older than one already sent); the script thread's are not read here."""
        with self._params_lock:
            if self._params_sent is not None:
                self.outbox.put(msgspec.structs.replace(self._params_sent, call=[], applied=seq))

    def bind_from_outside(self, name: str, controller: int) -> None:
        """A ``param bind``: parameter ``name`` follows MIDI controller ``controller`` (-1: unbind).  Any thread.

        Runs as a control callback; the binding is saved with the parameter
        values and sent to the processor with them (``ParamInfo.cc``).
        """
        self.submit(CONTROL, self._apply_bind, (name, controller), f"param bind {name}")

    def _apply_bind(self, name: str, controller: int) -> None:
        p = self.params.get(name)
        if p is None:
            raise KeyError(f"no parameter named {name!r}")
        if controller < 0:
            self.bindings.pop(name, None)
        else:
            p.from_controller(0.0)  # refuses a kind no controller can move, before it is bound
            self.bindings[name] = controller
        self.save_state()
        self._send_params([])
        log.info("event=param-bind name=%s controller=%d", name, controller)

    def controller_moved(self, controller: int, value: float) -> None:
        """Bound controller ``controller`` moved to ``value`` (0..1): set every parameter bound to it.

        Any thread.  Each becomes a control callback exactly as a client's
        ``param set`` (``on_change`` runs, the value is saved and sent on).
        """
        for name, cc in list(self.bindings.items()):
            p = self.params.get(name)
            if cc == controller and p is not None:
                self.param_from_outside(name, p.from_controller(value))

    # ------------------------------------------------------------------ API used by controller.script
    def get_parameter(self, name: str) -> Any:
        """A parameter's value; in module code its default, as every copy of the module code reads it."""
        p = self._defined(name)
        return p.default if loading_here() else self.values.get(name, p.default)

    def set_parameter(self, name: str, value: Any) -> None:
        """The script's set_parameter: checked here (KeyError, ValueError), applied as a control callback.

        Should it fail when applied (a reload came between), the report
        names the line of the script that called it.
        """
        value = self._defined(name).coerce(value)
        self.submit(CONTROL, self._apply_param, (name, value, 0, caller_location()), f"param {name}")

    def _defined(self, name: str) -> ParamDef:
        """The definition of parameter ``name``, or KeyError naming those there are."""
        return defined_param(self.params, name)

    def wait(self, ms: float) -> Any:
        return asyncio.sleep(ms / 1000.0)

    def print(self, text: str) -> None:
        log.info("event=script-print %s", text)

    def run_sync(self, fn: Any, args: tuple[Any, ...], id: Any) -> None:
        """Send a run_sync call; in module code, ``fn`` is the loading script's and the call is held until it is ready.

        Held calls are sent after the load's ``ScriptReady``: the processor
        then has the script loaded, and runs them after its ``on_init``
        starts.  A load that fails drops them.
        """
        loading = sys.modules.get(SCRIPT_MODULE) if self.loading_file else None
        name = function_name(loading or self.module, fn, "run_sync")
        check_arguments(getattr(loading or self.module, name), args, f"run_sync({name})")
        msg = as_sent(RunSync(name, list(args), "" if id is None else str(id)), "run_sync", list(args))
        if loading is not None:
            self._held.append(msg)
        else:
            self.outbox.put(msg)

    def run_async_call(self, token: int, fn: str, args: list[Any]) -> None:
        """A run_async request from the processor: runs as a control callback, answers with the result.

        An ``async def`` function is driven as a callback is (each step
        within the budget, dropped on reload); what it returns or raises is
        the answer.
        """

        def call() -> None:
            if self.stopped:
                self._refused(f"run_async({fn})")
                self.outbox.put(RunAsyncResult(token, False, None, f"EnsembleError: run_async({fn}) did not run: "
                                               f"the controller's script is stopped ({self.stopped})"))
                return
            func = getattr(self.module, fn, None)
            if not callable(func):
                self.outbox.put(RunAsyncResult(token, False, None, f"the script has no function {fn!r}"))
                return
            try:
                value = func(*args)
            except BaseException as exc:  # noqa: BLE001
                self.outbox.put(RunAsyncResult(token, False, None, _error_text(exc)))
                return
            if asyncio.iscoroutine(value):
                self._track(self._finish_async(token, value, f"run_async({fn})"))
                return
            self._answer(token, value)

        self.submit(CONTROL, call, (), f"run_async({fn})")

    async def _finish_async(self, token: int, coro: Any, name: str) -> None:
        try:
            value = await self._drive(coro, name, self.generation)
        except asyncio.CancelledError:
            return  # reloaded: the processor dropped the callback that waits for it
        except BaseException as exc:  # noqa: BLE001 - the answer
            if isinstance(exc, ScriptTimeout):
                self._report(name, exc)
            self.outbox.put(RunAsyncResult(token, False, None, _error_text(exc)))
            return
        self._answer(token, value)

    def _answer(self, token: int, value: Any) -> None:
        """Send a run_async function's return value, or, when it cannot be sent, a TypeError saying so."""
        try:
            msg = as_sent(RunAsyncResult(token, True, value), "run_async's return value", [value])
        except TypeError as exc:
            msg = RunAsyncResult(token, False, None, _error_text(exc))
        self.outbox.put(msg)

    def start_timer(self, interval_ms: float, fn: Callable[[], Any], priority: int = TIMER) -> None:
        """Queue ``fn()`` every ``interval_ms`` (``controller.script.start_timer`` checked both); any thread.

        Until a reload or a stop, or until ``fn`` raised :data:`TIMER_FAILURES`
        times in a row: each failure is reported, and then once that the
        timer is stopped (see :class:`_Timer`).
        """
        timer = _Timer(self, fn, priority, max(0.001, interval_ms / 1000.0))
        self.timers.append(timer)
        self.loop.call_soon_threadsafe(timer.schedule)

    def ui_add(self, kind: str, id: str, text: str, on_click: Any = None, task: Any = None) -> None:
        self.ui.add(kind, id, text, on_click, task)

    def ui_set(self, id: str, **values: Any) -> None:
        self.ui.change(id, **values)

    def ui_event(self, id: str, value: Any) -> None:
        """A UI element was used in the panel (any thread): its callback runs as a control callback."""

        def call() -> Any:
            fn = self.ui.click_handler(id)
            if fn is not None and self._refused(f"ui {id[:64]}"):
                return None
            if fn is None:
                log.warning("event=ui-event-ignored id=%s detail=no button with a callback has this id", id[:64])
                return None
            return fn() if value is None else fn(value)

        self.submit(CONTROL, call, (), f"ui {id[:64]}")

    def client(self) -> Any:
        """A client of the daemon (for background tasks), made on first use."""
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def create_background_task(self, name: str) -> Any:
        from controller._tasks import ScriptTask

        task = ScriptTask(self, name)
        self.bg_tasks.append(task)
        return task

    def stats(self) -> dict[str, Any]:
        return {"script": self.path, "script_digest": self.digest[:12], "pending": len(self.heap),
                "discarded": self.discarded, "script_errors": self.errors, "loading": self.loading_status,
                "script_stopped": self.stopped}


class _Timer:
    """One script timer: queues its callback every interval; stopped by a reload, a stop, or failures in a row.

    Script thread (``schedule`` and the callback run there).  A callback that
    raises :data:`TIMER_FAILURES` times in a row (an ``async def`` one counted
    when its coroutine raises) stops the timer: each failure is reported as
    any callback's, then one report says the timer stopped, so a timer
    failing on every tick cannot flood the log.
    """

    def __init__(self, rt: ControllerScript, fn: Callable[[], Any], priority: int, interval_s: float) -> None:
        self.rt = rt
        self.fn = fn
        self.priority = priority
        self.interval_s = interval_s
        self.gen = rt.generation
        self.name = f"{PRIORITY_NAMES[priority]} {getattr(fn, '__name__', '')}"
        self.failures = 0
        self.cancelled = False
        self.handle: asyncio.TimerHandle | None = None
        def tick() -> Any:
            return self._tick()

        self.tick = functools.wraps(fn)(tick)  # reports (defined_at) and a stop (_of_script) see the script's function

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()

    def schedule(self) -> None:
        if not self.cancelled:
            self.handle = self.rt.loop.call_later(self.interval_s, self._fire)

    def _fire(self) -> None:
        if self.gen != self.rt.generation or self.cancelled:
            return
        if self.failures >= TIMER_FAILURES:
            self._give_up()
            return
        self.rt.submit(self.priority, self.tick, (), self.name, self.gen)
        self.schedule()

    def _tick(self) -> Any:
        if self.failures >= TIMER_FAILURES:
            return None  # queued before the last failure: the timer is stopped
        try:
            result = self.fn()
        except Exception:
            self.failures += 1
            raise
        if asyncio.iscoroutine(result):
            return self._counted(result)
        self.failures = 0
        return result

    async def _counted(self, coro: Any) -> Any:
        try:
            value = await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failures += 1
            raise
        self.failures = 0
        return value

    def _give_up(self) -> None:
        self.cancel()
        rt = self.rt
        rt.errors += 1
        text = (f"{self.name} raised {TIMER_FAILURES} times in a row: the timer is stopped (the errors above say "
                "why); fix the callback and call start_timer again, or load the script again")
        where = defined_at(self.fn)
        log.error("event=script-error %s at %s", text, where)
        rt.outbox.put(ScriptError("Controller", "error", text, where))


def _error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, as a run_async answer carries it (the processor raises it again)."""
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return f"{type(exc).__name__}: {text}"


async def _settle(yielded: Any, name: str) -> None:
    """Wait until the future a coroutine step yielded is done (the coroutine then reads its result itself).

    A bare ``yield`` (``asyncio.sleep(0)``) waits one turn of the loop.
    Raises RuntimeError for anything else: only asyncio awaitables
    (``wait(ms)``, futures) can be awaited in the controller.  Cancelled,
    it cancels the future too.
    """
    if yielded is None:
        await asyncio.sleep(0)
        return
    if not asyncio.isfuture(yielded):
        raise RuntimeError(f"{name} awaited {yielded!r}; in the controller only wait(ms) and asyncio awaitables "
                           "can be awaited")
    yielded._asyncio_future_blocking = False  # taken over, as asyncio's Task does
    try:
        await asyncio.wait([yielded])
    except asyncio.CancelledError:
        yielded.cancel()
        raise


def not_available(*_: Any) -> None:
    """Placeholder for processor-only API names on the controller runtime (guarded by available_in)."""
    raise EnsembleError("not available in the controller")


for _name in ("play_note", "post_event", "release_voice", "fade", "control_change", "get_cc", "kill_all_voices",
              "get_time", "wait_for_release", "run_async"):
    setattr(ControllerScript, _name, not_available)

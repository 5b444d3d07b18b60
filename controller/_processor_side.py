"""The processor side of a script: callbacks as coroutines driven at block boundaries.

# REALTIME CODE: ``block()`` runs on the audio thread (an engine block hook).
# It drains deques the main thread fills, steps script coroutines and posts
# engine events.  It takes no lock, does no I/O (errors and prints are queued
# for the main thread), and measures its own time against the block budget.

Each callback invocation is a coroutine.  ``await wait(ms)`` parks it until
the block containing the target frame, and events it posts then land at that
exact frame; ``await wait_for_release()`` parks it until its note is released;
``await run_async(fn)`` parks it until the controller's answer arrives.

A step past the hard limit (1000 ms) is interrupted from the main thread
(:class:`~controller._watchdog.Deadline`); one blocked in C, where the
interrupt cannot reach, holds the audio thread with it.  If it still runs
:data:`GRACE_MS` after the interrupt, the main thread reports it (``ScriptError``
kind ``wedged``: the callback and the script line it is blocked on) and the
processor leaves with ``WEDGED_EXIT`` to be restarted (see ``audio.processor``).
A script the controller stopped (a callback past its budget there) stops here
too, at the next block (``ScriptStop``): the script stops as a whole, as
HALion's does, and notes play the default sampler until the next load.
"""

from __future__ import annotations

import builtins
import collections
import itertools
import logging
import numbers
import threading
import time
import traceback
from types import ModuleType
from typing import Any, Callable

from actors import EnsembleError
from actors.messages import Message
from controller.messages import (
    ParamControl, ParamValues, RunAsync, RunAsyncResult, RunSync, ScriptError, ScriptLoad, ScriptReady, ScriptStop,
    ScriptUnload, as_sent,
)
from audio import AFTERTOUCH, PITCH_BEND, ControlChange, Fade, KillAllVoices, NoteOff, NoteOn, PitchBend
from controller._context import PROCESSOR, loading_here, set_context
from controller._host import (
    OffsideTask, ParamDef, add_param, defined_at, defined_param, function_name, install, load_module,
)
from controller._watchdog import WEDGED_EXIT, Deadline, wedged_text, where_blocked
from controller.script import Event

_log = logging.getLogger("ensemble.processor")
# How long a callback step may go on after the hard limit's interrupt before the processor is restarted.  Shorter than
# the controller's 3 s: here the blocked thread is the audio thread, silent since the step began (the hard limit's
# 1 s already), and each second of grace is a second more of silence.  An interrupted Python step ends at its next
# bytecode, so the grace only has to let a C call that is about to return (a short sleep, a read, a page fault) finish;
# past 1 s, a restart (about 1 s, samples and script mapped again) brings the audio back sooner than waiting would.
GRACE_MS = 1000.0
# the longest ``play_note(duration=...)``: an hour, as the daemon bounds a client event's delay
MAX_DURATION_MS = 3_600_000.0


class _Park:
    """What a script coroutine yields to the scheduler."""

    __slots__ = ("kind", "arg")

    def __init__(self, kind: str, arg: Any) -> None:
        self.kind = kind
        self.arg = arg

    def __await__(self) -> Any:
        return (yield self)


class _Task:
    __slots__ = ("coro", "now", "note", "event_id", "name", "send", "throw", "spent_ns", "location", "slot")

    def __init__(self, coro: Any, now: int, note: int, event_id: int, name: str, slot: int | None = None) -> None:
        self.coro = coro
        self.slot = slot  # the sample the event that started it chose (None: the default one)
        self.now = now
        self.note = note
        self.event_id = event_id
        self.name = name
        self.send: Any = None
        self.throw: BaseException | None = None
        self.spent_ns = 0
        self.location = ""


class ProcessorScript:
    """Hosts a script in the processor process; ``block`` is the engine's block hook."""

    def __init__(self, engine: Any, outbox: Any, budget_fraction: float = 0.5, hard_limit_ms: float = 1000.0,
                 grace_ms: float = GRACE_MS) -> None:
        self.engine = engine
        self.outbox = outbox  # actors._child.Outbox: messages for the main thread to send
        self.module: ModuleType | None = None  # the script loaded last, as the main thread sees it
        self.running: ModuleType | None = None  # the script whose callbacks the audio thread runs
        self.bound_controllers: frozenset[int] = frozenset()  # `param bind`: read by the processor on the audio thread
        self.path = ""
        self.digest = ""  # of the source the module code ran (ScriptReady.digest; "" when no script runs)
        self.params: dict[str, ParamDef] = {}  # the running script's (audio thread)
        self.defining: dict[str, ParamDef] = {}  # the loading script's, until its init swaps them in
        self.values: dict[str, Any] = {}
        self.inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self.ready: list[_Task] = []
        self.waiting: list[_Task] = []  # parked on wait(ms), sorted by frame when woken
        self.on_release_wait: dict[int, list[_Task]] = {}
        self.on_async: dict[int, _Task] = {}
        self.held: dict[int, list[int]] = {}  # note -> event ids still held
        self.logs: collections.deque[str] = collections.deque(maxlen=1000)
        self._tokens = itertools.count(1)
        self._ids = itertools.count(1)
        self.current: _Task | None = None
        self.issued: dict[int, str] = {}  # run_async tokens not answered yet -> the function's name
        self.deferred: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []  # run_sync calls awaiting their init
        self.frame = 0
        self.init_frame = 0
        self.stopped = ""
        self.period_ns = engine.blocksize * 1e9 / engine.samplerate
        self.budget_ns = budget_fraction * self.period_ns
        self.hard_ns = hard_limit_ms * 1e6
        self.deadline = Deadline(hard_limit_ms / 1000.0, grace_ms / 1000.0)  # the hard limit's interrupt, the grace
        self.overruns = 0
        self.last_overrun = ""
        self.longest: tuple[str, int] = ("", 0)  # this block's longest callback step: (its name, ns)
        self.errors = 0
        self.busy_since = 0.0  # monotonic time a callback step started (0: idle); the watchdog reads it
        self.thread_id = 0

    # ------------------------------------------------------------------ main thread
    def handle(self, msg: Message) -> bool:
        """A message of the script schema from the daemon: carry it out (True); anything else: False."""
        if isinstance(msg, ScriptLoad):  # answered: the daemon's load waits for this side too
            try:
                self.load(msg.path)
            except Exception as exc:  # module code failed here: report (the load fails), keep playing, with no
                self.path = self.digest = ""  # script: the one before had its parameters cleared for this load,
                self.unload()  # and would run beside a controller that does not (the daemon has it unload the new one)
                self.outbox.put(ScriptError("Processor", "load-failed", f"{type(exc).__name__} in the processor's "
                                            f"module code: {exc}", _where(exc, msg.path), msg.load))
            else:
                self.outbox.put(ScriptReady(msg.path, msg.load, self.digest))
        elif isinstance(msg, ScriptUnload):  # the load failed in the controller: the script runs nowhere
            self.path = self.digest = ""
            self.unload()
            _log.warning("event=script-unloaded reason=%s", msg.reason)
        elif isinstance(msg, ScriptStop):  # the controller stopped the script: it stops here too, at the next block
            self.inbox.append(("stop", msg.reason))
        elif isinstance(msg, RunSync):
            self.run_sync_call(msg.fn, msg.args, msg.id)
        elif isinstance(msg, RunAsyncResult):
            self.async_result(msg.token, msg.ok, msg.value, msg.error)
        elif isinstance(msg, ParamValues):
            self.bound_controllers = frozenset(p.cc for p in msg.params if p.cc >= 0)
            self.set_values({p.name: p.value for p in msg.params}, msg.call)
        else:
            return False
        return True

    def controllers_moved(self, values: dict[int, float]) -> None:
        """Main thread: bound controllers moved; the controller sets the parameters bound to them (``ParamControl``)."""
        for controller, value in values.items():
            self.outbox.put(ParamControl(controller, value))

    def load(self, path: str) -> None:
        """Import the script here (module code only; on_init runs in the first block after).

        The module and its parameters reach the audio thread together, at its
        init: callbacks of the script before (an on_init still running, say)
        keep their own parameters while this one's module code runs.
        """
        from controller import _context

        self.defining = {}
        with _context.loading_module():  # (the audio thread, running the script before, is not loading)
            module, digest = load_module(path)
        self.module, self.path, self.digest = module, path, digest
        self.inbox.append(("init", module, self.defining))

    def define(self, p: ParamDef) -> None:
        """define_parameter in the module code of the script loading."""
        add_param(self.defining, p)

    def set_values(self, values: dict[str, Any], call: list[str]) -> None:
        """New parameter values from the controller (applied at the next block)."""
        self.inbox.append(("params", values, call))

    def event(self, kind: str, note: int, velocity: float, value: float, at: int | None,
              slot: int | None = None) -> None:
        """An incoming event for the script (main thread); ``slot``: the sample a note chose (None: the default).

        The slot travels with the event, so ``play_note`` in the ``on_note`` it
        starts plays that sample, and two notes in one block keep their own.
        """
        self.inbox.append(("event", kind, note, velocity, value, at, slot))

    def async_result(self, token: int, ok: bool, value: Any, error: str) -> None:
        self.inbox.append(("async", token, ok, value, error))

    def run_sync_call(self, fn: str, args: list[Any], id: str) -> None:
        """A run_sync call from the controller: runs at the start of the next block."""
        func = getattr(self.module, fn, None) if self.module is not None else None
        if func is None:
            self.outbox.put(ScriptError("Processor", "error", f"run_sync: the script has no function {fn!r}"))
            return
        self.engine.post_call(self._guarded_call, (func, tuple(args)), id=id or None)

    def unload(self) -> None:
        """Forget the script: pending callbacks are dropped."""
        self.module = None
        self.inbox.append(("unload",))

    # ------------------------------------------------------------------ audio thread
    def block(self, start: int, frames: int) -> None:
        """Engine block hook: apply inbox, resume due coroutines, check the budget."""
        self.thread_id = threading.get_ident()
        t0 = time.perf_counter_ns()
        self.longest = ("", 0)
        self.frame = start
        end = start + frames
        inbox = self.inbox
        while inbox:
            self._apply(inbox.popleft(), start)
        if self.running is None or self.stopped:
            return
        if self.waiting:
            still = []
            for task in self.waiting:
                if task.now < end:
                    self.ready.append(task)
                else:
                    still.append(task)
            self.waiting = still
        while self.ready:
            task = self.ready.pop(0)
            self._step(task)
            if self.stopped:
                break
        spent = time.perf_counter_ns() - t0
        if spent > self.budget_ns:
            self.overruns += 1
            self.last_overrun = f"{spent / 1e6:.2f} ms of a {self.period_ns / 1e6:.2f} ms block"
            if self.overruns == 1 or self.overruns % 100 == 0:
                name, took = self.longest
                most = f"; the longest step: {name}, {took / 1e6:.2f} ms" if name else ""
                self.outbox.put(ScriptError("Processor", "overrun",
                                            f"script callbacks took {self.last_overrun} (budget "
                                            f"{self.budget_ns / 1e6:.2f} ms){most}; {self.overruns} overrun(s) "
                                            "so far"))

    def _apply(self, item: tuple[Any, ...], start: int) -> None:
        kind = item[0]
        if kind == "event":
            self._incoming(item[1], item[2], item[3], item[4], item[5] if item[5] is not None else start, item[6])
        elif kind == "async":
            task = self.on_async.pop(item[1], None)
            name = self.issued.pop(item[1], "")
            if task is not None:
                if item[2]:
                    task.send = item[3]
                else:
                    task.throw = _raised_in_controller(item[4])
                task.now = max(task.now, start)
                self.ready.append(task)
            elif name and not item[2]:  # never awaited: the error would be lost
                self.errors += 1
                self.outbox.put(ScriptError("Processor", "error", f"run_async({name}) was not awaited, and its "
                                            f"function raised in the controller: {item[4]}"))
        elif kind == "params":
            self.values.update(item[1])
            for name in item[2]:
                p = self.params.get(name)
                if p is not None and p.on_change is not None and not self._refused(f"on_change({name})"):
                    self._start(p.on_change, (self.values.get(name),), start, -1, 0, f"on_change({name})")
        elif kind == "init":
            self.running, self.params = item[1], item[2]
            for name, p in self.params.items():
                self.values.setdefault(name, p.default)
            self.stopped = ""
            self.ready.clear()
            self.waiting.clear()
            self.on_release_wait.clear()
            self.on_async.clear()
            self.issued.clear()
            self.init_frame = start
            fn = getattr(self.running, "on_init", None)
            if callable(fn):
                self._start(fn, (), start, -1, 0, "on_init")
            deferred, self.deferred = self.deferred, []
            for call, args in deferred:
                if getattr(call, "__globals__", None) is vars(self.running):
                    self._guarded_call(call, args)
        elif kind == "stop":
            if self.running is not None and not self.stopped:
                self._halt(f"the controller stopped it: {item[1]}")
                self.outbox.put(ScriptError("Processor", "stopped", f"script stopped: {self.stopped}; none of its "
                                            "processor callbacks runs until it is loaded again: notes play the "
                                            "default sampler"))
        elif kind == "unload":
            self.running, self.params = None, {}
            self.deferred.clear()
            self.issued.clear()
            self.ready.clear()
            self.waiting.clear()

    def _incoming(self, kind: str, note: int, velocity: float, value: float, at: int, slot: int | None) -> None:
        mod = self.running
        if kind == "note_on":
            eid = next(self._ids)
            self.held.setdefault(note, []).append(eid)
            fn = getattr(mod, "on_note", None) if mod is not None and not self.stopped else None
            if callable(fn):
                self._start(fn, (Event("note-on", note, velocity, id=eid),), at, note, eid, "on_note", slot)
            else:
                self.engine.post(NoteOn(note, velocity, at, self.default_slot_index if slot is None else slot))
        elif kind == "note_off":
            ids = self.held.pop(note, [])
            for eid in ids:
                for task in self.on_release_wait.pop(eid, []):
                    task.now = max(task.now, at)
                    self.ready.append(task)
            fn = getattr(mod, "on_release", None) if mod is not None and not self.stopped else None
            if callable(fn):
                self._start(fn, (Event("note-off", note, 0.0, id=ids[0] if ids else 0),), at, note, 0, "on_release")
            else:
                self.engine.post(NoteOff(note=note, at=at))
        elif kind == "cc":
            fn = getattr(mod, "on_controller", None) if mod is not None and not self.stopped else None
            if callable(fn):
                self._start(fn, (Event("controller", controller=note, value=value),), at, -1, 0, "on_controller")
            elif note == PITCH_BEND:
                self.engine.post(PitchBend(value, at))
            elif note != AFTERTOUCH:  # the default sampler has no use for channel pressure
                self.engine.post(ControlChange(note, value, at))

    def _start(self, fn: Callable[..., Any], args: tuple[Any, ...], now: int, note: int, eid: int, name: str,
               slot: int | None = None) -> None:
        task = _Task(None, now, note, eid, name, slot)
        self.current = task
        self.busy_since = time.monotonic()
        t0 = time.perf_counter_ns()
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - a script error never stops the audio
            self._error(task, exc, fn)
            return
        finally:
            self.busy_since = 0.0
            self.current = None
            self._took(name, time.perf_counter_ns() - t0)
        if hasattr(result, "send") and hasattr(result, "throw"):
            task.coro = result
            self._step(task)

    def _took(self, name: str, ns: int) -> None:
        """A callback step took ``ns``: remember it if it is this block's longest (the overrun report names it)."""
        if ns > self.longest[1]:
            self.longest = (name, ns)

    def _step(self, task: _Task) -> None:
        self.current = task
        self.frame = task.now
        self.busy_since = time.monotonic()
        t0 = time.perf_counter_ns()
        try:
            if task.throw is not None:
                exc, task.throw = task.throw, None
                park = task.coro.throw(exc)
            else:
                value, task.send = task.send, None
                park = task.coro.send(value)
        except StopIteration:
            return
        except BaseException as exc:  # noqa: BLE001
            self._error(task, exc)
            return
        finally:
            self.busy_since = 0.0
            self.current = None
            took = time.perf_counter_ns() - t0
            task.spent_ns += took
            self._took(task.name, took)
        if task.spent_ns > self.hard_ns:
            self._stop(task, f"{task.name} ran {task.spent_ns / 1e6:.0f} ms, past the processor's hard limit "
                             f"of {self.hard_ns / 1e6:.0f} ms")
            return
        if not isinstance(park, _Park):
            self._error(task, EnsembleError(f"{task.name} awaited {park!r}; in the processor only wait(), "
                                            "wait_for_release() and run_async() can be awaited"))
            return
        if park.kind == "wait":
            task.now += max(0, int(park.arg))
            self.waiting.append(task)
        elif park.kind == "release":
            if task.event_id and task.event_id in self.held.get(task.note, ()):
                self.on_release_wait.setdefault(task.event_id, []).append(task)
            else:
                self.ready.append(task)  # already released: resume at once
        elif park.kind == "async":
            self.on_async[park.arg] = task

    def _error(self, task: _Task, exc: BaseException, fn: Any = None) -> None:
        """Report a callback's error at its script line; one raised before entering ``fn`` (its arguments): at ``fn``."""
        from actors import WrongContextError
        from controller._watchdog import ScriptTimeout

        if isinstance(exc, ScriptTimeout):
            self._stop(task, f"{task.name} ran past the processor's hard limit of {self.hard_ns / 1e6:.0f} ms")
            return
        self.errors += 1
        kind = "wrong-context" if isinstance(exc, WrongContextError) else "error"
        tb = traceback.extract_tb(exc.__traceback__)
        loc = next((f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(tb) if f.filename == self._file()), "")
        if not loc and fn is not None:
            loc = defined_at(fn)
        self.outbox.put(ScriptError("Processor", kind, f"{type(exc).__name__} in {task.name}: {exc}", loc))

    def _stop(self, task: _Task, why: str) -> None:
        self._halt(why)
        self.outbox.put(ScriptError("Processor", "stopped", f"script stopped: {why}; audio continues", task.location))

    def _halt(self, why: str) -> None:
        """Audio thread: the script is stopped (``why``): its suspended callbacks are dropped, none starts again.

        Until its next load (``init``); meanwhile events go to the default
        sampler (:meth:`_incoming`) and each callback refused is reported.
        """
        self.stopped = why
        self.ready.clear()
        self.waiting.clear()
        self.on_release_wait.clear()
        self.on_async.clear()
        self.issued.clear()

    def _refused(self, name: str) -> bool:
        """Audio thread: whether the script is stopped, so that callback ``name`` must not run (reported if so)."""
        if not self.stopped:
            return False
        self.outbox.put(ScriptError("Processor", "stopped", f"{name} did not run: the script is stopped "
                                    f"({self.stopped}); nothing of it runs until it is loaded again"))
        return True

    def _file(self) -> str:
        return getattr(self.running, "__file__", "") or ""

    def _guarded_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Audio thread: a run_sync call; one of a script whose init is still in the inbox waits for it."""
        if self.running is None or getattr(fn, "__globals__", None) is not vars(self.running):
            self.deferred.append((fn, args))  # run after that script's on_init starts, dropped by another's
            return
        if self._refused(f"run_sync({getattr(fn, '__name__', fn)})"):
            return
        self._start(fn, args, self.engine.frame, -1, 0, f"run_sync({getattr(fn, '__name__', fn)})")

    # ------------------------------------------------------------------ API used by controller.script
    def get_parameter(self, name: str) -> Any:
        """A parameter's value as of this block; in module code, the default of one the module code defined."""
        if self._in_module_code():  # its own definitions, not yet the running script's (see load)
            return self._defined(self.defining, name).default
        return self.values.get(name, self._defined(self.params, name).default)

    def set_parameter(self, name: str, value: Any) -> None:
        """Check the value here (KeyError, ValueError) and send it to the controller, which applies it.

        In module code only checked: the controller's copy of the module code sets it.
        """
        from controller.messages import ParamSet

        loading = self._in_module_code()
        value = self._defined(self.defining if loading else self.params, name).coerce(value)
        if not loading:
            self.outbox.put(ParamSet(name, value))

    def _in_module_code(self) -> bool:
        """Whether the caller is the module code loading, not a callback of the script before run by a block inside
        it (on the loading thread when the engine renders from there, as a test's does; live, the audio thread's
        callback in progress is another thread's)."""
        return loading_here() and not (self.current is not None and threading.get_ident() == self.thread_id)

    _defined = staticmethod(defined_param)

    def wait(self, ms: float) -> _Park:
        return _Park("wait", ms * self.engine.samplerate / 1000.0)

    def is_note_held(self, event: Event) -> bool:
        return event.id in self.held.get(event.note, ())

    def wait_for_release(self) -> _Park:
        return _Park("release", None)

    def run_async(self, fn: Any, args: tuple[Any, ...]) -> _Park:
        name = function_name(self.running, fn, "run_async")
        token = next(self._tokens)
        self.outbox.put(as_sent(RunAsync(token, name, list(args)), "run_async", list(args)))
        self.issued[token] = name
        return _Park("async", token)

    def print(self, text: str) -> None:
        self.logs.append(text)

    def _now(self) -> int:
        return self.current.now if self.current is not None else self.frame

    def play_note(self, note: int, velocity: float, duration: float, sample: str) -> int:
        if duration is not None and duration != -1 and not (isinstance(duration, numbers.Real)
                                                           and 0 <= duration <= MAX_DURATION_MS):
            raise ValueError(f"duration must be a number of milliseconds 0..{MAX_DURATION_MS:g} (0 or -1: until "
                             f"released), got {duration!r}")
        slot = self.engine.slot_index(sample) if sample else self.default_slot()
        ev = self.engine.post(NoteOn(_whole(note), float(velocity), self._now(), slot))
        if duration is not None and duration > 0:
            self.engine.post(NoteOff(note_id=ev.note_id, at=self._now() + int(duration * self.engine.samplerate / 1000)))
        return int(ev.note_id)

    def default_slot(self) -> int:
        """The sample ``play_note`` plays without one named: the running event's, else the processor's default."""
        cur = self.current
        return cur.slot if cur is not None and cur.slot is not None else self.default_slot_index

    default_slot_index = 0  # the last loaded sample, else the built-in one (set by the processor)

    def post_event(self, event: Event) -> int:
        if event.type == "note-on":
            return self.play_note(event.note, event.velocity, -1, "")
        if event.type == "note-off":
            self.engine.post(NoteOff(note=event.note, at=self._now()))
        elif event.type == "controller":
            self.engine.post(ControlChange(event.controller, event.value, self._now()))
        return 0

    def release_voice(self, note_id: int) -> None:
        self.engine.post(NoteOff(note_id=int(note_id), at=self._now()))

    def fade(self, note_id: int, start: float | None, end: float, duration_ms: float, kill: bool) -> None:
        self.engine.post(Fade(int(note_id), start, end, duration_ms, kill, self._now()))

    def control_change(self, controller: int, value: float) -> None:
        if controller == PITCH_BEND:
            self.engine.post(PitchBend(float(value), self._now()))
        elif controller != AFTERTOUCH:
            self.engine.post(ControlChange(_whole(controller), float(value), self._now()))

    def get_cc(self, controller: int) -> float:
        return float(self.engine.cc(_whole(controller)))

    def kill_all_voices(self, fade_ms: float) -> None:
        self.engine.post(KillAllVoices(fade_ms, self._now()))

    def get_time(self) -> float:
        return float((self._now() - self.init_frame) * 1000.0 / self.engine.samplerate)

    def tick(self, period_ns: float) -> int:
        """Main thread, every loop: follow the block period, stop a callback past its hard limit, flush prints.

        Returns 0, or ``WEDGED_EXIT`` once a callback step still runs
        :data:`GRACE_MS` after the hard limit's interrupt: blocked in C, and
        the audio thread with it.  It is then reported (:meth:`_wedged`), and
        the processor must leave with that code: only a new process brings
        the audio back.  Costs a few attribute reads.
        """
        if self.period_ns != period_ns:  # the backend followed a new block size or rate
            self.period_ns = period_ns
            self.budget_ns = period_ns / 2
        while self.logs:
            _log.info("event=script-print %s", self.logs.popleft())
        if self.deadline.check(self.busy_since, self.thread_id):
            self._wedged()
            return WEDGED_EXIT
        return 0

    def _wedged(self) -> None:
        """Main thread: report the callback step that holds the audio thread (the processor is about to leave)."""
        task = self.current
        step = task.name if task is not None else "a callback"
        text = wedged_text(step, self.deadline.budget_s, self.deadline.grace_s, "the processor's hard limit")
        loc = where_blocked(self.thread_id, (self._file(),))
        _log.critical("event=script-wedged %s at %s; leaving to be restarted", text, loc)
        self.errors += 1
        self.outbox.put(ScriptError("Processor", "wedged", f"{text}; the processor was restarted, and the audio with it",
                                    loc))

    def stats(self) -> dict[str, Any]:
        return {"script": self.path, "script_digest": self.digest[:12], "script_overruns": self.overruns,
                "script_errors": self.errors, "script_stopped": self.stopped,
                "script_tasks": len(self.ready) + len(self.waiting) + len(self.on_async)
                + sum(len(v) for v in self.on_release_wait.values())}

    def create_background_task(self, name: str) -> Any:
        return OffsideTask(name, "Processor")

    # the controller-only API, for a clear error if reached (available_in checks first)
    def run_sync(self, *a: Any) -> None:  # pragma: no cover - guarded by available_in
        raise EnsembleError("run_sync is not available in the processor")


def _whole(number: Any) -> Any:
    """A MIDI number as the script gave it, a whole float (``60.0``) as its int.

    Anything else goes on as it is, for the event to refuse (``NoteOn``,
    ``ControlChange``: "note must be an int in 0..127, got 60.7"): a
    fraction is refused, never cut to the int below it.
    """
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def _raised_in_controller(error: str) -> BaseException:
    """The exception a run_async function raised (``Type: message``), to raise at the ``await``.

    A builtin exception type comes back as itself with its message (a note
    says it was raised in the controller); any other, or an answer that is
    no exception, as EnsembleError naming it.
    """
    name, sep, text = error.partition(": ")
    cls = getattr(builtins, name, None)
    if sep and isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc: BaseException = cls(text)
        except Exception:  # noqa: BLE001 - a type that needs other arguments
            pass
        else:
            exc.add_note("raised by the run_async function in the controller")
            return exc
    return EnsembleError(f"run_async function failed in the controller: {error}")


def _where(exc: BaseException, path: str) -> str:
    """Where in script ``path`` its module code raised ``exc`` (``file:line in name``; a SyntaxError's own line)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = reversed(traceback.extract_tb(exc.__traceback__))
    return next((f"{f.filename}:{f.lineno} in {f.name}" for f in frames if f.filename == path), "")


def processor_host(engine: Any, outbox: Any) -> ProcessorScript:
    """The script host of the audio processor (the ``ensemble.script_hosts`` entry point ``processor``).

    Marks this process as the processor context and installs the host as the
    runtime that the script API reaches.
    """
    set_context(PROCESSOR)
    host = ProcessorScript(engine, outbox)
    install(host)
    return host

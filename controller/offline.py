"""Offline render of an instrument script: controller and processor sides in one process.

``ensemble render SCRIPT --midi x.mid --set name=value@seconds --out x.wav``.
The processor side runs on the rendering thread (context Processor), the
controller side on its script thread (context Controller); messages between
them are routed in-process.  Between two blocks the renderer waits until the
controller's queue has drained, so run_async answers arrive in the next block
and parameter changes scheduled with ``--set`` apply at a fixed block: the
same inputs give the same file, as long as controller callbacks do not wait on
wall-clock time.  Callbacks are held to the limits they have live: a
processor callback step past the hard limit (1000 ms) is interrupted and the
script stopped in the processor, with the error the live processor reports,
and a controller step past its budget (5000 ms) likewise (see
:class:`_Watchdog`).  A render leaves the process as it found it, whether it
finished or raised: no runtime installed, no script thread, the calling
thread's script context as before; a program may render any number of
scripts one after another.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import soundfile

from actors import EnsembleError
from controller.messages import ParamSet, RunAsync, ScriptError, ScriptReady, as_sent
from audio import OfflineBackend
from audio import builtin_sample
from audio import Engine
from audio import ControlChange, Event, NoteOff, NoteOn
from audio import midi_events
from audio.render import TAIL_SECONDS, demo_events
from controller._context import CONTROLLER, PROCESSOR, set_thread_context
from controller._controller_side import ControllerScript
from controller._host import SCRIPT_MODULE, bind_thread
from controller._processor_side import ProcessorScript
from controller._processor_side import _where as processor_where
from controller._watchdog import wedged_text


class _Route:
    """An outbox whose messages are delivered in-process to the other side, as the daemon would carry them.

    Each message is encoded and decoded on the way, so that the other side
    sees what it sees live (a tuple or a set arrives as a list), and a value
    the daemon could not carry raises TypeError here as it would there.
    """

    def __init__(self, host: "OfflineScriptHost", side: str) -> None:
        self.host = host
        self.side = side

    def put(self, msg: Any) -> None:
        self.host.deliver(self.side, as_sent(msg, type(msg).__name__, []))


class _Watchdog:
    """What the live processes' main threads do for their script callbacks, on a thread of its own for a render.

    Live, each process's main thread interrupts a callback step past its
    context's limit (:class:`controller._watchdog.Deadline`: the processor's
    hard limit, the controller's budget); the step raises
    :class:`~controller._watchdog.ScriptTimeout` and is reported as it is
    live.  A step blocked in C past the limit and its grace, which live takes
    its process down to be restarted, is reported once (kind ``wedged``): a
    render has no process to restart, and waits for the call to return.
    Costs a clock read every :data:`INTERVAL_S`; stopped by :meth:`close`.
    """

    INTERVAL_S = 0.01

    def __init__(self, host: "OfflineScriptHost") -> None:
        self.host = host
        self._wedged: set[tuple[str, float]] = set()  # (side, start of the step) reported wedged
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="render-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        proc, ctrl = self.host.proc, self.host.ctrl
        while not self._closing.wait(self.INTERVAL_S):
            since = proc.busy_since
            if proc.deadline.check(since, proc.thread_id):
                step = proc.current.name if proc.current is not None else "a callback"
                self._report(PROCESSOR, since, wedged_text(step, proc.deadline.budget_s, proc.deadline.grace_s,
                                                           "the processor's hard limit"))
            since = ctrl.busy_since
            step = ctrl.check_budget()
            if step:
                self._report(CONTROLLER, since, wedged_text(step, ctrl.deadline.budget_s, ctrl.deadline.grace_s))

    def _report(self, side: str, since: float, text: str) -> None:
        if (side, since) not in self._wedged:
            self._wedged.add((side, since))
            self.host.errors.append(f"{side} wedged: {text}; the render waits for it to return")

    def close(self) -> None:
        """Stop watching (waits for the thread, at most 5 s)."""
        self._closing.set()
        self._thread.join(timeout=5)


def _text_of(exc: BaseException) -> str:
    """``str(exc)``, or what it is when the script's exception class cannot say (its ``__str__`` raised)."""
    try:
        return str(exc)
    except Exception as again:  # noqa: BLE001 - the script's __str__
        return f"(its str() raised {type(again).__name__})"


class OfflineScriptHost:
    """Both sides of a script around one engine, for offline rendering; a context manager.

    Made on the thread that renders (which it names context Processor, bound
    to the processor side: :func:`controller._host.bind_thread`), and closed
    there: :meth:`close` stops the controller side's script thread and gives
    that thread back the context and runtime it had, so that a render after
    it in the same process starts clean.  The constructor raises
    EnsembleError naming the errors when the script does not load on both
    sides, after closing what it made.  Nothing is installed for the whole
    process: each side's runtime is bound to the thread that runs it.
    """

    def __init__(self, engine: Engine, script: str, state_dir: Path) -> None:
        self.engine = engine
        self.errors: list[str] = []
        # the processor's soft-budget reports: how long callbacks took on this machine's clock, not a fault of the
        # script's logic; kept apart so that errors say the same for the same inputs (render_script's on_overrun)
        self.overruns: list[str] = []
        self.ready = False
        self.to_proc: list[Any] = []  # controller -> processor messages, applied on the render thread
        self.proc = ProcessorScript(engine, _Route(self, PROCESSOR))
        self.ctrl = ControllerScript(_Route(self, CONTROLLER), state_dir)  # its script thread is bound to it
        self._closed = False
        self._thread_context = set_thread_context(PROCESSOR)
        self._thread_runtime = bind_thread(self.proc)
        self._watchdog = _Watchdog(self)  # both sides' limits, as the live processes' main threads keep them
        engine.add_block_hook(self.proc.block)
        try:
            self.ctrl.load(script, False)
            self.sync()
            if not self.ready:
                raise EnsembleError(f"script {script} did not load: {'; '.join(self.errors) or 'unknown error'}")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OfflineScriptHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self) -> None:
        """Render thread: wait for the controller's queue, then apply what it sent the processor."""
        self.ctrl.barrier()
        while self.to_proc:
            self._to_processor(self.to_proc.pop(0))

    def deliver(self, side: str, msg: Any) -> None:
        if isinstance(msg, ScriptError) and msg.kind == "overrun":
            self.overruns.append(f"{msg.context} {msg.kind}: {msg.message}{msg.where()}")
        elif isinstance(msg, ScriptError):
            self.errors.append(f"{msg.context} {msg.kind}: {msg.message}{msg.where()}")
        elif side == CONTROLLER:
            self.to_proc.append(msg)
        elif isinstance(msg, RunAsync):
            self.ctrl.run_async_call(msg.token, msg.fn, msg.args)
        elif isinstance(msg, ParamSet):
            self.ctrl.param_from_outside(msg.name, msg.value)

    def _to_processor(self, msg: Any) -> None:
        proc = self.proc
        if isinstance(msg, ScriptReady):
            self.ready = self._load_processor(msg.path)
        else:  # run_sync calls, run_async answers, parameter values: as the processor process hands them over
            proc.handle(msg)

    def _load_processor(self, path: str) -> bool:
        """Run the module code in the processor, as the live processor does; False (reported) if it raised.

        A failure is reported as the live processor reports it (kind
        ``load-failed``, with the script's file and line), so the render
        refuses the script with the message ``ensemble load`` gives.  A
        ``SystemExit`` in the module code fails the load too: the render's
        process is not the script's to end.
        """
        try:
            self.proc.load(path)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the script's own error, reported as live
            self.deliver(PROCESSOR, ScriptError(PROCESSOR, "load-failed", f"{type(exc).__name__} in the "
                                                f"processor's module code: {_text_of(exc)}",
                                                processor_where(exc, path)))
            return False
        return True

    def feed(self, event: Event) -> None:
        """A MIDI event for the script's callbacks."""
        at = event.at or 0
        if isinstance(event, NoteOn):
            self.proc.event("note_on", event.note, event.velocity, 0.0, at)
        elif isinstance(event, NoteOff) and event.note is not None:
            self.proc.event("note_off", event.note, 0.0, 0.0, at)
        elif isinstance(event, ControlChange):
            self.proc.event("cc", event.controller, 0.0, event.value, at)

    def close(self) -> None:
        """Stop both sides and give the render thread back its context and runtime (the thread that made it).

        Waits for the controller's script thread (at most 5 s) and its state
        writes; the script's module is removed from ``sys.modules``.  Closing
        again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._watchdog.close()
            self.ctrl.stop()
            self.engine.remove_block_hook(self.proc.block)
        finally:
            bind_thread(self._thread_runtime)
            set_thread_context(self._thread_context)
            loaded = sys.modules.get(SCRIPT_MODULE)
            if loaded is not None and loaded in (self.proc.module, self.ctrl.module):
                del sys.modules[SCRIPT_MODULE]


LONGEST_S = 24 * 3600.0
"""The longest render, in seconds (``--seconds``' bound): a ``--set`` time is refused past it."""


def parse_set(text: str, seconds: float | None = None) -> tuple[str, Any, float]:
    """``name=value@seconds`` (value read as JSON where it parses) -> (name, value, seconds).

    ``seconds``: the render's length (None: as long as the MIDI and the
    changes need, at most :data:`LONGEST_S`).  Raises ValueError naming the
    ``--set`` option when ``text`` is not of that form or its time is not a
    finite number of seconds from 0 to less than the render's length
    (:func:`check_set_time`).  Context: any; pure.
    """
    import json

    spec, _, when = text.rpartition("@")
    name, sep, raw = spec.partition("=")
    if not sep or not name or not when:
        raise ValueError(f"--set {text!r} must look like NAME=VALUE@SECONDS")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    try:
        at = float(when)
    except ValueError:
        raise ValueError(f"--set {text!r}: the time {when!r} is not a number of seconds; give one after the "
                         "last @, e.g. NAME=VALUE@1.5") from None
    check_set_time(text, at, seconds)
    return name, value, at


def check_set_time(text: str, at: float, seconds: float | None) -> None:
    """Refuse the time ``at`` of parameter change ``text`` (``--set`` text) unless the render reaches it.

    A change applies in the block that holds its frame, so its time must be
    finite, not negative and less than ``seconds`` (the render's length;
    None: :data:`LONGEST_S`, as the render then lasts until the last change
    and a second more).  Raises ValueError naming ``--set``, the time and the
    times allowed.  Context: any; pure.
    """
    length = LONGEST_S if seconds is None else seconds
    why = ("is not a finite number" if not math.isfinite(at) else
           "is before the start" if at < 0 else
           f"is at or past the render's end ({length:g} s)" if at >= length else "")
    if why:
        until = (f"the render's length (--seconds {length:g})" if seconds is not None else
                 f"the longest render ({LONGEST_S:g} s)")
        raise ValueError(f"--set {text!r}: the time {at!r} {why}; give a time in seconds from 0 to less than "
                         f"{until}, e.g. NAME=VALUE@1.5")


def render_script(script: str, *, out: str | Path, midi: str | Path | None = None, sample: str | Path | None = None,
                  seconds: float | None = None, sets: list[tuple[str, Any, float]] = (),  # type: ignore[assignment]
                  samplerate: int = 48000, blocksize: int = 256, channels: int = 2, max_voices: int = 64,
                  on_overrun: Callable[[str], None] | None = None) -> tuple[Path, list[str]]:
    """Render ``script`` offline; returns the path written and the script errors reported.

    The errors are the same for the same inputs.  How long the processor's
    callbacks took against a live block's budget is not among them: it
    depends on the machine and its load, and a render has no deadline to
    miss.  Those reports (``Processor overrun: ...``, each a sign the script
    could overrun live) go to ``on_overrun`` once the file is written, or
    nowhere when it is None.

    ``sets``: (name, value, seconds) parameter changes, as :func:`parse_set`
    reads them; ValueError (naming ``--set``) for a time the render does not
    reach (:func:`check_set_time`), before anything runs.

    Runs on the calling thread and blocks until the file is written.  Raises
    EnsembleError when the script does not load (its module code raised in
    either context: the message says which, with file and line), and what
    soundfile raises on I/O; either way both sides are stopped first and the
    process is left as it was, so a second render starts clean.
    """
    engine = Engine(samplerate, blocksize, channels, max_voices)
    if sample is None:
        engine.set_buffer(0, builtin_sample(samplerate), samplerate, 60)
    else:
        data, rate = soundfile.read(str(sample), dtype="float32", always_2d=True)
        engine.set_buffer(0, data, int(rate), 60)
    events, last = midi_events(midi, samplerate) if midi is not None else demo_events(samplerate)
    for name, value, t in sets:  # a time the render never reaches, or no time (inf, nan): refused, as parse_set does
        check_set_time(f"{name}={value!r}@{t!r}", t, seconds)
    pending = sorted(((int(t * samplerate), name, value) for name, value, t in sets), key=lambda x: x[0])
    if seconds is None:
        last = max([last] + [p[0] for p in pending])
        seconds = last / samplerate + TAIL_SECONDS
    with tempfile.TemporaryDirectory(prefix="ensemble-render-") as state:
        with OfflineScriptHost(engine, str(script), Path(state)) as host:
            def between(frame: int) -> None:
                while pending and pending[0][0] < frame + blocksize:
                    _, name, value = pending.pop(0)
                    host.ctrl.param_from_outside(name, value)
                host.sync()

            backend = OfflineBackend(engine, out, seconds, events, feed=host.feed, between_blocks=between)
            backend.start()
    if on_overrun is not None:
        for report in host.overruns:
            on_overrun(report)
    return Path(out), host.errors

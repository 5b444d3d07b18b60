"""Offline render of an instrument script: controller and processor sides in one process.

``ensemble render SCRIPT --midi x.mid --set name=value@seconds --out x.wav``.
The processor side runs on the rendering thread (context Processor), the
controller side on its script thread (context Controller); messages between
them are routed in-process.  Between two blocks the renderer waits until the
controller's queue has drained, so run_async answers arrive in the next block
and parameter changes scheduled with ``--set`` apply at a fixed block: the
same inputs give the same file, as long as controller callbacks do not wait on
wall-clock time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import soundfile

from actors import EnsembleError
from controller.messages import ParamSet, RunAsync, ScriptError, ScriptReady
from audio import OfflineBackend
from audio import builtin_sample
from audio import Engine
from audio import ControlChange, Event, NoteOff, NoteOn
from audio import midi_events
from audio.render import TAIL_SECONDS, demo_events
from controller._context import CONTROLLER, PROCESSOR, set_thread_context
from controller._controller_side import ControllerScript
from controller._host import install
from controller._processor_side import ProcessorScript


class _Route:
    """An outbox whose messages are delivered in-process to the other side."""

    def __init__(self, host: "OfflineScriptHost", side: str) -> None:
        self.host = host
        self.side = side

    def put(self, msg: Any) -> None:
        self.host.deliver(self.side, msg)


class OfflineScriptHost:
    """Both sides of a script around one engine, for offline rendering."""

    def __init__(self, engine: Engine, script: str, state_dir: Path) -> None:
        self.engine = engine
        self.errors: list[str] = []
        self.ready = False
        self.to_proc: list[Any] = []  # controller -> processor messages, applied on the render thread
        self.proc = ProcessorScript(engine, _Route(self, PROCESSOR))
        self.ctrl = ControllerScript(_Route(self, CONTROLLER), state_dir)
        install(self.proc, PROCESSOR)
        install(self.ctrl, CONTROLLER)
        engine.add_block_hook(self.proc.block)
        set_thread_context(PROCESSOR)
        self.ctrl.load(script, False)
        self.sync()
        if not self.ready:
            raise EnsembleError(f"script {script} did not load: {'; '.join(self.errors) or 'unknown error'}")

    def sync(self) -> None:
        """Render thread: wait for the controller's queue, then apply what it sent the processor."""
        self.ctrl.barrier()
        while self.to_proc:
            self._to_processor(self.to_proc.pop(0))

    def deliver(self, side: str, msg: Any) -> None:
        if isinstance(msg, ScriptError):
            self.errors.append(f"{msg.context} {msg.kind}: {msg.message} {msg.location}".strip())
        elif side == CONTROLLER:
            self.to_proc.append(msg)
        elif isinstance(msg, RunAsync):
            self.ctrl.run_async_call(msg.token, msg.fn, msg.args)
        elif isinstance(msg, ParamSet):
            self.ctrl.param_from_outside(msg.name, msg.value)

    def _to_processor(self, msg: Any) -> None:
        proc = self.proc
        if isinstance(msg, ScriptReady):
            proc.load(msg.path)
            self.ready = True
        else:  # run_sync calls, run_async answers, parameter values: as the processor process hands them over
            proc.handle(msg)

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
        self.ctrl.stop()
        self.engine.remove_block_hook(self.proc.block)


def parse_set(text: str) -> tuple[str, Any, float]:
    """``name=value@seconds`` (value read as JSON where it parses) -> (name, value, seconds)."""
    import json

    spec, _, when = text.rpartition("@")
    name, sep, raw = spec.partition("=")
    if not sep or not name or not when:
        raise ValueError(f"--set {text!r} must look like NAME=VALUE@SECONDS")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value, float(when)


def render_script(script: str, *, out: str | Path, midi: str | Path | None = None, sample: str | Path | None = None,
                  seconds: float | None = None, sets: list[tuple[str, Any, float]] = (),  # type: ignore[assignment]
                  samplerate: int = 48000, blocksize: int = 256, channels: int = 2, max_voices: int = 64) -> tuple[Path, list[str]]:
    """Render ``script`` offline; returns the path written and the script errors reported."""
    engine = Engine(samplerate, blocksize, channels, max_voices)
    if sample is None:
        engine.set_buffer(0, builtin_sample(samplerate), samplerate, 60)
    else:
        data, rate = soundfile.read(str(sample), dtype="float32", always_2d=True)
        engine.set_buffer(0, data, int(rate), 60)
    events, last = midi_events(midi, samplerate) if midi is not None else demo_events(samplerate)
    pending = sorted(((int(t * samplerate), name, value) for name, value, t in sets), key=lambda x: x[0])
    if seconds is None:
        last = max([last] + [p[0] for p in pending])
        seconds = last / samplerate + TAIL_SECONDS
    with tempfile.TemporaryDirectory(prefix="ensemble-render-") as state:
        host = OfflineScriptHost(engine, str(script), Path(state))
        try:
            def between(frame: int) -> None:
                while pending and pending[0][0] < frame + blocksize:
                    _, name, value = pending.pop(0)
                    host.ctrl.param_from_outside(name, value)
                host.sync()

            backend = OfflineBackend(engine, out, seconds, events, feed=host.feed, between_blocks=between)
            backend.start()
        finally:
            host.close()
    return Path(out), host.errors

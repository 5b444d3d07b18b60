"""The processor process: the realtime audio engine as a supervised actor.

Threads.  The audio thread — JACK's client thread (the JACK backend), PortAudio's
callback, or the null backend's clock thread — runs :meth:`audio.Engine.render`
and, on JACK, decodes live MIDI into it.  The main thread runs the supervision
loop (:class:`actors._child.Child`): it turns messages from the supervisor
(audio events, sample buffers, kill_voices_and_call) into engine calls — which
only append to lock-free deques the callback drains at the start of its next
block — sends heartbeats with the engine's stats, and releases buffers the
callback retired.  It spends its time blocked in ``zmq.poll`` (the GIL
released).  The JACK backend adds a watcher thread (connections, fallback to
the null clock, reconnects) that sleeps until JACK tells it something.
Automatic garbage collection is off while the backend runs (see
``audio._realtime``); the main loop runs a young collection when idle.

A script callback blocked in C (a long ``time.sleep``) holds the audio thread,
and no exception reaches it.  The script host's ``tick`` tells the main thread
so once its limits have passed (it has sent the report); the processor then
leaves, one heartbeat interval later (the report goes before the exit), with
the code the host gave, without stopping the backend (that would wait for the
blocked thread), and the supervisor restarts it like any child that died.

The GIL.  The callback needs the GIL, so any Python work on the main thread
can delay it.  Two measures keep that delay far below a block (numbers and
commands in audio/README.md, "Xruns and the GIL"): the switch interval is
0.2 ms instead of 5 ms while a backend runs (``SwitchInterval``), and the main
thread runs at SCHED_FIFO 1 (``promote_control_thread``), so the kernel never
preempts it for an ordinary process while it holds the GIL the callback waits
for.  Where the OS refuses the priority, the notice in ``status`` says so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import defaultdict, deque
from typing import Any, NoReturn

from actors import Child, child_main

from actors.messages import Heartbeat, Message, VoicesDone, VoicesOp
from audio.messages import ControlEvent, KillAllEvent, MidiConnect, NoteOffEvent, NoteOnEvent, SampleDrop, SampleLoad
from actors.shm import SharedArray, segment_prefix
from audio._buffers import builtin_sample
from audio._backends import BackendUnavailable
from audio._ahead import warm_native
from audio._choose import choose_backend
from audio._engine import Engine
from audio._events import ControlChange, KillAllVoices, NoteOff, NoteOn
from audio._jack import JackBackend
from audio._midi_in import AFTERTOUCH, PITCH_BEND, MidiDecoder
from audio._midi_ports import TimedMidiInput
from audio._realtime import collect_young, promote_control_thread
from audio._script_host import make_script_host

log = logging.getLogger("ensemble.processor")
_SILENCE_TIMEOUT = 2.0  # seconds kill_voices_and_call waits for the voices to fall silent
# seconds a processor that cannot start waits, its last stats flushed, before it exits: the supervisor reads them in
# its next loop (it drops what a child sent once it has seen that child exit)
_LAST_WORDS_S = 0.2


class Processor(Child):
    """Supervised processor: one engine, one backend, the sample registry's mappings."""

    role = "processor"

    def __init__(self, cfg: Any, name: str) -> None:
        super().__init__(cfg, name)
        a = cfg.audio
        self.engine = Engine(a.samplerate, a.blocksize, a.channels, a.max_voices, a.steal)
        self.dropped_events = 0  # events naming a sample that is gone, or refused by a full queue
        self.engine.set_buffer("builtin", builtin_sample(a.samplerate), a.samplerate, 60)
        self.default_sample = "builtin"
        self.mapped: dict[str, SharedArray] = {}
        self.retiring: dict[str, deque[SharedArray]] = defaultdict(deque)
        self.script = make_script_host(self.engine, self.outbox)
        self.timed_inputs: tuple[TimedMidiInput, ...] = ()  # RtMidi ports (`midi connect`), copy-on-write
        self.engine.add_block_hook(self._pump_timed_midi)  # before the script's hook: their events land this block
        self.engine.add_block_hook(self.script.block)
        self.moved: deque[tuple[int, float]] = deque()  # bound controllers that moved (audio thread -> main)
        self.midi_errors: deque[str] = deque(maxlen=5)
        self.midi_connects = 0  # `midi connect` requests carried out, connected or refused: the CLI waits for its own
        self.midi = MidiDecoder(self.engine, self._midi_deliver)
        self.midi.slot = self.script.default_slot_index = self.engine.slot_index("builtin")
        try:
            self.backend, self.notice = choose_backend(  # starts no thread (libjack's own set their policy)
                self.engine, a.backend, device=a.device or None, autoconnect=a.autoconnect,
                midi_in=a.midi_in, midi=self.midi, jack_ahead=a.jack_ahead,
            )
        except BackendUnavailable as exc:  # an explicit backend that cannot work here
            self._cannot_start(a.backend, exc)
        if a.jack_ahead and isinstance(self.backend, JackBackend):  # only once JACK is there: ~1 s of CPU
            warm_native()  # compile render-ahead's callback before this thread turns realtime
        control = promote_control_thread()  # before the backend's threads start: they inherit it
        if control:
            self.notice = "; ".join(x for x in (self.notice, f"main thread: {control}") if x)
        self.backend.start()
        if self._notice():
            log.warning("event=audio-notice detail=%s", self._notice())
        self.backend_name = type(self.backend).__name__.removesuffix("Backend").lower()
        self.leave_at = 0.0  # when a processor whose audio thread a script callback wedged exits (0: not wedged)

    def _cannot_start(self, requested: str, exc: BackendUnavailable) -> NoReturn:
        """Leave with exit code 1, having told the supervisor why: the backend asked for cannot be had.

        The reason goes out as this process's stats (a ``Heartbeat`` before any
        ``Hello``: the supervisor keeps a child's last stats), with the fix,
        as the ``notice`` that ``ensemble up`` prints and ``status`` shows;
        before, it was only in the daemon log's tracebacks, and ``status``
        said "gave up: 5 restarts" once the restarts ran out.  Then the
        message is flushed (ZeroMQ's linger, at most 1 s) and a moment given
        for the supervisor to read it before it sees the exit (it drops what
        a child sends after that).  Blocks about 1.2 s at most.
        """
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        notice = f"the processor cannot start: backend {requested!r}: {reason}; {_start_fix(requested)}"
        log.critical("event=processor-start-failed backend=%s reason=%s", requested, reason)
        self.send(Heartbeat({"backend": requested, "notice": notice, "start_error": reason}))
        self.sock.close(linger=1000)
        flush = threading.Thread(target=self.ctx.term, name="zmq-term", daemon=True)
        flush.start()
        flush.join(1.0)
        time.sleep(_LAST_WORDS_S)
        os._exit(1)

    def _notice(self) -> str:
        """The choice notice plus what the backend says now (JACK lost, format followed, ...)."""
        extra = self.backend.notice
        return "; ".join(x for x in (self.notice, extra) if x)

    def _midi_deliver(self, kind: str, number: int, velocity: float, value: float, at: int) -> None:
        """Where live MIDI goes (audio thread): a loaded script's callbacks, else the default sampler.

        The same routing as :meth:`_event` gives client events: a script sees
        note on/off and controllers through ``on_note`` / ``on_release`` /
        ``on_controller`` at frame ``at`` (pitch bend and channel pressure as
        controllers 129 and 128, HALion's numbers).  A bound controller also
        moves its parameter (queued for the main loop, which tells the controller).
        """
        if kind == "cc" and number in self.script.bound_controllers:
            self.moved.append((number, value))  # the main loop sends it to the controller
            try:
                os.eventfd_write(self.outbox.fd, 1)  # wake it: one non-blocking write
            except OSError:
                pass
        script = self.script
        if script.module is not None:
            if kind == "pitch_bend":
                kind, number = "cc", PITCH_BEND
            elif kind == "pressure":
                kind, number = "cc", AFTERTOUCH
            script.event(kind, number, velocity, value, at, self.midi.slot)
        else:
            self.midi.to_engine(kind, number, velocity, value, at)

    def _pump_timed_midi(self, start: int, frames: int) -> None:
        """Engine block hook (audio thread): the RtMidi inputs' messages into this block."""
        for source in self.timed_inputs:
            source.block(start, frames)

    def stats(self) -> dict[str, Any]:
        s = dataclasses.asdict(self.engine.stats())
        s["backend"] = self.backend_name
        s["notice"] = self._notice()
        jack = getattr(self.backend, "jack_client", None)
        if jack:
            s["jack_client"] = jack
        backend_stats = getattr(self.backend, "stats", None)
        if backend_stats is not None:
            s.update(backend_stats())
        s["samples"] = sorted(self.mapped)
        s["dropped_client_events"] = self.dropped_events
        s.update(self.script.stats())
        s.update(midi_events=self.midi.events, midi_ignored=self.midi.ignored, midi_dropped=self.midi.dropped)
        if self.timed_inputs:
            s["midi_timed_inputs"] = [t.stats() for t in self.timed_inputs]
        if self.midi_errors:
            s["midi_errors_recent"] = list(self.midi_errors)
        s["midi_connects"] = self.midi_connects
        if self.script.bound_controllers:
            s["midi_bound_ccs"] = sorted(self.script.bound_controllers)
        return s

    def handle(self, msg: Message) -> None:
        if isinstance(msg, (NoteOnEvent, NoteOffEvent, ControlEvent, KillAllEvent)):
            self._event(msg)
        elif isinstance(msg, SampleLoad):
            self._load(msg)
        elif isinstance(msg, SampleDrop):
            self._drop(msg.name)
        elif isinstance(msg, VoicesOp):
            self._voices(msg)
        elif isinstance(msg, MidiConnect):
            self._connect_midi(msg)
        elif not self.script.handle(msg):  # the script schema is the script host's
            super().handle(msg)

    def _at(self, delay: float) -> int | None:
        return None if delay <= 0 else self.engine.frame + int(delay * self.engine.samplerate)

    def _event(self, msg: NoteOnEvent | NoteOffEvent | ControlEvent | KillAllEvent) -> None:
        """A client's event: to the script's callbacks when one is loaded, else straight to the engine."""
        eng = self.engine
        at = self._at(msg.delay)
        try:
            if isinstance(msg, NoteOnEvent):
                chosen = eng.slot_index(msg.sample) if msg.sample else None  # the note carries its sample
                if self.script.module is not None:
                    self.script.event("note_on", msg.note, msg.velocity, 0.0, at, chosen)
                else:
                    eng.post(NoteOn(msg.note, msg.velocity, at, eng.slot_index(self.default_sample)
                                    if chosen is None else chosen))
            elif isinstance(msg, NoteOffEvent):
                if self.script.module is not None:
                    self.script.event("note_off", msg.note, 0.0, 0.0, at)
                else:
                    eng.post(NoteOff(note=msg.note, at=at))
            elif isinstance(msg, ControlEvent):
                if msg.controller in self.script.bound_controllers:
                    self.moved.append((msg.controller, msg.value))
                if self.script.module is not None:
                    self.script.event("cc", msg.controller, 0.0, msg.value, at)
                else:
                    eng.post(ControlChange(msg.controller, msg.value, at))
            else:
                eng.post(KillAllVoices(msg.fade_ms, at))
        except (OverflowError, KeyError, ValueError) as exc:
            self.dropped_events += 1
            log.warning("event=audio-event-dropped kind=%s reason=%s", type(msg).__name__, exc)

    def _connect_midi(self, msg: MidiConnect) -> None:
        """``ensemble midi connect``: a JACK MIDI output to ``midi_in``, else an RtMidi input (main thread).

        The outcome shows in ``status``: ``midi_sources`` / ``midi_timed_inputs``,
        or a line in ``midi_errors_recent``; ``midi_connects`` counts the
        requests carried out (the heartbeat that shows it up shows the outcome).
        """
        try:
            source = self._open_midi(msg.port, msg.via)
        except BackendUnavailable as exc:
            self.midi_errors.append(f"midi connect {msg.port!r}: {exc}")
            log.warning("event=midi-connect-failed port=%s reason=%s", msg.port, exc)
            return
        finally:
            self.midi_connects += 1
        if source is not None:
            self.timed_inputs = (*self.timed_inputs, source)
            log.info("event=midi-connect port=%s via=%s", source.name, source.via)

    def _open_midi(self, port: str, via: str) -> TimedMidiInput | None:
        """Connect ``port`` on JACK (returns None) or open it with RtMidi (returns the new input, or None if open).

        Raises :class:`BackendUnavailable` saying why neither worked.
        """
        backend = self.backend
        jack = backend if isinstance(backend, JackBackend) and backend.state == "connected" else None
        jack_reason = ""
        if via in ("auto", "jack"):
            if jack is None:
                jack_reason = _not_on_jack(backend, self.backend_name)
            else:
                try:
                    jack.connect_midi(port)
                    log.info("event=midi-connect port=%s via=jack", port)
                    return None
                except BackendUnavailable as exc:
                    jack_reason = str(exc)
            if via == "jack":
                raise BackendUnavailable(jack_reason)
            via = "alsa"
        if via == "rtmidi-jack" and jack is not None:
            raise BackendUnavailable(
                "RtMidi's JACK API cannot be used while the processor is itself a JACK client (RtMidi keeps the "
                "GIL while JACK waits for this process's callbacks: a deadlock); connect the port with --via jack")
        if any(t.via == via and port in t.name for t in self.timed_inputs):
            return None
        try:
            return TimedMidiInput(self.engine, self.midi, port, via)
        except BackendUnavailable as exc:
            raise BackendUnavailable(f"{jack_reason}; {exc}" if jack_reason else str(exc)) from exc

    def _load(self, msg: SampleLoad) -> None:
        info = msg.sample
        try:
            sa = SharedArray.attach(info.handle, readonly=True, prefix=segment_prefix(self.cfg.shm_key))
            self.engine.set_buffer(info.name, sa.array, info.samplerate, info.root_key)
        except Exception as exc:  # a bad or vanished segment must not stop the audio
            log.error("event=sample-map-failed name=%s reason=%s", info.name, exc)
            return
        old = self.mapped.pop(info.name, None)
        if old is not None:
            self.retiring[info.name].append(old)
        self.mapped[info.name] = sa
        self.default_sample = info.name
        self.midi.slot = self.script.default_slot_index = self.engine.slot_index(info.name)
        log.info("event=sample-mapped name=%s frames=%d", info.name, info.handle.shape[0])

    def _drop(self, name: str) -> None:
        sa = self.mapped.pop(name, None)
        if sa is None:
            return
        self.retiring[name].append(sa)
        try:
            self.engine.remove_buffer(name)  # frees the slot for the next name, not only its buffer
        except KeyError:
            pass
        if self.default_sample == name:
            self.default_sample = next(reversed(self.mapped), "builtin") if self.mapped else "builtin"
            self.midi.slot = self.script.default_slot_index = self.engine.slot_index(self.default_sample)

    def _voices(self, msg: VoicesOp) -> None:
        if msg.op == "suspend":
            self.engine.suspend(msg.fade_ms)
            try:
                self.engine.wait_silent(_SILENCE_TIMEOUT)
                self.send(VoicesDone(msg.token, True))
            except Exception as exc:
                self.engine.resume()
                self.send(VoicesDone(msg.token, False, f"voices did not fall silent: {exc}"))
        elif msg.op == "resume":
            self.engine.resume()

    def tick(self, now: float) -> None:
        if self.leave_at:
            if now >= self.leave_at:
                self._request_stop("script wedged the audio thread")
            return
        code = self.script.tick(self.engine.period_ns)
        if code:
            self.exit_code = code  # the supervisor restarts us: the one way to free a thread blocked in C
            self.leave_at = now + self.cfg.supervision.heartbeat_interval
            return
        if self.moved:  # bound controllers: the latest value of each goes to the controller
            latest: dict[int, float] = {}
            while self.moved:
                cc, value = self.moved.popleft()
                latest[cc] = value
            self.script.controllers_moved(latest)
        for buf in self.engine.drain_retired():  # the callback let go: unmap off the audio thread
            name = getattr(buf, "name", None)
            if name and self.retiring.get(name):
                self.retiring[name].popleft().close()
                if not self.retiring[name]:
                    del self.retiring[name]  # one entry per name ever dropped would grow without end

    def poll_timeout(self) -> float:
        return min(0.1, super().poll_timeout())

    def on_stop(self) -> None:
        if self.leave_at:  # the audio thread is blocked: stopping the backend would wait for it (JACK, PortAudio:
            return  # forever); the process's exit closes the device, the mappings and the ports
        self.backend.stop()
        inputs, self.timed_inputs = self.timed_inputs, ()
        for source in inputs:
            source.close()
        for sa in list(self.mapped.values()):
            sa.close()
        for q in self.retiring.values():
            for sa in q:
                sa.close()
        collect_young()


def _start_fix(requested: str) -> str:
    """What to do when the backend ``requested`` cannot start (one clause, for the start failure's notice)."""
    then = "then `ensemble down` and `ensemble up`"
    if requested == "jack":
        return ("start a JACK server under the name the daemon uses (JACK_DEFAULT_SERVER; `jackd -d alsa`, or "
                f"`jackd -d dummy` without a sound card), or set [audio] backend = \"auto\"; {then}")
    return f"see `ensemble devices` and [audio] device, or set [audio] backend = \"auto\"; {then}"


def _not_on_jack(backend: Any, name: str) -> str:
    """Why a JACK MIDI port cannot be connected now: JACK is away (the null clock runs), or no JACK backend at all."""
    if isinstance(backend, JackBackend) and backend.state == "null-clock":
        return (f"JACK is away: the processor runs on the null clock until the JACK server is back (it tries every "
                f"{backend.reconnect_interval:g} s); connect the port again then")
    return f"the processor is no JACK client (backend {name!r}; [audio] backend = \"auto\" or \"jack\" with a JACK server)"


if __name__ == "__main__":
    child_main(Processor)

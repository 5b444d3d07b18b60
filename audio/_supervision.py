"""The audio side of the daemon: the processor child, the shared-memory sample registry, notes and voices.

Registered with the runtime through the ``ensemble.extensions`` entry point
(see :mod:`actors.extensions`); runs in the supervisor's thread, never blocks.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Any

from actors import DaemonError, OutOfRange, ProtocolError
from actors.extensions import ChildSpec, Extension
from actors.messages import Ack, Message, VoicesDone, VoicesOp
from audio.messages import (
    AUDIO_EVENTS, MIDI_VIAS, SLOTS, ControlEvent, KillAllEvent, MidiConnect, NoteOffEvent, NoteOnEvent, SampleDrop,
    SampleInfo, SampleInfos, SampleList, SampleLoad,
)
from actors.shm import SharedArray

log = logging.getLogger("ensemble.supervisor")
MAX_SAMPLES = SLOTS - 1  # the processor's engine has SLOTS buffer slots and its built-in sample holds one


class AudioExtension(Extension):
    """The processor, the samples it plays and the notes clients send it."""

    name = "audio"
    children = (ChildSpec("processor", "processor", "audio.processor"),)
    admin_requests = frozenset({*AUDIO_EVENTS, SampleLoad, SampleDrop, SampleList, MidiConnect})

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.samples: dict[str, SampleInfo] = {}  # the shared-memory sample registry
        self.voice_ops: dict[int, Any] = {}  # kill_voices_and_call token -> the worker slot waiting for it

    def requests(self) -> dict[type, Any]:
        return {**{t: self._event for t in AUDIO_EVENTS}, SampleLoad: self._load, SampleDrop: self._drop,
                SampleList: self._list, MidiConnect: self._midi_connect}

    def child_messages(self) -> dict[type, Any]:
        return {VoicesOp: self._voices_op, VoicesDone: self._voices_done}

    def child_ready(self, slot: Any) -> None:
        if slot.role == "processor":
            for info in self.samples.values():  # a restarted processor maps them again
                self.host.send_child(slot, SampleLoad(info))

    # -- requests
    def _processor(self) -> Any:
        slot = self.host.child("processor")
        if slot is None:
            raise DaemonError("the processor is not running; see `ensemble status`")
        return slot

    def _event(self, corr: int, msg: NoteOnEvent | NoteOffEvent | ControlEvent | KillAllEvent) -> Message:
        if not 0.0 <= msg.delay <= 3600:
            raise OutOfRange(f"{type(msg).__name__}: delay {msg.delay} is out of range (0..3600 s)")
        if isinstance(msg, (NoteOnEvent, NoteOffEvent)) and not 0 <= msg.note <= 127:
            raise OutOfRange(f"{type(msg).__name__}: note {msg.note} is out of range (0..127)")
        if isinstance(msg, NoteOnEvent):
            if not 0.0 <= msg.velocity <= 1.0:
                raise OutOfRange(f"NoteOnEvent: velocity {msg.velocity} is out of range (0..1)")
            if msg.sample and msg.sample not in self.samples:
                raise DaemonError(f"no sample named {msg.sample!r} is loaded (`ensemble sample list`)")
        if isinstance(msg, ControlEvent) and not (0 <= msg.controller <= 127 and 0.0 <= msg.value <= 1.0):
            raise OutOfRange(f"ControlEvent: controller 0..127 and value 0..1, got {msg.controller}, {msg.value}")
        if isinstance(msg, KillAllEvent) and not 0.0 <= msg.fade_ms <= 60_000:
            raise OutOfRange(f"KillAllEvent: fade {msg.fade_ms} ms is out of range (0..60000)")
        if not self.host.send_child(self._processor(), msg):
            raise DaemonError("the processor is not reachable right now; try again")
        return Ack()

    def _midi_connect(self, corr: int, msg: MidiConnect) -> Message:
        """``ensemble midi connect``: checked here, done by the processor (its outcome shows in ``status``)."""
        if not msg.port or len(msg.port) > 320:
            raise ProtocolError("a MIDI port name of 1..320 characters is needed")
        if msg.via not in MIDI_VIAS:
            raise DaemonError(f"MIDI via {msg.via!r}: one of {', '.join(MIDI_VIAS)}")
        if not self.host.send_child(self._processor(), msg):
            raise DaemonError("the processor is not reachable right now; try again")
        return Ack(f"connecting {msg.port!r}")

    def _load(self, corr: int, msg: SampleLoad) -> Message:
        """``upload_sample`` / ``sample load``: acknowledged only once the processor's own checks passed here.

        Cost: one read of every sample (the finiteness check) in the
        supervisor's thread.  Raises ProtocolError for a bad name (empty, over
        128 characters, a control character), shape or rate or a segment that
        is not ours, OutOfRange for data the processor would refuse (NaN or inf, a value beyond ±1000, one frame, no channel, a
        root key outside 0..127), DaemonError when every sample slot is taken.
        """
        info = msg.sample
        if not info.name or len(info.name) > 128:
            raise ProtocolError("a sample needs a name of 1..128 characters")
        if any(unicodedata.category(ch) == "Cc" for ch in info.name):  # NUL, newline, ESC: `sample list` prints names
            raise ProtocolError(f"sample name {info.name!r} holds a control character; a sample's name is printable "
                                "text (rename the file)")
        if not (len(info.handle.shape) in (1, 2) and 1000 <= info.samplerate <= 768000):
            raise ProtocolError("a sample is [frames] or [frames, channels] at 1000..768000 Hz")
        old = self.samples.get(info.name)
        if old is None and len(self.samples) >= MAX_SAMPLES:
            raise DaemonError(f"sample {info.name!r} refused: all {MAX_SAMPLES} sample slots are taken; drop one "
                              "(`ensemble sample list`, `ensemble sample drop NAME`) or load under a name in use")
        sa = SharedArray.attach(info.handle, readonly=True, prefix=self.host.shm_prefix)  # ours, there, big enough
        try:
            problem = _refusal(sa, info)
        finally:
            sa.close()
        if problem:
            raise OutOfRange(f"sample {info.name!r} refused: {problem}; nothing was loaded")
        frames = info.handle.shape[0]
        channels = info.handle.shape[1] if len(info.handle.shape) == 2 else 1
        info = SampleInfo(info.name, info.handle, info.samplerate, info.root_key, frames, channels)
        self.samples[info.name] = info
        if old is not None and old.handle.name != info.handle.name:
            SharedArray.unlink_name(old.handle.name)
        proc = self.host.child("processor")
        if proc is not None:
            self.host.send_child(proc, SampleLoad(info))
        log.info("event=sample-load name=%s frames=%d segment=%s", info.name, frames, info.handle.name)
        return Ack(f"sample {info.name!r}: {frames} frames")

    def _drop(self, corr: int, msg: SampleDrop) -> Message:
        """Forget a sample: the processor frees its slot and voices, and the segment is unlinked."""
        info = self.samples.pop(msg.name, None)
        if info is None:
            raise DaemonError(f"no sample named {msg.name!r} is loaded")
        proc = self.host.child("processor")
        if proc is not None:
            self.host.send_child(proc, msg)
        SharedArray.unlink_name(info.handle.name)  # mappings stay valid until the processor lets go of them
        return Ack(f"sample {msg.name!r} dropped")

    def _list(self, corr: int, msg: SampleList) -> Message:
        return SampleInfos(list(self.samples.values()))

    # -- kill_voices_and_call: a worker's job asks the processor to fall silent, then to resume
    def _voices_op(self, worker: Any, msg: VoicesOp) -> None:
        proc = self.host.child("processor")
        if proc is None or not self.host.send_child(proc, msg):
            self.host.send_child(worker, VoicesDone(msg.token, False, "no processor is running"))
            return
        if msg.op == "suspend":
            if len(self.voice_ops) > 10_000:
                self.voice_ops.clear()
            self.voice_ops[msg.token] = (worker, worker.identity)

    def _voices_done(self, slot: Any, msg: VoicesDone) -> None:
        waiting = self.voice_ops.pop(msg.token, None)
        if waiting is not None and waiting[0].identity == waiting[1] and waiting[0].ready:  # the same incarnation
            self.host.send_child(waiting[0], msg)


def _refusal(sa: SharedArray, info: SampleInfo) -> str:
    """Why the processor would refuse this sample (its own check, ``SampleBuffer.from_array``), or "".

    Returns rather than raises, so no traceback keeps a view of the mapping
    alive when the caller unmaps it.
    """
    from audio._buffers import SampleBuffer  # numpy: imported with the first sample, not at the daemon's start

    try:
        SampleBuffer.from_array(sa.array, info.samplerate, info.root_key, info.name)
    except ValueError as exc:
        return str(exc)
    return ""

"""The audio schema: the events a client or a script sends the processor, and the sample registry's messages.

Part of the wire protocol (see :mod:`actors.messages` for the envelope, the
codec and the limits); its kinds are 60..69.  Importing this module adds them
to the decoder of the process.
"""

from __future__ import annotations

from enum import IntEnum

from actors.messages import ArrayHandle, Int64, Message, Record, register

SLOTS = 128
"""Buffer slots an engine has unless told otherwise (``Engine(max_slots=...)``).

The processor's built-in sample holds one of them.  (Here, not in
``audio._buffers``, so that the supervisor's audio extension knows it without
importing numpy at start.)"""

MIDI_VIAS = ("auto", "jack", "alsa", "rtmidi-jack")
"""How ``ensemble midi connect`` reaches a port: JACK's graph, or RtMidi on ALSA's sequencer or on JACK."""


class AudioKind(IntEnum):
    """Audio message kinds; the numbers are part of the wire protocol."""

    # 60 was the one AudioEvent with an op string (before version 2): retired, never reuse it
    SAMPLE_LOAD = 61
    SAMPLE_DROP = 62
    SAMPLE_LIST = 63
    SAMPLE_INFOS = 64
    NOTE_ON = 65
    NOTE_OFF = 66
    CONTROL = 67
    KILL_ALL = 68
    MIDI_CONNECT = 69


class NoteOnEvent(Message, tag=AudioKind.NOTE_ON.value, frozen=True):
    """Play ``note`` (0..127) at ``velocity`` (0..1) with ``sample`` ("" = the default one), ``delay`` s from now.

    The sample travels with the note, to the script's ``on_note`` too.
    """

    note: Int64
    velocity: float = 1.0
    delay: float = 0.0
    sample: str = ""


class NoteOffEvent(Message, tag=AudioKind.NOTE_OFF.value, frozen=True):
    """Release every voice playing ``note``, ``delay`` seconds from now."""

    note: Int64
    delay: float = 0.0


class ControlEvent(Message, tag=AudioKind.CONTROL.value, frozen=True):
    """Controller ``controller`` (0..127) to ``value`` (0..1), ``delay`` seconds from now."""

    controller: Int64
    value: float
    delay: float = 0.0


class KillAllEvent(Message, tag=AudioKind.KILL_ALL.value, frozen=True):
    """Fade out and free every sounding voice over ``fade_ms``."""

    fade_ms: float = 10.0
    delay: float = 0.0


AudioEvent = NoteOnEvent | NoteOffEvent | ControlEvent | KillAllEvent
AUDIO_EVENTS: tuple[type[Message], ...] = (NoteOnEvent, NoteOffEvent, ControlEvent, KillAllEvent)


class MidiConnect(Message, tag=AudioKind.MIDI_CONNECT.value, frozen=True):
    """Connect a MIDI source to the processor while it runs (``ensemble midi connect``).

    ``via``: ``"auto"`` (a JACK MIDI output of that name, else an ALSA
    sequencer input), ``"jack"``, ``"alsa"`` or ``"rtmidi-jack"`` (RtMidi's
    JACK API: the timestamped path on a machine without ALSA's sequencer).
    """

    port: str
    via: str = "auto"


class SampleInfo(Record, frozen=True):
    """A sample buffer in the registry."""

    name: str
    handle: ArrayHandle
    samplerate: Int64
    root_key: Int64 = 60
    frames: Int64 = 0
    channels: Int64 = 1


class SampleLoad(Message, tag=AudioKind.SAMPLE_LOAD.value, frozen=True):
    """Register (or replace) a sample buffer living in shared memory; the registry owns it from now on."""

    sample: SampleInfo


class SampleDrop(Message, tag=AudioKind.SAMPLE_DROP.value, frozen=True):
    """Remove a sample from the registry; its segment is unlinked once nobody uses it."""

    name: str


class SampleList(Message, tag=AudioKind.SAMPLE_LIST.value, frozen=True):
    """Ask for the registered samples."""


class SampleInfos(Message, tag=AudioKind.SAMPLE_INFOS.value, frozen=True):
    """The registered samples."""

    samples: list[SampleInfo]


register(AudioKind, NoteOnEvent, NoteOffEvent, ControlEvent, KillAllEvent, SampleLoad, SampleDrop, SampleList, SampleInfos,
         MidiConnect)

__all__ = ["AUDIO_EVENTS", "AudioEvent", "AudioKind", "ControlEvent", "KillAllEvent", "MidiConnect", "NoteOffEvent", "NoteOnEvent",
           "SampleDrop", "SampleInfo", "SampleInfos", "SampleList", "SampleLoad"]

"""Standard MIDI files to engine events, with exact sample positions.

``mido.MidiFile`` iteration already honours the tempo map, but it yields
float seconds between messages; summing those drifts by rounding.  Here the
tracks are merged in ticks and each tick is converted with exact fractions
through the tempo map, so a note lands on ``round(seconds * samplerate)``
exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import mido

from ._events import ControlChange, Event, NoteOff, NoteOn

__all__ = ["midi_events"]

_DEFAULT_TEMPO = 500_000  # microseconds per beat: 120 BPM, the MIDI default


def midi_events(path: str | Path, samplerate: int) -> tuple[list[Event], int]:
    """Read a type 0 or 1 MIDI file; returns (events in time order, frame of the last message).

    Note ons become :class:`NoteOn` (velocity / 127; velocity 0 is a note
    off), note offs :class:`NoteOff` by note number, control changes
    :class:`ControlChange` (value / 127).  All channels play the one default
    instrument; other messages (program change, pitch bend, sysex) are
    skipped.  Context: non-realtime.  Cost: reads the file.  Raises
    :class:`ValueError` for a type 2 file or an unreadable one (chained).
    """
    try:
        midi = mido.MidiFile(str(path))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"cannot read MIDI file {str(path)!r}: {exc}") from exc
    if midi.type == 2:
        raise ValueError(f"{str(path)!r} is a type 2 MIDI file (independent sequences); only types 0 and 1 play")
    per_beat = midi.ticks_per_beat
    tempo = _DEFAULT_TEMPO
    tick = 0
    tempo_tick = 0
    tempo_seconds = Fraction(0)
    last_frame = 0
    events: list[Event] = []
    for message in mido.merge_tracks(midi.tracks):
        tick += message.time
        seconds = tempo_seconds + Fraction((tick - tempo_tick) * tempo, per_beat * 1_000_000)
        frame = math.floor(seconds * samplerate + Fraction(1, 2))
        last_frame = max(last_frame, frame)
        if message.type == "set_tempo":
            tempo_tick, tempo_seconds, tempo = tick, seconds, message.tempo
            continue
        event = _to_event(message, frame)
        if event is not None:
            events.append(event)
    return events, last_frame


def _to_event(message: mido.Message, frame: int) -> Event | None:
    if message.type == "note_on" and message.velocity > 0:
        return NoteOn(message.note, message.velocity / 127.0, at=frame)
    if message.type in ("note_on", "note_off"):
        return NoteOff(note=message.note, at=frame)
    if message.type == "control_change":
        return ControlChange(message.control, message.value / 127.0, at=frame)
    return None

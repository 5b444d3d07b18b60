"""Render a MIDI file (or a built-in phrase) with a sample to a WAV file, offline."""

from __future__ import annotations

from pathlib import Path

import soundfile

from ._backends import render_offline
from ._buffers import builtin_sample
from ._engine import Engine
from ._events import Event, NoteOff, NoteOn
from ._midi import midi_events

__all__ = ["render", "demo_events"]

TAIL_SECONDS = 1.0
"""Seconds rendered after the last MIDI message when ``seconds`` is not given."""


def render(
    *,
    out: str | Path,
    midi: str | Path | None = None,
    sample: str | Path | None = None,
    seconds: float | None = None,
    samplerate: int = 48000,
    blocksize: int = 256,
    channels: int = 2,
    max_voices: int = 64,
    root_key: int = 60,
) -> Path:
    """Play ``midi`` (or a short built-in phrase) on ``sample`` and write a float WAV to ``out``.

    ``sample`` is any file soundfile reads, played across the keyboard from
    ``root_key``; without one, a built-in decaying saw at middle C plays, so
    something sounds with no files at all.  ``seconds`` defaults to the last
    MIDI message plus one second.  The result is deterministic: the same
    arguments give a bit-identical file.

    Context: non-realtime; runs as fast as the machine allows, in the calling
    thread.  Returns the path written.  Raises :class:`ValueError` for a bad
    argument or an unreadable MIDI file, and what soundfile raises for an
    unreadable sample or an unwritable ``out``.
    """
    engine = Engine(samplerate, blocksize, channels, max_voices)
    if sample is None:
        engine.set_buffer(0, builtin_sample(samplerate), samplerate, root_key)
    else:
        data, sample_rate = soundfile.read(str(sample), dtype="float32", always_2d=True)
        engine.set_buffer(0, data, int(sample_rate), root_key)
    if midi is None:
        events, last = demo_events(samplerate)
    else:
        events, last = midi_events(midi, samplerate)
    if seconds is None:
        seconds = last / samplerate + TAIL_SECONDS
    return render_offline(engine, out, seconds, events)


def demo_events(samplerate: int) -> tuple[list[Event], int]:
    """A C major arpeggio then the chord: the phrase :func:`render` plays without MIDI.

    Returns (events, frame of the last event).  Context: any.
    """
    step = samplerate // 4
    events: list[Event] = []
    for i, note in enumerate((60, 64, 67, 72)):
        events.append(NoteOn(note, 0.8, at=i * step))
        events.append(NoteOff(note=note, at=(i + 1) * step))
    chord_at = 4 * step
    for note in (48, 60, 64, 67):
        events.append(NoteOn(note, 0.7, at=chord_at))
    end = chord_at + 4 * step
    events.extend(NoteOff(note=note, at=end) for note in (48, 60, 64, 67))
    return events, end

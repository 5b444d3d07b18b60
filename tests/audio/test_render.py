"""Offline rendering to WAV: determinism, MIDI timing through a tempo map."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile

from audio import ControlChange, Engine, Event, NoteOff, NoteOn, OfflineBackend, midi_events, render, render_offline


def onsets(signal: np.ndarray) -> list[int]:
    """Frames where sound starts after exact silence (or at frame 0)."""
    sounding = np.any(signal != 0.0, axis=1)
    starts = np.flatnonzero(sounding[1:] & ~sounding[:-1]) + 1
    return ([0] if sounding[0] else []) + [int(s) for s in starts]


def write_midi(path: Path) -> list[int]:
    """A type 1 file: tempo track with two tempo changes, a note track; returns the note ticks."""
    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    tempo = mido.MidiTrack()
    tempo.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))  # 120 BPM
    tempo.append(mido.MetaMessage("set_tempo", tempo=1_000_000, time=720))  # 60 BPM from tick 720
    tempo.append(mido.MetaMessage("set_tempo", tempo=487_805, time=480))  # ~123 BPM from tick 1200
    notes = mido.MidiTrack()
    ticks = [0, 480, 960, 1440]
    previous = 0
    for i, tick in enumerate(ticks):
        notes.append(mido.Message("note_on", note=60 + i, velocity=100, time=tick - previous))
        notes.append(mido.Message("note_off", note=60 + i, velocity=0, time=48))
        previous = tick + 48
    midi.tracks.extend([tempo, notes])
    midi.save(str(path))
    return ticks


def expected_frame(tick: int, samplerate: int) -> int:
    """Tick to frame through the same tempo map, by hand: (start tick, microseconds per beat)."""
    segments = [(0, 500_000), (720, 1_000_000), (1200, 487_805)]
    seconds = Fraction(0)
    for (start, tempo), (end, _) in zip(segments, segments[1:] + [(10**9, 0)]):
        if tick <= start:
            break
        seconds += Fraction(min(tick, end) - start, 480) * Fraction(tempo, 1_000_000)
    return int(seconds * samplerate + Fraction(1, 2))


def test_midi_notes_land_on_their_tempo_mapped_frames(tmp_path: Path) -> None:
    ticks = write_midi(tmp_path / "song.mid")
    sample = tmp_path / "dc.wav"
    soundfile.write(sample, np.full(3 * 48000, 0.5, dtype=np.float32), 48000, subtype="FLOAT")
    out = render(out=tmp_path / "song.wav", midi=tmp_path / "song.mid", sample=sample)
    audio, rate = soundfile.read(out, dtype="float32", always_2d=True)
    assert rate == 48000
    expected = [expected_frame(t, 48000) for t in ticks]
    assert expected == [0, 24000, 60000, 95707]  # 0 s, 0.5 s, 1.25 s, 1.99390 s
    assert onsets(audio) == expected


def test_midi_events_reads_note_offs_and_velocity_zero(tmp_path: Path) -> None:
    midi = mido.MidiFile(type=0, ticks_per_beat=96)
    track = mido.MidiTrack()
    track.append(mido.Message("note_on", note=64, velocity=127, time=0))
    track.append(mido.Message("control_change", control=7, value=64, time=96))
    track.append(mido.Message("note_on", note=64, velocity=0, time=96))  # a note off
    midi.tracks.append(track)
    midi.save(str(tmp_path / "t.mid"))
    events, last = midi_events(tmp_path / "t.mid", 48000)
    assert [type(e).__name__ for e in events] == ["NoteOn", "ControlChange", "NoteOff"]
    assert [e.at for e in events] == [0, 24000, 48000] and last == 48000
    note_on, control = events[0], events[1]
    assert isinstance(note_on, NoteOn) and isinstance(control, ControlChange)
    assert note_on.velocity == 1.0 and control.value == pytest.approx(64 / 127)


def test_unreadable_midi_file_is_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a midi file at all")
    with pytest.raises(ValueError, match="cannot read MIDI file"):
        midi_events(bad, 48000)


def test_render_is_bit_identical_across_runs(tmp_path: Path) -> None:
    first = render(out=tmp_path / "a.wav")
    second = render(out=tmp_path / "b.wav")
    assert first.read_bytes() == second.read_bytes()
    audio, rate = soundfile.read(first, dtype="float32", always_2d=True)
    assert audio.shape[1] == 2 and rate == 48000 and np.max(np.abs(audio)) > 0.1


def test_render_without_files_plays_the_builtin_sample_at_pitch(tmp_path: Path) -> None:
    out = render(out=tmp_path / "demo.wav", seconds=0.25)
    audio, rate = soundfile.read(out, dtype="float64", always_2d=True)
    assert audio.shape == (12000, 2)
    segment = audio[500:11500, 0] * np.hanning(11000)
    spectrum = np.abs(np.fft.rfft(segment, 1 << 18))
    peak = np.fft.rfftfreq(1 << 18, 1 / rate)[np.argmax(spectrum)]
    assert peak == pytest.approx(261.63, abs=1.0)


def test_offline_backend_writes_exactly_the_requested_frames(tmp_path: Path) -> None:
    engine = Engine(48000, 256, 2)
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    events: list[Event] = [NoteOff(note=60, at=300), NoteOn(60, 1.0, at=100)]  # any order
    path = render_offline(engine, tmp_path / "x.wav", 0.01, events)
    audio, _ = soundfile.read(path, dtype="float32", always_2d=True)
    assert audio.shape == (480, 2)
    assert onsets(audio) == [100]


def test_offline_backend_is_a_backend_and_a_context_manager(tmp_path: Path) -> None:
    engine = Engine(48000, 128, 1)
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    backend = OfflineBackend(engine, tmp_path / "y.wav", 0.1, [NoteOn(60, 0.5, at=0)])
    with backend:
        pass
    assert not backend.running
    audio, _ = soundfile.read(tmp_path / "y.wav", dtype="float32", always_2d=True)
    assert audio.shape == (4800, 1) and audio[-1, 0] > 0

"""The names ``audio`` exports, and that importing it does not load PortAudio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import audio

EXPORTED = {
    "AFTERTOUCH", "PITCH_BEND", "BACKENDS", "JACK_CLIENT_NAME", "JackBackend", "MidiDecoder", "PitchBend", "STEAL_POLICIES", "Backend", "BackendUnavailable", "ControlChange",
    "Engine", "EngineStats", "Event", "Fade", "GcPause", "KillAllVoices", "NoteOff", "NoteOn",
    "NullBackend", "OfflineBackend", "OutputDevice", "SampleBuffer", "SoundDeviceBackend",
    "builtin_sample", "choose_backend", "collect_young", "devices", "load_sounddevice",
    "midi_events", "render", "render_offline",
}

ROOT = Path(__file__).resolve().parents[2]  # the repository, so `import audio` works


def test_exported_names_are_pinned() -> None:
    assert set(audio.__all__) == EXPORTED
    assert all(hasattr(audio, name) for name in EXPORTED)


def test_import_audio_does_not_import_sounddevice_or_jack() -> None:
    code = "import sys, audio; print('sounddevice' in sys.modules, 'jack' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False False"

"""ensemble's realtime audio core: the engine, its events, and the backends that clock it.

The public names are re-exported here; the modules behind them are private.
``import audio`` never imports sounddevice or jack (PortAudio and libjack are
loaded only when a backend that needs them, :func:`devices` or
:func:`choose_backend` is used).
"""

from __future__ import annotations

from ._backends import (
    JACK_CLIENT_NAME,
    Backend,
    BackendUnavailable,
    NullBackend,
    OfflineBackend,
    OutputDevice,
    SoundDeviceBackend,
    devices,
    load_sounddevice,
    render_offline,
)
from ._buffers import SampleBuffer, builtin_sample
from ._choose import BACKENDS, choose_backend
from ._engine import STEAL_POLICIES, Engine, EngineStats
from ._events import ControlChange, Event, Fade, KillAllVoices, NoteOff, NoteOn, PitchBend
from ._jack import JackBackend
from ._midi import midi_events
from ._midi_in import AFTERTOUCH, PITCH_BEND, MidiDecoder
from ._realtime import GcPause, collect_young
from .render import render

__all__ = [
    "AFTERTOUCH",
    "PITCH_BEND",
    "BACKENDS",
    "JACK_CLIENT_NAME",
    "STEAL_POLICIES",
    "Backend",
    "BackendUnavailable",
    "ControlChange",
    "Engine",
    "EngineStats",
    "Event",
    "Fade",
    "GcPause",
    "JackBackend",
    "KillAllVoices",
    "MidiDecoder",
    "NoteOff",
    "NoteOn",
    "NullBackend",
    "OfflineBackend",
    "OutputDevice",
    "PitchBend",
    "SampleBuffer",
    "SoundDeviceBackend",
    "builtin_sample",
    "choose_backend",
    "collect_young",
    "devices",
    "load_sounddevice",
    "midi_events",
    "render",
    "render_offline",
]

"""ensemble's realtime audio core: the engine, its events, and the backends that clock it.

The public names are re-exported here; the modules behind them are private.
``import audio`` never imports sounddevice or jack (PortAudio and libjack are
loaded only when a backend that needs them, :func:`devices` or
:func:`choose_backend` is used), nor numpy: each public name is imported
from its module on first use.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
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

_LAZY = {
    "JACK_CLIENT_NAME": "._backends",
    "Backend": "._backends",
    "BackendUnavailable": "._backends",
    "NullBackend": "._backends",
    "OfflineBackend": "._backends",
    "OutputDevice": "._backends",
    "SoundDeviceBackend": "._backends",
    "devices": "._backends",
    "load_sounddevice": "._backends",
    "render_offline": "._backends",
    "SampleBuffer": "._buffers",
    "builtin_sample": "._buffers",
    "BACKENDS": "._choose",
    "choose_backend": "._choose",
    "STEAL_POLICIES": "._engine",
    "Engine": "._engine",
    "EngineStats": "._engine",
    "ControlChange": "._events",
    "Event": "._events",
    "Fade": "._events",
    "KillAllVoices": "._events",
    "NoteOff": "._events",
    "NoteOn": "._events",
    "PitchBend": "._events",
    "JackBackend": "._jack",
    "midi_events": "._midi",
    "AFTERTOUCH": "._midi_in",
    "PITCH_BEND": "._midi_in",
    "MidiDecoder": "._midi_in",
    "GcPause": "._realtime",
    "collect_young": "._realtime",
}


class _Package(types.ModuleType):
    """``audio.render`` is the function, as it was when every name was imported eagerly: importing the
    private module of the same name (``from audio.render import ...``) must not replace it."""

    @property
    def render(self) -> object:
        from .render import render

        return render

    @render.setter
    def render(self, value: object) -> None:
        pass  # the import system, recording the submodule on its package


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    """A public name on first use, from its private module: ``import audio`` (as ``import audio.client`` does,
    and with it every command of the CLI) imports no numpy until the engine is used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'audio' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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

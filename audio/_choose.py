"""Choosing the backend that clocks the engine: JACK, PortAudio, or the null clock.

``"auto"`` tries, in order: a JACK server reachable from this process (the
JACK-native :class:`audio._jack.JackBackend`), PortAudio through sounddevice
with an output device, and finally the null backend with a one-line notice
saying why there is no sound.  Neither ``jack`` nor ``sounddevice`` is
imported before this runs, so ``import audio`` works without libjack or
PortAudio.
"""

from __future__ import annotations

from ._backends import Backend, BackendUnavailable, NullBackend, SoundDeviceBackend, devices, load_sounddevice
from ._engine import Engine
from ._jack import JackBackend, open_client
from ._midi_in import MidiDecoder

__all__ = ["BACKENDS", "choose_backend"]

BACKENDS = ("auto", "jack", "sounddevice", "null")
"""The names :func:`choose_backend` accepts."""


def choose_backend(
    engine: Engine, requested: str = "auto", *, device: int | str | None = None,
    autoconnect: bool = True, midi_in: tuple[str, ...] = (), midi: MidiDecoder | None = None, jack_ahead: int = 0,
) -> tuple[Backend, str]:
    """Pick a backend by name (see :data:`BACKENDS`); returns (backend, notice).

    ``"auto"`` gives the JACK backend when a JACK server is reachable (never
    starting one), else the sounddevice backend when PortAudio loads and
    offers an output device (``device`` if given), else the null backend with
    a one-line notice saying why; the notice is '' when nothing needs saying.
    ``autoconnect``, ``midi_in``, ``midi`` and ``jack_ahead`` (its ``ahead``) go to the JACK backend (see
    :class:`audio._jack.JackBackend`).  Nothing is started, but a chosen JACK
    backend holds an open client: ``start()`` or ``stop()`` it.

    Context: non-realtime.  Cost: one JACK client open (a few ms) and a
    PortAudio device query.  Raises :class:`BackendUnavailable` for an
    explicit ``"jack"`` or ``"sounddevice"`` that cannot work and
    :class:`ValueError` for an unknown name.
    """
    if requested == "null":
        return NullBackend(engine), ""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {requested!r}")
    if requested in ("auto", "jack"):
        try:
            client = open_client()
        except BackendUnavailable:
            if requested == "jack":
                raise
        else:
            return JackBackend(engine, client=client, autoconnect=autoconnect, midi_in=midi_in, midi=midi,
                               ahead=jack_ahead), ""
    return _portaudio(engine, requested, device)


def _portaudio(engine: Engine, requested: str, device: int | str | None) -> tuple[Backend, str]:
    try:
        outputs = devices()
        if not outputs:
            raise BackendUnavailable("PortAudio found no audio output device")
        if device is not None:
            load_sounddevice().query_devices(device, kind="output")
    except BackendUnavailable as exc:
        if requested == "sounddevice":
            raise
        return NullBackend(engine), f"{_first_line(exc)}; using the null backend (no sound)"
    except Exception as exc:  # sounddevice's lookup errors for `device`, PortAudioError
        if requested == "sounddevice":
            raise BackendUnavailable(f"output device {device!r}: {exc}") from exc
        return NullBackend(engine), f"output device {device!r} not usable ({_first_line(exc)}); using the null backend (no sound)"
    return SoundDeviceBackend(engine, device), ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


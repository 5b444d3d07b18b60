"""Events the processor applies at a sample-accurate position inside a block.

Events are small frozen dataclasses.  They are created and validated on the
non-realtime side (a script, a MIDI reader, a message handler), queued with
:meth:`audio.Engine.post`, and read — never created — by the audio callback.

Units, chosen once for the whole package:

* ``at`` is an absolute frame number (samples since the engine started, the
  first frame of the first block is 0), or ``None`` for "as soon as possible",
  which means offset 0 of the next block.
* ``velocity`` and controller ``value`` are normalised floats in ``0.0..1.0``
  (MIDI's 0..127 divided by 127).  Velocity maps linearly to voice gain.
* ``note`` and ``controller`` are MIDI numbers, ``0..127``.
* ``note_id`` is assigned by the engine when a :class:`NoteOn` is posted
  (``Engine.post`` returns the event with the id filled in); ids start at 1
  and never repeat within one engine.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar, Union

__all__ = [
    "ControlChange",
    "Event",
    "Fade",
    "KillAllVoices",
    "NoteOff",
    "NoteOn",
    "PitchBend",
]


def _check_at(at: int | None) -> None:
    if at is not None and (not isinstance(at, numbers.Integral) or at < 0):
        raise ValueError(f"at must be a frame number >= 0 or None, got {at!r}")


def _check_midi(name: str, value: int) -> None:
    if not isinstance(value, numbers.Integral) or not 0 <= value <= 127:
        raise ValueError(f"{name} must be an int in 0..127, got {value!r}")


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a float in 0.0..1.0, got {value!r}")


def _check_ms(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number of milliseconds >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class NoteOn:
    """Start a voice playing buffer ``slot`` at pitch ``note``.

    ``note_id`` is filled in by ``Engine.post``; leave it at 0.  Creating one
    validates its fields and raises :class:`ValueError` on a bad value.
    """

    KIND: ClassVar[int] = 0
    note: int
    velocity: float = 1.0
    at: int | None = None
    slot: int = 0
    note_id: int = 0

    def __post_init__(self) -> None:
        _check_midi("note", self.note)
        _check_unit("velocity", self.velocity)
        _check_at(self.at)
        if not isinstance(self.slot, numbers.Integral) or self.slot < 0:
            raise ValueError(f"slot must be an int >= 0, got {self.slot!r}")


@dataclass(frozen=True, slots=True)
class NoteOff:
    """Release the voice of ``note_id``, or every held voice playing ``note``.

    Give exactly one of ``note`` and ``note_id``; otherwise :class:`ValueError`.
    The voice enters its release ramp and frees itself when it reaches zero.
    """

    KIND: ClassVar[int] = 1
    note: int | None = None
    note_id: int | None = None
    at: int | None = None

    def __post_init__(self) -> None:
        if (self.note is None) == (self.note_id is None):
            raise ValueError("NoteOff needs exactly one of note= and note_id=")
        if self.note is not None:
            _check_midi("note", self.note)
        if self.note_id is not None and (not isinstance(self.note_id, numbers.Integral) or self.note_id < 1):
            raise ValueError(f"note_id must be an int >= 1, got {self.note_id!r}")
        _check_at(self.at)


@dataclass(frozen=True, slots=True)
class ControlChange:
    """Set MIDI controller ``controller`` to ``value`` (0.0..1.0).

    The default instrument reads 7 (volume, ramped over one block), 64
    (sustain pedal, down at >= 0.5), 120 (all sound off) and 123 (all notes
    off); every value is stored and readable for scripts.
    """

    KIND: ClassVar[int] = 2
    controller: int
    value: float
    at: int | None = None

    def __post_init__(self) -> None:
        _check_midi("controller", self.controller)
        _check_unit("value", self.value)
        _check_at(self.at)


@dataclass(frozen=True, slots=True)
class Fade:
    """Ramp the fade gain of ``note_id``'s voice from ``start`` to ``end``.

    ``start=None`` starts from the current fade level (a given ``start`` jumps
    there first, as HALion's ``fade`` does).  The fade gain multiplies the
    amplitude envelope; with ``kill_at_end`` the voice is freed when the ramp
    ends.
    """

    KIND: ClassVar[int] = 3
    note_id: int
    start: float | None
    end: float
    duration_ms: float
    kill_at_end: bool = False
    at: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.note_id, numbers.Integral) or self.note_id < 1:
            raise ValueError(f"note_id must be an int >= 1, got {self.note_id!r}")
        if self.start is not None:
            _check_unit("start", self.start)
        _check_unit("end", self.end)
        _check_ms("duration_ms", self.duration_ms)
        _check_at(self.at)


@dataclass(frozen=True, slots=True)
class KillAllVoices:
    """Fade every sounding voice to silence over ``fade_ms`` and free it.

    ``fade_ms=0`` cuts at once (and may click).
    """

    KIND: ClassVar[int] = 4
    fade_ms: float = 10.0
    at: int | None = None

    def __post_init__(self) -> None:
        _check_ms("fade_ms", self.fade_ms)
        _check_at(self.at)


@dataclass(frozen=True, slots=True)
class PitchBend:
    """Bend every voice, sounding and new, by ``value`` (-1.0..1.0) of the bend range.

    The range is the engine's ``bend_range`` (2 semitones by default, the MIDI
    convention); 0.0 is no bend.  A bend applies from its frame on, like any
    other event.
    """

    KIND: ClassVar[int] = 7
    value: float
    at: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.value, numbers.Real) and -1.0 <= self.value <= 1.0):
            raise ValueError(f"value must be a float in -1.0..1.0, got {self.value!r}")
        _check_at(self.at)


Event = Union[NoteOn, NoteOff, ControlChange, Fade, KillAllVoices, PitchBend]
"""Any event the engine accepts."""

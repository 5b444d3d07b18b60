# REALTIME CODE — read before editing.
#
# ``MidiDecoder.message`` runs inside the audio callback (the JACK backend
# calls it for every MIDI event of the block, before the block renders).  It
# may only look at its three ints, create one small event object, append to a
# deque (``Engine.post`` or a script inbox) and bump a counter.  It takes no
# lock, logs nothing, never raises: a refused event is counted.

"""Live MIDI input: raw channel messages to events at an exact frame.

A MIDI source (the JACK backend's ``midi_in`` port) hands each message to
:meth:`MidiDecoder.message` with the absolute frame it belongs to (block start
plus the offset JACK gives), so a note from a JACK MIDI source starts on its
exact sample.  What the decoder produces goes to ``deliver(kind, number,
velocity, value, at)``: by default straight into the engine (the default
sampler plays slot :attr:`MidiDecoder.slot`), or — in the processor — into a
loaded script's ``on_note`` / ``on_release`` / ``on_controller``, the same
entry point client events use.

Messages understood (every channel; MIDI's 0..127 is scaled to 0.0..1.0):

=====================  ========================================================
note on (0x9n)         ``"note_on"``; velocity 0 is a note off
note off (0x8n)        ``"note_off"``
control change (0xBn)  ``"cc"``; the engine itself reads CC 7 (volume),
                       64 (sustain: releases wait until the pedal lifts),
                       120 (all sound off) and 123 (all notes off)
pitch bend (0xEn)      ``"pitch_bend"``, value -1.0..1.0 (engine ``PitchBend``)
channel pressure (Dn)  ``"pressure"``, value 0.0..1.0: the default sampler does
                       not respond to it; a script sees it
=====================  ========================================================

A loaded script gets notes in ``on_note`` / ``on_release`` and everything
else in ``on_controller`` with HALion's controller numbers: 0..127 the MIDI
controllers, :data:`AFTERTOUCH` (128) channel pressure, :data:`PITCH_BEND`
(129) pitch bend (value -1.0..1.0).  A script without ``on_controller``
leaves them to the engine as if no script were loaded.

Anything else (poly pressure, program change, system messages) is counted in
``ignored`` and dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from ._engine import Engine
from ._events import ControlChange, NoteOff, NoteOn, PitchBend

__all__ = ["AFTERTOUCH", "PITCH_BEND", "Deliver", "MidiDecoder"]

AFTERTOUCH = 128
"""The controller number a script's ``on_controller`` sees for channel pressure (HALion's numbering)."""
PITCH_BEND = 129
"""The controller number a script's ``on_controller`` sees for pitch bend, value -1.0..1.0 (HALion's numbering)."""

Deliver = Callable[[str, int, float, float, int], None]
"""``deliver(kind, number, velocity, value, at)``: what a decoded message turns into."""

_SCALE = 1.0 / 127.0


class MidiDecoder:
    """Decode raw MIDI channel messages into engine (or script) events.

    ``deliver`` receives ``(kind, number, velocity, value, at)`` with kind one
    of ``"note_on"``, ``"note_off"``, ``"cc"``, ``"pitch_bend"``, ``"pressure"``; ``None``
    means :meth:`to_engine`.  Counters: ``events`` (messages delivered),
    ``ignored`` (messages of a kind nobody plays), ``dropped`` (refused by a
    full event queue or a bad value).
    """

    def __init__(self, engine: Engine, deliver: Deliver | None = None) -> None:
        self.engine = engine
        self.deliver: Deliver = deliver or self.to_engine
        self.slot = 0  # buffer slot the default sampler plays; the owner may change it any time
        self.events = 0
        self.ignored = 0
        self.dropped = 0

    def message(self, status: int, d1: int, d2: int, at: int) -> None:
        """Decode one channel message due at absolute frame ``at``.

        Context: the audio thread (or any one thread feeding this decoder).
        Cost: one small event object.  Never raises.
        """
        kind = status & 0xF0
        try:
            if kind == 0x90 and d2 > 0:
                self.deliver("note_on", d1, d2 * _SCALE, 0.0, at)
            elif kind == 0x80 or kind == 0x90:
                self.deliver("note_off", d1, 0.0, 0.0, at)
            elif kind == 0xB0:
                self.deliver("cc", d1, 0.0, d2 * _SCALE, at)
            elif kind == 0xE0:
                bend = ((d2 << 7) | d1) - 8192
                self.deliver("pitch_bend", 0, 0.0, max(-1.0, bend / 8191.0), at)
            elif kind == 0xD0:
                self.deliver("pressure", 0, 0.0, d1 * _SCALE, at)
            else:
                self.ignored += 1
                return
        except (OverflowError, ValueError, KeyError):  # a full queue, a bad data byte
            self.dropped += 1
            return
        self.events += 1

    def to_engine(self, kind: str, number: int, velocity: float, value: float, at: int) -> None:
        """The default ``deliver``: post straight into the engine (the default sampler plays).

        Context: the audio thread.  Raises :class:`OverflowError` when the
        engine's queue is full and :class:`ValueError` for an out-of-range
        number (both counted by :meth:`message`).
        """
        engine = self.engine
        if kind == "note_on":
            engine.post(NoteOn(number, velocity, at, self.slot))
        elif kind == "note_off":
            engine.post(NoteOff(note=number, at=at))
        elif kind == "cc":
            engine.post(ControlChange(number, value, at))
        elif kind == "pitch_bend":
            engine.post(PitchBend(value, at))
        # "pressure": the default sampler has no use for it

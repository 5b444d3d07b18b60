"""The client of a daemon that plays: :class:`Client` adds notes, controllers and samples to the jobs client.

``audio.Client`` is :class:`actors.Client` (jobs, arrays, status) plus the
calls the processor answers.  ``ensemble.Client`` adds the script's calls on
top (``controller.Client``); most programs import that one.
"""

from __future__ import annotations

from typing import Any

import actors.client
from actors import OutOfRange
from audio.messages import (
    ControlEvent, KillAllEvent, MidiConnect, NoteOffEvent, NoteOnEvent, SampleDrop, SampleInfo, SampleList, SampleLoad,
)


class Client(actors.client.Client):
    """A :class:`actors.Client` that also plays notes and manages the sample registry."""

    def note_on(self, note: int, velocity: int = 100, at: float | None = None, sample: str = "") -> None:
        """Play ``note`` (0..127) at MIDI ``velocity`` (1..127, as MIDI, HALion and ``ensemble note`` count it).

        ``at``: seconds from when the processor receives it (None: its next block);
        the event then starts at its exact sample offset.  ``sample`` names a
        loaded sample ("" = the last one loaded, else the built-in sound); the
        note carries it, so two notes in one block can play two samples.
        Raises :class:`OutOfRange` for a note or velocity outside its range.
        """
        if type(velocity) is not int or not 1 <= velocity <= 127 or type(note) is not int or not 0 <= note <= 127:
            raise OutOfRange(f"note_on({note!r}, velocity={velocity!r}): note is 0..127 and velocity a MIDI "
                             "velocity 1..127 (an int, as in `ensemble note --velocity`)")
        self._call(NoteOnEvent(note, velocity / 127, float(at or 0.0), sample))

    def note_off(self, note: int, at: float | None = None) -> None:
        """Release every voice playing ``note`` (0..127; release envelope, no click).

        Raises :class:`OutOfRange` for a note that is no int in 0..127 (60.5
        is refused, not cut to 60) and for ``at`` outside 0..3600 s or not finite.
        """
        if type(note) is not int or not 0 <= note <= 127:
            raise OutOfRange(f"note_off({note!r}): note is an int 0..127")
        self._call(NoteOffEvent(note, float(at or 0.0)))

    def control_change(self, controller: int, value: float, at: float | None = None) -> None:
        """Send controller ``controller`` (0..127) with ``value`` (0..1) to the processor.

        Raises :class:`OutOfRange` for a controller that is no int in 0..127
        (74.5 is refused, not cut to 74, as ``note_on`` refuses 60.5) or a
        value outside 0..1.
        """
        if type(controller) is not int or not 0 <= controller <= 127:
            raise OutOfRange(f"control_change({controller!r}, {value!r}): controller is an int 0..127 and value "
                             "0..1 (as MIDI numbers its controllers)")
        self._call(ControlEvent(controller, float(value), float(at or 0.0)))

    def kill_all_voices(self, fade_ms: float = 10.0) -> None:
        """Fade out and free every sounding voice."""
        self._call(KillAllEvent(float(fade_ms)))

    def upload_sample(self, array: Any, name: str, samplerate: int = 48000, root_key: int = 60) -> SampleInfo:
        """Copy ``array`` ([frames] or [frames, channels]) into shared memory and register it as ``name``.

        The daemon's registry owns the segment from then on (``drop_sample``
        releases it); replacing a sample the processor plays swaps it at a
        block boundary.  Returns its registry entry (as :meth:`samples` lists
        it: frames and channels of ``array``).  Cost: one copy of the data.
        Raises :class:`ValueError` for an array of another shape and
        :class:`OutOfRange` for data the processor refuses (NaN or infinity,
        magnitudes beyond ±1000, fewer than 2 frames).
        """
        import numpy as np

        from actors.shm import SharedArray

        data = np.asarray(array, dtype=np.float32)
        if data.ndim not in (1, 2) or data.shape[0] == 0:
            raise ValueError(f"a sample is a non-empty [frames] or [frames, channels] array, got shape {data.shape}")
        sa = SharedArray.create(self.config.shm_key, data.shape, np.float32)
        try:
            sa.array[...] = data
            info = SampleInfo(name, sa.handle, int(samplerate), int(root_key), data.shape[0],
                              data.shape[1] if data.ndim == 2 else 1)
            self._call(SampleLoad(info))
        except BaseException:
            sa.unlink()
            raise
        finally:
            sa.close()
        return info

    def samples(self) -> list[SampleInfo]:
        """The samples in the daemon's registry."""
        return list(self._call(SampleList()).samples)

    def drop_sample(self, name: str) -> None:
        """Remove a sample from the registry (its memory is freed once the processor lets go)."""
        self._call(SampleDrop(name))

    def connect_midi(self, port: str, via: str = "auto") -> None:
        """Ask the processor to take MIDI from ``port`` (see ``ensemble midi connect``); the outcome shows in ``status``."""
        self._call(MidiConnect(port, via))

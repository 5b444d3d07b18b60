"""Sample buffers: validation on the non-realtime side, and the built-in sample.

A :class:`SampleBuffer` is built (and checked) outside the audio callback by
:meth:`audio.Engine.set_buffer`.  It never copies a float32 array it is
given, so a read-only numpy view of shared memory stays a view; anything else
is converted once, here, never in the callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .messages import SLOTS  # the constant lives with the schema, which the supervisor imports without numpy

__all__ = ["SLOTS", "SampleBuffer", "builtin_sample"]

BUILTIN_FREQUENCY = 261.63
"""Pitch of the built-in sample in Hz (middle C, MIDI key 60)."""

_FINITE_CHUNK = 1 << 20  # samples checked per pass (two reductions each, no temporary array)

MAX_MAGNITUDE = 1000.0
"""The largest sample magnitude a buffer may hold.

Float audio is nominally within ±1 (full scale).  Data a thousand times
louder is no recording but a scaling mistake (16-bit integers read as floats
reach 32767), and values far beyond it (3e38) overflow float32 when voices
are mixed: the output would be infinite.  1000 leaves room for any real
headroom, and for every voice the engine mixes at full velocity, without
overflow."""


@dataclass(frozen=True, eq=False)
class SampleBuffer:
    """One sample, ready for the callback: float32 ``[frames, channels]``.

    ``data`` may be read-only (a view of shared memory).  ``columns`` holds one
    1-D view per channel, made here so the callback does not slice.  Build one
    with :meth:`from_array`; the constructor itself does no checking.
    """

    data: npt.NDArray[np.float32]
    samplerate: int
    root_key: int = 60
    name: str | None = None
    columns: tuple[npt.NDArray[np.float32], ...] = field(default=(), repr=False)

    @property
    def frames(self) -> int:
        """Number of frames."""
        return int(self.data.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.data.shape[1])

    @classmethod
    def from_array(
        cls,
        data: npt.ArrayLike,
        samplerate: int,
        root_key: int = 60,
        name: str | None = None,
        check_finite: bool = True,
    ) -> SampleBuffer:
        """Validate ``data`` and wrap it, copying only when it is not float32.

        Context: non-realtime only.  Cost: no copy for a float32 array (a 1-D
        array becomes a ``[frames, 1]`` view); a conversion copy otherwise;
        ``check_finite`` reads every sample once.  Raises :class:`ValueError`
        for a shape other than ``[frames]`` / ``[frames, channels]``, fewer than
        2 frames, a non-finite sample or one beyond ±:data:`MAX_MAGNITUDE`
        (``check_finite``), a bad samplerate or root key.
        """
        array = np.asarray(data)
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] < 1:
            raise ValueError(
                f"sample data must have shape [frames] or [frames, channels], got {array.shape}"
            )
        if array.shape[0] < 2:
            raise ValueError(f"sample data needs at least 2 frames, got {array.shape[0]}")
        if not isinstance(samplerate, (int, np.integer)) or samplerate <= 0:
            raise ValueError(f"samplerate must be a positive int, got {samplerate!r}")
        if not 0 <= int(root_key) <= 127:
            raise ValueError(f"root_key must be a MIDI key 0..127, got {root_key!r}")
        problem = _unplayable(array) if check_finite else ""
        if problem:
            raise ValueError(problem)
        columns = tuple(array[:, c] for c in range(array.shape[1]))
        return cls(array, int(samplerate), int(root_key), name, columns)


def _unplayable(array: npt.NDArray[np.float32]) -> str:
    """Why the samples cannot be played ('' if they can): NaN or infinity, or a magnitude beyond MAX_MAGNITUDE.

    Read in chunks, each with a max and a min (NaN wins both), so nothing is
    allocated however long the sample is.
    """
    flat = array.reshape(-1)  # a view of a contiguous array (shared memory, a fresh conversion); a copy otherwise
    loudest = 0.0
    for i in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[i:i + _FINITE_CHUNK]
        high, low = float(chunk.max()), float(chunk.min())
        if not (math.isfinite(high) and math.isfinite(low)):
            return "sample data contains NaN or infinity; clean it before loading"
        loudest = max(loudest, high, -low)
    if loudest > MAX_MAGNITUDE:
        return (f"sample data reaches {loudest:.3g}, beyond ±{MAX_MAGNITUDE:g}: float audio is nominally within ±1 "
                "(full scale), and values this large overflow when voices are mixed; scale it (divide by its peak, "
                "or by 32768 for 16-bit integers) before loading")
    return ""


def builtin_sample(samplerate: int = 48000, seconds: float = 2.0) -> npt.NDArray[np.float32]:
    """A decaying, band-limited saw at 261.63 Hz (key 60), mono float32.

    Deterministic: the same arguments give the same array on one machine.
    The first frame is not zero (a short 1 ms fade-in starts from 1/48 of
    full scale), so onsets are visible.  Context: any non-realtime code.
    Cost: allocates ``seconds * samplerate`` float64 frames while building.
    """
    if samplerate <= 0 or seconds <= 0:
        raise ValueError(f"samplerate and seconds must be positive, got {samplerate}, {seconds}")
    frames = int(round(seconds * samplerate))
    t = np.arange(frames, dtype=np.float64) / samplerate
    wave = np.zeros(frames, dtype=np.float64)
    harmonics = max(1, min(12, int((samplerate / 2) // BUILTIN_FREQUENCY) - 1))
    for k in range(1, harmonics + 1):
        # Cosine phase so the waveform does not start at zero.
        wave += np.cos(2.0 * math.pi * k * BUILTIN_FREQUENCY * t) / k
    wave /= np.max(np.abs(wave))
    decay = np.exp(-t * 2.5)
    fade_in = np.minimum(1.0, (np.arange(frames) + 1) / max(1.0, samplerate * 0.001))
    fade_out_frames = max(1, int(samplerate * 0.02))
    fade_out = np.ones(frames)
    fade_out[-fade_out_frames:] = np.linspace(1.0, 0.0, fade_out_frames)
    return (0.8 * wave * decay * fade_in * fade_out).astype(np.float32)

"""Decoding a sound file a page uploaded, within fixed limits on what it costs the panel's process.

A compressed file is small for what it holds: a minute of FLAC silence is
ten kilobytes, so the upload limit (:data:`MAX_UPLOAD`) says little about
the memory its decoding takes.  :func:`decode` refuses, from the header, a
file whose frames × channels × 4 bytes (float32) exceed
:data:`MAX_DECODED`, before it allocates anything for the audio; it then
decodes in blocks of :data:`BLOCK` frames into an array of that size, so a
header that promised less than the file holds cannot make it decode more
(a file shorter than its header gives the frames it holds).

Runs on the panel's client thread (blocking: a 256 MiB decode takes about a
second); raises :class:`SoundRefused` with the reason (the view turns it into
an ActionError for the page).
"""

from __future__ import annotations

import io
from typing import Any

MAX_UPLOAD = 64 * 1024 * 1024  # bytes of a file as uploaded
# Decoded float32 bytes of one sample: four times the upload limit, so any PCM file (8-bit or wider) that passes
# the upload limit decodes within it, while a compressed one may expand fourfold (FLAC usually halves).
MAX_DECODED = 4 * MAX_UPLOAD
BLOCK = 65536  # frames decoded at a time
MAX_CHANNELS = 64


class SoundRefused(Exception):
    """The uploaded file is no sound file soundfile can read, or it would decode past the limits."""


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n < 1024 ** 3 else f"{n / 1024 ** 3:.1f} GiB"


def decode(data: bytes) -> tuple[Any, int]:
    """The audio in ``data`` as a float32 array ([frames] or [frames, channels]) and its sample rate.

    Blocking; allocates at most :data:`MAX_DECODED` bytes for the audio.
    Raises SoundRefused: not a sound file, no frames, too many channels, or
    more decoded bytes than :data:`MAX_DECODED` (said with the sizes).
    """
    import numpy as np
    import soundfile

    if len(data) > MAX_UPLOAD:
        raise SoundRefused(f"the file is {_mib(len(data))}, over the upload limit of {_mib(MAX_UPLOAD)}")
    try:
        f = soundfile.SoundFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - soundfile raises its own error types, and TypeError/RuntimeError
        raise SoundRefused(f"not a sound file soundfile can read: {exc}") from None
    with f:
        frames, channels, rate = int(f.frames), int(f.channels), int(f.samplerate)
        if not 1 <= channels <= MAX_CHANNELS:
            raise SoundRefused(f"the file has {channels} channels; a sample has 1..{MAX_CHANNELS}")
        if frames <= 0:
            raise SoundRefused("the file holds no audio frames")
        decoded = frames * channels * 4
        if decoded > MAX_DECODED:
            raise SoundRefused(f"the file decodes to {_mib(decoded)} ({frames} frames × {channels} channels, float32), "
                               f"over the limit of {_mib(MAX_DECODED)}; upload a shorter or mono file")
        out = np.empty((frames, channels), dtype=np.float32)  # pages are touched only as blocks fill them
        done = 0
        try:
            while done < frames:
                got = f.read(min(BLOCK, frames - done), dtype="float32", always_2d=True, out=out[done:done + BLOCK])
                if len(got) == 0:
                    break
                done += len(got)
        except Exception as exc:  # noqa: BLE001 - a corrupt stream raises from libsndfile
            raise SoundRefused(f"the file could not be decoded past frame {done}: {exc}") from None
    if done == 0:
        raise SoundRefused("the file holds no audio frames")
    audio = out[:done]
    return (audio[:, 0] if channels == 1 else audio), rate

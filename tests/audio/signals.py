"""Helpers the audio tests share: a predictable engine, a block renderer, onset finding."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from audio import Engine


def make_engine(**kwargs: Any) -> Engine:
    """An engine with instant attack and unity gain, so sample values are easy to predict."""
    settings: dict[str, Any] = dict(samplerate=48000, blocksize=256, channels=2, attack_ms=0.0, gain=1.0)
    settings.update(kwargs)
    return Engine(**settings)


def render_blocks(engine: Engine, blocks: int) -> npt.NDArray[np.float32]:
    """Render ``blocks`` blocks through ``Engine.render`` and return them joined."""
    out = np.zeros((engine.blocksize, engine.channels), dtype=np.float32)
    parts = []
    for _ in range(blocks):
        engine.render(out)
        parts.append(out.copy())
    return np.concatenate(parts)


def first_nonzero(signal: npt.NDArray[np.float32]) -> int:
    """Index of the first frame with any non-zero channel (-1 if silent)."""
    hits = np.flatnonzero(np.any(signal != 0.0, axis=1))
    return int(hits[0]) if hits.size else -1

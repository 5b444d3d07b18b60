"""Audio engine timings: offline render speed and per-block callback cost.

Run: ``python bench/audio_engine.py [--voices 64] [--blocksize 256] [--seconds 10]``.
Prints numbers; asserts nothing.  Two measurements:

1. An offline render of ``--seconds`` of audio with ``--voices`` voices
   sounding the whole time (notes at or below the root key on a sample long
   enough that none ends), written to a temporary WAV: the realtime factor
   is audio seconds per wall-clock second.
2. ``Engine.render`` alone, block after block with the same voices, GC frozen
   as a realtime backend freezes it: median / p99 / p99.9 / max of the block
   time as a fraction of the block period.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio import Engine, NoteOn, builtin_sample, render_offline  # noqa: E402


def sustained_notes(voices: int) -> list[NoteOn]:
    """``voices`` notes at frame 0, all at or below key 60 so a long sample outlasts the run."""
    return [NoteOn(24 + i % 37, 0.3, at=0) for i in range(voices)]


def offline(voices: int, blocksize: int, seconds: float) -> None:
    engine = Engine(48000, blocksize, 2, max_voices=voices)
    engine.set_buffer(0, builtin_sample(48000, seconds + 2.0))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        render_offline(engine, Path(tmp) / "bench.wav", seconds, sustained_notes(voices))
        wall = time.perf_counter() - t0
    stats = engine.stats()
    print(f"offline: {seconds:.0f} s of audio, {voices} voices (active at end: {stats.active_voices}), "
          f"blocksize {blocksize}: {wall:.2f} s wall, realtime factor {seconds / wall:.1f}x")


def per_block(voices: int, blocksize: int, blocks: int) -> None:
    engine = Engine(48000, blocksize, 2, max_voices=voices)
    engine.set_buffer(0, builtin_sample(48000, blocks * blocksize / 48000 + 2.0))
    out = np.zeros((blocksize, 2), dtype=np.float32)
    for note in sustained_notes(voices):
        engine.post(note)
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for _ in range(100):  # warm-up
            engine.render(out)
        engine.reset_timing()
        for _ in range(blocks):
            engine.render(out)
    finally:
        gc.unfreeze()
        gc.enable()
    s = engine.stats()
    print(f"render(): {s.timed_blocks} blocks of {blocksize} frames at 48 kHz (period {s.period_ms:.3f} ms), "
          f"{s.active_voices} voices: median {s.callback_p50_ms * 1000:.0f} us = {s.load_p50:.3f}, "
          f"p99 {s.load_p99:.3f}, p99.9 {s.callback_p999_ms * 1000:.0f} us = {s.load_p999:.3f}, "
          f"max {s.load_max:.3f} of the period; deadline misses {s.deadline_misses}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=64)
    parser.add_argument("--blocksize", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--blocks", type=int, default=5000)
    args = parser.parse_args()
    offline(args.voices, args.blocksize, args.seconds)
    per_block(args.voices, args.blocksize, args.blocks)


if __name__ == "__main__":
    main()

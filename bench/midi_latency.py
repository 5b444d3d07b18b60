"""What the timestamped MIDI path (ALSA sequencer / RtMidi) adds: latency and timing error, beside its transport floor.

Run: ``python bench/midi_latency.py [--notes 400] [--blocksize 256]`` (needs
jackd and python-rtmidi).  RtMidi sends from one port to another through a
private JACK server (``jackd -R -n ensemble-bench-<pid> -d dummy``; this VM
has no ALSA sequencer, so RtMidi's JACK API carries the messages); the
receiving port is an :class:`audio._midi_ports.TimedMidiInput` feeding an
engine on the null clock (a realtime thread, the processor's fallback clock),
so no Python JACK client shares the process with RtMidi (see
``Processor._connect_midi``).  Note-ons go out at random intervals of 3-23 ms.

Per note, on the system clock (``perf_counter_ns``, CLOCK_MONOTONIC):

* transport (the floor, not ours): from ``send_message`` to the stamp
  RtMidi's callback puts on it;
* placement (what this path adds): from the stamp to the moment the engine
  renders the note's frame (the null clock's schedule: frame 0 at its first
  block, then exactly ``1 / rate`` per frame).  By design one period;
* timing error: each note's distance from the previous one, in frames,
  against the distance between their sends (transport included), and
  against the distance between their stamps (this path alone).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio import Engine, MidiDecoder, NullBackend  # noqa: E402
from audio._midi_ports import TimedMidiInput, rtmidi_module  # noqa: E402
from bench.audio_jack import PrivateJack  # noqa: E402


def measure(notes: int, blocksize: int) -> dict[str, np.ndarray]:
    rtmidi = rtmidi_module()
    engine = Engine(48000, blocksize, 2)
    ns_per_frame = 1e9 / engine.samplerate
    placed: dict[int, int] = {}  # send index -> frame
    stamps: dict[int, int] = {}
    due: dict[int, float] = {}  # block start frame -> when the null clock began it (its own schedule, slips included)
    period_ns = blocksize * ns_per_frame

    def deliver(kind: str, number: int, velocity: float, value: float, at: int) -> None:
        if kind == "note_on":
            placed[int(round(velocity * 127)) * 128 + number] = at

    def clock(start: int, frames: int) -> None:  # the null clock's schedule, as NullBackend keeps it
        now = time.perf_counter_ns()
        began = due[start - frames] + period_ns if start else now
        due[start] = now if now - began > period_ns else began  # a slip restarts the schedule

    sender = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="bench-send")
    sender.open_virtual_port("out")
    backend = NullBackend(engine)
    engine.add_block_hook(clock)
    source = TimedMidiInput(engine, MidiDecoder(engine, deliver), "bench-send:out", "rtmidi-jack")
    arrive = source.queue.arrive

    def stamped(stamp: int, status: int, d1: int, d2: int) -> None:
        stamps[d2 * 128 + d1] = stamp
        arrive(stamp, status, d1, d2)

    source.queue.arrive = stamped  # type: ignore[method-assign]
    engine.add_block_hook(source.block)
    backend.start()
    sent: dict[int, int] = {}
    rng = random.Random(1)
    try:
        time.sleep(0.5)
        for i in range(notes):
            key = i % (127 * 128)
            note, velocity = key % 128, key // 128 + 1
            time.sleep(rng.uniform(0.003, 0.023))
            sent[velocity * 128 + note] = time.perf_counter_ns()
            sender.send_message([0x90, note, velocity])
        time.sleep(0.5)
    finally:
        backend.stop()
        source.close()
        sender.close_port()
        sender.delete()
    keys = [k for k in sent if k in stamps and k in placed]
    send = np.array([sent[k] for k in keys], dtype=np.float64)
    stamp = np.array([stamps[k] for k in keys], dtype=np.float64)
    sound = np.array([due[placed[k] - placed[k] % blocksize] + (placed[k] % blocksize) * ns_per_frame for k in keys])
    order = np.argsort(send)
    send, stamp, sound = send[order], stamp[order], sound[order]
    interval_error = np.diff(sound) / ns_per_frame - np.diff(send) / ns_per_frame
    placement_error = np.diff(sound) / ns_per_frame - np.diff(stamp) / ns_per_frame
    return {"transport_ms": (stamp - send) / 1e6, "placement_ms": (sound - stamp) / 1e6,
            "end_to_end_ms": (sound - send) / 1e6, "interval_error_frames": interval_error,
            "placement_error_frames": placement_error, "slips": np.array([engine.stats().clock_slips]),
            "lost": np.array([notes - len(keys)]), "late": np.array([source.queue.late])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=400)
    parser.add_argument("--blocksize", type=int, nargs="+", default=[256, 128])
    args = parser.parse_args()
    if shutil.which("jackd") is None:
        raise SystemExit("jackd is not installed")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {os.cpu_count()} cores")
    for frames in args.blocksize:
        with tempfile.TemporaryDirectory(prefix="ens-midibench-") as tmp:
            server = PrivateJack(frames, Path(tmp) / "jackd.log")
            os.environ["JACK_DEFAULT_SERVER"] = server.name
            try:
                r = measure(args.notes, frames)
            finally:
                server.close()
        period = frames / 48.0
        print(f"\n{frames} frames (period {period:.2f} ms), {args.notes} notes, lost {int(r['lost'][0])}, "
              f"late {int(r['late'][0])}")
        for key in ("transport_ms", "placement_ms", "end_to_end_ms"):
            v = r[key]
            print(f"  {key:15s} p50 {np.percentile(v, 50):6.3f}  p99 {np.percentile(v, 99):6.3f}  "
                  f"max {v.max():6.3f}  (p50 / period {np.percentile(v, 50) / period:.2f})")
        e = np.abs(r["interval_error_frames"])
        print(f"  timing error between notes, send to sound (frames): p50 {np.percentile(e, 50):.1f}  "
              f"p99 {np.percentile(e, 99):.1f}  max {e.max():.1f}")
        e = np.abs(r["placement_error_frames"])
        print(f"  of which placement, stamp to sound (frames):      p50 {np.percentile(e, 50):.1f}  "
              f"p99 {np.percentile(e, 99):.1f}  max {e.max():.1f}  (null clock slips {int(r['slips'][0])})")


if __name__ == "__main__":
    main()

"""A processor on the null clock beside a JACK server: does its clock thread's priority cost JACK xruns?

Run: ``python bench/jack_neighbour.py [--seconds 20] [--runs 2] [--frames 128] [--priorities 70 1 0]``

A private ``jackd -R`` dummy server (48 kHz, ``--frames``) plays JACK's own C
client ``jack_simple_client``; beside it, in another process, an engine with
64 voices sounding renders on a :class:`audio.NullBackend` whose clock thread
runs at SCHED_FIFO ``priority`` (0: no neighbour at all, the floor).  The
xruns are counted in the server's log (``JackEngine::XRun``), per run, with
the priorities interleaved so the machine's changing load falls on each alike.

Why: every processor without a device (tests, benchmarks, a daemon on a
server) runs the null clock; at SCHED_FIFO 70 it outranks ``jackd -R``
(priority 10 by default) and every JACK client on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audio_jack import PrivateJack  # noqa: E402

NEIGHBOUR = """
import sys, time
import numpy as np
from audio import Engine, NoteOn, NullBackend
e = Engine(48000, 256, 2)
e.set_buffer(0, (np.sin(np.arange(48000 * 120) * 0.01) * 0.1).astype(np.float32))
for i in range(64):
    e.post(NoteOn(40 + i % 48, 0.5, 0, 0))
b = NullBackend(e, priority=int(sys.argv[1]))
b.start()
print(b.thread_policy, flush=True)
time.sleep(float(sys.argv[2]))
b.stop()
"""


def one_run(frames: int, priority: int, seconds: float, root: Path) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="ens-neigh-") as tmp:
        server = PrivateJack(frames, Path(tmp) / "jackd.log")
        env = dict(server.env, PYTHONPATH=str(root))
        try:
            client = subprocess.Popen(["jack_simple_client"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            before = server.xruns()
            policy = "none"
            if priority:
                result = subprocess.run([sys.executable, "-c", NEIGHBOUR, str(priority), str(seconds)], env=env,
                                        capture_output=True, text=True, timeout=seconds + 60)
                policy = result.stdout.strip() or result.stderr.strip()[-200:]
            else:
                time.sleep(seconds)
            after = server.xruns()
            client.terminate()
            client.wait()
        finally:
            server.close()
    return after - before, policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--priorities", type=int, nargs="+", default=[70, 1, 0])
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    totals: dict[int, list[int]] = {p: [] for p in args.priorities}
    for run in range(args.runs):
        for p in args.priorities:
            xruns, policy = one_run(args.frames, p, args.seconds, root)
            totals[p].append(xruns)
            print(f"run {run + 1}: neighbour {'SCHED_FIFO ' + str(p) if p else 'none':14s} -> "
                  f"{xruns:3d} xruns of jack_simple_client's server in {args.seconds:g} s ({policy}); "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for p, xs in totals.items():
        print(f"neighbour {'SCHED_FIFO ' + str(p) if p else 'none':14s}: {sum(xs)} xruns in {len(xs)} runs {xs}")


if __name__ == "__main__":
    main()

"""Where a JACK cycle's time goes when the callback shares the GIL with a busy main thread.

Run (a JACK server must be running, e.g. ``jackd -R -d dummy -r 48000 -p 256 &``)::

    python bench/jack_gil.py [--switch-ms 5 0.2] [--burst-ms 2] [--seconds 10] [--runs 3] [--burners 0] [--main other fifo]

Prints numbers; asserts nothing.  One process plays 64 voices through
:class:`audio.JackBackend` (JACK's own client thread, SCHED_FIFO with
``jackd -R``) while its main thread does pure-Python work in bursts of
``--burst-ms`` every 8 ms — the shape of the processor's main thread handling
a batch of messages.  For each GIL switch interval (``sys.setswitchinterval``,
the interpreter default is 5 ms) it reports JACK's own xrun count (its xrun
callback), how late the callback began after the cycle start (the GIL wait
plus the wake-up: p99 and max), and cycles whose callback began more than half
a period late.  ``--burners N`` adds N CPU-bound processes at nice 5, as the
worker pool would.  ``--main fifo`` runs the main thread at SCHED_FIFO 1 (as
the processor does, see ``audio._realtime.promote_control_thread``), ``other``
at normal priority: a main thread preempted while it holds the GIL keeps the
callback waiting however short the switch interval.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio import Engine, JackBackend, builtin_sample  # noqa: E402
from audio._realtime import SwitchInterval, promote_control_thread  # noqa: E402


def one_run(switch_ms: float, burst_ms: float, seconds: float, burners: int, main: str) -> dict[str, float]:
    spin = f"import os, time\nos.nice(5)\nt = time.time()\nwhile time.time() - t < {seconds + 5}: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(burners)]
    SwitchInterval.SECONDS = switch_ms / 1000.0
    if main == "fifo":  # never preempted by ordinary processes while it holds the GIL
        notice = promote_control_thread()
        if notice:
            raise SystemExit(notice)
    else:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    engine = Engine(48000, 256, 2, max_voices=64)
    engine.set_buffer(0, builtin_sample(48000, seconds + 10.0))
    backend = JackBackend(engine, client_name="gilbench", autoconnect=False)
    try:
        backend.start()
        for i in range(64):
            engine.note_on(24 + i % 37, 0.3)
        time.sleep(1.0)
        backend.reset_timing()
        before, xruns = backend.stats(), engine.stats().xruns
        end = time.monotonic() + seconds
        total = 0
        while time.monotonic() < end:
            t = time.perf_counter()
            while time.perf_counter() - t < burst_ms / 1000.0:  # Python bytecode holding the GIL
                total += sum(range(100))
            time.sleep(0.008)
        after = backend.stats()
        return {
            "xruns": engine.stats().xruns - xruns,
            "late_cycles": after["jack_late_cycles"] - before["jack_late_cycles"],
            "late_p99_ms": after["jack_late_p99_ms"],
            "late_max_ms": after["jack_late_max_ms"],
            "frames": engine.blocksize,
        }
    finally:
        backend.stop()
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 0.2])
    parser.add_argument("--burst-ms", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burners", type=int, default=0)
    parser.add_argument("--main", nargs="+", default=["other", "fifo"], choices=["other", "fifo"])
    args = parser.parse_args()
    for k in range(args.runs):
        for switch in args.switch_ms:
          for main in args.main:
            r = one_run(switch, args.burst_ms, args.seconds, args.burners, main)
            print(f"run {k + 1} switch interval {switch:g} ms, main thread {'SCHED_FIFO 1' if main == 'fifo' else 'SCHED_OTHER'}, "
                  f"{r['frames']:.0f}-frame cycles, main-thread bursts "
                  f"{args.burst_ms:g} ms/8 ms, {args.burners} burners, {args.seconds:g} s: JACK xruns {r['xruns']:.0f}, "
                  f"callbacks > half a period late {r['late_cycles']:.0f}, late p99 {r['late_p99_ms']:.2f} ms, "
                  f"max {r['late_max_ms']:.2f} ms", flush=True)


if __name__ == "__main__":
    main()

"""Where a JACK cycle's time goes when the callback shares the GIL with a busy main thread.

Run (a JACK server must be running, e.g. ``jackd -R -d dummy -r 48000 -p 256 &``)::

    python bench/jack_gil.py [--switch-ms 5 0.2] [--burst-ms 2] [--every-ms 8] [--seconds 10] [--runs 3]
                             [--burners 0] [--main other fifo] [--voices 64] [--hold-ms 20]

Prints numbers; asserts nothing.  One process plays 64 voices through
:class:`audio.JackBackend` (JACK's own client thread, SCHED_FIFO with
``jackd -R``) while its main thread does pure-Python work in bursts of
``--burst-ms`` every ``--every-ms`` — the shape of the processor's main thread
handling a batch of messages (``--burst-ms 0``: a main thread that only
sleeps).  For each GIL switch interval (``sys.setswitchinterval``,
the interpreter default is 5 ms) it reports JACK's own xrun count (its xrun
callback), how late the callback began after the cycle start (the GIL wait
plus the wake-up: p99 and max), and cycles whose callback began more than half
a period late.  ``--burners N`` adds N CPU-bound processes at nice 5, as the
worker pool would.  ``--main fifo`` runs the main thread at SCHED_FIFO 1 (as
the processor does, see ``audio._realtime.promote_control_thread``), ``other``
at normal priority: a main thread preempted while it holds the GIL keeps the
callback waiting however short the switch interval.

``--hold-ms H`` tests one more idea: an *asymmetric* switch interval.  The
callback sets ``sys.setswitchinterval(H ms)`` as it starts and puts the short
interval back as it ends, so a main thread that wants the GIL while a cycle
renders waits for the callback's end instead of forcing a hand-over every
0.2 ms (with CPython's forced switching, each hand-over also makes the
callback wait until the main thread has run).  Each run is then made once
without and once with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio import Engine, JackBackend, builtin_sample  # noqa: E402
from audio._realtime import SwitchInterval, promote_control_thread  # noqa: E402


def _hold_while_rendering(hold_s: float, short_s: float) -> Callable[[], None]:
    """Wrap ``JackBackend._process`` so the switch interval is ``hold_s`` while it runs; returns the undo."""
    original = JackBackend._process
    setswitch = sys.setswitchinterval

    def process(self: JackBackend, frames: int) -> None:
        setswitch(hold_s)
        try:
            original(self, frames)
        finally:
            setswitch(short_s)

    JackBackend._process = process  # type: ignore[method-assign]

    def undo() -> None:
        JackBackend._process = original  # type: ignore[method-assign]

    return undo


def one_run(switch_ms: float, burst_ms: float, seconds: float, burners: int, main: str, every_ms: float = 8.0,
            voices: int = 64, hold_ms: float = 0.0) -> dict[str, float]:
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
    undo = _hold_while_rendering(hold_ms / 1000.0, switch_ms / 1000.0) if hold_ms else (lambda: None)
    try:
        backend.start()
        for i in range(voices):
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
            time.sleep(every_ms / 1000.0)
        after = backend.stats()
        return {
            "xruns": engine.stats().xruns - xruns,
            "late_cycles": after["jack_late_cycles"] - before["jack_late_cycles"],
            "late_p99_ms": after["jack_late_p99_ms"],
            "late_max_ms": after["jack_late_max_ms"],
            "frames": engine.blocksize,
            "done_p99_ms": after["jack_done_p99_ms"],
            "done_max_ms": after["jack_done_max_ms"],
            "overruns": after["jack_overrun_cycles"] - before["jack_overrun_cycles"],
        }
    finally:
        backend.stop()
        undo()
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
    parser.add_argument("--every-ms", type=float, default=8.0, help="sleep between the main thread's bursts")
    parser.add_argument("--voices", type=int, default=64)
    parser.add_argument("--hold-ms", type=float, default=0.0,
                        help="also run each case with this switch interval while the callback renders")
    args = parser.parse_args()
    holds = [0.0, args.hold_ms] if args.hold_ms else [0.0]
    for k in range(args.runs):
        for switch in args.switch_ms:
          for main in args.main:
            for hold in holds:
              r = one_run(switch, args.burst_ms, args.seconds, args.burners, main, args.every_ms, args.voices, hold)
              held = f" ({hold:g} ms while rendering)" if hold else ""
              print(f"run {k + 1} switch interval {switch:g} ms{held}, main thread "
                    f"{'SCHED_FIFO 1' if main == 'fifo' else 'SCHED_OTHER'}, {r['frames']:.0f}-frame cycles, "
                    f"{args.voices} voices, main-thread bursts {args.burst_ms:g} ms/{args.every_ms:g} ms, "
                    f"{args.burners} burners, {args.seconds:g} s: JACK xruns {r['xruns']:.0f}, "
                    f"callbacks > half a period late {r['late_cycles']:.0f}, late p99 {r['late_p99_ms']:.2f} ms, "
                    f"max {r['late_max_ms']:.2f} ms; callback done p99 {r['done_p99_ms']:.2f} ms, "
                    f"max {r['done_max_ms']:.2f} ms, over a period {r['overruns']:.0f}", flush=True)


if __name__ == "__main__":
    main()

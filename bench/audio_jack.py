"""Case ``audio_jack``: xruns of the processor on JACK under load, beside JACK's own C client under the same load.

Both sides run against a private JACK server this case starts (``jackd -R -n
ensemble-bench-<pid> -d dummy -r 48000 -p FRAMES``, clients reach it through
``JACK_DEFAULT_SERVER``), and xruns are counted in that server's own log
(``JackEngine::XRun`` lines), so nobody's notion of an xrun but JACK's enters
the figure.  For each block size, one after the other:

1. the floor: ``jack_simple_client`` (JACK's C example client) plays while a
   daemon with its processor on the null backend carries the load below;
2. ensemble: the same, with the processor a JACK client (backend ``auto``)
   and no C client, rendering in JACK's process callback (the default);
3. ensemble rendering :data:`AHEAD` block(s) ahead (``[audio] jack_ahead``):
   JACK calls a native callback that copies blocks a render thread keeps
   ready.  Its figure adds the cycles that found the ring empty (silence
   JACK does not see, ``ahead_underruns``) to the xruns in JACK's log.

The load, for ``seconds``: ``voices`` voices sounding, every worker (nice 5)
running a CPU-bound job, and a client submitting no-op jobs as fast as it can
(they queue in the journal behind the busy workers) while polling ``status``
ten times a second.

The two sides alternate in rounds (floor, ensemble, floor, ensemble, ...)
on the same server, and each side's xruns are summed over its rounds: the
VM's own hiccups come and go over minutes, and alternating lets both sides
meet the same ones.

Goal: no more xruns than the C client, and callback p99.9 <= 30 % of the
period (the worst round's).  128 frames with 64 voices is the figure; full
mode adds 256 frames and 64 frames with 32 voices (the stretch), 120 s per
side in four rounds.  ``--quick`` (CI's proof that the case runs, not a
figure) runs 6 s per side in one round, at 128 frames.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._daemon import BenchDaemon
from bench._stats import Row, row, skipped

CASE = "audio on JACK: xruns under load"
AHEAD = 2  # blocks rendered ahead on side 3 (one period of added latency)


class PrivateJack:
    """A realtime dummy-driver JACK server of our own, its output kept in a log file."""

    def __init__(self, frames: int, log: Path) -> None:
        self.name = f"ensemble-bench-{os.getpid()}"
        self.log = log
        self.env = dict(os.environ, JACK_DEFAULT_SERVER=self.name)
        stdbuf = ["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([*stdbuf, "jackd", "-R", "-n", self.name, "-d", "dummy", "-r", "48000",
                                      "-p", str(frames)], stdout=self._out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 20
        while subprocess.run(["jack_lsp"], capture_output=True, env=self.env).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"jackd -R did not start: {log.read_text()[-300:]}")
            time.sleep(0.1)

    def xruns(self) -> int:
        return self.log.read_text(errors="replace").count("JackEngine::XRun")

    def late_clients(self) -> dict[str, int]:
        """How JACK found the late client at the next cycle, over the whole log so far.

        ``running``: its callback had begun and not returned; ``triggered``:
        it had been woken and had not begun (the host did not run its thread).
        """
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if "JackEngine::XRun" in line]
        return {"running": sum("state = Running" in line for line in lines),
                "triggered": sum("state = Triggered" in line for line in lines)}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def _under_load(server: PrivateJack, seconds: float, voices: int, backend: str,
                ahead: int = 0) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Run a loaded daemon for ``seconds``; returns (xruns in the server's log, processor stats before, after).

    The stats also carry ``log_running`` / ``log_triggered``: the late-client
    states in the server's log, counted over the measured span.

    With ``backend="null"`` the processor stays off JACK and ``jack_simple_client``
    plays instead: the floor, under the same load.
    """
    import numpy as np

    floor = None
    with BenchDaemon(workers=2, JACK_DEFAULT_SERVER=server.name, ENSEMBLE_AUDIO_BACKEND=backend,
                     ENSEMBLE_AUDIO_AUTOCONNECT="false", ENSEMBLE_AUDIO_JACK_AHEAD=str(ahead)) as d:
        c = d.client()
        c.upload_sample((np.sin(np.arange(480000) * 0.01) * 0.1).astype(np.float32), "tone", 48000)
        deadline = time.monotonic() + 60
        while "tone" not in d.actor("processor").stats.get("samples", ()):
            if time.monotonic() > deadline:
                raise TimeoutError("the sample never reached the processor")
            time.sleep(0.05)
        if backend == "auto" and d.actor("processor").stats.get("backend") != "jack":
            raise RuntimeError(f"the processor is not on JACK: {d.actor('processor').stats.get('notice')}")
        if ahead and d.actor("processor").stats.get("jack_ahead") != ahead:
            raise RuntimeError(f"the processor is not rendering ahead: {d.actor('processor').stats.get('notice')}")
        if backend == "null":
            floor = subprocess.Popen(["jack_simple_client"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=server.env)
        for i in range(voices):
            c.note_on(40 + i % 48, 64)
        burn = [c.submit("bench.jobs:burn", seconds + 5) for _ in range(2)]  # every worker CPU-bound
        stop = threading.Event()

        def submitter() -> None:  # as fast as it can; the workers are busy, so the no-ops queue in the journal
            s = d.client()
            while not stop.is_set():
                s.submit("bench.jobs:noop")

        thread = threading.Thread(target=submitter, daemon=True)
        thread.start()
        try:
            time.sleep(1.0)
            s0, before, states0 = d.actor("processor").stats, server.xruns(), server.late_clients()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                c.status()
                time.sleep(0.1)
            s1, after, states1 = d.actor("processor").stats, server.xruns(), server.late_clients()
            s1 = dict(s1, **{f"log_{k}": states1[k] - states0[k] for k in states1})
        finally:
            stop.set()
            thread.join(30)
            for h in burn:
                h.cancel()
            if floor is not None:
                floor.terminate()
                floor.wait()
    return after - before, s0, s1


def case_audio_jack(ctx: Any) -> list[Row]:
    """The ``audio_jack`` case (see the module docstring)."""
    missing = [p for p in ("jackd", "jack_simple_client", "jack_lsp") if shutil.which(p) is None]
    if missing:
        why = f"JACK programs missing ({', '.join(missing)}; Debian: jackd2)"
        return [skipped(CASE, "xruns", why, "<= C client", "jack_simple_client")]
    seconds = ctx.size(6.0, 120.0)
    rounds = ctx.size(1, 4)
    settings = [(128, 64)] if ctx.quick else [(256, 64), (128, 64), (64, 32)]
    rows: list[Row] = []
    for frames, voices in settings:
        floors: list[int] = []
        ours: list[int] = []
        aheads: list[int] = []
        drops = 0
        ahead_p999 = callback_p999 = 0.0
        callback_xruns = late = overruns = running = triggered = 0
        p999 = top = 0.0
        with tempfile.TemporaryDirectory(prefix="ens-jack-") as tmp:
            try:
                server = PrivateJack(frames, Path(tmp) / "jackd.log")
            except RuntimeError as exc:
                return [skipped(CASE, "xruns", str(exc)[:200], "<= C client", "jack_simple_client")]
            try:
                for _ in range(rounds):
                    floors.append(_under_load(server, seconds / rounds, voices, "null")[0])
                    xruns, s0, s1 = _under_load(server, seconds / rounds, voices, "auto")
                    ours.append(xruns)
                    callback_xruns += s1["xruns"] - s0["xruns"]
                    late += s1.get("jack_late_cycles", 0) - s0.get("jack_late_cycles", 0)
                    overruns += s1.get("jack_overrun_cycles", 0) - s0.get("jack_overrun_cycles", 0)
                    p999, top = max(p999, s1["load_p999"]), max(top, s1["load_max"])
                    running, triggered = running + s1["log_running"], triggered + s1["log_triggered"]
                    xruns, s0, s1 = _under_load(server, seconds / rounds, voices, "auto", AHEAD)
                    dropped = s1["ahead_underruns"] - s0["ahead_underruns"]
                    aheads.append(xruns + dropped)
                    drops += dropped
                    ahead_p999 = max(ahead_p999, s1["load_p999"])
                    callback_p999 = max(callback_p999, s1["ahead_callback_p999_ms"] / (frames / 48.0))
            finally:
                server.close()
        label = f"{frames} frames, {voices} voices" + (" (stretch)" if frames == 64 else "")
        note = (f"{seconds:g} s each in {rounds} alternating rounds (ensemble {'+'.join(map(str, ours))}, "
                f"C client {'+'.join(map(str, floors))}), jackd -R dummy at 48 kHz; jackd found ensemble still running "
                f"{running} times, woken but not yet running {triggered} times; JACK's xrun callback in the "
                f"processor counted {callback_xruns}; callback began > half a period late {late} times; "
                f"ended after the period {overruns} times; load average {os.getloadavg()[0]:.1f} (2 cores shared)")
        xruns, floor = sum(ours), sum(floors)
        rows.append(row(CASE, f"xruns, {label}", float(xruns), "xruns (jackd log)", "jack_simple_client",
                        float(floor), "<= C client", xruns <= floor, note))
        rows.append(row(CASE, f"callback p99.9, {label}", p999, "of period", "", None, "<= 0.30",
                        p999 <= 0.30, f"worst round; max {top:.2f} of the period"))
        ahead_xruns = sum(aheads)
        rows.append(row(CASE, f"xruns + ring underruns, {label}, {AHEAD} block(s) ahead", float(ahead_xruns),
                        "xruns (jackd log) + underruns", "jack_simple_client", float(floor), "<= C client",
                        ahead_xruns <= floor,
                        f"the same rounds, a third side: [audio] jack_ahead = {AHEAD} (native JACK callback, render "
                        f"thread {AHEAD} block(s) ahead, +{AHEAD * frames / 48:.2f} ms latency): "
                        f"{'+'.join(map(str, aheads))}, of them {drops} ring underruns; render p99.9 "
                        f"{ahead_p999:.3f} of the period, the native callback's own p99.9 {callback_p999:.3f}"))
    return rows

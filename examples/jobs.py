"""Example jobs (allowed by default): each takes the task handle first (its first parameter is annotated ``Task``).

    ensemble submit examples.jobs:sine_sweep 2.0 --wait
    ensemble submit examples.jobs:normalize in.wav out.wav --wait
    ensemble submit examples.jobs:count_lines /etc/services --wait
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from actors import Task


def noop(task: Task, *args: Any) -> None:
    """Do nothing (for throughput benchmarks)."""


def echo(task: Task, value: Any) -> Any:
    """Return the argument unchanged."""
    return value


def add(task: Task, a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


def sine_sweep(task: Task, seconds: float = 2.0, out: str = "", samplerate: int = 48000,
               f0: float = 20.0, f1: float = 20000.0) -> dict[str, Any]:
    """Render a logarithmic sine sweep, reporting progress per block; optionally write a WAV file."""
    import numpy as np

    frames = int(seconds * samplerate)
    audio = np.empty(frames, dtype=np.float32)
    block = samplerate // 10
    k = math.log(f1 / f0)
    for start in range(0, frames, block):
        if task.should_abort():
            task.set_status_message("aborted")
            return {"frames": start, "aborted": True}
        t = np.arange(start, min(frames, start + block)) / samplerate
        audio[start : start + len(t)] = 0.5 * np.sin(2 * math.pi * f0 * seconds / k * (np.exp(t / seconds * k) - 1))
        task.set_progress((start + len(t)) / frames)
        task.set_status_message(f"rendered {(start + len(t)) / samplerate:.1f}s of {seconds:g}s")
    peak = float(np.max(np.abs(audio))) if frames else 0.0
    if out:
        import soundfile as sf

        sf.write(out, audio, samplerate, subtype="FLOAT")
    return {"frames": frames, "peak": round(peak, 6), "out": out}


def normalize(task: Task, src: str, dst: str, peak_db: float = -1.0) -> dict[str, Any]:
    """Peak-normalise a WAV file to ``peak_db`` dBFS and write it to ``dst``."""
    import numpy as np
    import soundfile as sf

    task.set_status_message(f"reading {src}")
    data, rate = sf.read(src, dtype="float32", always_2d=True)
    task.set_progress(0.4)
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    if task.should_abort():
        return {"aborted": True}
    gain = (10 ** (peak_db / 20) / peak) if peak > 0 else 1.0
    data *= gain
    task.set_progress(0.8)
    task.set_status_message(f"writing {dst}")
    sf.write(dst, data, rate, subtype="FLOAT")
    task.set_progress(1.0)
    return {"frames": len(data), "channels": data.shape[1], "gain": gain, "peak_before": peak}


def count_lines(task: Task, path: str) -> int:
    """Count the lines of a file with ``wc -l`` through ``run_process``.

    It reads any file the daemon's user may read: a function that takes a path is for local clients (its
    user's own), never for a remote key's allow-list.  The path is given after ``--``, so that it is read
    as a file name even when it looks like an option (``--files0-from=FILE`` made ``wc`` print FILE's
    contents in its error, which came back in this job's).
    """
    out: list[str] = []

    def log(t: Task, finished: bool, data: Any) -> None:
        if not finished:
            out.append(data)

    code = task.run_process("wc", ["-l", "--", path], log)
    if code != 0:
        raise RuntimeError(f"wc exited with {code}: {' '.join(out)}")
    return int(out[-1].split()[0])


def countdown(task: Task, seconds: float = 5.0, step: float = 0.05) -> str:
    """Count down, honouring should_abort(); useful to try cancel and progress."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if task.should_abort():
            return "aborted"
        left = end - time.monotonic()
        task.set_progress(1 - left / seconds)
        task.set_status_message(f"{max(0.0, left):.1f}s left")
        time.sleep(step)
    task.set_progress(1.0)
    return "done"


def fail(task: Task, message: str = "boom") -> None:
    """Raise ValueError (to see a remote error)."""
    raise ValueError(message)

"""The result row every case returns, small statistics, and where the numbers were measured."""

from __future__ import annotations

import os
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One measured line of the report.

    ``ratio`` is always ``ensemble / peer_value`` (lower is better for times,
    higher is better for rates); ``target`` says which way it has to go.
    ``met`` is None where there is no goal (reported only) or nothing ran.
    """

    case: str
    metric: str
    ensemble: float | None
    unit: str
    peer: str = ""
    peer_value: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # for plots (seconds or the row's unit)

    @property
    def skipped(self) -> bool:
        return self.note.startswith("skipped")

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        return "-" if self.met is None else ("met" if self.met else "NOT met")


def row(case: str, metric: str, ens: float, unit: str, peer: str = "", peer_value: float | None = None,
        target: str = "", met: bool | None = None, note: str = "", samples: dict[str, list[float]] | None = None) -> Row:
    """A row with the ratio filled in when there is a peer value."""
    ratio = ens / peer_value if peer_value not in (None, 0) and ens is not None else None
    return Row(case, metric, ens, unit, peer, peer_value, ratio, target, met, note, samples or {})


def skipped(case: str, metric: str, why: str, target: str = "", peer: str = "") -> Row:
    """A row for something that could not run here (never a made-up number)."""
    return Row(case, metric, None, "", peer=peer, target=target, met=None, note=f"skipped: {why}")


def pct(values: list[float], p: float) -> float:
    """Percentile ``p`` (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    """Where and on what the numbers were measured."""
    import platform
    import sys
    from importlib import metadata

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    versions: dict[str, str] = {}
    for pkg in ("ensemble-rt", "pyzmq", "msgpack", "numpy", "rich", "psutil", "matplotlib", "ray", "sounddevice"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "git": (_git("rev-parse", "--short", "HEAD") or "?") + (" (with uncommitted changes)" if dirty else ""),
        "packages": versions,
    }

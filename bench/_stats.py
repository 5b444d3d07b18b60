"""Small statistics and the result row every case returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One measured line of the report."""

    case: str
    metric: str
    ensemble: float | None
    unit: str
    peer: str = ""
    peer_value: float | None = None
    ratio: float | None = None  # ensemble / peer unless the target says otherwise
    target: str = ""
    met: bool | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # for plots


def pct(values: list[float], p: float) -> float:
    """Percentile ``p`` (0..100) by nearest rank."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def skipped(case: str, metric: str, why: str, target: str = "") -> Row:
    """A row for a case that could not run here (never a faked number)."""
    return Row(case, metric, None, "", target=target, met=None, note=f"skipped: {why}")


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    import os
    import platform
    import sys
    from importlib import metadata

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("pyzmq", "msgpack", "numpy", "sounddevice", "ray"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions}

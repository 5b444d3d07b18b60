"""The report: a rich table on the terminal, JSON, Markdown and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from bench._stats import Row, pct

COLUMNS = ("case", "metric", "ensemble", "unit", "floor / peer", "peer value", "ratio", "target", "met", "note")


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _cells(r: Row) -> list[str]:
    return [r.case, r.metric, fmt(r.ensemble), r.unit, r.peer, fmt(r.peer_value),
            (fmt(r.ratio) + "x") if r.ratio is not None else "-", r.target, r.verdict, r.note]


def table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=True)
    widths = {"case": 22, "metric": 18, "floor / peer": 24, "target": 18, "note": 44}
    for col in COLUMNS:
        t.add_column(col, overflow="fold", max_width=widths.get(col),
                     justify="right" if col in ("ensemble", "peer value", "ratio") else "left")
    colour = {"met": "[green]met[/]", "NOT met": "[red]NOT met[/]", "skipped": "[yellow]skipped[/]"}
    for r in rows:
        cells = _cells(r)
        cells[8] = colour.get(cells[8], cells[8])
        t.add_row(*cells)
    console = Console()
    console.width = max(console.width, 200)
    console.print(t)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row], info: dict[str, Any], plots: list[str], notes: list[str]) -> str:
    m = info["machine"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    met = sum(r.verdict == "met" for r in rows)
    missed = sum(r.verdict == "NOT met" for r in rows)
    skip = sum(r.verdict == "skipped" for r in rows)
    lines = [
        "# ensemble benchmark report", "",
        f"- command: `{info['command']}` ({'quick' if info['quick'] else 'full'} mode, {info['seconds']} s)",
        f"- date: {info['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_gib']} GiB, "
        f"load average at start {', '.join(map(str, m['load_average_at_start']))}",
        f"- Python: {m['python']} on {m['platform']}",
        f"- code: git {m['git']}",
        f"- packages: {pk}",
        f"- goals: {met} met, {missed} not met, {skip} skipped (rows without a goal are reported only)",
        "",
        "ratio = ensemble / floor-or-peer (for times lower is better, for rates and efficiency higher is better).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in ("ensemble", "peer value", "ratio") else "---" for c in COLUMNS) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_md(c) for c in _cells(r)) + " |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {_md(n)}" for n in notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_json(path: Path, rows: list[Row], info: dict[str, Any], notes: list[str]) -> None:
    out = []
    for r in rows:
        d = {k: v for k, v in dataclasses.asdict(r).items() if k != "samples"}
        d["verdict"] = r.verdict
        if r.samples:
            d["distributions"] = {k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99),
                                      "max": max(v)} for k, v in r.samples.items() if v}
        out.append(d)
    path.write_text(json.dumps({"info": info, "notes": notes, "rows": out}, indent=2, default=str) + "\n")


def plots(rows: list[Row], out: Path, prefix: str) -> tuple[list[str], str]:
    """PNG plots of the scaling and latency-distribution cases; returns (file names, note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib not installed (pip install -e '.[bench]')"
    written = []
    scaling = [r for r in rows if r.case.startswith("CPU-bound scaling") and r.ensemble is not None]
    if scaling:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ns = [int(r.metric.split()[0]) for r in scaling]
        ax.plot(ns, [float(r.ensemble or 0.0) for r in scaling], "o-", label="ensemble")
        ax.plot(ns, [float(r.peer_value or 0.0) for r in scaling], "s--", label="ProcessPoolExecutor")
        ax.axhline(1.0, color="grey", ls=":", label="ideal linear")
        ax.axhline(0.9, color="red", ls=":", lw=0.8, label="goal 0.9")
        ax.set_xticks(ns)
        ax.set_xlabel("workers")
        ax.set_ylabel("efficiency T(1) / (N T(N))")
        ax.set_ylim(0, 1.15)
        ax.legend(loc="lower left")
        ax.set_title("CPU-bound scaling")
        fig.tight_layout()
        name = f"{prefix}scaling.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    for r in rows:
        series = {k: v for k, v in r.samples.items() if len(v) >= 5}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        scale, unit = (1e6, "us") if r.unit == "us" else (1e3, "ms") if r.unit == "ms" else (1, r.unit)
        for label, values in series.items():
            s = sorted(v * scale for v in values)
            ax.plot(s, [100 * (i + 1) / len(s) for i in range(len(s))], label=f"{label} (p50 {pct(s, 50):.3g})")
        if unit in ("us", "ms"):
            ax.set_xscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel("% of samples <= x")
        ax.set_title(f"{r.case}: distribution")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        slug = "".join(ch if ch.isalnum() else " " for ch in r.case.split(" (")[0].replace("kill -9", "kill9"))
        name = prefix + "_".join(slug.lower().split()) + ".png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written, ""

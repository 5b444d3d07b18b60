"""``python -m bench [--quick] [--only CASE ...] [--out DIR]``: run the suite, print and write the report."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
import time
import traceback
from pathlib import Path

from bench._stats import Row, machine, skipped
from bench.cases import CASES


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _met(row: Row) -> str:
    return "-" if row.met is None else ("met" if row.met else "NOT met")


def table(rows: list[Row]) -> None:
    """Print the rich table."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="ensemble benchmarks")
    for col in ("case", "metric", "ensemble", "unit", "floor / peer", "value", "ratio", "target", "met", "note"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r.case, r.metric, _fmt(r.ensemble), r.unit, r.peer, _fmt(r.peer_value),
                  _fmt(r.ratio) + ("x" if r.ratio is not None else ""), r.target,
                  {"met": "[green]met[/]", "NOT met": "[red]NOT met[/]"}.get(_met(r), "-"), r.note)
    Console(width=200).print(t)


def markdown(rows: list[Row], info: dict[str, object]) -> str:
    """The Markdown report."""
    lines = [f"# ensemble benchmark report", "", f"- date: {info['date']}", f"- command: `{info['command']}`",
             f"- machine: {info['machine']}", "",
             "| case | metric | ensemble | unit | floor / peer | value | ratio | target | met | note |",
             "|---|---|---:|---|---|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.case} | {r.metric} | {_fmt(r.ensemble)} | {r.unit} | {r.peer} | {_fmt(r.peer_value)} | "
                     f"{_fmt(r.ratio)}{'x' if r.ratio is not None else ''} | {r.target} | {_met(r)} | {r.note} |")
    return "\n".join(lines) + "\n"


def plots(rows: list[Row], out: Path) -> list[str]:
    """PNG plots of the scaling and latency-distribution cases (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["plots skipped: matplotlib not installed (pip install -e '.[bench]')"]
    written = []
    scaling = [r for r in rows if r.case == "CPU-bound scaling" and r.ensemble is not None]
    if scaling:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ns = [int(r.metric.split()[0]) for r in scaling]
        ax.plot(ns, [r.ensemble for r in scaling], "o-", label="ensemble")
        ax.axhline(1.0, color="grey", ls="--", label="ideal")
        ax.axhline(0.9, color="red", ls=":", label="goal 0.9")
        ax.set_xlabel("workers"), ax.set_ylabel("efficiency"), ax.set_ylim(0, 1.1), ax.legend()
        fig.tight_layout(), fig.savefig(out / "scaling.png", dpi=100), plt.close(fig)
        written.append("scaling.png")
    for r in rows:
        if len(r.samples) >= 2 or (r.samples and r.case.startswith("run_async")):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for label, values in r.samples.items():
                scale = 1e6 if r.unit == "us" else 1e3 if r.unit == "ms" else 1
                ax.hist([v * scale for v in values], bins=60, alpha=0.6, label=label)
            ax.set_xlabel(r.unit), ax.set_ylabel("count"), ax.set_title(r.case), ax.legend()
            name = r.case.split()[0].replace("-", "_") + "_distribution.png"
            fig.tight_layout(), fig.savefig(out / name, dpi=100), plt.close(fig)
            written.append(name)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute (CI proves it runs)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="report directory")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only or list(CASES):
        t = time.perf_counter()
        try:
            rows += CASES[name](args.quick)
        except Exception as exc:  # a failing case is reported, the others still run
            traceback.print_exc()
            rows.append(skipped(name, "-", f"failed: {type(exc).__name__}: {exc}"))
        print(f"[bench] {name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m bench " + " ".join(sys.argv[1:]), "machine": machine(),
            "seconds": round(time.perf_counter() - started, 1), "quick": args.quick}
    table(rows)
    stem = "quick" if args.quick else "latest"
    (out / f"{stem}.json").write_text(json.dumps({"info": info, "rows": [
        {k: v for k, v in dataclasses.asdict(r).items() if k != "samples"} for r in rows]}, indent=2))
    (out / f"{stem}.md").write_text(markdown(rows, info))
    notes = plots(rows, out) if not args.quick else []
    print(f"report: {out / (stem + '.md')} ({info['seconds']} s) {' '.join(notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench [--quick] [--only CASE ...] [--out DIR]``: run the suite, print and write the report.

Full mode takes ~4-5 minutes on 2 cores; ``--quick`` about 35 s (CI runs
it to prove the suite works; it asserts nothing about speed).  Every daemon is
stopped, Ray is shut down and the run checks that no process, socket file or
shared-memory segment of its own is left.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
import traceback
from pathlib import Path

from bench._daemon import ROOT, leftovers
from bench._peers import RaySession
from bench._report import markdown, plots, table, write_json
from bench._stats import Row, machine, skipped
from bench.cases import CASES, Ctx


def _compile_bytecode() -> str:
    """Write the bytecode of the packages every measured process imports, when this environment does not.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in some containers) every fresh
    interpreter compiles ensemble's modules from source: on 2026-12-05 that
    put ``from ensemble import Executor`` at 70-117 ms and the cold case at
    244 ms.  A user's install has its bytecode (pip compiles it), so the
    bench compiles it too (``compileall``, as pip does) and says so.
    """
    if not sys.flags.dont_write_bytecode:
        return ""
    import compileall

    for pkg in ("actors", "audio", "controller", "ensemble", "bench"):
        if (ROOT / pkg).is_dir():
            compileall.compile_dir(str(ROOT / pkg), quiet=1)
    return ("PYTHONDONTWRITEBYTECODE is set here: the packages' bytecode was compiled first (compileall), as a "
            "pip install does, so that no measured process compiles them from source")


def _stop_resource_tracker() -> None:
    """The helper process the ``spawn`` pools started (it would otherwise stay until this interpreter exits)."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - older or newer Pythons: it exits with us anyway
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute (CI proves the suite runs)")
    parser.add_argument("--only", nargs="+", choices=list(CASES), metavar="CASE",
                        help=f"run only these cases: {', '.join(CASES)}")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="report directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
            "quick": args.quick, "machine": machine()}
    ctx = Ctx(quick=args.quick, ray=RaySession(args.quick))
    compiled = _compile_bytecode()
    if compiled:
        ctx.notes.append(compiled)
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for name in args.only or list(CASES):
            t = time.perf_counter()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                rows += CASES[name](ctx)
            except Exception as exc:  # a failing case is reported; the others still run
                traceback.print_exc()
                rows.append(skipped(name, "-", f"failed: {type(exc).__name__}: {exc}"[:300]))
            print(f"[bench] {name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    finally:
        _stop_resource_tracker()
    if ctx.ray.starts:
        ctx.notes.append(f"Ray {info['machine']['packages'].get('ray')}: started only for the Ray peers, in a "
                         f"process of their own, {ctx.ray.starts} time(s); ray.init(num_cpus=2) took "
                         f"{ctx.ray.init_seconds:.1f} s in all, its first tasks and the machine quiet again "
                         f"{ctx.ray.settle_seconds:.1f} s, the machine quiet after each peer's process "
                         f"{ctx.ray.quiet_seconds:.1f} s (none of it in any measurement)")
    elif ctx.ray.reason:
        ctx.notes.append(f"Ray peers skipped: {ctx.ray.reason}")
    left = leftovers()
    ctx.notes.append("cleanup: " + ("nothing left (no process, run directory/socket or /dev/shm segment)"
                                    if not any(left.values()) else f"LEFT BEHIND: {left}"))
    info["seconds"] = round(time.perf_counter() - started, 1)
    # a partial run never replaces the full report beside it (the committed latest.*)
    stem = "quick" if args.quick else "only" if args.only else "latest"
    written, plot_note = plots(rows, out, "" if stem == "latest" else f"{stem}_")
    if plot_note:
        ctx.notes.append(plot_note)
    table(rows, f"ensemble benchmarks ({'quick' if args.quick else 'full'} mode)  -  {command}")
    for n in ctx.notes:
        print(f"note: {n}")
    write_json(out / f"{stem}.json", rows, info, ctx.notes)
    (out / f"{stem}.md").write_text(markdown(rows, info, written, ctx.notes))
    print(f"report: {out / (stem + '.md')}, {out / (stem + '.json')}"
          + (f", plots: {', '.join(written)}" if written else "") + f" ({info['seconds']} s)")
    return 1 if any(left.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``ensemble top``: a live terminal view of actors, jobs and audio.

:func:`render` builds the screen from a status snapshot and a job list (a
pure function, tested on its own); :func:`run_top` refreshes it a few times a
second and quits on ``q`` or Ctrl-C, restoring the terminal.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from actors.messages import JobInfo, StatusReply


def _age(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{s / 60:.1f}m" if s < 3600 else f"{s / 3600:.1f}h"


# control characters (but newline and tab) written as escapes: a terminal acts on ESC sequences (titles, colours,
# cursor moves), and Rich strips BEL but passes ESC; C1 controls too (0x9b is a one-byte CSI for some terminals)
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0)) if c not in (0x09, 0x0a)}


def visible(text: str) -> str:
    """``text`` safe to show on a terminal: its control characters written as ``\\xNN`` (a job's name, status or
    result is anyone's text: a remote key's, a job's)."""
    return text.translate(_CONTROLS)


def cells(*texts: str) -> list[Text]:
    """Table cells shown as the text they are: what the daemon sends is never parsed as Rich markup, and its
    control characters are shown, not sent to the terminal (:func:`visible`)."""
    return [Text(visible(t)) for t in texts]


def render(status: StatusReply, jobs: list[JobInfo]) -> Group:
    """The whole screen for one refresh (every daemon-supplied string as plain ``Text``, never markup)."""
    d = status.daemon
    head = Text.assemble((f"ensemble {d.version}", "bold"), f"  daemon {d.name} pid {d.pid}  up {_age(d.uptime)}  ",
                         f"queued {d.queued}  running {d.running}  RSS {d.rss / 2**20:.0f} MiB   (q quits)")
    actors = Table(expand=True, title="actors")
    for col in ("actor", "pid", "state", "uptime", "restarts", "heartbeat", "RSS", "detail"):
        actors.add_column(col, no_wrap=col != "detail", overflow="ellipsis")
    for a in status.actors:
        style = "red" if a.state == "failed" else "yellow" if a.state != "running" else None
        actors.add_row(*cells(a.name, str(a.pid or "-"), a.state, _age(a.uptime), str(a.restarts),
                               _age(a.heartbeat_age) if a.pid else "-", f"{a.rss / 2**20:.0f} MiB", a.detail),
                       style=style)
    table = Table(expand=True, title="jobs")
    for col in ("id", "function", "state", "progress", "status"):
        table.add_column(col, no_wrap=col != "status", overflow="ellipsis")
    order = {"running": 0, "queued": 1}
    for j in sorted(jobs, key=lambda j: (order.get(j.state, 2), -j.id))[:15]:
        table.add_row(*cells(str(j.id), j.fn, j.state), ProgressBar(total=1.0, completed=j.progress, width=20),
                      *cells(j.status))
    parts: list[Any] = [head, actors, table]
    proc = next((a for a in status.actors if a.role == "processor" and a.stats), None)
    if proc is not None:
        s = proc.stats
        parts.append(Panel(Text(
            f"backend {s.get('backend', '?')}  blocks {s.get('blocks', 0)}  voices {s.get('active_voices', 0)}  "
            f"callback p50 {s.get('callback_p50_ms', 0):.3f} ms  p99 {s.get('callback_p99_ms', 0):.3f} ms  "
            f"p99.9 {s.get('callback_p999_ms', 0):.3f} ms  of {s.get('period_ms', 0):.2f} ms  "
            f"xruns {s.get('xruns', 0)}  underflows {s.get('underflows', 0)}  "
            f"deadline misses {s.get('deadline_misses', 0)}  late {s.get('late_events', 0)}"
            + (f"  rendering {s['jack_ahead']} block(s) ahead (+{s.get('ahead_latency_ms', 0):.2f} ms)"
               if s.get("jack_ahead") else _ahead_hint(s))),
            title="audio"))
    return Group(*parts)


def _ahead_hint(s: dict[str, Any]) -> str:
    """What to try when JACK reports xruns while the engine renders in its callback: render-ahead, and its cost
    (or why the backend refused it)."""
    if s.get("backend") != "jack" or not s.get("xruns"):
        return ""
    if s.get("jack_ahead_refused"):
        return f"  (render-ahead refused: {s['jack_ahead_refused']})"
    return (f"  (fewer xruns under load: [audio] jack_ahead = 2 renders 2 blocks ahead, "
            f"+{2 * s.get('period_ms', 0):.2f} ms of latency)")


def _key_pressed(fd: int) -> str:
    ready, _, _ = select.select([fd], [], [], 0)
    return os.read(fd, 16).decode(errors="replace") if ready else ""


def run_top(client: Any, refresh: float = 0.25) -> None:
    """Show the live view until ``q`` or Ctrl-C (restoring the terminal either way)."""
    from rich.live import Live

    fd = sys.stdin.fileno() if sys.stdin.isatty() else -1
    saved = termios.tcgetattr(fd) if fd >= 0 else None
    try:
        if fd >= 0:
            tty.setcbreak(fd)
        with Live(render(client.status(), client.jobs(limit=30)), refresh_per_second=max(1, int(1 / refresh)),
                  screen=sys.stdout.isatty()) as live:
            while True:
                end = time.monotonic() + refresh
                while time.monotonic() < end:
                    if fd >= 0 and "q" in _key_pressed(fd).lower():
                        return
                    time.sleep(0.02)
                live.update(render(client.status(), client.jobs(limit=30)))
    except KeyboardInterrupt:
        return
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

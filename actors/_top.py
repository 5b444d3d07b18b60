"""``ensemble top``: a live terminal view of actors, jobs and audio.

:func:`render` builds the screen from a status snapshot and a job list (a
pure function, tested on its own); :func:`run_top` refreshes it a few times a
second and quits on ``q`` or Ctrl-C, restoring the terminal, or once the daemon
has stopped.  The daemon is asked on a thread of its own (:class:`_Feed`), with
a short timeout: the keys and the screen never wait on it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from typing import Any

import click
from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from actors._errors import DaemonNotRunning, EnsembleError, TransportError
from actors._rundir import RunDir
from actors.messages import JobInfo, ListJobs, Status, StatusReply


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
        table.add_row(*cells(str(j.id), j.fn, j.state), ProgressBar(total=1.0, completed=j.shown_progress(), width=20),
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


_ANSWER_WITHIN_MAX = 5.0  # s: the longest a snapshot request is waited for (the refresh scales it below this)


class NoTerminal(click.ClickException):
    """Raised when ``top`` is run with standard output no terminal (a pipe, a file): exit status 2, as a usage error,
    without click's hint to read ``--help`` (which would not help)."""

    exit_code = 2

    def __init__(self) -> None:
        super().__init__("top needs a terminal; use `ensemble status` or `ensemble jobs` for output to a pipe or file")


def _answer_within(refresh: float) -> float:
    """Seconds one Status or job listing is waited for: four refreshes, at least 1 s (a busy daemon's answer),
    at most :data:`_ANSWER_WITHIN_MAX` (after ``q`` the screen is left at once, but the process may wait that long
    for the request in flight to end)."""
    return min(_ANSWER_WITHIN_MAX, max(1.0, 4 * refresh))


class _Feed:
    """The daemon's latest snapshot, asked for on a thread of its own: the screen and the keys never wait on it.

    Each request is waited for :func:`_answer_within` seconds at most; one not
    answered in time is asked again at the next refresh (its late answer is
    dropped by the connection).  Any other error ends the feed and is kept in
    :attr:`error`.  A context manager: on exit the thread is told to stop and
    joined, which takes until its request in flight ends (:func:`_answer_within`
    at most), so that the client is never closed under it.
    """

    def __init__(self, client: Any, refresh: float) -> None:
        self.client, self.refresh, self.wait = client, refresh, _answer_within(refresh)
        self.snapshot: tuple[StatusReply, list[JobInfo]] | None = None  # the last answer (replaced whole)
        self.answered = time.monotonic()  # when the last answer came (or the feed started)
        self.error: EnsembleError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ensemble-top-feed", daemon=True)

    def __enter__(self) -> "_Feed":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.wait + 5.0)

    def silent_for(self) -> float:
        """Seconds since the daemon last answered (0 while it answers in time)."""
        silent = time.monotonic() - self.answered
        return silent if silent > self.wait else 0.0

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # Ctrl-C is the main thread's
        while not self._stop.is_set():
            try:
                status = self.client._call(Status(), timeout=self.wait)
                jobs = self.client._call(ListJobs([], 30), timeout=self.wait).jobs
            except TransportError:  # not answered in time: asked again (the main thread watches the daemon's lock)
                pass
            except EnsembleError as exc:  # closed, refused, gone for good: the main thread ends top with it
                self.error = exc
                return
            else:
                self.snapshot, self.answered = (status, jobs), time.monotonic()
            self._stop.wait(self.refresh)


def _daemon_gone(client: Any) -> str | None:
    """None while the local daemon holds its run directory's lock; else what became of it (``"stopped"``: in
    order, its socket removed; ``"died"``: its files left behind).  Always None for a daemon on another host.
    Costs an open and a ``flock`` of the lock file."""
    if client.conn.endpoint.startswith("tcp://"):
        return None
    run = RunDir(client.config.run_dir)
    if run.is_locked():
        return None
    return "died" if run.control.exists() else "stopped"


class _Keys:
    """Keys typed on standard input, read with a bound on the wait (the terminal in cbreak mode meanwhile).

    A context manager restoring the terminal.  When standard input is no
    terminal no key is read (Ctrl-C still quits) and :meth:`wait` only sleeps.
    """

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin.isatty() else -1
        self.saved: list[Any] | None = None

    def __enter__(self) -> "_Keys":
        if self.fd >= 0:
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, seconds: float) -> str:
        """The keys typed within ``seconds`` (returns at the first), or "" (blocks ``seconds`` at most)."""
        if self.fd < 0:
            time.sleep(seconds)
            return ""
        ready, _, _ = select.select([self.fd], [], [], seconds)
        return os.read(self.fd, 16).decode(errors="replace") if ready else ""


def _screen(feed: _Feed) -> Any:
    """What to show now: the last snapshot, under a line saying so when the daemon has stopped answering."""
    if feed.snapshot is None:
        return Text("asking the daemon for its state... (q quits)" + _silence(feed))
    screen = render(*feed.snapshot)
    silence = _silence(feed)
    return Group(Text(silence.strip(), style="yellow"), screen) if silence else screen


def _silence(feed: _Feed) -> str:
    silent = feed.silent_for()
    return f"  no answer from the daemon for {silent:.0f}s: this is its last state (busy?)" if silent else ""


def run_top(client: Any, refresh: float = 0.25) -> None:
    """Show the live view until ``q`` or Ctrl-C, or until the daemon stops (restoring the terminal either way).

    ``client``: an :class:`actors.client.Client`.  Runs on the main thread,
    for the whole session; the daemon is asked for its state on a thread of
    its own (:class:`_Feed`), so ``q`` and Ctrl-C are honoured within a
    refresh whatever the daemon does.  Every refresh it also checks that the
    local daemon still holds its lock (:func:`_daemon_gone`): once it does
    not, ``top`` leaves the screen, and

    * the daemon stopped in order (``ensemble down``): prints ``the daemon
      'NAME' stopped`` and returns: exit status 0, as for ``q``, since a
      daemon stopped on purpose is not ``top``'s failure;
    * the daemon died (killed, its files left): raises
      :class:`DaemonNotRunning`, which the command shows as one error line,
      exit status 1.

    Raises :class:`NoTerminal` (exit status 2) at once when standard output
    is no terminal: a live view written to a pipe or a file would grow
    forever and show nothing until the end; ``ensemble status`` and
    ``ensemble jobs`` are the snapshots for that.  Raises the
    :class:`EnsembleError` that ended the feed (a key refused, say).
    """
    from rich.live import Live

    if not sys.stdout.isatty():
        raise NoTerminal()
    gone = None
    try:
        with _Feed(client, refresh) as feed, _Keys() as keys, \
                Live(_screen(feed), auto_refresh=False, screen=True) as live:
            while (gone := _daemon_gone(client)) is None and feed.error is None:
                if "q" in keys.wait(refresh).lower():
                    return
                live.update(_screen(feed), refresh=True)
    except KeyboardInterrupt:
        return
    if feed.error is not None and gone is None:
        raise feed.error
    name = client.config.name
    if gone == "died":
        raise DaemonNotRunning(f"the daemon {name!r} died (its files are left in {client.config.run_dir}); "
                               f"`{client.config.command('up')}` starts it again and runs the jobs in its journal")
    click.echo(f"the daemon {name!r} stopped")

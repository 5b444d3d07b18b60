"""The ``ensemble`` command line (click + rich).

Every error is one clear line on stderr and a non-zero exit; ``--debug`` shows
the traceback.  A value in it longer than 200 characters is clipped, its
length said (:func:`_echo_error`).  Bad input is refused by its option's type (:class:`Number`,
:class:`RegularFile`) before anything runs.  Text the daemon sends (job names,
statuses, errors, script errors) is untrusted: it is shown as plain
``rich.text.Text``, never parsed as Rich markup.  JSON output is total: what
JSON cannot carry is printed as :func:`json_text` says.
"""

from __future__ import annotations

if __name__ == "__main__":  # ``python -m actors.cli``: run the module itself, not a second copy that the
    import importlib  # commands of the installed packages would import beside this one

    importlib.import_module("actors.cli").run()

import json
import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from actors import __version__, _command_start
from actors._completion import completion
from actors.jsontext import json_text
from actors._errors import EnsembleError, JobCancelled, NoAnswer, TransportError
from actors._state import JobState
from actors._procs import alive as process_alive
from actors._rundir import RunDir, check_private_path
from actors._launch import start_daemon, wait_ready
from actors.config import Config, load_config, not_regular_file
from actors.extensions import register_commands

if TYPE_CHECKING:
    from actors.messages import JobInfo

_DEBUG = False


def _said_by_the_cli(record: logging.LogRecord) -> bool:
    """The client's lines that the daemon closed the connection, or has no worker: a command says them in its
    own lines (which name the job and what to do), so the log line would say them twice."""
    return not str(record.msg).startswith(("event=daemon-disconnected", "event=no-worker"))


USAGE = 2  # the exit status of a usage error (an argument or option the command refuses), as click's own


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line (a long value in it clipped: :func:`_echo_error`) and exit (``code``: 1, an error;
    :data:`USAGE`, a usage error; 130, interrupted: the exit statuses the man page lists)."""
    _echo_error(message)
    sys.exit(code)


def _echo_error(message: str) -> None:
    """Print ``ensemble: error: MESSAGE`` on stderr, each value in it longer than :data:`_SHOWN` clipped.

    Every error line of the command goes through here (its own messages,
    click's, and those it passes on from the config, the daemon and the
    packages' commands), so a value a user gave (an argument, an option, an
    environment variable) is never echoed whole: 100,000 characters of it
    made an error line of 100,000.  A value is a quoted one (``'...'``, as
    ``repr`` and click quote them) or a run without spaces; a line still
    longer than :data:`_LINE` (a long value with spaces, unquoted) is
    clipped itself.
    """
    from actors._top import visible  # a job's error is anyone's text: its control characters are shown

    lines = _LONG_VALUE.sub(_clip_match, visible(message)).split("\n")
    click.echo("\n".join(f"ensemble: error: {_clipped(line, _LINE)}" if i == 0 else _clipped(line, _LINE)
                          for i, line in enumerate(lines)), err=True)


_SHOWN = 200  # characters of a value an error line shows whole; a longer one is clipped to that many (_clipped)
_LINE = 2000  # characters of an error line, at most, once its values are clipped (a message with a few of them)
_STATUS_STATS = ("backend", "done", "xruns", "underflows", "notice", "loading")  # an actor's stats `status` shows
_LONG_VALUE = re.compile(r"""(['"])((?:(?!\1)[^\\\n]|\\.){%d,})\1|[^\s'"]{%d,}""" % (_SHOWN + 1, _SHOWN + 1))


def _clipped(text: str, limit: int = _SHOWN, quote: str = "") -> str:
    """``text`` in ``quote``, whole if it has at most ``limit`` characters; else its start and its end around an
    ellipsis, ``limit`` characters of it in all (the start of a mistyped value, the end of a path: both tell),
    then its length as shown (a repr's escapes count): ``'aaaa...zzzz' (100000 characters)``."""
    if len(text) <= limit:
        return f"{quote}{text}{quote}"
    head = limit * 3 // 4
    return f"{quote}{text[:head]}...{text[len(text) - (limit - head):]}{quote} ({len(text)} characters)"


def _clip_match(match: re.Match[str]) -> str:
    """:func:`_clipped` of a long value :data:`_LONG_VALUE` found: a quoted one in its quotes."""
    quote = match.group(1)
    return _clipped(match.group(2), quote=quote) if quote else _clipped(match.group(0))


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EnsembleError as exc:
            if _DEBUG:
                raise
            fail(str(exc).splitlines()[0] if not isinstance(exc, Exception) else _one_line(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)


class Number(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click (>= 8.2)
    """A finite int or float between two bounds; refused in one line naming the bounds and why.

    (click's ``FloatRange`` lets ``nan`` through: every comparison with it is false.)
    ``low_open``: the low bound itself is refused (``more than 0``).
    """

    def __init__(self, kind: type[int] | type[float], low: float, high: float, why: str, *,
                 unit: str = "", low_open: bool = False) -> None:
        self.kind, self.low, self.high, self.why, self.unit, self.low_open = kind, low, high, why, unit, low_open
        self.name = "integer" if kind is int else "float"

    def _bounds(self) -> str:
        low, high = (f"{x:g}" if self.kind is float else str(x) for x in (self.low, self.high))
        text = f"more than {low} and at most {high}" if self.low_open else f"{low} to {high}"
        return f"{text} {self.unit}".rstrip()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = self.kind(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}; give {self._bounds()} "
                      f"({self.why})", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number; give {self._bounds()} ({self.why})", param, ctx)
        if not ((self.low < number) if self.low_open else (self.low <= number)) or number > self.high:
            self.fail(f"{value} is out of range: give {self._bounds()} ({self.why})", param, ctx)
        return number


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` (its range shown in the help), NaN refused too: every comparison with NaN is false."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value} is not a number; give {self._describe_range()}", param, ctx)
        return number


class RegularFile(click.Path):
    """A path that, if it exists, must be a regular file: a FIFO or a device would block the read or mean nothing."""

    def __init__(self, exists: bool = False) -> None:
        super().__init__(exists=exists, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        problem = not_regular_file(os.fsdecode(path))
        if problem:
            self.fail(f"{os.fsdecode(path)!r} {problem}", param, ctx)
        return path


class NumbersAsArguments(click.Command):
    """A command whose arguments may be negative numbers: ``submit FN -1``, ``param set NAME -3``, no ``--`` needed.

    click reads every word that starts with ``-`` as an option.  Here a word
    that is a number (``-1``, ``-2.5``, ``-1e3``, ``-inf``) and no option of
    the command is an argument where it stands; the value of an option
    (``--priority -5``) stays the option's.  Any other unknown ``-word`` is
    still refused as an option, as click refuses it.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _numbers_as_arguments(args, self.get_params(ctx)))


def _numbers_as_arguments(words: list[str], params: list[click.Parameter]) -> list[str]:
    """``words`` with their negative-number arguments after a ``--``, in an order click parses as the words given.

    The options (each with the words it takes) first, then ``--``, then the
    arguments in their order: click takes options and arguments interspersed,
    so this is the same command line, except that a negative number is now
    an argument.  ``words`` as they are when no argument is a negative number.
    """
    takes: dict[str, int] = {}  # an option's spelling -> how many words after it are its value
    for p in params:
        if isinstance(p, click.Option):
            for spelling in (*p.opts, *p.secondary_opts):
                takes[spelling] = 0 if p.is_flag or p.count else p.nargs
    options: list[str] = []
    arguments: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            arguments += words[i:]
            break
        if not word.startswith("-") or word == "-" or (word not in takes and _is_number(word)):
            arguments.append(word)
            continue
        n = _value_words(word, takes)
        options += [word, *words[i:i + n]]
        i += n
    if not any(a.startswith("-") and _is_number(a) for a in arguments):
        return words
    return [*options, "--", *arguments]


def _value_words(option: str, takes: dict[str, int]) -> int:
    """How many of the words after ``option`` (``--name``, ``--name=x``, ``-n``, ``-nx``, ``-hn``) are its value."""
    if option.startswith("--"):
        return 0 if "=" in option else takes.get(option, 0)
    for j, letter in enumerate(option[1:], 2):  # a cluster of short options: the first that takes a value ends it
        n = takes.get(f"-{letter}")
        if n is None:  # unknown: click refuses the word
            return 0
        if n:
            return n if j == len(option) else n - 1  # the rest of the word is its first value word
    return 0


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


_INT64_MAX = 2**63 - 1  # the wire carries 64-bit signed integers
JOB_ID = Number(int, 0, _INT64_MAX, "job ids are 64-bit integers")


def _one_line(exc: Exception) -> str:
    text = str(exc)
    from actors._errors import RemoteError

    if isinstance(exc, RemoteError):
        return f"job raised {exc.type_name}: {exc.remote_message}" + (" (--debug shows the remote traceback)")
    return text


def config_of(ctx: click.Context, **daemon: Any) -> Config:
    """The config for this command: --config/--name, environment, flags; paths made absolute."""
    obj = ctx.ensure_object(dict)
    return load_config(obj.get("config"), overrides={"daemon": {"name": obj.get("name"), **daemon}},
                       flags=_FLAGS).absolute()


_FLAGS = {("daemon", "name"): "--name", ("daemon", "workers"): "--workers"}  # the flags config_of's values come from


def client_of(ctx: click.Context, cls: type[Any] | None = None) -> Any:
    """A client of the daemon this command names (local, or --connect with CURVE keys); close it after use.

    ``cls``: the client class (a package's commands pass their own, e.g. ``audio.client.Client``).
    """
    from actors.client import Client

    make = cls or Client
    obj = ctx.ensure_object(dict)
    if obj.get("connect"):
        return make(config=config_of(ctx), endpoint=obj["connect"], curve=(obj["key"], obj["server_key"]))
    return make(config=config_of(ctx))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", "-n", default=None, help="Daemon name (default: 'default', or $ENSEMBLE_NAME).")
@click.option("--config", "-c", "config", default=None, type=RegularFile(), help="TOML config file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--connect", default=None, metavar="tcp://HOST:PORT", help="A daemon on another host (CURVE).")
# key files may be pipes (`--key /dev/fd/N`: how a Ray-placed worker gets its keys, never written to disk)
@click.option("--key", default=None, type=click.Path(dir_okay=False), help="With --connect: your .key_secret file.")
@click.option("--server-key", default=None, type=click.Path(dir_okay=False), help="With --connect: the daemon's server.key.")
@click.version_option(__version__, prog_name="ensemble")
@click.pass_context
def main(ctx: click.Context, name: str | None, config: str | None, debug: bool, connect: str | None,
         key: str | None, server_key: str | None) -> None:
    """ensemble: a multiprocess actor runtime for realtime audio."""
    global _DEBUG
    _DEBUG = debug
    if _said_by_the_cli not in logging.getLogger("ensemble.client").filters:
        logging.getLogger("ensemble.client").addFilter(_said_by_the_cli)
    if connect and not (key and server_key):
        fail("--connect needs --key (your .key_secret file) and --server-key (the daemon's server.key)", USAGE)
    ctx.ensure_object(dict).update(name=name, config=config, connect=connect, key=key, server_key=server_key)


# ---------------------------------------------------------------------------- lifecycle
@main.command()
@click.option("--workers", "-w", default=None, help="Number of workers, or 'auto' (CPU count).")
@click.option("--foreground", is_flag=True, help="Stay in the foreground, log to stderr (systemd, containers).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for every actor to be ready.",
              type=Number(float, 0, 86400, "how long to wait for the daemon to be ready", unit="seconds",
                          low_open=True))
@click.pass_context
def up(ctx: click.Context, workers: str | None, foreground: bool, timeout: float) -> None:
    """Start the daemon: controller, processor and workers."""
    cfg = config_of(ctx, workers=workers)
    rundir = RunDir(cfg.run_dir)
    check_private_path(rundir.path)  # before anything starts: a planted run directory is refused here
    if foreground:
        from actors.supervisor import serve

        sys.exit(serve(cfg, foreground=True))
    if rundir.is_locked():
        pid = rundir.read_pid()
        fail(f"a daemon named {cfg.name!r} is already running" + (f" (pid {pid})" if pid else "")
             + f"; stop it with `ensemble down --name {cfg.name}` or pick another --name")
    cfg.make_state_dir()
    err_path = cfg.state_dir / "daemon.err"
    status = wait_ready(cfg, start_daemon(cfg, err_path), timeout, err_path)
    d = status.daemon
    click.echo(f"ensemble {d.version}: daemon {d.name!r} up (pid {d.pid}), "
               f"{sum(a.role == 'worker' for a in status.actors)} workers; log: {d.log_file}")
    for a in status.actors:
        if a.state == "failed":  # the daemon is up and serves the rest: said, and still exit 0
            click.echo(f"ensemble: warning: {a.name} failed: {a.detail}", err=True)
        elif a.role == "processor" and a.stats.get("notice"):
            click.echo(f"notice: {a.stats['notice']}")


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the daemon to exit.",
              type=Number(float, 0, 86400, "how long to wait before the daemon is killed", unit="seconds",
                          low_open=True))
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop the daemon in order (stop message, SIGTERM, SIGKILL); nothing is left behind."""
    cfg = config_of(ctx)
    rundir = RunDir(cfg.run_dir)
    pid = rundir.read_pid()
    if not rundir.is_locked():
        click.echo(f"no daemon named {cfg.name!r} is running")
        return
    from actors.client import Client
    from actors.messages import Shutdown

    with Client(config=cfg, timeout=10) as c:
        asked_until = time.monotonic() + 10
        while True:  # asked in short waits, the process looked at between them: a daemon whose journal cannot
            try:  # be written stops without the answer it holds for the commit (down then waited 10 s and failed)
                c._call(Shutdown(), timeout=0.5)  # (the daemon takes a Shutdown twice as once)
                break
            except TransportError:
                if not rundir.is_locked() or not (pid and process_alive(pid)):
                    break  # it stopped
                if time.monotonic() > asked_until:  # its loop does not answer (blocked: in a Ray join, say):
                    click.echo(f"ensemble: note: the daemon (pid {pid}) does not answer; sending it SIGTERM, "
                               f"SIGKILL after {timeout:g}s", err=True)  # the signals the help promises
                    if pid:
                        os.kill(pid, signal.SIGTERM)
                    break
    deadline = time.monotonic() + timeout
    while rundir.is_locked() or (pid and process_alive(pid)):  # return only once the process is gone
        if time.monotonic() > deadline:
            if pid:
                os.kill(pid, signal.SIGKILL)
            fail(f"the daemon did not stop within {timeout:g}s; killed pid {pid}")
        time.sleep(0.02)
    click.echo(f"daemon {cfg.name!r} stopped")


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the daemon and every actor: pid, state, uptime, restarts, heartbeat age, RSS."""
    import msgspec

    with client_of(ctx) as c:
        st = c.status()
    if as_json:
        click.echo(json_text({"daemon": msgspec.structs.asdict(st.daemon),
                              "actors": [msgspec.structs.asdict(a) for a in st.actors]}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from actors._top import cells

    d = st.daemon
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(Text.assemble((f"ensemble {d.version}", "bold"), " daemon ", (d.name, "bold"),
                                f" pid {d.pid}, up {_age(d.uptime)}, RSS {_mib(d.rss)}; jobs queued {d.queued}, "
                                f"running {d.running}; log {d.log_file}"))
    table = Table()
    for col in ("actor", "role", "pid", "state", "uptime", "restarts", "heartbeat", "RSS"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="ellipsis", max_width=60)
    for a in st.actors:
        style = "red" if a.state == "failed" else None
        detail = a.detail or ", ".join(f"{k}={v}" for k, v in a.stats.items()
                                       if k in _STATUS_STATS and v not in ("", {}))
        table.add_row(*cells(a.name, a.role, str(a.pid or "-"), a.state, _age(a.uptime), str(a.restarts),
                             _age(a.heartbeat_age) if a.pid or a.uptime else "-", _mib(a.rss), detail), style=style)
    console.print(table)
    if d.counters.get("journal_error"):
        console.print(Text(f"the job journal cannot be written: {d.counters['journal_error']}; no new job is "
                           f"accepted until it can (free space in {d.state_dir}?)", style="red"))
    if d.counters.get("ray_error"):
        console.print(Text(f"Ray cluster {d.counters.get('ray_cluster', '')}: {d.counters['ray_error']}", style="red"))
    if d.counters.get("ray_worker_error"):
        console.print(Text(f"a Ray-placed worker has not joined: {d.counters['ray_worker_error']}", style="red"))


@main.command()
@click.option("--refresh", default=0.25, show_default=True, type=FiniteFloatRange(0.05, 10),
              help="Seconds between refreshes.")
@click.pass_context
def top(ctx: click.Context, refresh: float) -> None:
    """A live view of actors, jobs and audio; q or Ctrl-C quits."""
    from actors._top import NoTerminal, run_top

    if not sys.stdout.isatty():  # said before a daemon is looked for: a pipe is the mistake either way
        raise NoTerminal()
    with client_of(ctx) as c:
        run_top(c, refresh)


# ignore_unknown_options: `scale -1` reaches WORKERS, whose range error says what to give (click would call it
# an unknown option); an unknown option after WORKERS is still an unexpected extra argument
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("workers", type=Number(int, 0, 1024, "the daemon runs at most 1024 workers"))
@click.option("--on", "on", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Which workers: this host's, or those placed on the Ray cluster ([cluster] ray).")
@click.pass_context
def scale(ctx: click.Context, workers: int, on: str) -> None:
    """Change the number of workers at runtime (idle workers retire first)."""
    with client_of(ctx) as c:
        c.scale(workers, "" if on == "local" else on)
    click.echo(f"workers: {workers}" + (" on ray" if on == "ray" else ""))


# ---------------------------------------------------------------------------- jobs
def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@main.command(cls=NumbersAsArguments)  # `submit FN -1`: a negative number is an argument
@click.argument("fn")
@click.argument("args", nargs=-1)
@click.option("--kw", multiple=True, help="Keyword argument NAME=VALUE (VALUE read as JSON where it parses).")
@click.option("--wait", is_flag=True, help="Wait with a live progress bar and print the result; Ctrl-C cancels.")
@click.option("--priority", default=0, help="Higher runs first.",
              type=Number(int, -_INT64_MAX - 1, _INT64_MAX, "a 64-bit integer, as the wire carries it"))
@click.option("--grace", "--timeout", "grace", default=0.5, show_default=True,
              help="Seconds between an abort (cancel, deadline, stop) and the force kill (--timeout: the old name).",
              type=Number(float, 0, 86400, "the time from an abort to the force kill, as the daemon accepts it",
                          unit="seconds", low_open=True))
@click.option("--deadline", default=None, help="Run-time limit in seconds from the start.",
              type=Number(float, 0, 1e9, "leave --deadline out for no run-time limit", unit="seconds", low_open=True))
@click.option("--retries", default=0, help="Reruns after a worker death.",
              type=Number(int, 0, 1000, "the daemon reruns a job at most 1000 times"))
@click.option("--job-name", "job_name", default="", help="A name for the job (--name is the daemon's, as everywhere).")
@click.option("--resources", default="", metavar="NAME=AMOUNT,...", help="What its worker must offer, e.g. GPU=1.")
@click.pass_context
def submit(ctx: click.Context, fn: str, args: tuple[str, ...], kw: tuple[str, ...], wait: bool, priority: int,
           grace: float, deadline: float | None, retries: int, job_name: str, resources: str) -> None:
    """Submit a job FN ('module:function') with ARGS (each read as JSON where it parses; -1 is a number)."""
    kwargs = {}
    for item in kw:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            fail(f"--kw {item!r} must look like NAME=VALUE", USAGE)
        if key in kwargs:  # (the last one won, silently)
            fail(f"--kw {key} is given twice; give each keyword once", USAGE)
        kwargs[key] = parse_arg(value)
    from actors._resources import parse

    try:
        need = parse(resources, "--resources") if resources else None
    except EnsembleError as exc:
        fail(str(exc), USAGE)
    with client_of(ctx) as c:
        c.conn.search_cwd = True  # FN may be a module of the directory it is typed in, as with `python -m`
        def send() -> Any:
            return c.submit(fn, *[parse_arg(a) for a in args], kwargs=kwargs, name=job_name, priority=priority,
                            grace=grace, deadline=deadline, retries=retries, resources=need)

        if not wait:  # submitted unwatched: its end, pushed here before this exits, took its result arrays
            from concurrent.futures import TimeoutError as NoAck  # out of shared memory, where `result ID` looks

            spec = c.spec(fn, *[parse_arg(a) for a in args], kwargs=kwargs, name=job_name, priority=priority,
                          grace=grace, deadline=deadline, retries=retries, resources=need)
            try:
                (job_id,) = c.conn.submit([spec]).result(c.timeout)
            except NoAck:
                fail(f"the daemon did not acknowledge the submit within {c.timeout:g}s")
            click.echo(job_id)
            if c.conn.waiting:
                click.echo(f"ensemble: note: job {job_id} waits: {c.conn.waiting}", err=True)
            return
        # Ctrl-C only raises a flag from here to the job's end, and the progress loop polls it: a KeyboardInterrupt
        # raised at an arbitrary point (inside the submit, between the submit and the watch, inside Rich) could
        # leave the job running with nobody to cancel it. A second Ctrl-C raises: the user insists.
        interrupted: list[bool] = []
        previous = signal.signal(signal.SIGINT, lambda *_: _hold_interrupt(interrupted))
        try:
            _follow(c, send().id, interrupted)
        finally:
            signal.signal(signal.SIGINT, previous)


def _hold_interrupt(held: list[bool]) -> None:
    """SIGINT handler while a submitted job is followed: note the first Ctrl-C, raise on a second."""
    if held:
        raise KeyboardInterrupt
    held.append(True)


def _follow(c: Any, job_id: int, interrupted: list[bool] | None = None) -> None:
    """Live progress bar until the job ends; print the result or fail with its error.

    ``interrupted``: the flag :func:`_hold_interrupt` raises on Ctrl-C; once set, the job is cancelled (and
    its end still printed). Without it Ctrl-C interrupts only the following, as usual.
    """
    import threading

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if os.getcwd() not in sys.path:  # a value of the job's own classes unpickles from where the job imported
        sys.path.insert(0, os.getcwd())  # them: this directory, first on a local job's path (see `submit`)
    changed = threading.Event()
    handle = c.watch(job_id, lambda info: changed.set())
    pulse = _Pulse(c)
    from rich.markup import escape

    from actors._top import visible

    look_at = time.monotonic() + _QUEUED_HINT_AFTER  # when to see whether a worker could take it (0: said already)
    # the state is escaped and the status shown as plain text: the job's own words are never markup.
    # auto_refresh=False: the loop below refreshes, and no Rich thread exists to catch a signal meant for this one.
    # No bar where stdout is no terminal: Rich would end it with an empty line, before the result
    with Progress(TextColumn("job {task.fields[jid]} [bold]{task.fields[state]}[/]"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  TextColumn("{task.description}", markup=False), transient=True, auto_refresh=False,
                  disable=not sys.stdout.isatty()) as bar:
        task = bar.add_task("", total=1.0, jid=job_id, state="queued")
        while not handle.done():
            if look_at and time.monotonic() >= look_at and handle._info is not None and handle._info.state == "queued":
                hint = _no_worker_hint(c)
                if hint:  # on stderr (above the bar on a terminal); and it goes on waiting: a worker may come
                    click.echo(f"ensemble: note: job {job_id} is still queued: {hint} (still waiting; Ctrl-C "
                               f"{'cancels it' if interrupted is not None else 'stops waiting'})", err=True)
                look_at = 0.0 if hint else time.monotonic() + _QUEUED_HINT_AFTER
            if interrupted:
                if pulse.silent_since is not None:  # a cancel would wait out the timeout too
                    fail(f"interrupted; job {job_id} is not cancelled: the daemon does not answer. It is in the "
                         f"daemon's journal: `ensemble cancel {job_id}` once the daemon is back", 130)
                bar.update(task, description="cancelling...", refresh=True)
                handle.cancel(block=True)
                break
            pulse.check(job_id)
            changed.wait(0.1)
            changed.clear()
            info = handle._info
            if info is not None:
                bar.update(task, completed=info.progress, description=visible(info.status),
                           state=escape(info.state), refresh=True)
    _print_result(handle)


_QUEUED_HINT_AFTER = 2.0  # seconds a followed job stays queued before the daemon's workers are looked at


class _Pulse:
    """Whether the daemon of a followed job still answers: one ping a second, each waited for a second at most.

    A killed daemon sends no more updates, and the following waited for them
    for ever.  Now it ends, in one ``ensemble: error:`` line, once the daemon
    has not answered for the client's timeout, or at once when the local
    daemon that answered before is no longer a process.
    """

    EVERY = 1.0

    def __init__(self, c: Any) -> None:
        self.c = c
        self.next = time.monotonic()  # the first at once: its answer says the daemon's pid
        self.silent_since: float | None = None  # when the first ping in a row went unanswered
        self.pid = 0  # the daemon's, from its last answer

    def check(self, job_id: int) -> None:
        """Ping when one is due (blocks a second at most); fail when the daemon is gone."""
        from actors.messages import Ping

        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.EVERY
        try:
            self.pid = self.c._call(Ping(), timeout=self.EVERY).pid
            self.silent_since = None
            return
        except TransportError:
            pass
        first, self.silent_since = self.silent_since is None, self.silent_since or now
        local = not self.c.conn.endpoint.startswith("tcp://")
        gone = local and self.pid and not process_alive(self.pid)
        silent = time.monotonic() - self.silent_since
        if gone or (self.c.timeout is not None and silent >= self.c.timeout):
            why = f"the daemon (pid {self.pid}) is gone" if gone else f"the daemon has not answered for {silent:.0f}s"
            fail(f"job {job_id} is not finished and {why}; the job is in the daemon's journal: once the daemon is "
                 f"back (`{self.c.config.command('up')}`), `{self.c.config.command('result')} {job_id}`")
        if first:  # on stderr, above the bar on a terminal
            within = f" within {self.c.timeout:g}s" if self.c.timeout is not None else ""
            click.echo(f"ensemble: note: the daemon does not answer (stopped or overloaded?); job {job_id} is "
                       f"followed again should it answer{within}", err=True)


def _no_worker_hint(c: Any) -> str:
    """Why no job can start: the daemon has no ready worker, said with what to do ('' when one is ready).

    Cost: one ``status`` round trip, waited for a second at most ('' when none comes: the daemon stopped,
    or is busy, and :class:`_Pulse` says which; the full timeout here held off Ctrl-C and the daemon's end).
    """
    from actors.messages import Status

    try:
        st = c._call(Status(), timeout=_Pulse.EVERY)
    except TransportError:
        return ""
    if any(a.role == "worker" and a.state == "running" for a in st.actors):
        return ""
    wanted, ray = st.daemon.workers_wanted, st.daemon.counters.get("ray_workers", 0)
    if not wanted and not ray:
        return "no workers are running: `ensemble scale N` starts some"
    return (f"no worker is ready ({wanted} wanted here" + (f", {ray} on Ray" if ray else "")
            + ": starting, restarting or failed; see `ensemble status`)")


def _print_result(handle: Any) -> None:
    from actors._top import visible

    info = handle.wait()
    try:
        value = handle.result()
    except JobCancelled as exc:
        fail(str(exc))
    if isinstance(value, str):  # as the job returned it into a pipe or a file; on a terminal, its controls shown
        click.echo(visible(value) if sys.stdout.isatty() else value)
    else:
        click.echo(json_text(value))  # (JSON escapes every control character)
    _ = info


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: each job's snapshot as the daemon keeps it (its progress as the job "
                   "last set it, 0.0 if it never did, done or not; the table shows a done job at 100%).")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in JobState]),
              help="Only jobs in this state (repeatable).")
@click.option("--limit", default=50, show_default=True, help="List at most this many jobs (1 to 10000).",
              type=Number(int, 1, 10_000, "the daemon lists at most 10000 jobs"))
@click.pass_context
def jobs(ctx: click.Context, as_json: bool, states: tuple[str, ...], limit: int) -> None:
    """List recent jobs, newest first."""
    import msgspec

    with client_of(ctx) as c:
        infos = c.jobs(states, limit)
    if as_json:
        click.echo(json_text([msgspec.structs.asdict(i) for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from actors._top import cells

    table = Table()
    for col in ("id", "function", "name", "state", "progress", "worker"):
        table.add_column(col, no_wrap=True)
    table.add_column("status", overflow="ellipsis", max_width=40)
    table.add_column("error", overflow="ellipsis", max_width=50)
    for i in infos:
        table.add_row(*cells(str(i.id), i.fn, i.name, i.state, f"{i.shown_progress() * 100:.0f}%", i.worker, i.status,
                             f"{i.error_type}: {i.error_message}" if i.error_type else ""))
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@main.command(cls=NumbersAsArguments)  # `watch -1`: the id's range error, not "no such option"
@click.argument("job_id", type=JOB_ID)
@click.pass_context
def watch(ctx: click.Context, job_id: int) -> None:
    """Follow a job's progress until it ends, then print its result."""
    with client_of(ctx) as c:
        _follow(c, job_id)


@main.command(cls=NumbersAsArguments)  # `cancel -1`: the id's range error, not "no such option"
@click.argument("job_id", type=JOB_ID)
@click.option("--wait", is_flag=True, help="Return only when the job has stopped, and say how it ended.")
@click.pass_context
def cancel(ctx: click.Context, job_id: int, wait: bool) -> None:
    """Cancel a job: should_abort() turns true; force kill after its grace (submit --grace).

    \b
    What it says, on standard output, with exit status 0:
      job N: cancelled                 it had not started
      job N: abort requested           it is asked to stop
      job N: STATE                     --wait: it stopped (cancelled; killed: why;
                                       done or failed: it ended first)
      job N had already ended (STATE)  nothing to cancel, --wait or not
    Exit status 1: the job is unknown, or the daemon does not answer.
    """
    from actors.messages import Ack, Cancel

    with client_of(ctx) as c:  # the daemon's own answer: "cancelled", "abort requested", "had already ended (done)"
        reply = c._call(Cancel(job_id, False), timeout=30.0)
        detail = reply.detail if isinstance(reply, Ack) else "abort requested"
        if not wait or detail != "abort requested":
            click.echo(detail if detail.startswith(f"job {job_id} ") else f"job {job_id}: {detail}")
            return
        info = _stopped(c, job_id)
    click.echo(f"job {job_id}: {_how_it_ended(info)}")


_CANCEL_ASK = 10.0  # seconds a Cancel(block) is waited for before the daemon is pinged and the job asked for again


def _stopped(c: Any, job_id: int) -> JobInfo:
    """The final snapshot of a job asked to stop, however long its grace (its JobInfo).

    A waiting Cancel is asked again every :data:`_CANCEL_ASK` seconds while the
    daemon answers its pings (:class:`_Pulse`, which ends the command in one
    error line once it does not).  One wait of 30 s said "the daemon did not
    answer Cancel" of a job whose grace was longer, stopping as asked.
    """
    from actors.messages import Cancel, JobInfos

    pulse = _Pulse(c)
    while True:
        pulse.check(job_id)
        try:
            reply = c._call(Cancel(job_id, True), timeout=_CANCEL_ASK)
        except NoAnswer:  # a wait that ran out (any other TransportError: the request failed, and is raised)
            continue
        assert isinstance(reply, JobInfos)
        return reply.jobs[0]


def _how_it_ended(info: JobInfo) -> str:
    """A final state with what the daemon said of it: ``cancelled``, ``killed: cancel (no return within 500 ms
    of the abort)``, ``failed (ValueError: boom)``, ``done``."""
    said = f"{info.error_type}: {info.error_message}" if info.state == "failed" else info.error_message
    if not said or said == info.state:
        return str(info.state)
    return said if said.startswith(f"{info.state}:") else f"{info.state} ({said})"


@main.command(cls=NumbersAsArguments)  # `result -1`: the id's range error, not "no such option"
@click.argument("job_id", type=JOB_ID)
@click.option("--wait/--no-wait", default=True, help="Wait for the job if it is still running.")
@click.pass_context
def result(ctx: click.Context, job_id: int, wait: bool) -> None:
    """Print a job's result (its error, and exit 1, if it did not succeed)."""
    with client_of(ctx) as c:
        handle = c.job(job_id)
        if handle.done():
            _print_result(handle)
        elif not wait:
            fail(f"job {job_id} is still {handle.state}")
        else:  # as `watch` follows it: ends with a line of its own should the daemon go away meanwhile
            _follow(c, job_id)


# ---------------------------------------------------------------------------- keys and remote workers
@main.group()
def keys() -> None:
    """CURVE keys for tcp: the daemon's pair, keys issued with a role (worker, client, admin), the allow-lists."""
    os.umask(0o077)  # key files and the state directory they may create are this user's only


def _keys_dir(ctx: click.Context) -> Path:
    from actors._keys import keys_dir

    cfg = config_of(ctx)
    cfg.make_state_dir()
    return keys_dir(cfg)


@keys.command("init")
@click.option("--force", is_flag=True, help="Replace existing daemon keys.")
@click.pass_context
def keys_init(ctx: click.Context, force: bool) -> None:
    """Write the daemon's key pair."""
    from actors._keys import init_keys

    pub = init_keys(_keys_dir(ctx), force)
    click.echo(f"daemon public key: {pub} (give it to remote workers and clients)")


def _add_key_command(role: str, what: str) -> None:
    @keys.command(f"add-{role}", help=f"Issue a key for {what} and allow it (role: {role}).")
    @click.argument("name")
    @click.pass_context
    def add(ctx: click.Context, name: str) -> None:
        from actors._keys import add_peer

        click.echo(add_peer(_keys_dir(ctx), name, role))


_add_key_command("worker", "a remote worker: accepted on the worker endpoint only")
_add_key_command("client", "a remote client: submits allowed jobs, reads and cancels its own")
_add_key_command("admin", "a remote admin: a client that may also scale, stop, load scripts and samples")


@keys.command("revoke")
@click.argument("name")
@click.pass_context
def keys_revoke(ctx: click.Context, name: str) -> None:
    """Remove a key from the allow-list (a running daemon refuses it at once)."""
    from actors._keys import revoke

    role = revoke(_keys_dir(ctx), name)
    click.echo(f"revoked {name} ({role})")


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List allowed keys with their roles."""
    from actors._keys import list_keys, unassigned_keys

    for name, role in list_keys(_keys_dir(ctx)):
        click.echo(f"{name}\t{role}")
    for name in unassigned_keys(_keys_dir(ctx)):
        click.echo(f"{name}\tnone (from before roles: grants nothing; re-issue with add-worker/add-client/add-admin)")


@main.command()
@click.option("--connect", "endpoint", required=True, metavar="tcp://HOST:PORT", help="The daemon's worker endpoint.")
# (a pipe too: a Ray-placed worker's keys come as `--key /dev/fd/N`, see actors._ray_host)
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="This worker's .key_secret file.")
@click.option("--server-key", required=True, type=click.Path(exists=True, dir_okay=False), help="The daemon's server.key.")
@click.option("--worker-name", default=None,
              help="What this worker calls itself, shown in its status row beside the name its key gives it "
                   "(default: the host name).")
@click.option("--resources", default="", metavar="NAME=AMOUNT,...",
              help="What it offers jobs, e.g. CPU=8,GPU=1 (default: this host's CPUs and memory).")
@click.option("--object-store-fd", type=int, default=-1, hidden=True,
              help="Set by a Ray host actor: its end of the node-local link to Ray's object store.")
@click.pass_context
def worker(ctx: click.Context, endpoint: str, key: str, server_key: str, worker_name: str | None,
           resources: str, object_store_fd: int) -> None:
    """Run a worker on this host for a daemon elsewhere (restart it with systemd or Kubernetes)."""
    import socket

    from actors._resources import host_resources, parse
    from actors.worker import run_remote

    try:
        offer = parse(resources, "--resources") if resources else host_resources()  # "none": offers nothing
    except EnsembleError as exc:
        fail(str(exc), USAGE)
    code = run_remote(config_of(ctx), endpoint, key, server_key, worker_name or socket.gethostname(), offer,
                      object_store_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: ZeroMQ's atexit term would wait on inproc sockets


_AFTER = {"daemon_name_after": "name", "config_after": "config"}  # parameter names unique beside a NAME argument


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the subcommand: it overrides the one given before."""
    if value is not None:
        ctx.ensure_object(dict)[_AFTER[param.name or ""]] = value


def accept_global_options(group: click.Group) -> None:
    """Let ``--name``/``-n`` and ``--config``/``-c`` follow any subcommand too (``ensemble up --name x``).

    Added to every command of ``group``, its subgroups included, unless a
    command already uses one of those spellings itself.  Call it after every
    command is registered.
    """
    for cmd in group.commands.values():
        taken = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for decls, name, help_text in ((("--name", "-n"), "daemon_name_after", "Daemon name (as before the command)."),
                                       (("--config", "-c"), "config_after", "TOML config file (as before the command).")):
            if not taken & set(decls):
                path = RegularFile() if name == "config_after" else None
                cmd.params.append(click.Option([*decls, name], default=None, expose_value=False, callback=_remember,
                                               help=help_text, type=path))
        if isinstance(cmd, click.Group):
            accept_global_options(cmd)


main.add_command(completion)
register_commands(main)  # what the installed packages built on the runtime add (audio, scripts)
accept_global_options(main)


def run() -> None:
    """Console-script entry point: usage errors are one line too (``ensemble: error: ...``, exit 2); Ctrl-C is
    ``ensemble: error: interrupted``, exit 130, from the package's import on (:mod:`actors._command_start`)."""
    _command_start.release()  # from here a KeyboardInterrupt, which the commands handle (a job to cancel, a terminal)
    try:
        code = main.main(prog_name="ensemble", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _echo_error(f"{exc.format_message()}{hint}")
        sys.exit(2)
    except click.Abort as exc:  # click's, for a Ctrl-C while it parses the command line
        _echo_error("interrupted" if isinstance(exc.__cause__, KeyboardInterrupt) else "aborted")
        sys.exit(130)
    except KeyboardInterrupt:  # before click's own handling began
        _echo_error("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        _echo_error(exc.format_message())
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)



"""The script commands of ``ensemble``: load, reload, parameters, offline render (``ensemble.cli`` entry point)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from actors.cli import FiniteFloatRange, Number, NumbersAsArguments, RegularFile, client_of, fail, parse_arg
from actors.jsontext import json_text
from controller._host import ParamDef
from controller.client import Client, ParamNotApplied, ScriptLoadError
from controller.messages import ParamInfo


def register(main: click.Group) -> None:
    """Add the script commands to the ``ensemble`` group."""
    for cmd in (render, load, reload, param):
        main.add_command(cmd)


@click.command()
@click.argument("script", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--midi", type=click.Path(exists=True, dir_okay=False), help="Standard MIDI file to play.")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False), help="Sound file played across the keyboard.")
@click.option("--seconds", type=FiniteFloatRange(0.001, 24 * 3600), default=None, help="Length (default: the MIDI file + 1 s).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="WAV file to write.")
@click.option("--samplerate", default=48000, show_default=True, type=click.IntRange(1000, 768000))
@click.option("--blocksize", default=256, show_default=True, type=click.IntRange(1, 65536))
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE@SECONDS", help="Set a script parameter at a time.")
def render(script: str | None, midi: str | None, sample: str | None, seconds: float | None, out: str,
           samplerate: int, blocksize: int, sets: tuple[str, ...]) -> None:
    """Render offline, as fast as possible, to a WAV file (deterministic), optionally through SCRIPT."""
    from audio import render as do_render

    try:
        if script:
            from controller.offline import parse_set, render_script

            _quiet_script_logs()
            path, errors = render_script(script, out=out, midi=midi, sample=sample, seconds=seconds,
                                         sets=[parse_set(s, seconds) for s in sets], samplerate=samplerate,
                                         blocksize=blocksize,
                                         on_overrun=lambda r: click.echo(f"script (timing, live only): {r}", err=True))
            for err in errors:
                click.echo(f"script: {err}", err=True)
        else:
            if sets:
                fail("--set needs a SCRIPT")
            path = do_render(out=out, midi=midi, sample=sample, seconds=seconds, samplerate=samplerate,
                             blocksize=blocksize)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
    click.echo(f"wrote {path}")


class _ScriptEvents(logging.Filter):
    """Drops the script hosts' ``event=script-...`` records: ``render`` prints each script error itself, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("event=script-")


def _quiet_script_logs() -> None:
    """Keep the script hosts' logs of script errors off a render's stderr (its own ``script:`` lines say them)."""
    for name in ("ensemble.controller", "ensemble.processor"):
        logging.getLogger(name).addFilter(_ScriptEvents())




_WAIT_HELP = ("Seconds to wait for the controller, then the processor, to load it (0: return once the daemon "
              "accepted the request).")
_WAIT = Number(float, 0, 86400, "how long to wait for the controller and the processor to load it; 0 returns once "
               "the daemon accepted the request", unit="seconds")


@click.command()
@click.argument("path", type=RegularFile(exists=True))
@click.option("--timeout", default=30.0, show_default=True, type=_WAIT, help=_WAIT_HELP)
@click.pass_context
def load(ctx: click.Context, path: str, timeout: float) -> None:
    """Load an instrument script (controller first, then the processor); exit 1 with its error if it fails."""
    with client_of(ctx, Client) as c:
        try:
            c.load_script(path, wait=timeout or None)
        except ScriptLoadError as exc:
            fail(str(exc))
    click.echo(f"{'loaded' if timeout else 'loading'} {Path(path).resolve()}")


@click.command()
@click.option("--timeout", default=30.0, show_default=True, type=_WAIT, help=_WAIT_HELP)
@click.pass_context
def reload(ctx: click.Context, timeout: float) -> None:
    """Reload the script: pending callbacks discarded, background tasks aborted, parameters kept."""
    with client_of(ctx, Client) as c:
        try:
            c.reload_script(wait=timeout or None)
        except ScriptLoadError as exc:
            fail(str(exc))
    click.echo("reloaded" if timeout else "reloading")


@click.group()
def param() -> None:
    """Script parameters: list, get, set, bind to a MIDI controller."""


@param.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def param_list(ctx: click.Context, as_json: bool) -> None:
    """List the script's parameters and their values."""  # a long one cut (_cut); --json, `param get`: whole
    with client_of(ctx, Client) as c:
        params = c.params()
    if as_json:  # json_text: what JSON cannot carry (an infinite min, a tuple key) as the CLI's other JSON has it
        click.echo(json_text(params, indent=2))
        return
    if not params:  # said on stderr: stdout stays the (empty) list a script reads
        click.echo("no parameters: no script is loaded, or it defines none (`ensemble load FILE` loads one)",
                   err=True)
    for p in params:
        rng = f" [{p.min}..{p.max}]" if p.min is not None or p.max is not None else ""
        click.echo(f"{_cut(p.name)} = {_cut(repr(p.value))}\t{_cut(p.long_name)} ({p.kind}{rng}, "
                   f"default {_cut(repr(p.default))})")


LISTED = 200  # characters of a name or value `param list` shows whole; a longer one is cut (`param get`: exact)


def _cut(text: str) -> str:
    """``text`` whole if it has at most :data:`LISTED` characters; else its start and end around ``...``, then
    how many characters were left out: ``'aaaa...aaaa' (19999800 characters left out)`` (pure)."""
    if len(text) <= LISTED:
        return text
    head = LISTED * 3 // 4
    return f"{text[:head]}...{text[len(text) - (LISTED - head):]} ({len(text) - LISTED} characters left out)"


@param.command("get")
@click.argument("name")
@click.pass_context
def param_get(ctx: click.Context, name: str) -> None:
    """Print one parameter's value (JSON)."""
    with client_of(ctx, Client) as c:
        try:
            value = c.get_param(name)
        except KeyError as exc:
            fail(str(exc.args[0]) if exc.args else str(exc))  # (str() of a KeyError quotes it)
    click.echo(json_text(value))


SET_WAIT_S = 10.0  # how long `param set` waits for the controller to apply the value (a callback may hold it 5 s)


@param.command("set", cls=NumbersAsArguments)  # `param set NAME -3`: a negative number is the value
@click.argument("name")
@click.argument("value")
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=SET_WAIT_S, show_default=True,
              metavar="SECONDS", help="How long to wait for the controller to apply the value (a callback may hold "
              "its queue); 0: return once the daemon has queued it.")
@click.pass_context
def param_set(ctx: click.Context, name: str, value: str, wait: float) -> None:
    """Set a parameter (VALUE read as its kind takes it); prints the value it takes, as `param get` prints it.

    A text parameter stores VALUE exactly as typed; a number takes a number
    as JSON writes it (3, -0.5, 1e3); a bool true/false, 1/0, yes/no, on/off;
    a choice the one VALUE is read as JSON, else as text.  Exits 1 when the
    value is refused (saying why), when the controller drops the change (a
    load came first and its script has no such parameter, or refuses the
    value) or has not applied it within --wait seconds (it stays queued).
    """
    with client_of(ctx, Client) as c:
        try:  # checked here as the daemon checks it: a value the wire cannot carry (10**29) is never sent
            wanted = _value_of(next((p for p in c.params() if p.name == name), None), value)
        except ValueError as exc:
            fail(str(exc))
        try:  # the daemon checks the value again (ParamDef.coerce: a load may have come in between); then the
            c.set_param(name, wanted, wait=wait or None)  # controller applies it, or drops it: said, exit 1
        except ParamNotApplied as exc:
            fail(str(exc))
        taken = _as_taken(c.params(), name, wanted)
    click.echo(f"{name} = {json_text(taken)}")


def _value_of(p: ParamInfo | None, text: str) -> Any:
    """The value ``param set NAME TEXT`` sends for parameter ``p``, checked as the daemon checks it (pure).

    A str parameter takes ``text`` exactly as typed (``null``, ``1.50`` stay
    text).  An int or float one takes only a number as JSON writes it, in
    ASCII digits (no ``1_0``, no ``٣``, though Python's ``int`` takes both),
    converted here: an int beyond 64 bits is refused as the daemon refuses
    it, a float parameter takes ``1e29`` written out in digits as a float.
    A bool one: JSON true/false or the words ``ParamDef.coerce`` knows; a
    choice: the choice ``text`` is read as JSON, else the one it is as text.
    ``p`` None (the daemon listed no such parameter): ``text`` as it is, for
    the daemon to refuse naming the parameters it has.  Raises ValueError
    naming the parameter, the value and what it takes.
    """
    if p is None:
        return text
    param = ParamDef(p.name, p.long_name, p.default, p.min, p.max, p.kind, tuple(p.choices))
    if p.kind == "str":
        return param.coerce(text)
    value = parse_arg(text)
    if p.kind in ("int", "float") and not isinstance(value, (int, float)):  # (true/false: coerce says why not)
        example = "3 or -2" if p.kind == "int" else "0.5, -3 or 1e3"
        article = "an" if p.kind == "int" else "a"
        raise ValueError(f"parameter {p.name!r}: {text!r} is not a number; {article} {p.kind} parameter takes a number "
                         f"as JSON writes it, in ASCII digits, e.g. {example}")
    try:
        return param.coerce(value)
    except ValueError as as_json:
        if p.kind != "choice" or value == text:
            raise
        try:  # a choice that is text JSON reads otherwise: "1" of ["1", "2"], "null"
            return param.coerce(text)
        except ValueError:
            raise as_json from None


def _as_taken(params: list[ParamInfo], name: str, value: Any) -> Any:
    """``value`` converted as parameter ``name`` takes it (``on`` -> true, ``1`` -> 1.0): the daemon's own check.

    ``value`` as it is if the parameter is gone or its definition changed
    since the daemon accepted it (a reload in between).
    """
    p = next((p for p in params if p.name == name), None)
    if p is None:
        return value
    try:
        return ParamDef(p.name, p.long_name, p.default, p.min, p.max, p.kind, tuple(p.choices)).coerce(value)
    except ValueError:
        return value


@param.command("bind")
@click.argument("name")
@click.argument("controller", metavar="ccN")
@click.pass_context
def param_bind(ctx: click.Context, name: str, controller: str) -> None:
    """Bind parameter NAME to MIDI controller ccN (cc74, or 74): the controller moves it; persisted with it.

    The controller's 0..127 spans the parameter's min..max (a bool is on
    from 64, a choice picks by position).  A moved controller sets the
    parameter exactly as `ensemble param set` does (its on_change runs).
    """
    text = controller.lower().removeprefix("cc")
    if not text.isdigit() or not 0 <= int(text) <= 127:
        fail(f"controller {controller!r}: give ccN with N in 0..127, e.g. cc74")
    with client_of(ctx, Client) as c:
        c.bind_param(name, int(text))
    click.echo(f"{name} follows CC {int(text)}")


@param.command("unbind")
@click.argument("name")
@click.pass_context
def param_unbind(ctx: click.Context, name: str) -> None:
    """Stop parameter NAME following its MIDI controller."""
    with client_of(ctx, Client) as c:
        c.bind_param(name, None)
    click.echo(f"{name} follows no controller")

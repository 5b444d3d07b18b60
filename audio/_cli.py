"""The audio commands of ``ensemble``: notes, samples, devices, MIDI sources (the ``ensemble.cli`` entry point)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from actors.cli import Number, NumbersAsArguments, RegularFile, client_of, fail
from audio.client import Client


def register(main: click.Group) -> None:
    """Add the audio commands to the ``ensemble`` group."""
    for cmd in (note, sample, devices, midi):
        main.add_command(cmd)


@click.command(cls=NumbersAsArguments)  # `note -1`: the range error, not "no such option"
@click.argument("note", type=click.IntRange(0, 127))
@click.option("--velocity", "-v", default=100, type=click.IntRange(1, 127), show_default=True, help="MIDI velocity.")
@click.option("--length", "-l", default=1.0, show_default=True, help="Seconds until note off.",
              # checked before the note on is sent: a note off the daemon refused would leave the note hanging
              type=Number(float, 0, 3600, "how long the note sounds", unit="seconds"))
@click.option("--sample", "-s", default="", help="Name of a loaded sample (default: the last loaded, else built-in).")
@click.pass_context
def note(ctx: click.Context, note: int, velocity: int, length: float, sample: str) -> None:
    """Play NOTE (MIDI number, 60 = middle C) on the running processor."""
    with client_of(ctx, Client) as c:
        c.note_on(note, velocity, sample=sample)
        c.note_off(note, at=length)
    click.echo(f"note {note} velocity {velocity} for {length:g}s")


@click.group()
def sample() -> None:
    """Sample buffers in shared memory: load, list, drop."""


@sample.command("load")
@click.argument("path", type=RegularFile(exists=True))
@click.option("--sample-name", "sample_name", default=None,
              help="Name in the registry (default: the file name; --name is the daemon's, as everywhere).")
@click.option("--root-key", default=60, type=click.IntRange(0, 127), show_default=True)
@click.pass_context
def sample_load(ctx: click.Context, path: str, sample_name: str | None, root_key: int) -> None:
    """Load a sound file (WAV, FLAC, ...) into shared memory for the processor."""
    import soundfile as sf

    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        fail(f"cannot read {path}: {exc}")
    if not len(data):  # a valid file with no audio in it: nothing a voice could play
        fail(f"{path} holds no audio frames: a sample needs at least one")
    name = sample_name or Path(path).stem
    with client_of(ctx, Client) as c:
        info = c.upload_sample(data, name, int(rate), root_key)
    click.echo(f"sample {info.name!r}: {len(data)} frames, {data.shape[1]} channel(s) at {rate} Hz")


@sample.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sample_list(ctx: click.Context, as_json: bool) -> None:
    """List the registered samples."""
    with client_of(ctx, Client) as c:
        infos = c.samples()
    if as_json:
        click.echo(json.dumps([{"name": i.name, "frames": i.frames, "channels": i.channels,
                                "samplerate": i.samplerate, "root_key": i.root_key, "segment": i.handle.name}
                               for i in infos], indent=2))
        return
    if not infos:  # said on stderr: stdout stays the (empty) list a script reads
        click.echo("no samples loaded (`ensemble sample load FILE.wav` loads one)", err=True)
    for i in infos:
        click.echo(f"{i.name}\t{i.frames} frames\t{i.channels} ch\t{i.samplerate} Hz\troot {i.root_key}")


@sample.command("drop")
@click.argument("name")
@click.pass_context
def sample_drop(ctx: click.Context, name: str) -> None:
    """Remove a sample from the registry."""
    with client_of(ctx, Client) as c:
        c.drop_sample(name)
    click.echo(f"sample {name!r} dropped")


@click.command()
def devices() -> None:
    """List the audio output devices PortAudio sees."""
    from audio import BackendUnavailable, devices as list_devices

    try:
        found = list_devices()
    except BackendUnavailable as exc:
        fail(str(exc))
    if not found:
        click.echo("no output devices (the processor will use the null backend)")
    for d in found:
        click.echo(f"{d.index}: {d.name} ({d.host_api}), {d.channels} out, {d.default_samplerate:g} Hz")


@click.group()
def midi() -> None:
    """Live MIDI sources: list what can be connected, connect one to the running processor."""


def _processor_stats(ctx: click.Context) -> dict[str, Any] | None:
    """The processor's heartbeat figures, or None when no daemon (or processor) runs."""
    from actors import EnsembleError

    try:
        with client_of(ctx) as c:
            actors = c.status().actors
    except (EnsembleError, OSError):
        return None
    return next((dict(a.stats) for a in actors if a.name == "processor"), None)


@midi.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def midi_list(ctx: click.Context, as_json: bool) -> None:
    """List MIDI sources: JACK MIDI outputs (* = connected to the processor) and ALSA sequencer inputs.

    Looked up from this process, on the JACK server and machine the daemon
    uses when the environment is the same (JACK_DEFAULT_SERVER).
    """
    from audio import BackendUnavailable
    from audio._jack import open_client
    from audio._midi_ports import list_ports

    stats = _processor_stats(ctx) or {}
    notes: list[str] = []
    client = None
    try:
        client = open_client("ensemble-midi-list")
    except BackendUnavailable as exc:
        notes.append(f"JACK: {exc}")
    try:
        target = f"{stats['jack_client']}:midi_in" if stats.get("jack_client") else ""
        ports, more = list_ports(client, target)
    finally:
        if client is not None:
            client.close()
    notes += more
    timed = list(stats.get("midi_timed_inputs", []))
    if as_json:
        click.echo(json.dumps({"ports": [{"name": p.name, "via": p.via, "connected": p.connected} for p in ports],
                               "timed_inputs": timed, "notes": notes}, indent=2))
        return
    for p in ports:
        click.echo(f"{'*' if p.connected else ' '} {p.via}\t{p.name}")
    for t in timed:
        click.echo(f"* {t['via']}\t{t['port']}\t(timestamped: {t['received']} received, {t['late']} late)")
    for line in notes:  # what could not be looked at, and why: one line each
        click.echo(f"  {line}")
    if not ports and not timed:
        click.echo("no MIDI sources found")


@midi.command("connect")
@click.argument("port")
@click.option("--via", type=click.Choice(["auto", "jack", "alsa", "rtmidi-jack"]), default="auto", show_default=True,
              help="auto: a JACK MIDI output of that name (sample-accurate), else an ALSA sequencer input (RtMidi, "
                   "timestamped); rtmidi-jack: RtMidi's own JACK client (the timestamped path without ALSA).")
@click.option("--timeout", default=10.0, show_default=True,
              help="Seconds to wait for the processor to report the connection.",
              type=Number(float, 0.5, 120, "how long to wait for the processor to report the connection",
                          unit="seconds"))
@click.pass_context
def midi_connect(ctx: click.Context, port: str, via: str, timeout: float) -> None:
    """Connect MIDI source PORT (as `ensemble midi list` names it) to the running processor.

    Live, until the daemon stops; a JACK port is connected again when JACK
    comes back.  To connect at every start, list it in the config:
    [audio] midi_in = ["PORT"] (JACK port-name regular expressions).
    """
    with client_of(ctx, Client) as c:
        before = _processor_stats(ctx) or {}
        c.connect_midi(port, via)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = _processor_stats(ctx) or {}
        if port in stats.get("midi_sources", []):
            click.echo(f"connected {port} -> {stats.get('jack_client')}:midi_in (JACK)")
            return
        timed = [t for t in stats.get("midi_timed_inputs", []) if port in t["port"]]
        if timed:
            click.echo(f"connected {timed[0]['port']} ({timed[0]['via']}, timestamped on arrival)")
            return
        error = _connect_error(port, before, stats)
        if error:
            fail(error if "`ensemble midi list`" in error else f"{error}; `ensemble midi list` shows the sources")
        time.sleep(0.1)
    fail(f"the processor did not report {port!r} connected within {timeout:g}s; see `ensemble status`")


def _connect_error(port: str, before: dict[str, Any], now: dict[str, Any]) -> str:
    """The processor's reason why ``midi connect PORT`` failed, from its figures before and now ('' if none yet).

    Once ``midi_connects`` shows the request carried out, the newest error
    naming the port is its outcome, even one the same as an earlier attempt's.
    (A processor without that count: an error line that was not there before.)
    """
    named = [e for e in now.get("midi_errors_recent", []) if repr(port) in e]
    if "midi_connects" in now and "midi_connects" in before:
        return named[-1] if named and now["midi_connects"] > before["midi_connects"] else ""
    return next((e for e in reversed(named) if e not in before.get("midi_errors_recent", [])), "")

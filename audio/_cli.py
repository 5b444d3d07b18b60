"""The audio commands of ``ensemble``: notes, samples, devices (registered through the ``ensemble.cli`` entry point)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from actors.cli import client_of, fail
from audio.client import Client


def register(main: click.Group) -> None:
    """Add the audio commands to the ``ensemble`` group."""
    for cmd in (note, sample, devices):
        main.add_command(cmd)


@click.command()
@click.argument("note", type=click.IntRange(0, 127))
@click.option("--velocity", "-v", default=100, type=click.IntRange(1, 127), show_default=True, help="MIDI velocity.")
@click.option("--length", "-l", default=1.0, type=click.FloatRange(0, 3600), show_default=True, help="Seconds until note off.")
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
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
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

"""Live MIDI through a running daemon on JACK: list and connect sources, bind parameters, every message kind.

The MIDI source is a small JACK-Client MIDI output in the test process
(:class:`tests.audio.test_jack_backend.MidiSource`) or RtMidi's virtual port;
the daemon is driven through the real CLI.  Frame checks are relative to the
first event, never wall-clock.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audio import BackendUnavailable
from audio._midi_ports import alsa_sequencer_reason, rtmidi_module
from tests.audio.test_jack_backend import (  # noqa: F401 - fixtures are used by name
    RATE, MidiSource, Recording, _jack_daemon, _jack_lsp, _need, _processor, _start_private_server, _stop, jack_server,
    midi_source,
)
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.jack

NOWHERE = "none-such:nothing"  # a midi_in pattern that matches no port: connections come from `midi connect`


@pytest.mark.slow  # several seconds: a daemon on JACK, ports listed and connected live
def test_midi_list_and_connect_through_the_daemon(
    jack_server: None, make_daemon: Callable[..., Daemon], midi_source: MidiSource
) -> None:
    d, client = _jack_daemon(make_daemon, NOWHERE)
    port = midi_source.port.name
    listed = d.cli("midi", "list").stdout
    assert f"  jack\t{port}\n" in listed  # seen, not connected
    assert "connected" in d.cli("midi", "connect", port).stdout
    assert midi_source.port.is_connected_to(f"{client}:midi_in")
    assert f"* jack\t{port}\n" in d.cli("midi", "list").stdout
    assert port in _processor(d)["midi_sources"]
    midi_source.play([(0, bytes([0x90, 60, 100])), (2000, bytes([0x80, 60, 0]))])
    wait_for(lambda: _processor(d)["midi_events"] >= 2, what="the notes through the connection")
    listed_json = json.loads(d.cli("midi", "list", "--json").stdout)
    assert {"name": port, "via": "jack", "connected": True} in listed_json["ports"]
    bad = d.cli("midi", "connect", "no-such:port", "--via", "jack", check=False)
    assert bad.returncode != 0 and "no JACK MIDI output named 'no-such:port'" in bad.stderr
    bad = d.cli("midi", "connect", "no-such:port", check=False)  # auto: neither JACK nor ALSA has it, both say why
    assert bad.returncode != 0 and "no JACK MIDI output named 'no-such:port'" in bad.stderr
    assert "alsa" in bad.stderr.lower()  # "no alsa MIDI input matches", or why the ALSA sequencer cannot be used


BOUND_SCRIPT = """
from pathlib import Path
from controller.script import define_parameter

def seen(value):
    Path({out!r}).write_text(repr(value))

define_parameter("cutoff", "Cutoff", 500.0, 0.0, 1000.0, on_change=seen)
define_parameter("mode", "Mode", "soft", choices=["soft", "hard", "wild"])
"""


def _param(d: Daemon, name: str) -> Any:
    return next(p for p in d.client().params() if p.name == name)


def _scripted(make_daemon: Callable[..., Daemon], source: MidiSource, script: Path, text: str) -> Daemon:
    """A daemon on JACK taking MIDI from ``source``, with ``text`` written to ``script`` and loaded in both contexts."""
    script.write_text(text)
    d, client = _jack_daemon(make_daemon, source.port.name)
    wait_for(lambda: source.port.is_connected_to(f"{client}:midi_in"), what="the source connected")
    d.client().load_script(str(script))
    wait_for(lambda: _processor(d).get("script") == str(script), what="the script in the processor")
    return d


@pytest.mark.slow  # several seconds: a daemon on JACK, then down and up again
def test_param_bound_to_a_cc_moves_when_the_cc_arrives(
    jack_server: None, make_daemon: Callable[..., Daemon], midi_source: MidiSource, tmp_path: Path
) -> None:
    out = tmp_path / "on_change.txt"
    script = tmp_path / "bound.py"
    d = _scripted(make_daemon, midi_source, script, BOUND_SCRIPT.format(out=str(out)))
    wait_for(lambda: any(p.name == "cutoff" for p in d.client().params()), what="the script's parameters")
    assert "cutoff follows CC 74" in d.cli("param", "bind", "cutoff", "cc74").stdout
    d.cli("param", "bind", "mode", "75")
    wait_for(lambda: _processor(d).get("midi_bound_ccs") == [74, 75], what="the bindings in the processor")
    midi_source.play([(0, bytes([0xB0, 74, 127])), (100, bytes([0xB0, 75, 64]))])
    wait_for(lambda: json.loads(d.cli("param", "get", "cutoff").stdout) == 1000.0, what="CC 74 to move cutoff")
    wait_for(lambda: out.exists() and out.read_text() == "1000.0", what="on_change to run in the controller")
    wait_for(lambda: json.loads(d.cli("param", "get", "mode").stdout) == "hard", what="CC 75 to pick a choice")
    midi_source.play([(0, bytes([0xB0, 74, 0]))])
    wait_for(lambda: json.loads(d.cli("param", "get", "cutoff").stdout) == 0.0, what="CC 74 back to 0")
    refused = d.cli("param", "bind", "nothing", "cc1", check=False)
    assert refused.returncode != 0 and "no parameter named 'nothing'" in refused.stderr

    d.down()  # persisted with the parameter: a new daemon loading the script has the binding
    d.up()
    d.cli("load", str(script))
    wait_for(lambda: any(p.name == "cutoff" for p in d.client().params()), what="the parameters after restart")
    assert _param(d, "cutoff").cc == 74 and _param(d, "cutoff").value == 0.0
    assert "follows no controller" in d.cli("param", "unbind", "cutoff").stdout
    wait_for(lambda: _param(d, "cutoff").cc == -1, what="the binding gone")
    wait_for(lambda: _processor(d).get("midi_bound_ccs") == [75], what="the processor to forget CC 74")


EVERY_KIND_SCRIPT = """
import json
from controller.script import get_time

seen = []

def on_note(event):
    seen.append(["note", event.note, round(event.velocity, 4), get_time()])

def on_release(event):
    seen.append(["release", event.note, 0, get_time()])

def on_controller(event):
    seen.append(["controller", event.controller, round(event.value, 4), get_time()])
    if event.controller == 123:
        with open({out!r}, "w") as f:
            json.dump(seen, f)
"""


def test_every_midi_kind_reaches_the_script_at_its_frame(
    jack_server: None, make_daemon: Callable[..., Daemon], midi_source: MidiSource, tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    d = _scripted(make_daemon, midi_source, tmp_path / "every.py", EVERY_KIND_SCRIPT.format(out=str(out)))
    events = [
        (0, [0x90, 60, 127], ["note", 60, 1.0]), (300, [0xB0, 64, 127], ["controller", 64, 1.0]),
        (701, [0xE0, 0, 0], ["controller", 129, -1.0]), (1000, [0xD0, 127, 0], ["controller", 128, 1.0]),
        (1499, [0x80, 60, 0], ["release", 60, 0]), (2000, [0xB0, 64, 0], ["controller", 64, 0.0]),
        (2600, [0xB0, 120, 0], ["controller", 120, 0.0]), (3001, [0xB0, 123, 0], ["controller", 123, 0.0]),
    ]
    midi_source.play([(frame, bytes(data)) for frame, data, _ in events])
    seen = wait_for(lambda: out.exists() and json.loads(out.read_text() or "null"), what="the script's record")
    assert [s[:3] for s in seen] == [e for _, _, e in events]
    first_ms = seen[0][3]
    assert [round((s[3] - first_ms) * RATE / 1000) for s in seen] == [frame for frame, _, _ in events]
    assert _processor(d)["script_errors"] == 0


@pytest.mark.slow  # several seconds: jack_bufsize through three sizes
def test_buffer_size_changes_are_followed(make_daemon: Callable[..., Daemon]) -> None:
    _need("jackd", "jack_bufsize")
    server = f"ens-buf-{os.getpid()}"
    jackd = _start_private_server(server)
    env = dict(os.environ, JACK_DEFAULT_SERVER=server)
    try:
        d = make_daemon(workers=0, extra_env={"JACK_DEFAULT_SERVER": server, "ENSEMBLE_AUDIO_BACKEND": "jack",
                                              "ENSEMBLE_AUDIO_AUTOCONNECT": "false"})
        d.up()
        wait_for(lambda: _processor(d).get("jack_state") == "connected", what="the JACK backend")
        for size in (128, 512, 256):
            subprocess.run(["jack_bufsize", str(size)], env=env, check=True, capture_output=True, timeout=30)
            now = wait_for(lambda: (s := _processor(d))["blocksize"] == size and s, what=f"block size {size}")
            wait_for(lambda: _processor(d)["blocks"] > now["blocks"] + 20, what=f"blocks at {size} frames")
        stats = _processor(d)
        assert "block size 512 -> 256 frames" in stats["notice"]
        assert stats["jack_callback_errors"] == 0 and stats["jack_state"] == "connected"
        d.down()
    finally:
        _stop(jackd)


@pytest.fixture
def rtmidi_out() -> Iterator[Any]:
    """An RtMidi virtual output port on JACK (``ens-rt-PID:out``), or a skip saying why not."""
    try:
        rtmidi = rtmidi_module()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    if _jack_lsp() is None:
        pytest.skip("no JACK server running (jack_lsp failed)")
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"ens-rt-{os.getpid()}")
    out.open_virtual_port("out")
    try:
        yield out
    finally:
        out.close_port()
        out.delete()


def _listened(port: str) -> bool:
    """Whether anything is connected to ``port`` (``jack_lsp -c`` lists connections indented under it)."""
    result = subprocess.run(["jack_lsp", "-c", port], capture_output=True, text=True, timeout=10)
    return result.returncode == 0 and len(result.stdout.splitlines()) > 1


def _timed(d: Daemon) -> list[dict[str, Any]]:
    return list(_processor(d).get("midi_timed_inputs", []))


@pytest.mark.slow  # ~2.3 s
def test_rtmidi_input_is_timestamped_and_played(make_daemon: Callable[..., Daemon], rtmidi_out: Any) -> None:
    """The RtMidi path through the daemon, on RtMidi's JACK API (this VM has no ALSA sequencer).

    The processor runs on the null clock here: RtMidi's JACK API cannot share
    a process with the JACK backend (see ``Processor._connect_midi``).
    """
    d = make_daemon(workers=0)
    d.up()
    port = f"ens-rt-{os.getpid()}:out"
    assert "timestamped" in d.cli("midi", "connect", port, "--via", "rtmidi-jack").stdout
    rtmidi_out.send_message([0x90, 69, 100])
    wait_for(lambda: _processor(d)["peak_voices"] >= 1, what="the note through RtMidi to sound")
    rtmidi_out.send_message([0x80, 69, 0])
    timed = wait_for(lambda: (t := _timed(d)) and t[0]["received"] == 2 and t, what="the note off")
    assert timed[0]["dropped"] == 0 and timed[0]["late"] == 0 and timed[0]["via"] == "rtmidi-jack"
    assert _processor(d)["midi_events"] == 2
    assert f"* rtmidi-jack\t{port}" in d.cli("midi", "list").stdout


@pytest.mark.slow  # ~1.7 s
def test_rtmidi_jack_is_refused_beside_the_jack_backend(jack_server: None, make_daemon: Callable[..., Daemon],
                                                        rtmidi_out: Any) -> None:
    d, _ = _jack_daemon(make_daemon, NOWHERE)
    refused = d.cli("midi", "connect", f"ens-rt-{os.getpid()}:out", "--via", "rtmidi-jack", check=False)
    assert refused.returncode != 0 and "--via jack" in refused.stderr
    assert "connected" in d.cli("midi", "connect", f"ens-rt-{os.getpid()}:out").stdout  # the JACK way works


def test_alsa_sequencer_virtual_port(make_daemon: Callable[..., Daemon]) -> None:
    reason = alsa_sequencer_reason()
    if reason:
        pytest.skip(f"ALSA sequencer unavailable: {reason}")
    try:
        rtmidi = rtmidi_module()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    out = rtmidi.MidiOut(rtmidi.API_LINUX_ALSA, name=f"ens-alsa-{os.getpid()}")
    out.open_virtual_port("out")
    try:
        d = make_daemon(workers=0)
        d.up()
        d.cli("midi", "connect", f"ens-alsa-{os.getpid()}", "--via", "alsa")
        out.send_message([0x90, 60, 100])
        wait_for(lambda: _timed(d) and _timed(d)[0]["received"] >= 1, what="the note through ALSA")
        assert _processor(d)["midi_events"] >= 1
        d.down()
    finally:
        out.close_port()
        out.delete()

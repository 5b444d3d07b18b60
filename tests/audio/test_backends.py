"""Backends that run in real time: the null clock thread, and PortAudio on a JACK server."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audio import (
    BackendUnavailable,
    Engine,
    JackBackend,
    NullBackend,
    SoundDeviceBackend,
    builtin_sample,
    choose_backend,
    load_sounddevice,
)

ROOT = Path(__file__).resolve().parents[2]  # the repository, so `import audio` works


def test_null_backend_renders_in_real_time_and_stops_cleanly(wait_until: Callable[..., Any]) -> None:
    engine = Engine(48000, 256, 2)
    engine.set_buffer(0, builtin_sample(48000))
    gc_was_enabled = gc.isenabled()
    backend = NullBackend(engine)
    backend.start()
    try:
        assert backend.running and not gc.isenabled()
        engine.note_on(60)
        wait_until(lambda: engine.stats().peak_voices >= 1, what="the note to sound")
        wait_until(lambda: engine.stats().blocks >= 20, what="20 blocks")
    finally:
        backend.stop()
    thread_ended = not backend.running
    stats = engine.stats()
    assert thread_ended and gc.isenabled() == gc_was_enabled
    assert stats.blocks >= 20 and stats.timed_blocks >= 20 and stats.callback_p50_ms > 0
    assert backend.thread_policy.startswith("SCHED_FIFO") or backend.notice
    assert stats.xruns == 0 and stats.underflows == 0  # no device: a late clock is a slip, never an xrun
    blocks = stats.blocks
    assert engine.stats().blocks == blocks  # nothing renders after stop()
    backend.stop()  # a second stop is harmless


def test_null_backend_refuses_a_second_start() -> None:
    backend = NullBackend(Engine(48000, 256, 2), realtime=False)
    with backend:
        with pytest.raises(RuntimeError, match="already running"):
            backend.start()
    assert not backend.running


def test_kill_voices_and_call_pattern_on_a_running_backend(wait_until: Callable[..., Any]) -> None:
    engine = Engine(48000, 256, 2)
    engine.set_buffer(0, np.ones(480000, dtype=np.float32))
    with NullBackend(engine, realtime=False):
        engine.note_on(60)
        wait_until(lambda: engine.stats().active_voices == 1, what="a sounding voice")
        engine.suspend(fade_ms=5.0)
        engine.wait_silent(timeout=30.0)
        assert engine.stats().active_voices == 0
        engine.resume()
        assert not engine.silent


def test_choose_backend_null_and_bad_name() -> None:
    engine = Engine(48000, 256, 2)
    backend, notice = choose_backend(engine, "null")
    assert isinstance(backend, NullBackend) and notice == ""
    with pytest.raises(ValueError, match="backend must be"):
        choose_backend(engine, "pulse")


def test_choose_backend_auto_gives_a_backend_and_at_most_one_line() -> None:
    backend, notice = choose_backend(Engine(48000, 256, 2), "auto")
    try:
        assert "\n" not in notice
        if isinstance(backend, NullBackend):
            assert notice.endswith("using the null backend (no sound)")
        else:
            assert isinstance(backend, (JackBackend, SoundDeviceBackend)) and notice == ""
        if _jack_ports() is not None:
            assert isinstance(backend, JackBackend)  # a reachable JACK server comes first
    finally:
        backend.stop()  # a JACK backend holds the client the probe opened


def test_choose_backend_without_the_sounddevice_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` now fails
    monkeypatch.setitem(sys.modules, "jack", None)  # and JACK-Client too
    engine = Engine(48000, 256, 2)
    backend, notice = choose_backend(engine, "auto")
    assert isinstance(backend, NullBackend)
    assert "sounddevice is not installed" in notice and "\n" not in notice
    with pytest.raises(BackendUnavailable):
        choose_backend(engine, "sounddevice")
    with pytest.raises(BackendUnavailable, match="JACK-Client is not installed"):
        choose_backend(engine, "jack")


def test_import_and_choose_backend_without_the_portaudio_library() -> None:
    # A fresh interpreter in which the PortAudio library cannot be found:
    # `import sounddevice` raises OSError there, as on a machine without it.
    code = textwrap.dedent(
        """
        import ctypes.util
        ctypes.util.find_library = lambda name: None  # neither PortAudio nor libjack
        import audio
        backend, notice = audio.choose_backend(audio.Engine(48000, 256, 2))
        print(type(backend).__name__)
        print(notice)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    name, notice = result.stdout.splitlines()
    assert name == "NullBackend"
    assert notice.startswith("PortAudio library not found") and "libportaudio2" in notice


# -- real PortAudio through a JACK server -------------------------------------------


def _jack_ports() -> str | None:
    try:
        result = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


@pytest.mark.jack
def test_plays_through_portaudio_on_jack(wait_until: Callable[..., Any]) -> None:
    if _jack_ports() is None:
        pytest.skip("no JACK server running (jack_lsp failed); start one with: jackd -R -d dummy -r 48000 -p 256")
    try:
        sd = load_sounddevice()
    except BackendUnavailable as exc:
        pytest.skip(f"PortAudio cannot be loaded: {exc}")
    jack_devices = [
        d for d in sd.query_devices()
        if d["max_output_channels"] >= 2 and "JACK" in sd.query_hostapis(d["hostapi"])["name"]
    ]
    if not jack_devices:
        pytest.skip("PortAudio sees no JACK output device (built without JACK?)")
    device = jack_devices[0]
    samplerate = int(device["default_samplerate"])
    engine = Engine(samplerate, 256, 2)
    engine.set_buffer(0, builtin_sample(samplerate, 4.0))
    backend = SoundDeviceBackend(engine, device=device["index"])
    two_seconds = 2 * samplerate // 256
    with backend:
        assert backend.running and backend.host_api.startswith("JACK")
        for note in (48, 55, 60, 64, 67):
            engine.note_on(note, 0.5)
        wait_until(lambda: engine.stats().blocks >= two_seconds, timeout=60.0, what="2 s of blocks")
        ports = _jack_ports() or ""
    stats = engine.stats()
    client = backend.jack_client or ""
    print(
        f"\nJACK client {client!r} via {backend.host_api}, callback thread {backend.thread_policy}; "
        f"{stats.blocks} blocks, callback p50 {stats.callback_p50_ms:.3f} ms, "
        f"p99.9 {stats.callback_p999_ms:.3f} ms, max {stats.callback_max_ms:.3f} ms "
        f"(period {stats.period_ms:.3f} ms), deadline misses {stats.deadline_misses}, "
        f"underflows {stats.underflows}, xruns {stats.xruns}, peak voices {stats.peak_voices}"
    )
    assert client == "ensemble" or client.startswith("ensemble-")
    assert f"{client}:out_0" in ports.split() and f"{client}:out_1" in ports.split()
    assert not backend.running
    assert stats.blocks >= two_seconds and stats.timed_blocks > 0 and stats.callback_p50_ms > 0
    assert stats.peak_voices == 5

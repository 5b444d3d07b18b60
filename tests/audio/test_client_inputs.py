"""What the audio client, ``ensemble note`` and the processor refuse or report, through a real daemon.

Samples too loud to mix, numbers a client would have cut to an int, a note
length that would leave a note hanging, the registry entry ``upload_sample``
returns, and a processor whose backend cannot start.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from actors import OutOfRange
from audio import Engine
from audio._jack import JackBackend
from tests.conftest import Daemon, wait_for


def test_upload_sample_returns_its_registry_entry(daemon: Daemon) -> None:
    c = daemon.client()
    info = c.upload_sample(np.zeros((1000, 2), np.float32) + 0.1, "small", 48000, 60)
    listed = {i.name: i for i in c.samples()}["small"]
    assert (info.frames, info.channels) == (listed.frames, listed.channels) == (1000, 2)  # was 0 frames, 1 channel
    assert info == listed
    mono = c.upload_sample(np.zeros(480, np.float32), "mono", 44100)
    assert (mono.frames, mono.channels, mono.samplerate) == (480, 1, 44100)


def test_a_sample_beyond_a_thousand_is_refused_naming_why(daemon: Daemon) -> None:
    c = daemon.client()
    for peak in (3e38, -1001.0):
        data = np.full((480, 2), 0.1, np.float32)
        data[100, 1] = peak
        with pytest.raises(OutOfRange, match=r"beyond ±1000: float audio is nominally within ±1"):
            c.upload_sample(data, "huge", 48000)
    assert c.samples() == []
    c.upload_sample(np.full(480, -1000.0, np.float32), "loud", 48000)  # the bound itself is taken


def test_the_output_and_its_meter_stay_finite_whatever_the_mix() -> None:
    engine = Engine(48000, 64, 2, max_voices=8)
    # what no upload can do now (check_finite=False skips the checks): samples whose mix overflows float32
    engine.set_buffer(0, np.full(4800, 3e38, np.float32), check_finite=False)
    out = np.zeros((64, 2), np.float32)
    for note in (60, 61, 62, 63):
        engine.note_on(note, 1.0)
    for _ in range(4):
        engine.render(out)
        assert np.isfinite(out).all()
    stats = engine.stats()
    assert np.isfinite(stats.output_peak) and stats.silenced_blocks >= 1


def test_client_numbers_are_refused_not_cut_to_an_int(daemon: Daemon) -> None:
    c = daemon.client()
    with pytest.raises(OutOfRange, match=r"control_change\(74.5, 0.5\): controller is an int 0..127"):
        c.control_change(74.5, 0.5)  # was sent as 74
    with pytest.raises(OutOfRange, match=r"note_off\(60.5\): note is an int 0..127"):
        c.note_off(60.5)
    c.control_change(74, 0.5)
    wait_for(lambda: daemon.actor("processor").stats["blocks"] > 0, what="the processor to run")


def test_note_refuses_a_length_that_is_no_finite_number_before_it_plays(daemon: Daemon) -> None:
    before = daemon.actor("processor").stats["peak_voices"]
    for length in ("nan", "inf", "-1"):
        out = daemon.cli("note", "60", "--length", length, check=False)
        assert out.returncode == 2 and "0 to 3600 seconds" in out.stderr, out.stderr
    stats = daemon.actor("processor").stats
    assert stats["peak_voices"] == before and stats["active_voices"] == 0  # nothing was sent: no note hangs


def test_midi_connect_while_jack_is_away_says_so() -> None:
    from audio.processor import _not_on_jack  # (imports the processor module: not needed by the other tests)

    engine = Engine(48000, 64, 2)
    away = JackBackend(engine, reconnect_interval=1.0)
    away.state = "null-clock"  # as after JACK went away (the watcher's _fall_back)
    text = _not_on_jack(away, "jack")
    assert "JACK is away: the processor runs on the null clock until the JACK server is back" in text
    assert "not on JACK (backend 'jack')" not in text
    assert "no JACK client (backend 'null'" in _not_on_jack(object(), "null")


def test_a_processor_whose_backend_cannot_start_says_why(make_daemon: Any) -> None:
    d = make_daemon(extra_env={"ENSEMBLE_AUDIO_BACKEND": "jack", "JACK_DEFAULT_SERVER": f"ens-none-{os.getpid()}",
                               "ENSEMBLE_SUPERVISION_MAX_RESTARTS": "1",
                               "ENSEMBLE_SUPERVISION_RESTART_PERIOD": "120"})
    up = d.cli("up")  # exits 0: the daemon is up, and runs jobs; the processor failed
    d.pid = int((d.base / "run" / "daemon.pid").read_text())
    lines = [line for line in up.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and lines[0].startswith("ensemble: warning: processor failed: gave up:"), up.stderr
    assert "no JACK server reachable" in lines[0] and "backend = \"auto\"" in lines[0], up.stderr
    processor = d.actor("processor")
    assert processor.state == "failed"
    assert "no JACK server reachable" in processor.stats["notice"]  # `status --json`
    assert "no JACK server reachable" in processor.detail  # the table's row, where "gave up" alone said nothing

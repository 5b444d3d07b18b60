"""The processor actor in a running daemon: events, the sample registry, restarts, real PortAudio."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Daemon, pid_alive, wait_for


def _proc(d: Daemon) -> Any:
    return d.actor("processor")


def _segments(d: Daemon) -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith(f"ensemble.{d.config.shm_key}.")}


def test_note_plays_a_loaded_sample_from_shared_memory(daemon: Daemon) -> None:
    c = daemon.client()
    info = c.upload_sample(np.full((4800, 2), 0.25, dtype=np.float32), "flat", 48000)
    assert info.handle.name in _segments(daemon)
    assert [s.name for s in c.samples()] == ["flat"]
    wait_for(lambda: "flat" in _proc(daemon).stats["samples"], what="the processor to map the sample")
    c.note_on(60, 127)
    wait_for(lambda: _proc(daemon).stats["peak_voices"] >= 1, what="a voice to sound")
    c.note_off(60)
    wait_for(lambda: _proc(daemon).stats["active_voices"] == 0, what="the voice to end")


def test_replacing_and_dropping_samples_unlinks_their_segments(daemon: Daemon) -> None:
    c = daemon.client()
    first = c.upload_sample(np.zeros(1000, dtype=np.float32), "s", 48000)
    second = c.upload_sample(np.ones(2000, dtype=np.float32), "s", 48000)
    assert first.handle.name not in _segments(daemon)  # replaced: the registry let go of the old one
    assert second.handle.name in _segments(daemon)
    wait_for(lambda: "s" in _proc(daemon).stats["samples"], what="mapping")
    c.drop_sample("s")
    assert second.handle.name not in _segments(daemon)
    assert c.samples() == []
    with pytest.raises(Exception, match="no sample named"):
        c.drop_sample("s")
    with pytest.raises(Exception, match="no sample named"):
        c.note_on(60, sample="s")


def test_processor_kill_9_is_replaced_and_samples_are_mapped_again(daemon: Daemon) -> None:
    c = daemon.client()
    c.upload_sample(np.full(48000, 0.1, dtype=np.float32), "keep", 48000)
    c.note_on(60)
    old = _proc(daemon)
    workers = {a.name: a.pid for a in daemon.status().actors if a.role == "worker"}
    os.kill(old.pid, signal.SIGKILL)
    new = wait_for(lambda: (p := _proc(daemon)).pid != old.pid and p.state == "running" and p.stats and p, what="restart")
    assert new.restarts == 1
    wait_for(lambda: "keep" in _proc(daemon).stats["samples"], what="the restarted processor to map the registry")
    assert {a.name: a.pid for a in daemon.status().actors if a.role == "worker"} == workers  # siblings untouched
    assert not pid_alive(old.pid)
    assert c.submit("examples.jobs:add", 2, 3).result(30) == 5


@pytest.mark.slow  # a few seconds: the default suite stays near its 5 minutes
def test_segments_left_by_a_killed_daemon_are_swept_at_the_next_up(make_daemon: Any) -> None:
    d = make_daemon()
    d.up()
    c = d.client()
    info = c.upload_sample(np.ones(100, dtype=np.float32), "x", 48000)
    c.close()
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid), what="daemon death")
    assert info.handle.name in _segments(d)  # left behind by the kill
    d.up()
    assert info.handle.name not in _segments(d)
    d.down()


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_kill_voices_and_call_silences_the_processor_while_the_job_runs(daemon: Daemon) -> None:
    c = daemon.client()
    c.upload_sample(np.full(480000, 0.2, dtype=np.float32), "long", 48000)
    wait_for(lambda: "long" in _proc(daemon).stats["samples"], what="mapping")
    c.note_on(60)
    wait_for(lambda: _proc(daemon).stats["active_voices"] == 1, what="a voice")
    assert c.submit("tests.jobs:swap_while_silent", grace=5).result(30) is True
    wait_for(lambda: _proc(daemon).stats["active_voices"] == 0, what="the killed voice to stay gone")
    c.note_on(62)  # play resumed after the function ran
    wait_for(lambda: _proc(daemon).stats["active_voices"] == 1, what="play to resume")


def _jack_running() -> bool:
    try:
        return subprocess.run(["jack_lsp"], capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.mark.jack
def test_real_portaudio_stream_on_jack_plays_a_shared_memory_buffer(make_daemon: Any) -> None:
    if not _jack_running():
        pytest.skip("no JACK server running (jack_lsp failed); start one with: jackd -R -d dummy -r 48000 -p 256")
    d = make_daemon(extra_env={"ENSEMBLE_AUDIO_BACKEND": "sounddevice"})
    d.up()
    p = _proc(d)
    assert p.stats["backend"] == "sounddevice" and p.stats["jack_client"]
    ports = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10).stdout.split()
    assert f"{p.stats['jack_client']}:out_0" in ports
    c = d.client()
    c.upload_sample(np.full((96000, 2), 0.3, dtype=np.float32), "tone", 48000)
    wait_for(lambda: "tone" in _proc(d).stats["samples"], what="mapping")
    start = _proc(d).stats["blocks"]
    c.note_on(60)
    wait_for(lambda: _proc(d).stats["peak_voices"] >= 1, what="a voice on the real stream")
    stats = wait_for(lambda: (s := _proc(d).stats)["blocks"] >= start + 2 * 48000 // 256 and s, what="2 s of blocks")
    assert stats["callback_p50_ms"] > 0 and stats["callback_max_ms"] >= stats["callback_p99_ms"]
    assert "xruns" in stats and "deadline_misses" in stats

"""Samples the processor cannot play are refused to the uploader, and dropping a sample frees its slot."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from actors import DaemonError, OutOfRange, ProtocolError
from audio._buffers import SLOTS
from tests.audio.signals import make_engine, render_blocks
from tests.conftest import Daemon, wait_for

GOOD = np.full(480, 0.1, dtype=np.float32)


def _mapped(d: Daemon) -> list[str]:
    return list(d.actor("processor").stats["samples"])


def _segments(d: Daemon) -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith(f"ensemble.{d.config.shm_key}.")}


def test_a_sample_the_processor_would_refuse_is_refused_to_the_uploader(daemon: Daemon) -> None:
    c = daemon.client()
    bad = {
        "nansample": (np.array([0.1, np.nan, 0.2], dtype=np.float32), 60, "NaN or infinity"),
        "infsample": (np.array([[0.1, 0.1], [-np.inf, 0.0]], dtype=np.float32), 60, "NaN or infinity"),
        "rk200": (GOOD, 200, "root_key must be a MIDI key 0..127, got 200"),
        "rkmin": (GOOD, -2**63, "root_key must be a MIDI key 0..127"),
        "oneframe": (np.zeros(1, dtype=np.float32), 60, "at least 2 frames, got 1"),
        "nochannel": (np.zeros((100, 0), dtype=np.float32), 60, "shape"),
    }
    for name, (data, root_key, reason) in bad.items():
        with pytest.raises(OutOfRange, match=reason) as caught:
            c.upload_sample(data, name, 48000, root_key=root_key)
        assert f"sample {name!r} refused" in str(caught.value)
    assert c.samples() == []  # nothing listed ...
    assert not _segments(daemon)  # ... and no segment left behind by a refusal
    with pytest.raises(DaemonError, match="no sample named 'nansample'"):
        c.note_on(60, sample="nansample")
    c.upload_sample(GOOD, "fine", 48000, root_key=127)  # the daemon and the processor go on
    wait_for(lambda: _mapped(daemon) == ["fine"], what="the processor to map the good sample")
    log = (daemon.base / "state" / "daemon.log").read_text()
    assert "sample-map-failed" not in log  # the processor never saw a sample it had to refuse


def test_a_sample_name_with_a_control_character_is_refused(daemon: Daemon) -> None:
    """NUL, newline, ESC, DEL: `ensemble sample list` printed them raw (a NUL byte, a fake line); refused, and the
    refusal leaves no segment."""
    c = daemon.client()
    for name in ("a\x00b", "kick\nfake line", "\x1b[2Jclear", "del\x7f", "c1\x85"):
        with pytest.raises(ProtocolError, match="control character"):
            c.upload_sample(GOOD, name, 48000)
    assert c.samples() == [] and not _segments(daemon)
    c.upload_sample(GOOD, "kick-é ü", 48000)  # printable text of any script passes
    assert [s.name for s in c.samples()] == ["kick-é ü"]


def test_dropping_samples_frees_their_slots_for_new_names(daemon: Daemon) -> None:
    c = daemon.client()
    for i in range(SLOTS + 12):  # more distinct names than the engine has slots
        c.upload_sample(GOOD, f"s{i}", 48000)
        c.drop_sample(f"s{i}")
    c.upload_sample(GOOD, "last", 48000)
    wait_for(lambda: _mapped(daemon) == ["last"], timeout=15, what="the processor to map a sample after 140 drops")
    c.note_on(60, sample="last")
    wait_for(lambda: daemon.actor("processor").stats["peak_voices"] >= 1, what="the sample to play")
    assert "buffer slots are taken" not in (daemon.base / "state" / "daemon.log").read_text()


def test_a_full_sample_table_is_refused_to_the_uploader(daemon: Daemon) -> None:
    c = daemon.client()
    names = [f"k{i}" for i in range(SLOTS - 1)]  # the built-in sample holds the other slot
    for name in names:
        c.upload_sample(GOOD, name, 48000)
    with pytest.raises(DaemonError, match=f"all {SLOTS - 1} sample slots are taken"):
        c.upload_sample(GOOD, "one-too-many", 48000)
    assert "one-too-many" not in {s.name for s in c.samples()}
    c.upload_sample(np.ones(960, dtype=np.float32), names[0], 48000)  # replacing takes no new slot
    c.drop_sample(names[1])
    c.upload_sample(GOOD, "in-its-place", 48000)
    wait_for(lambda: "in-its-place" in _mapped(daemon) and len(_mapped(daemon)) == SLOTS - 1,
             what="the processor to map every registered sample")
    assert "buffer slots are taken" not in (daemon.base / "state" / "daemon.log").read_text()


def test_engine_bad_data_takes_no_slot_and_a_removed_name_frees_its_slot() -> None:
    engine = make_engine(max_slots=2)
    engine.set_buffer("a", np.ones(480, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        engine.set_buffer("bad", np.full(480, np.nan, dtype=np.float32))
    with pytest.raises(KeyError):
        engine.slot_index("bad")  # a refused buffer leaves no name holding a slot
    index = engine.set_buffer("b", np.full(480, 0.5, dtype=np.float32))
    with pytest.raises(OverflowError):
        engine.set_buffer("c", np.ones(480, dtype=np.float32))
    assert engine.remove_buffer("b") == index
    assert engine.set_buffer("c", np.full(480, 0.25, dtype=np.float32)) == index
    engine.note_on(60, 1.0, slot=index)
    out = render_blocks(engine, 1)
    assert np.allclose(out[8:64], 0.25)  # the new name's data plays from the freed slot

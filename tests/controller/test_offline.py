"""Scripts rendered offline: HALion's fade-all example, run_async latency in blocks, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

from controller.offline import parse_set, render_script

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples" / "instruments"
SR, BLOCK = 48000, 256


def _midi(path: Path, notes: list[int], hold_s: float) -> Path:
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))  # 120 bpm: 960 ticks per second
    for n in notes:
        track.append(mido.Message("note_on", note=n, velocity=100, time=0))
    ticks = int(hold_s * 960)
    for i, n in enumerate(notes):
        track.append(mido.Message("note_off", note=n, velocity=0, time=ticks if i == 0 else 0))
    mid.save(str(path))
    return path


def _steady_sample(path: Path) -> Path:
    t = np.arange(5 * SR) / SR
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * 261.63 * t)).astype(np.float32), SR, subtype="FLOAT")
    return path


def test_fade_all_fades_every_voice_over_the_given_time(tmp_path: Path) -> None:
    midi = _midi(tmp_path / "chord.mid", [48, 55, 60, 64], hold_s=3.0)
    out, errors = render_script(str(EXAMPLES / "fade_all.py"), out=tmp_path / "fade.wav", midi=midi, seconds=2.5,
                                sample=_steady_sample(tmp_path / "sine.wav"), sets=[parse_set("fade_voices=true@0.5")])
    assert errors == []
    audio, rate = sf.read(str(out), dtype="float32")
    assert rate == SR
    peak = np.abs(audio).max(axis=1)

    def window(a: float, b: float) -> float:
        return float(peak[int(a * SR):int(b * SR)].max())

    before = window(0.3, 0.5)
    assert before > 0.05
    middle = window(0.95, 1.05)  # half way through the one-second linear fade
    assert 0.35 * before < middle < 0.65 * before
    assert window(0.6, 0.7) > window(1.2, 1.3) > window(1.45, 1.5)
    fade_start_block = (int(0.5 * SR) // BLOCK + 1) * BLOCK  # run_sync: the next block after the change
    silent_from = fade_start_block + SR + 2 * BLOCK  # one second later, plus a block of slack each side
    assert np.count_nonzero(audio[silent_from:]) == 0, "voices must be killed at the end of the fade"
    assert window(1.3, 1.45) > 0, "the held notes sound until the fade ends"


def test_run_async_resumes_the_callback_in_a_later_block(tmp_path: Path) -> None:
    midi = _midi(tmp_path / "one.mid", [60], hold_s=0.5)
    out, errors = render_script(str(EXAMPLES / "key_colour.py"), out=tmp_path / "kc.wav", midi=midi, seconds=1.0)
    assert errors == []
    audio, _ = sf.read(str(out), dtype="float32")
    first = int(np.flatnonzero(np.abs(audio).max(axis=1))[0])
    assert first == BLOCK, f"the note should start at the next block boundary (frame {BLOCK}), started at {first}"


def test_script_render_is_bit_identical(tmp_path: Path) -> None:
    midi = _midi(tmp_path / "chord.mid", [60, 67], hold_s=1.0)
    a, _ = render_script(str(EXAMPLES / "arpeggiator.py"), out=tmp_path / "a.wav", midi=midi, seconds=1.5)
    b, _ = render_script(str(EXAMPLES / "arpeggiator.py"), out=tmp_path / "b.wav", midi=midi, seconds=1.5)
    assert a.read_bytes() == b.read_bytes()
    audio, _ = sf.read(str(a), dtype="float32")
    assert np.abs(audio).max() > 0.01


def test_run_sync_with_the_same_id_replaces_one_not_yet_run(tmp_path: Path) -> None:
    from audio import Engine
    from controller.offline import OfflineScriptHost

    engine = Engine(SR, BLOCK, 2)
    host = OfflineScriptHost(engine, str(ROOT / "tests" / "scripts" / "runsync.py"), tmp_path)
    try:
        host.ctrl.param_from_outside("fire", True)
        host.sync()  # the controller ran the callback; its run_sync calls reached the processor
        out = np.zeros((BLOCK, 2), dtype=np.float32)
        engine.render(out)  # the next block runs them
        assert host.proc.module.hits == ["second", "other"]
        assert host.errors == []
    finally:
        host.close()


def test_a_script_error_names_its_place_once() -> None:
    """A wrong-context error names where it was called; the place was added again after it."""
    from controller.messages import ScriptError

    loc = "/home/you/wrong.py:9 in on_note"
    wrong = ScriptError("Processor", "wrong-context", f"... it was called in: Processor at {loc}; call it ...", loc)
    plain = ScriptError("Processor", "error", "RuntimeError in on_note: boom", loc)
    assert wrong.where() == "" and plain.where() == f" ({loc})"
    assert ScriptError("Controller", "error", "boom").where() == ""


BUSY_NOTE = """
import time
def on_note(event):
    end = time.perf_counter() + 0.02  # 20 ms of a 5.33 ms block: past the 2.67 ms budget on any machine
    while time.perf_counter() < end:
        pass
"""


def test_overruns_go_to_on_overrun_and_errors_say_the_same_for_the_same_inputs(tmp_path: Path) -> None:
    """An overrun is the clock's report, so it was among the render's errors on a loaded machine and not otherwise."""
    script = tmp_path / "busy.py"
    script.write_text(BUSY_NOTE)
    midi = _midi(tmp_path / "one.mid", [60], hold_s=0.1)
    reports: list[str] = []
    _, errors = render_script(str(script), out=tmp_path / "a.wav", midi=midi, seconds=0.3, on_overrun=reports.append)
    assert errors == []
    assert len(reports) == 1 and reports[0].startswith("Processor overrun: script callbacks took "), reports
    assert re.search(r"\(budget 2\.67 ms\); the longest step: on_note, (\d+\.\d+) ms; 1 overrun\(s\) so far$",
                     reports[0]), reports  # where the time went: the step, and at least the 20 ms it spins
    assert float(re.findall(r"on_note, (\d+\.\d+) ms", reports[0])[0]) >= 20.0
    _, errors = render_script(str(script), out=tmp_path / "b.wav", midi=midi, seconds=0.3)  # on_overrun: none
    assert errors == []

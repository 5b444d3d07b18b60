"""A note carries its sample to the script: two notes in one block, two samples (the old race on a shared slot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from audio import Engine
from controller._processor_side import processor_host

SR, BLOCK = 48000, 256


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def put(self, msg: Any) -> None:
        self.sent.append(msg)


def _engine_with_two_samples() -> tuple[Engine, int, int]:
    engine = Engine(SR, BLOCK, 2, 16, "oldest")
    engine.set_buffer("builtin", np.zeros(SR, dtype=np.float32), SR, 60)
    engine.set_buffer("kick", np.full(SR, 0.25, dtype=np.float32), SR, 60)  # flat signals: easy to tell apart
    engine.set_buffer("snare", np.full(SR, 0.5, dtype=np.float32), SR, 60)
    return engine, engine.slot_index("kick"), engine.slot_index("snare")


def _render(engine: Engine, blocks: int = 2) -> None:
    out = np.zeros((BLOCK, 2), dtype=np.float32)
    for _ in range(blocks):
        engine.render(out)


def _playing_slots(engine: Engine) -> list[int]:
    active = engine._active  # noqa: SLF001 - the voice table is what this test is about
    return sorted(int(s) for s in engine._slot[: len(active)][active])  # noqa: SLF001


def test_on_note_plays_each_note_s_own_sample_within_one_block(tmp_path: Path) -> None:
    script = tmp_path / "echo.py"
    script.write_text("from controller.script import play_note\n\n"
                      "def on_note(event):\n    play_note(event.note, event.velocity)\n")
    engine, kick, snare = _engine_with_two_samples()
    host = processor_host(engine, _Outbox())
    engine.add_block_hook(host.block)
    host.load(str(script))
    _render(engine)  # on_init's block
    host.event("note_on", 60, 1.0, 0.0, None, kick)   # both arrive before the next block:
    host.event("note_on", 62, 1.0, 0.0, None, snare)  # the shared default slot used to make both the last one
    _render(engine)
    assert _playing_slots(engine) == sorted([kick, snare])


def test_without_on_note_the_note_plays_its_sample_not_the_default(tmp_path: Path) -> None:
    script = tmp_path / "quiet.py"
    script.write_text("def on_controller(event):\n    pass\n")  # a script, but no on_note
    engine, kick, snare = _engine_with_two_samples()
    host = processor_host(engine, _Outbox())
    engine.add_block_hook(host.block)
    host.load(str(script))
    _render(engine)
    host.default_slot_index = snare
    host.event("note_on", 60, 1.0, 0.0, None, kick)
    host.event("note_on", 64, 1.0, 0.0, None, None)  # no sample named: the default one
    _render(engine)
    assert _playing_slots(engine) == sorted([kick, snare])

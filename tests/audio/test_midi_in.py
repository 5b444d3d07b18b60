"""Live MIDI decoding: raw channel messages to engine events at their frame (no JACK needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from audio import ControlChange, MidiDecoder, NoteOff, NoteOn, PitchBend
from audio._midi_ports import ArrivalQueue

from .signals import first_nonzero, make_engine, render_blocks


def decoded(*messages: tuple[int, int, int, int]) -> tuple[list[tuple[Any, ...]], MidiDecoder]:
    seen: list[tuple[Any, ...]] = []
    decoder = MidiDecoder(make_engine(), lambda *args: seen.append(args))
    for status, d1, d2, at in messages:
        decoder.message(status, d1, d2, at)
    return seen, decoder


def test_channel_messages_become_events_on_every_channel() -> None:
    seen, decoder = decoded(
        (0x90, 60, 127, 10), (0x93, 62, 64, 11), (0x80, 60, 0, 12), (0x95, 62, 0, 13),
        (0xB0, 64, 127, 14), (0xE0, 0, 64, 15), (0xE0, 127, 127, 16), (0xE0, 0, 0, 17),
    )
    assert seen == [
        ("note_on", 60, 1.0, 0.0, 10), ("note_on", 62, pytest.approx(64 / 127), 0.0, 11),
        ("note_off", 60, 0.0, 0.0, 12), ("note_off", 62, 0.0, 0.0, 13),  # velocity 0 is a note off
        ("cc", 64, 0.0, 1.0, 14),
        ("pitch_bend", 0, 0.0, 0.0, 15), ("pitch_bend", 0, 0.0, 1.0, 16), ("pitch_bend", 0, 0.0, -1.0, 17),
    ]
    assert (decoder.events, decoder.ignored, decoder.dropped) == (8, 0, 0)


def test_channel_pressure_is_delivered_scaled() -> None:
    seen, decoder = decoded((0xD3, 127, 0, 5), (0xD0, 0, 0, 6))
    assert seen == [("pressure", 0, 0.0, 1.0, 5), ("pressure", 0, 0.0, 0.0, 6)] and decoder.events == 2


def test_messages_nobody_plays_are_counted_not_delivered() -> None:
    seen, decoder = decoded((0xC0, 5, 0, 0), (0xA0, 60, 10, 0), (0xF8, 0, 0, 0))
    assert seen == [] and decoder.ignored == 3


def test_default_delivery_plays_the_engine_at_the_exact_frame() -> None:
    engine = make_engine()
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    decoder = MidiDecoder(engine)
    decoder.message(0x90, 60, 127, 256 + 77)
    out = render_blocks(engine, 3)
    assert first_nonzero(out) == 256 + 77 and out[256 + 77, 0] == 1.0
    assert decoder.events == 1


def test_a_full_queue_or_a_bad_byte_is_dropped_and_counted() -> None:
    engine = make_engine(max_events=1)
    decoder = MidiDecoder(engine)
    decoder.message(0x90, 60, 100, 0)
    decoder.message(0x90, 61, 100, 0)  # the queue holds one event
    decoder.message(0x90, 200, 100, 0)  # not a MIDI note
    assert (decoder.events, decoder.dropped) == (1, 2)


def test_to_engine_builds_the_engine_events() -> None:
    posted: list[Any] = []
    engine = make_engine()
    engine.post = posted.append  # type: ignore[method-assign]
    decoder = MidiDecoder(engine)
    decoder.slot = 3
    for args in (("note_on", 64, 0.5, 0.0, 9), ("note_off", 64, 0.0, 0.0, 10), ("cc", 7, 0.0, 0.25, 11),
                 ("pitch_bend", 0, 0.0, -0.5, 12)):
        decoder.to_engine(*args)
    assert posted == [NoteOn(64, 0.5, 9, 3), NoteOff(note=64, at=10), ControlChange(7, 0.25, 11), PitchBend(-0.5, 12)]


PERIOD_NS = 256 * 1e9 / 48000  # one 256-frame block at 48 kHz


def placed(events: list[tuple[float, int]], hooks: list[float]) -> tuple[list[int], ArrivalQueue]:
    """Frames where messages stamped at ``events`` (ns, note) land when block hooks run at ``hooks`` (ns)."""
    seen: list[tuple[Any, ...]] = []
    engine = make_engine()
    queue = ArrivalQueue(engine, MidiDecoder(engine, lambda *a: seen.append(a)))
    pending = sorted(events)
    for block, now in enumerate(hooks):
        while pending and pending[0][0] <= now:
            stamp, note = pending.pop(0)
            queue.arrive(int(stamp), 0x90, note, 100)
        queue.block(block * 256, 256, int(now))
    return [a[4] for a in seen], queue


def test_arrivals_land_one_period_later_at_their_offset_whatever_the_hook_lateness() -> None:
    t0 = 1_000_000_000.0
    jitter = [0, 40_000, 3_000, 900_000, 10_000, 0, 250_000, 70_000]  # ns each hook ran after its block began
    hooks = [t0 + b * PERIOD_NS + j for b, j in enumerate(jitter)]
    arrivals = [(t0 + 1 * PERIOD_NS + 100 * PERIOD_NS / 256, 60),  # 100 frames into block 1
                (t0 + 2 * PERIOD_NS + 5 * PERIOD_NS / 256, 61),  # 5 frames into block 2
                (t0 + 5 * PERIOD_NS + 200 * PERIOD_NS / 256, 62)]  # 200 frames into block 5
    frames, queue = placed(arrivals, hooks)
    assert frames == [2 * 256 + 100, 3 * 256 + 5, 6 * 256 + 200]  # one period (256 frames) after arrival
    assert (queue.received, queue.late, queue.dropped) == (3, 0, 0)


def test_an_arrival_whose_slot_has_passed_plays_at_the_block_start_and_is_counted() -> None:
    t0 = 1_000_000_000.0
    hooks = [t0, t0 + PERIOD_NS, t0 + 2 * PERIOD_NS]
    frames, queue = placed([(t0 - 2 * PERIOD_NS, 60)], hooks)  # stamped two periods before the first block
    assert frames == [0] and queue.late == 1

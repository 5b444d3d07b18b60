"""The render core, driven block by block exactly as a backend drives it."""

from __future__ import annotations

import numpy as np
import pytest

from audio import ControlChange, Engine, Fade, KillAllVoices, NoteOff, NoteOn, PitchBend

from .signals import first_nonzero, make_engine, render_blocks

RAMP_FRAMES = 48000


def ramp() -> np.ndarray:
    """A rising ramp: sample i holds i / RAMP_FRAMES, so a read position is visible in the output."""
    return (np.arange(RAMP_FRAMES, dtype=np.float64) / RAMP_FRAMES).astype(np.float32)


# -- sample accuracy ----------------------------------------------------------


@pytest.mark.parametrize(
    ("blocksize", "block", "offset"),
    [(256, 0, 0), (256, 0, 1), (256, 3, 17), (256, 2, 255), (128, 1, 100), (64, 7, 63)],
)
def test_note_on_starts_on_its_exact_frame(blocksize: int, block: int, offset: int) -> None:
    engine = make_engine(blocksize=blocksize)
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    at = block * blocksize + offset
    engine.post(NoteOn(60, 1.0, at=at))
    out = render_blocks(engine, block + 3)
    assert first_nonzero(out) == at
    assert out[at, 0] == 1.0 and out[at, 1] == 1.0


def test_notes_in_one_block_each_start_on_their_frame(dc_engine: Engine) -> None:
    dc_engine.post(NoteOn(60, 0.25, at=256 + 10))
    dc_engine.post(NoteOn(64, 0.5, at=256 + 100))
    out = render_blocks(dc_engine, 3)[:, 0]
    assert np.all(out[: 256 + 10] == 0.0)
    assert np.all(out[256 + 10 : 256 + 100] == 0.25)
    assert np.all(out[256 + 100 :] == 0.75)


def test_late_event_plays_at_block_start_and_is_counted(dc_engine: Engine) -> None:
    render_blocks(dc_engine, 2)
    dc_engine.post(NoteOn(60, 1.0, at=100))  # frame 100 was rendered already
    out = render_blocks(dc_engine, 1)
    assert first_nonzero(out) == 0
    assert dc_engine.stats().late_events == 1


def test_event_without_time_plays_at_next_block_start_and_is_not_late(dc_engine: Engine) -> None:
    render_blocks(dc_engine, 1)
    dc_engine.note_on(60)
    out = render_blocks(dc_engine, 1)
    assert first_nonzero(out) == 0
    assert dc_engine.stats().late_events == 0


def test_events_for_later_blocks_wait_for_their_block(dc_engine: Engine) -> None:
    dc_engine.post(NoteOn(60, 1.0, at=5 * 256 + 3))
    dc_engine.post(NoteOn(60, 1.0, at=2 * 256 + 9))  # posted out of order
    out = render_blocks(dc_engine, 7)[:, 0]
    assert first_nonzero(out[:, None]) == 2 * 256 + 9
    assert out[5 * 256 + 2] == 1.0 and out[5 * 256 + 3] == 2.0


# -- envelopes and voice lifetime ---------------------------------------------


@pytest.mark.parametrize("attack_ms", [0.0, 10.0])
def test_release_ends_at_exactly_zero_and_frees_the_voice(attack_ms: float) -> None:
    engine = make_engine(attack_ms=attack_ms, release_ms=10.0)  # 480 frames
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    note_id = engine.note_on(60, 1.0, at=0)
    engine.release(note_id, at=1000)
    out = render_blocks(engine, 8)[:, 0]
    level_at_release = out[999]
    tail = out[1000:1479]
    expected = level_at_release * (1.0 - np.arange(1, 480) / 480.0)
    np.testing.assert_allclose(tail, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(tail) < 0)
    assert out[1479] == 0.0 and np.all(out[1479:] == 0.0)
    assert engine.stats().active_voices == 0


def test_voice_frees_itself_at_the_end_of_its_sample() -> None:
    engine = make_engine()
    engine.set_buffer(0, np.ones(1000, dtype=np.float32))
    engine.note_on(60, 1.0, at=0)
    out = render_blocks(engine, 6)[:, 0]
    assert np.all(out[:999] == 1.0) and np.all(out[999:] == 0.0)
    assert engine.stats().active_voices == 0


def test_a_steady_voice_sounds_the_same_beside_a_ramping_one() -> None:
    """Steady voices are weighted by one gain each, ramping ones per frame: both give the same samples.

    The neighbour plays silence from another slot while it fades, which puts
    every voice of the block on the per-frame path.
    """

    def play(fading_neighbour: bool) -> np.ndarray:
        engine = make_engine(attack_ms=2.0)
        engine.set_buffer(0, ramp(), root_key=60)
        engine.set_buffer(1, np.zeros(48000, dtype=np.float32))
        voice = engine.note_on(67, 0.7, at=0)
        engine.fade(voice, None, 0.5, duration_ms=0.0, at=0)  # a level set at once: steady, not 1.0
        if fading_neighbour:
            neighbour = engine.note_on(60, 1.0, at=0, slot=1)
            engine.fade(neighbour, None, 0.1, duration_ms=100.0, at=0)
        return render_blocks(engine, 12)

    alone = play(False)
    assert np.count_nonzero(alone[:, 0]) > 3000  # the voice sounds through every block
    np.testing.assert_array_equal(alone, play(True))


def test_attack_ramps_linearly_from_the_first_frame() -> None:
    engine = make_engine(attack_ms=1.0)  # 48 frames
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    engine.note_on(60, 1.0, at=0)
    out = render_blocks(engine, 1)[:, 0]
    np.testing.assert_allclose(out[:48], np.arange(1, 49) / 48.0, rtol=1e-6)
    assert np.all(out[48:] == 1.0)


# -- voice stealing -----------------------------------------------------------


@pytest.mark.parametrize(
    ("steal", "expected"),
    [("oldest", 0.1 + 0.2 + 0.8), ("quietest", 0.4 + 0.2 + 0.8), ("newest", 0.4 + 0.1 + 0.8), ("none", 0.4 + 0.1 + 0.2)],
)
def test_polyphony_limit_steals_per_policy(steal: str, expected: float) -> None:
    engine = make_engine(max_voices=3, steal=steal, steal_fade_ms=5.0)
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    for frame, velocity in ((0, 0.4), (10, 0.1), (20, 0.2), (30, 0.8)):
        engine.post(NoteOn(60, velocity, at=frame))
    out = render_blocks(engine, 4)[:, 0]
    assert out[30 + 240] == pytest.approx(expected, abs=1e-6)
    assert np.allclose(out[30 + 240 :], expected, atol=1e-6)
    stats = engine.stats()
    assert stats.stolen_voices == (0 if steal == "none" else 1)
    assert stats.refused_notes == (1 if steal == "none" else 0)
    assert stats.active_voices == 3


def test_stolen_voice_fades_out_without_a_click() -> None:
    engine = make_engine(max_voices=3, steal="oldest", steal_fade_ms=5.0)  # 240 frames
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    for frame, velocity in ((0, 0.4), (10, 0.1), (20, 0.2), (30, 0.8)):
        engine.post(NoteOn(60, velocity, at=frame))
    out = render_blocks(engine, 4)[:, 0]
    stolen = out[30 : 30 + 240] - (0.1 + 0.2 + 0.8)  # what is left of the oldest voice
    np.testing.assert_allclose(stolen, 0.4 * (1.0 - np.arange(1, 241) / 240.0), atol=1e-6)
    assert np.max(np.abs(np.diff(stolen))) < 0.4 / 240 + 1e-6


def test_hard_steal_when_every_spare_voice_is_still_fading() -> None:
    engine = make_engine(max_voices=1, steal_headroom=1)
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    for frame in (0, 1, 2):
        engine.post(NoteOn(60, 0.5, at=frame))
    out = render_blocks(engine, 3)[:, 0]
    stats = engine.stats()
    assert (stats.stolen_voices, stats.hard_steals, stats.active_voices) == (2, 1, 1)
    assert np.all(out[512:] == 0.5)


# -- pitch and channels -------------------------------------------------------


def test_an_octave_up_reads_two_frames_per_frame() -> None:
    engine = make_engine()
    engine.set_buffer(0, ramp(), root_key=60)
    engine.note_on(72, 1.0, at=0)
    out = render_blocks(engine, 4)[:, 0]
    np.testing.assert_array_equal(out, ramp()[0 : 2 * 1024 : 2])


def test_pitch_bend_bends_sounding_and_new_voices_from_its_frame() -> None:
    engine = make_engine(bend_range=12.0)  # full bend = an octave
    engine.set_buffer(0, ramp(), root_key=60)
    engine.note_on(60, 1.0, at=0)
    engine.post(PitchBend(1.0, at=256))
    engine.post(NoteOn(60, 1.0, at=512))  # a new voice starts bent too
    engine.post(PitchBend(0.0, at=768))
    out = render_blocks(engine, 4)[:, 0]
    first = np.concatenate([np.arange(256), 256 + 2 * np.arange(512), 1280 + np.arange(256)])
    second = np.concatenate([2 * np.arange(256), 512 + np.arange(256)])
    expected = ramp()[first].astype(np.float64)
    expected[512:] += ramp()[second]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_set_format_follows_a_new_block_size_and_rate_keeping_voices() -> None:
    engine = make_engine()
    engine.set_buffer(0, ramp(), root_key=60)
    engine.note_on(60, 1.0, at=0)
    head = render_blocks(engine, 1)[:, 0]
    engine.set_format(24000, 128)  # the server now runs at half the rate, half the block
    assert (engine.samplerate, engine.blocksize, engine.period_ns) == (24000, 128, pytest.approx(128e9 / 24000))
    tail = render_blocks(engine, 2)[:, 0]
    np.testing.assert_array_equal(head, ramp()[:256])
    np.testing.assert_allclose(tail, ramp()[256 : 256 + 2 * 256 : 2], rtol=1e-6)  # same pitch: 2 source frames per frame
    with pytest.raises(ValueError):
        engine.set_format(0, 128)


@pytest.mark.parametrize(("note", "buffer_rate"), [(67, 48000), (55, 48000), (60, 24000), (61, 44100)])
def test_resampling_interpolates_linearly(note: int, buffer_rate: int) -> None:
    engine = make_engine()
    engine.set_buffer(0, ramp(), samplerate=buffer_rate, root_key=60)
    engine.note_on(note, 1.0, at=0)
    out = render_blocks(engine, 8)[:, 0]
    rate = 2.0 ** ((note - 60) / 12.0) * buffer_rate / 48000
    expected = np.interp(np.arange(out.size) * rate, np.arange(RAMP_FRAMES), ramp())
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_stereo_buffer_keeps_its_channels_and_mono_feeds_all() -> None:
    engine = make_engine(channels=4)
    stereo = np.stack([np.full(4800, 0.25), np.full(4800, 0.5)], axis=1).astype(np.float32)
    engine.set_buffer(0, stereo)
    engine.set_buffer(1, np.full(4800, 0.125, dtype=np.float32))
    engine.note_on(60, 1.0, at=0)
    engine.post(NoteOn(60, 1.0, at=0, slot=1))
    out = render_blocks(engine, 1)
    np.testing.assert_array_equal(out[0], [0.375, 0.625, 0.375, 0.625])


# -- buffers ------------------------------------------------------------------


def test_buffer_swap_happens_at_a_block_boundary_and_hands_the_old_one_back() -> None:
    engine = make_engine()
    old = ramp()
    engine.set_buffer(0, old)
    engine.note_on(60, 1.0, at=0)
    first = render_blocks(engine, 2)[:, 0]
    np.testing.assert_array_equal(first, old[:512])
    assert len(engine.drain_retired()) == 0

    engine.set_buffer(0, ramp() * 2.0)
    assert engine.drain_retired() == []  # staged, not yet swapped: the callback still owns `old`
    after = render_blocks(engine, 1)[:, 0]
    np.testing.assert_allclose(after, 2.0 * old[512:768], rtol=1e-6)  # same position, new data

    retired = engine.drain_retired()
    assert len(retired) == 1 and np.shares_memory(retired[0].data, old)
    old[:] = np.nan  # any read of the old array from here on would show up as NaN
    rest = render_blocks(engine, 4)[:, 0]
    assert not np.isnan(rest).any()
    np.testing.assert_allclose(rest, 2.0 * ramp()[768 : 768 + 1024], rtol=1e-6)
    assert engine.stats().buffer_swaps == 2


def test_read_only_shared_view_is_played_without_a_copy() -> None:
    engine = make_engine()
    backing = np.ones(4800, dtype=np.float32)
    view = backing[:]
    view.flags.writeable = False
    engine.set_buffer("shm", view)
    slot = engine.slot_index("shm")
    engine.post(NoteOn(60, 1.0, at=0, slot=slot))
    out = render_blocks(engine, 1)
    assert np.all(out == 1.0)
    engine.set_buffer("shm", None)
    render_blocks(engine, 1)
    (retired,) = engine.drain_retired()
    assert retired.name == "shm" and np.shares_memory(retired.data, backing)


def test_voices_of_a_removed_buffer_are_dropped_and_counted(dc_engine: Engine) -> None:
    dc_engine.note_on(60)
    dc_engine.note_on(64)
    render_blocks(dc_engine, 1)
    dc_engine.set_buffer(0, None)
    out = render_blocks(dc_engine, 2)
    assert np.all(out == 0.0)
    stats = dc_engine.stats()
    assert stats.orphaned_voices == 2 and stats.active_voices == 0


def test_note_on_an_empty_slot_is_ignored_and_counted(dc_engine: Engine) -> None:
    dc_engine.post(NoteOn(60, 1.0, at=0, slot=5))
    out = render_blocks(dc_engine, 1)
    assert np.all(out == 0.0)
    assert dc_engine.stats().missing_buffer_notes == 1


@pytest.mark.parametrize(
    "data",
    [np.array([1.0, np.nan, 0.0], dtype=np.float32), np.ones((4, 2, 2), dtype=np.float32), np.ones(1, dtype=np.float32)],
)
def test_bad_sample_data_is_refused_before_the_callback_sees_it(data: np.ndarray) -> None:
    engine = make_engine()
    with pytest.raises(ValueError):
        engine.set_buffer(0, data)


# -- fades, kills, suspend, controllers ----------------------------------------


def test_fade_without_kill_holds_its_end_level(dc_engine: Engine) -> None:
    note_id = dc_engine.note_on(60, 1.0, at=0)
    dc_engine.post(Fade(note_id, None, 0.5, 10.0, at=100))  # 480 frames
    out = render_blocks(dc_engine, 4)[:, 0]
    np.testing.assert_allclose(out[100:580], 1.0 - 0.5 * np.arange(1, 481) / 480.0, rtol=1e-6)
    assert np.all(out[579:] == 0.5)
    assert dc_engine.stats().active_voices == 1


def test_fade_with_kill_frees_the_voice(dc_engine: Engine) -> None:
    note_id = dc_engine.note_on(60, 1.0, at=0)
    dc_engine.fade(note_id, 0.8, 0.0, 5.0, kill_at_end=True, at=256)  # jumps to 0.8, 240 frames
    out = render_blocks(dc_engine, 3)[:, 0]
    assert out[256] == pytest.approx(0.8 * (1 - 1 / 240), rel=1e-6)
    assert np.all(out[256 + 239 :] == 0.0)
    assert dc_engine.stats().active_voices == 0


def test_kill_all_voices_fades_everything_out(dc_engine: Engine) -> None:
    for note in (60, 64, 67):
        dc_engine.note_on(note, 0.3, at=0)
    dc_engine.post(KillAllVoices(5.0, at=300))
    out = render_blocks(dc_engine, 4)[:, 0]
    assert out[299] == pytest.approx(0.9, abs=1e-6)
    assert np.all(np.diff(out[300:540]) < 0) and np.all(out[539:] == 0.0)
    assert dc_engine.stats().active_voices == 0


def test_suspend_silences_refuses_notes_until_resumed(dc_engine: Engine) -> None:
    dc_engine.note_on(60)
    render_blocks(dc_engine, 1)
    dc_engine.suspend(fade_ms=2.0)
    assert not dc_engine.silent
    render_blocks(dc_engine, 1)
    assert dc_engine.silent
    dc_engine.note_on(62)
    assert np.all(render_blocks(dc_engine, 2) == 0.0)
    assert dc_engine.stats().suspended_notes == 1
    dc_engine.resume()
    assert not dc_engine.silent
    dc_engine.note_on(64)
    assert first_nonzero(render_blocks(dc_engine, 1)) == 0


def test_sustain_pedal_holds_released_notes_until_lifted() -> None:
    engine = make_engine(release_ms=1.0)
    engine.set_buffer(0, np.ones(48000, dtype=np.float32))
    engine.post(ControlChange(64, 1.0, at=0))
    engine.post(NoteOn(60, 1.0, at=0))
    engine.post(NoteOff(note=60, at=100))
    engine.post(ControlChange(64, 0.0, at=1000))
    out = render_blocks(engine, 5)[:, 0]
    assert np.all(out[:1000] == 1.0)
    assert np.all(out[1000 + 47 :] == 0.0)
    assert engine.cc(64) == 0.0


def test_volume_controller_ramps_over_one_block(dc_engine: Engine) -> None:
    dc_engine.note_on(60, 1.0, at=0)
    render_blocks(dc_engine, 1)
    dc_engine.control_change(7, 0.5)
    out = render_blocks(dc_engine, 2)[:, 0]
    np.testing.assert_allclose(out[:256], 1.0 - 0.5 * np.arange(1, 257) / 256, rtol=1e-6)
    assert np.all(out[256:] == 0.5)


# -- run_sync calls and block hooks --------------------------------------------


def test_post_call_runs_at_next_block_and_same_id_replaces(dc_engine: Engine) -> None:
    ran: list[tuple[str, int]] = []
    dc_engine.post_call(lambda x: ran.append(("a", x)), (1,), id="fade")
    dc_engine.post_call(lambda x: ran.append(("b", x)), (2,))
    dc_engine.post_call(lambda x: ran.append(("a", x)), (3,), id="fade")
    assert ran == []
    render_blocks(dc_engine, 1)
    assert ran == [("b", 2), ("a", 3)]
    dc_engine.post_call(lambda x: ran.append(("a", x)), (4,), id="fade")
    render_blocks(dc_engine, 1)
    assert ran[-1] == ("a", 4)


def test_block_hook_sees_each_block_and_its_events_land_exactly(dc_engine: Engine) -> None:
    seen: list[tuple[int, int]] = []

    def hook(start: int, frames: int) -> None:
        seen.append((start, frames))
        if start == 512:
            dc_engine.post(NoteOn(60, 1.0, at=start + 77))

    dc_engine.add_block_hook(hook)
    out = render_blocks(dc_engine, 3)
    assert seen == [(0, 256), (256, 256), (512, 256)]
    assert first_nonzero(out) == 512 + 77
    dc_engine.remove_block_hook(hook)
    render_blocks(dc_engine, 1)
    assert len(seen) == 3


def test_errors_in_calls_and_hooks_are_counted_and_audio_goes_on(dc_engine: Engine) -> None:
    def broken_hook(start: int, frames: int) -> None:
        raise RuntimeError("hook broke")

    dc_engine.add_block_hook(broken_hook)
    dc_engine.post_call(lambda: 1 / 0)
    dc_engine.note_on(60, 1.0, at=0)
    out = render_blocks(dc_engine, 2)
    assert np.all(out == 1.0)
    stats = dc_engine.stats()
    assert (stats.hook_errors, stats.call_errors) == (2, 1)
    assert stats.last_error == "RuntimeError: hook broke"


# -- queue, validation, stats ---------------------------------------------------


def test_full_event_queue_refuses_and_counts() -> None:
    engine = make_engine(max_events=4)
    for _ in range(4):
        engine.note_on(60)
    with pytest.raises(OverflowError, match="event queue full"):
        engine.note_on(60)
    assert engine.stats().dropped_events == 1


def test_note_ids_are_unique_and_returned_by_post(dc_engine: Engine) -> None:
    ids = [dc_engine.note_on(60) for _ in range(3)]
    posted = dc_engine.post(NoteOn(61))
    assert isinstance(posted, NoteOn)
    assert len(set(ids + [posted.note_id])) == 4 and min(ids) >= 1


@pytest.mark.parametrize(
    "build",
    [
        lambda: NoteOn(128),
        lambda: NoteOn(60, 1.5),
        lambda: NoteOn(60, at=-1),
        lambda: NoteOff(),
        lambda: NoteOff(note=60, note_id=3),
        lambda: ControlChange(7, 2.0),
        lambda: Fade(1, None, 0.5, -1.0),
        lambda: KillAllVoices(float("nan")),
    ],
)
def test_events_validate_their_fields(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        build()


def test_stats_count_blocks_and_time_the_callback(dc_engine: Engine) -> None:
    dc_engine.note_on(60)
    render_blocks(dc_engine, 10)
    stats = dc_engine.stats()
    assert (stats.blocks, stats.frames, stats.timed_blocks) == (10, 2560, 10)
    assert 0 < stats.callback_p50_ms <= stats.callback_p999_ms <= stats.callback_max_ms
    assert stats.peak_voices == 1 and stats.period_ms == pytest.approx(256 / 48)


def test_render_refuses_a_buffer_of_the_wrong_shape(dc_engine: Engine) -> None:
    with pytest.raises(ValueError, match="render needs out of shape"):
        dc_engine.render(np.zeros((512, 2), dtype=np.float32))


def test_short_final_block_is_rendered(dc_engine: Engine) -> None:
    dc_engine.post(NoteOn(60, 1.0, at=100))
    out = np.zeros((128, 2), dtype=np.float32)
    dc_engine.render(out)
    assert first_nonzero(out) == 100 and dc_engine.frame == 128


# -- output level ---------------------------------------------------------------


def test_output_peak_follows_the_loudest_sample_and_falls_20_db_a_second(dc_engine: Engine) -> None:
    assert dc_engine.stats().output_peak == 0.0  # silence
    dc_engine.post(NoteOn(60, 0.5, at=10))
    render_blocks(dc_engine, 2)
    assert dc_engine.stats().output_peak == pytest.approx(0.5)
    dc_engine.post(KillAllVoices(fade_ms=0.0))
    render_blocks(dc_engine, 48000 // 256)  # about one second of silence after the note
    level = dc_engine.stats().output_peak
    assert 0.04 < level < 0.06  # held, falling 20 dB in that second (0.5 -> 0.05)
    dc_engine.post(NoteOn(60, 1.0))
    render_blocks(dc_engine, 1)
    assert dc_engine.stats().output_peak == pytest.approx(1.0)  # a louder block raises it at once

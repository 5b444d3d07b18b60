# REALTIME CODE — read before editing.
#
# ``Engine.render`` is the audio callback body, and every method whose name
# starts with ``_rt_`` runs inside it.  That code:
#
# MAY   read and write the arrays preallocated in ``__init__`` (numpy ufuncs
#       with ``out=``, ``np.copyto(..., where=)``, ``np.take(..., out=)``),
#       pop from the deques the non-realtime side appends to (``deque.append``
#       and ``deque.popleft`` are atomic under the GIL: no lock is needed),
#       push/pop the pending-event heap it alone owns, run the ``post_call``
#       callables and block hooks (guarded: an exception is counted, kept in
#       ``last_error`` and never propagates), and call ``time.perf_counter_ns``.
# MAY NOT allocate arrays, take locks (no ``threading`` primitives, no
#       ``queue.Queue``), log or print, do I/O, sleep, wait, import, free a
#       sample buffer (old buffers go to the retired deque instead), or raise
#       for anything a user or a script can cause.
#
# CPython still creates small objects (floats, ints, array views) while the
# callback runs; they come from freelists and cost tens of nanoseconds.  What
# must never happen is an allocation proportional to block size or voice count.
#
# Voices are rendered all at once across the voice axis: each block segment
# costs about ten numpy operations over a ``[voices, frames]`` work area while
# every voice is steady (one gain per voice), about twenty while an envelope
# or fade ramps or a voice reaches its sample's end (a gain per voice and
# frame), no matter how many voices sound.  A Python loop per voice is too
# slow for a 128-frame block at 48 kHz; never add one.  The render's time is
# most of the callback's, and a longer callback meets more of the host's
# scheduling hiccups: measure it (audio/README.md, "Xruns and the GIL").

"""The realtime render core: one code path for every backend.

The non-realtime side talks to the callback only through four deques (events,
``post_call`` calls, buffer swaps in, retired buffers out), plain attribute
writes that are atomic under the GIL, and the copy-on-write block-hook tuple.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ._buffers import SLOTS, SampleBuffer
from ._events import ControlChange, Event, Fade, KillAllVoices, NoteOff, NoteOn, PitchBend, _check_midi

__all__ = ["Engine", "EngineStats", "STEAL_POLICIES"]

STEAL_POLICIES = ("oldest", "newest", "quietest", "none")
"""Voice-stealing policies: which sounding voice gives way at the polyphony limit
(``"none"``: the new note is refused and counted instead)."""

BlockHook = Callable[[int, int], None]

# Indices into the preallocated counter array.
_BLOCKS = 0
_FRAMES = 1
_DEADLINE_MISSES = 2
_LATE_EVENTS = 3
_DROPPED_EVENTS = 4
_XRUNS = 5
_PRIMING = 6
_STOLEN = 7
_HARD_STEALS = 8
_REFUSED = 9
_ORPHANED = 10
_MISSING_BUFFER = 11
_SUSPENDED_NOTES = 12
_CALL_ERRORS = 13
_HOOK_ERRORS = 14
_SWAPS = 15
_ACTIVE = 16
_PEAK = 17
_TIMED = 18  # blocks in the timing ring since the last reset_timing()
_UNDERFLOWS = 19
_CLOCK_SLIPS = 20
_SILENCED = 21  # blocks whose mix was not finite, sent as silence
_N_COUNTERS = 22

_NEVER = np.iinfo(np.int64).max

# Ramp steps are made this much steeper than exact, so that the clamp in
# `_rt_ramp` lands a ramp on its target exactly on its last frame instead of
# rounding leaving it 1e-17 short for one more frame.  The error it adds to a
# gain is 1e-9 relative: far below float32 resolution.
_OVERSHOOT = 1.0 + 1e-9


@dataclass(frozen=True, slots=True)
class _Suspend:
    """Internal: fade out, then refuse notes until :class:`_Resume`."""

    KIND: ClassVar[int] = 5
    token: int
    fade_ms: float
    at: None = None


@dataclass(frozen=True, slots=True)
class _Resume:
    """Internal: accept notes again."""

    KIND: ClassVar[int] = 6
    at: None = None


class _Queued:
    """An event waiting in the queue, ordered by (frame, post order)."""

    __slots__ = ("key", "seq", "event")

    def __init__(self, key: int, seq: int, event: Any) -> None:
        self.key = key
        self.seq = seq
        self.event = event

    def __lt__(self, other: _Queued) -> bool:
        return self.key < other.key or (self.key == other.key and self.seq < other.seq)


class _Call:
    """A ``post_call`` request: run ``fn(*args)`` at the next block start."""

    __slots__ = ("fn", "args", "id", "seq")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], id: Hashable | None, seq: int) -> None:
        self.fn = fn
        self.args = args
        self.id = id
        self.seq = seq


class _Installed:
    """A sample buffer plus what the callback needs about it, made off the audio thread."""

    __slots__ = ("buffer", "columns", "nexts", "routes", "last", "ratio", "root", "engine_rate")

    def __init__(self, buffer: SampleBuffer, engine_rate: int, out_channels: int) -> None:
        self.buffer = buffer
        self.columns = buffer.columns
        # column[1:]: indexed with a voice's read index it gives the next frame (clipped at the end as
        # index + 1 would be), so the callback interpolates without an index + 1 array
        self.nexts = tuple(column[1:] for column in buffer.columns)
        # Source channel c feeds every output channel o with o % channels == c;
        # a mono buffer feeds all outputs.
        self.routes = tuple(
            tuple(o for o in range(out_channels) if o % buffer.channels == c)
            for c in range(buffer.channels)
        )
        self.last = float(buffer.frames - 1)
        self.ratio = buffer.samplerate / engine_rate
        self.root = float(buffer.root_key)
        self.engine_rate = engine_rate

    def follow_rate(self, engine_rate: int) -> None:
        """Re-derive the playback ratio for a new engine rate (no allocation beyond a float)."""
        if engine_rate != self.engine_rate:
            self.ratio = self.buffer.samplerate / engine_rate
            self.engine_rate = engine_rate


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's counters and callback timing.

    Times are in milliseconds; ``load_*`` are the same times as a fraction of
    the block period (1.0 = the whole period).  Percentiles cover the last
    ``timed_blocks`` blocks (the ring buffer's size at most).

    Stream trouble is counted by kind (see :meth:`Engine.report_status`):
    ``xruns`` only what the audio server itself calls an xrun (JACK's xrun
    callback), ``underflows`` the backend's underflow / overflow flags,
    ``priming_blocks`` start-up priming, ``clock_slips`` the null clock
    falling behind.  The null backend never reports an xrun.
    """

    samplerate: int
    blocksize: int
    period_ms: float
    blocks: int
    frames: int
    timed_blocks: int
    callback_p50_ms: float
    callback_p99_ms: float
    callback_p999_ms: float
    callback_max_ms: float
    load_p50: float
    load_p99: float
    load_p999: float
    load_max: float
    deadline_misses: int
    active_voices: int
    peak_voices: int
    late_events: int
    dropped_events: int
    xruns: int
    underflows: int
    priming_blocks: int
    clock_slips: int
    stolen_voices: int
    hard_steals: int
    refused_notes: int
    orphaned_voices: int
    missing_buffer_notes: int
    suspended_notes: int
    call_errors: int
    hook_errors: int
    buffer_swaps: int
    last_error: str | None
    output_peak: float = 0.0  # the output's peak level (linear, 1.0 = full scale), held and falling 20 dB/s
    silenced_blocks: int = 0  # blocks whose mix held NaN or infinity, sent as silence instead (see render)


class Engine:
    """The sample player every backend drives: events in, audio blocks out.

    ``Engine(samplerate, blocksize, channels, max_voices=64, steal="oldest")``
    preallocates all voice state and work areas.  Without a script, a note on
    plays the buffer in slot 0 across the keyboard (root key from
    :meth:`set_buffer`, default 60), pitched by key with linear interpolation.

    Threads: :meth:`render` (and :meth:`report_status`) run on the audio
    thread only; every other method runs on the non-realtime side and is safe
    to call while the audio thread renders.  Call the non-realtime methods from
    one thread (or serialise them yourself): they are lock-free, not
    multi-producer safe for ``set_buffer`` name allocation.

    Voice stealing: ``max_voices`` voices may sound; at the limit, the voice the
    ``steal`` policy picks fades out over ``steal_fade_ms`` (no click) on one of
    ``steal_headroom`` extra physical voices while the new note starts at once.
    Only when every extra voice is itself still fading is the oldest fading
    voice cut dead (counted as a hard steal; that one may click).

    Raises :class:`ValueError` for a bad argument.
    """

    def __init__(
        self,
        samplerate: int = 48000,
        blocksize: int = 256,
        channels: int = 2,
        max_voices: int = 64,
        steal: str = "oldest",
        *,
        attack_ms: float = 2.0,
        release_ms: float = 100.0,
        steal_fade_ms: float = 5.0,
        steal_headroom: int | None = None,
        gain: float = 0.5,
        bend_range: float = 2.0,
        max_slots: int = SLOTS,
        max_events: int = 4096,
        stats_blocks: int = 8192,
    ) -> None:
        _check_positive("samplerate", samplerate)
        _check_positive("blocksize", blocksize)
        _check_positive("channels", channels)
        _check_positive("max_voices", max_voices)
        _check_positive("max_slots", max_slots)
        _check_positive("max_events", max_events)
        _check_positive("stats_blocks", stats_blocks)
        if steal not in STEAL_POLICIES:
            raise ValueError(f"steal must be one of {STEAL_POLICIES}, got {steal!r}")
        for name, value in (("attack_ms", attack_ms), ("release_ms", release_ms),
                            ("steal_fade_ms", steal_fade_ms), ("gain", gain), ("bend_range", bend_range)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        headroom = max(4, max_voices // 4) if steal_headroom is None else steal_headroom
        if headroom < 1:
            raise ValueError(f"steal_headroom must be >= 1, got {steal_headroom!r}")

        self.samplerate = samplerate
        self.blocksize = blocksize
        self.channels = channels
        self.max_voices = max_voices
        self.steal = steal
        self.gain = gain
        self._steal_code = STEAL_POLICIES.index(steal)
        self._ramp_ms = (attack_ms, release_ms, steal_fade_ms)
        self._set_rate_constants()
        self._max_slots = max_slots
        self._max_events = max_events

        self._alloc_voices(max_voices + headroom)
        self._alloc_work(max_voices + headroom, blocksize)
        self._alloc_queues()
        self._counters = np.zeros(_N_COUNTERS, dtype=np.int64)
        self._level = 0.0  # output peak level, held (see render)
        self._times = np.zeros(stats_blocks, dtype=np.int64)
        self._cc = np.zeros(128, dtype=np.float64)
        self._cc[7] = 1.0  # unity volume until a CC 7 says otherwise
        self._master_now = gain
        self._master_target = gain
        self._pedal = False
        self.bend_range = bend_range
        self._bend = 1.0  # playback-rate factor of the current pitch bend
        self._suspended = False
        self._suspend_token = 0  # non-realtime side writes
        self._suspend_applied = 0  # audio thread writes
        self._silent_token = -1  # audio thread writes
        self._frame = 0
        self._order = 0
        self._hi = 0  # voices [0, _hi) may be active
        self.last_error: BaseException | None = None

    def _set_rate_constants(self) -> None:
        samplerate = self.samplerate
        attack_ms, release_ms, steal_fade_ms = self._ramp_ms
        self.period_ns = self.blocksize * 1e9 / samplerate
        self._ns_per_frame = 1e9 / samplerate
        # Ramp lengths in frames, at least one (a zero-length ramp is a jump).
        self._attack_step = _OVERSHOOT / max(1.0, attack_ms * samplerate / 1000.0)
        self._release_frames = max(1.0, release_ms * samplerate / 1000.0)
        self._steal_frames = max(1.0, steal_fade_ms * samplerate / 1000.0)

    def _alloc_voices(self, voices: int) -> None:
        v = voices
        self._voices = v
        # Per-voice state, one entry per physical voice.
        self._active = np.zeros(v, dtype=bool)
        self._dying = np.zeros(v, dtype=bool)  # stolen or killed: fading to death, not counted
        self._releasing = np.zeros(v, dtype=bool)
        self._sustained = np.zeros(v, dtype=bool)  # note off arrived while the pedal was down
        self._fade_kill = np.zeros(v, dtype=bool)
        self._pos = np.zeros(v, dtype=np.float64)
        self._rate = np.zeros(v, dtype=np.float64)
        self._last = np.zeros(v, dtype=np.float64)
        self._vgain = np.zeros(v, dtype=np.float64)
        self._env = np.zeros(v, dtype=np.float64)
        self._env_step = np.zeros(v, dtype=np.float64)
        self._env_target = np.zeros(v, dtype=np.float64)
        self._fade = np.zeros(v, dtype=np.float64)
        self._fade_step = np.zeros(v, dtype=np.float64)
        self._fade_target = np.zeros(v, dtype=np.float64)
        self._slot = np.zeros(v, dtype=np.int64)
        self._note = np.zeros(v, dtype=np.int64)
        self._note_id = np.zeros(v, dtype=np.int64)
        self._start_order = np.zeros(v, dtype=np.int64)
        # What freeing a voice resets (the rest is set when a voice starts).
        self._free_table: tuple[tuple[npt.NDArray[Any], float], ...] = (
            (self._active, False), (self._dying, False), (self._releasing, False),
            (self._sustained, False), (self._fade_kill, False), (self._vgain, 0.0),
            (self._env, 0.0), (self._env_step, 0.0), (self._env_target, 0.0),
            (self._fade_step, 0.0), (self._rate, 0.0), (self._pos, 0.0),
        )
        # Per-voice scratch.
        self._t_a = np.zeros(v, dtype=np.float64)
        self._t_b = np.zeros(v, dtype=np.float64)
        self._t_i = np.zeros(v, dtype=np.int64)
        self._m_a = np.zeros(v, dtype=bool)
        self._m_b = np.zeros(v, dtype=bool)

    def _alloc_work(self, voices: int, frames: int) -> None:
        v, f = voices, frames
        # [voices, frames] work areas.
        self._w_pos = np.zeros((v, f), dtype=np.float64)
        self._w_idx = np.zeros((v, f), dtype=np.intp)
        self._w_frac = np.zeros((v, f), dtype=np.float32)
        self._w_env = np.zeros((v, f), dtype=np.float64)
        self._w_fade = np.zeros((v, f), dtype=np.float64)
        self._w_gain = np.zeros((v, f), dtype=np.float32)
        self._w_gain_slot = np.zeros((v, f), dtype=np.float32)
        self._g_voice = np.zeros(v, dtype=np.float32)  # steady gain per voice (no ramp in the segment)
        self._g_slot = np.zeros(v, dtype=np.float32)
        self._w_valid = np.zeros((v, f), dtype=bool)
        self._w_s0 = np.zeros((v, f), dtype=np.float32)
        self._w_s1 = np.zeros((v, f), dtype=np.float32)
        # Per-frame scratch.
        self._ramp0 = np.arange(f, dtype=np.float64)  # 0 .. f-1: read positions
        self._ramp1 = np.arange(1, f + 1, dtype=np.float64)  # 1 .. f: envelope values
        self._col = np.zeros(f, dtype=np.float32)
        self._gain_ramp = np.zeros(f, dtype=np.float64)

    def _alloc_queues(self) -> None:
        self._inbox: deque[_Queued] = deque()
        self._pending: list[_Queued] = []  # heap, audio thread only
        self._calls: deque[_Call] = deque()
        self._latest_call: dict[Hashable, int] = {}
        self._swaps: deque[tuple[int, _Installed | None]] = deque()
        self._retired: deque[SampleBuffer] = deque()
        self._slots: list[_Installed | None] = [None] * self._max_slots
        self._slot_names: dict[str, int] = {}
        self._slots_claimed: set[int] = set()
        self._hooks: tuple[BlockHook, ...] = ()
        self._ids = itertools.count(1)
        self._seqs = itertools.count()
        self._handlers: tuple[Callable[[Any], None], ...] = (
            self._rt_note_on, self._rt_note_off, self._rt_control_change,
            self._rt_fade, self._rt_kill_all, self._rt_suspend, self._rt_resume,
            self._rt_pitch_bend,
        )

    # ------------------------------------------------------------------
    # Non-realtime side: buffers
    # ------------------------------------------------------------------

    def set_buffer(
        self,
        slot: int | str,
        data: npt.ArrayLike | None,
        samplerate: int | None = None,
        root_key: int = 60,
        *,
        check_finite: bool = True,
    ) -> int:
        """Stage a sample for ``slot`` (an index, or a name given a free index).

        ``data`` is float32 ``[frames, channels]`` or ``[frames]`` and may be a
        read-only view of shared memory (it is not copied; other dtypes are
        converted once, here).  ``None`` empties the slot.  The callback swaps
        the new buffer in at the start of its next block; voices playing the
        slot go on reading the new data from their current position (re-pitched
        for its root key and rate), or are freed and counted if the slot was
        emptied.  The old buffer is then handed back through
        :meth:`drain_retired`, never freed by the callback.

        Context: non-realtime.  Cost: a validation pass over the data (see
        ``SampleBuffer.from_array``).  Returns the slot index.  Raises
        :class:`ValueError` for bad data or a slot out of range, and
        :class:`OverflowError` when every slot already has a name; either way
        no slot is taken.  A named slot stays named until
        :meth:`remove_buffer`.
        """
        if data is None:
            installed = None
        else:  # checked before a slot is resolved: bad data must not leave a name holding one
            name = slot if isinstance(slot, str) else None
            buffer = SampleBuffer.from_array(
                data, self.samplerate if samplerate is None else samplerate,
                root_key, name, check_finite=check_finite,
            )
            installed = _Installed(buffer, self.samplerate, self.channels)
        index = self._resolve_slot(slot)
        self._slots_claimed.add(index)
        self._swaps.append((index, installed))
        return index

    def _resolve_slot(self, slot: int | str) -> int:
        if isinstance(slot, str):
            if slot in self._slot_names:
                return self._slot_names[slot]
            free = next((i for i in range(self._max_slots) if i not in self._slots_claimed), None)
            if free is None:
                raise OverflowError(f"all {self._max_slots} buffer slots are taken; empty one or raise max_slots")
            self._slot_names[slot] = free
            return free
        if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self._max_slots:
            raise ValueError(f"slot must be a name or an int in 0..{self._max_slots - 1}, got {slot!r}")
        return int(slot)

    def remove_buffer(self, name: str) -> int:
        """Empty the slot named ``name`` and free it for another name; returns its index.

        The callback empties the slot at the start of its next block (voices
        playing it are freed and counted in ``orphaned_voices``; the buffer
        comes back through :meth:`drain_retired`).  A buffer staged for the
        index later, under any name, is installed after that, in order.

        Context: non-realtime.  Cost: O(1).  Raises :class:`KeyError` if no
        slot has that name.
        """
        index = self._slot_names.pop(name)
        self._slots_claimed.discard(index)
        self._swaps.append((index, None))
        return index

    def slot_index(self, name: str) -> int:
        """The slot index a buffer name was given.  Raises :class:`KeyError` if unknown."""
        return self._slot_names[name]

    def drain_retired(self) -> list[SampleBuffer]:
        """Take the buffers the callback has swapped out, for the caller to release.

        Context: non-realtime.  Cost: O(number retired).  Never raises.
        """
        out: list[SampleBuffer] = []
        while self._retired:
            out.append(self._retired.popleft())
        return out

    # ------------------------------------------------------------------
    # Non-realtime side: events and calls
    # ------------------------------------------------------------------

    def post(self, event: Event) -> Event:
        """Queue ``event`` for the callback; returns it (a note on with its ``note_id``).

        The callback applies it at frame ``event.at`` — at its exact offset in
        the block containing that frame — or at the start of the next block
        when ``at`` is ``None``.  An event whose frame has already been rendered
        plays at offset 0 of the next block and is counted in ``late_events``.

        Context: any thread, including block hooks on the audio thread
        (``deque.append`` is atomic under the GIL).  Cost: O(1), one small
        object.  Raises :class:`OverflowError` (and counts a dropped event) when
        ``max_events`` events are already waiting.
        """
        if len(self._inbox) + len(self._pending) >= self._max_events:
            self._counters[_DROPPED_EVENTS] += 1
            raise OverflowError(
                f"event queue full ({self._max_events} waiting); post fewer events "
                "ahead of time or raise max_events"
            )
        if type(event) is NoteOn:
            event = dataclasses.replace(event, note_id=next(self._ids))
        key = -1 if event.at is None else int(event.at)
        self._inbox.append(_Queued(key, next(self._seqs), event))
        return event

    def note_on(self, note: int, velocity: float = 1.0, at: int | None = None, slot: int = 0) -> int:
        """Post a :class:`NoteOn`; returns its note id.  Same contract as :meth:`post`."""
        posted = self.post(NoteOn(note, velocity, at, slot))
        assert isinstance(posted, NoteOn)
        return posted.note_id

    def release(self, note_id: int, at: int | None = None) -> None:
        """Post a :class:`NoteOff` for one note id.  Same contract as :meth:`post`."""
        self.post(NoteOff(note_id=note_id, at=at))

    def fade(
        self, note_id: int, start: float | None, end: float, duration_ms: float,
        kill_at_end: bool = False, at: int | None = None,
    ) -> None:
        """Post a :class:`Fade`.  Same contract as :meth:`post`."""
        self.post(Fade(note_id, start, end, duration_ms, kill_at_end, at))

    def control_change(self, controller: int, value: float, at: int | None = None) -> None:
        """Post a :class:`ControlChange`.  Same contract as :meth:`post`."""
        self.post(ControlChange(controller, value, at))

    def kill_all_voices(self, fade_ms: float = 10.0, at: int | None = None) -> None:
        """Post a :class:`KillAllVoices`.  Same contract as :meth:`post`."""
        self.post(KillAllVoices(fade_ms, at))

    def suspend(self, fade_ms: float = 10.0) -> None:
        """Fade out and free every voice, then stay silent until :meth:`resume`.

        Note ons that arrive while suspended are dropped and counted.  Poll
        :attr:`silent` (or call :meth:`wait_silent`) to learn when the last
        voice is gone — the moment ``kill_voices_and_call`` may run its
        function.  Context: non-realtime.  Raises :class:`OverflowError` when
        the event queue is full.
        """
        self._suspend_token += 1
        self._post_internal(_Suspend(self._suspend_token, float(fade_ms)))

    def resume(self) -> None:
        """Accept note ons again after :meth:`suspend`.  Context: non-realtime."""
        self._suspend_token += 1  # invalidates `silent` at once
        self._post_internal(_Resume())

    @property
    def silent(self) -> bool:
        """True once the latest :meth:`suspend` has taken effect and no voice sounds."""
        return self._silent_token == self._suspend_token

    def wait_silent(self, timeout: float) -> None:
        """Block until :attr:`silent`, polling every millisecond.

        Context: non-realtime; needs a backend that is rendering.  Raises
        :class:`TimeoutError` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.silent:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"voices still sounding {timeout} s after suspend(); is a backend rendering?"
                )
            time.sleep(0.001)

    def _post_internal(self, event: _Suspend | _Resume) -> None:
        if len(self._inbox) + len(self._pending) >= self._max_events:
            self._counters[_DROPPED_EVENTS] += 1
            raise OverflowError(f"event queue full ({self._max_events} waiting)")
        self._inbox.append(_Queued(-1, next(self._seqs), event))

    def post_call(self, fn: Callable[..., Any], args: tuple[Any, ...] = (), id: Hashable | None = None) -> None:
        """Run ``fn(*args)`` on the audio thread at the start of the next block (``run_sync``).

        A later call with the same ``id`` replaces one not yet run (the
        earlier one is skipped).  ``fn`` must obey the realtime rules at the
        top of this module; an exception it raises is counted in
        ``call_errors`` and kept in :attr:`last_error`.  Context: non-realtime.
        Cost: O(1).  Raises :class:`OverflowError` when ``max_events`` calls are
        already waiting.
        """
        if len(self._calls) >= self._max_events:
            raise OverflowError(f"call queue full ({self._max_events} waiting)")
        seq = next(self._seqs)
        if id is not None:
            self._latest_call[id] = seq
        self._calls.append(_Call(fn, tuple(args), id, seq))

    def add_block_hook(self, fn: BlockHook) -> None:
        """Call ``fn(block_start_frame, frames)`` at the start of every block.

        Hooks run on the audio thread after ``post_call`` calls and before the
        block's events are drained, so events they post for the block still
        land sample-accurately.  Same rules and error handling as
        :meth:`post_call`.  Context: non-realtime (copy-on-write, no lock).
        """
        self._hooks = self._hooks + (fn,)

    def remove_block_hook(self, fn: BlockHook) -> None:
        """Remove a hook added with :meth:`add_block_hook`.  Raises :class:`ValueError` if absent."""
        hooks = list(self._hooks)
        hooks.remove(fn)
        self._hooks = tuple(hooks)

    @property
    def frame(self) -> int:
        """The first frame of the next block: schedule ``at`` from here plus a margin."""
        return self._frame

    def cc(self, controller: int) -> float:
        """The last value of MIDI controller ``controller`` (0.0..1.0) the callback applied.

        Context: any (a script's callbacks on the audio thread read it).
        Raises :class:`ValueError` for a controller that is no int in 0..127,
        as :class:`ControlChange` does (-1 would read controller 127).
        """
        _check_midi("controller", controller)
        return float(self._cc[controller])

    # ------------------------------------------------------------------
    # Stats
    # ------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """Snapshot counters and callback-time percentiles.

        Context: non-realtime (safe while rendering; the snapshot may straddle
        one block).  Cost: copies and sorts the timing ring buffer.
        """
        counters = self._counters.copy()
        blocks = int(counters[_BLOCKS])
        n = min(int(counters[_TIMED]), self._times.size)
        times_ms = self._times[:n].astype(np.float64) / 1e6
        if n:
            p50, p99, p999 = np.percentile(times_ms, (50.0, 99.0, 99.9))
            tmax = float(times_ms.max())
        else:
            p50 = p99 = p999 = tmax = 0.0
        period_ms = self.period_ns / 1e6
        err = self.last_error
        return EngineStats(
            samplerate=self.samplerate, blocksize=self.blocksize, period_ms=period_ms,
            blocks=blocks, frames=int(counters[_FRAMES]), timed_blocks=n,
            callback_p50_ms=float(p50), callback_p99_ms=float(p99),
            callback_p999_ms=float(p999), callback_max_ms=tmax,
            load_p50=float(p50) / period_ms, load_p99=float(p99) / period_ms,
            load_p999=float(p999) / period_ms, load_max=tmax / period_ms,
            deadline_misses=int(counters[_DEADLINE_MISSES]),
            active_voices=int(counters[_ACTIVE]), peak_voices=int(counters[_PEAK]),
            late_events=int(counters[_LATE_EVENTS]), dropped_events=int(counters[_DROPPED_EVENTS]),
            xruns=int(counters[_XRUNS]), underflows=int(counters[_UNDERFLOWS]),
            priming_blocks=int(counters[_PRIMING]), clock_slips=int(counters[_CLOCK_SLIPS]),
            stolen_voices=int(counters[_STOLEN]), hard_steals=int(counters[_HARD_STEALS]),
            refused_notes=int(counters[_REFUSED]), orphaned_voices=int(counters[_ORPHANED]),
            missing_buffer_notes=int(counters[_MISSING_BUFFER]),
            suspended_notes=int(counters[_SUSPENDED_NOTES]),
            call_errors=int(counters[_CALL_ERRORS]), hook_errors=int(counters[_HOOK_ERRORS]),
            buffer_swaps=int(counters[_SWAPS]),
            last_error=None if err is None else f"{type(err).__name__}: {err}",
            output_peak=self._level, silenced_blocks=int(counters[_SILENCED]),
        )

    def reset_timing(self) -> None:
        """Forget recorded callback times and deadline misses (e.g. after warm-up).

        Context: non-realtime; while rendering, one block may be recorded twice
        or lost.  Counters other than timing are kept.
        """
        self._counters[_TIMED] = 0
        self._counters[_DEADLINE_MISSES] = 0

    def set_format(self, samplerate: int, blocksize: int) -> None:
        """Switch to another sample rate and/or block size, keeping voices, buffers and events.

        For a backend whose server changes format under it (JACK's sample-rate
        and buffer-size callbacks) or starts with another one than configured.
        A new block size reallocates the ``[voices, frames]`` work areas; a new
        rate re-pitches every buffer (and the voices playing it) for the new
        rate and recomputes the ramp lengths.  Timing statistics restart, since
        the period changed.  Events already scheduled keep their frame number.

        Context: non-realtime, and only while :meth:`render` cannot run: the
        backend is stopped, or the caller is JACK's buffer-size / sample-rate
        callback, which the server runs with the process cycle halted.  Cost:
        allocation of the work areas.  Raises :class:`ValueError` for a value
        that is not a positive int.
        """
        _check_positive("samplerate", samplerate)
        _check_positive("blocksize", blocksize)
        if blocksize != self.blocksize:
            self._alloc_work(self._voices, blocksize)
            self.blocksize = blocksize
        if samplerate != self.samplerate:
            self.samplerate = samplerate
            for index, installed in enumerate(self._slots):
                if installed is not None:
                    installed.follow_rate(samplerate)
                    self._rt_retarget(index, installed)
        self._set_rate_constants()
        self.reset_timing()

    # ------------------------------------------------------------------
    # Realtime side
    # ------------------------------------------------------------------

    def report_status(
        self, *, xrun: bool = False, underflow: bool = False, priming: bool = False, slip: bool = False,
    ) -> None:
        """Count what the backend saw about the stream; each kind has its own counter.

        * ``xrun``: the audio server says a cycle was missed (JACK's xrun
          callback).  The only thing ``EngineStats.xruns`` counts.
        * ``underflow``: the backend's own underflow / overflow flag
          (PortAudio's ``output_underflow`` / ``output_overflow``).
        * ``priming``: a block rendered to prime the device at start-up
          (PortAudio's ``priming_output``): not an xrun.
        * ``slip``: the null clock fell more than a block behind and restarted
          its schedule.  No device, so not an xrun either.

        Context: the audio thread, or one backend notification thread per
        kind (each counter has a single writer).  Cost: O(1).
        """
        counters = self._counters
        if xrun:
            counters[_XRUNS] += 1
        if underflow:
            counters[_UNDERFLOWS] += 1
        if priming:
            counters[_PRIMING] += 1
        if slip:
            counters[_CLOCK_SLIPS] += 1

    def render(self, out: npt.NDArray[np.float32]) -> None:
        """Fill ``out`` (``[frames, channels]`` float32, frames <= blocksize) with the next block.

        THE callback body.  At block start it installs staged buffers, runs
        ``post_call`` calls and block hooks, then applies every event due
        before the block's end at its exact frame offset, rendering the voices
        in segments between event offsets.

        Context: the audio thread only, one caller at a time.  Cost: about
        ten numpy operations over ``[active voice rows, segment frames]`` per
        segment while every voice is steady, twenty while any ramps; no array
        allocation, no lock, no I/O.  Raises
        :class:`ValueError` only for an ``out`` of the wrong shape (a backend
        bug, never a user action).
        """
        t0 = time.perf_counter_ns()
        frames = out.shape[0]
        if out.ndim != 2 or out.shape[1] != self.channels or not 0 < frames <= self.blocksize:
            raise ValueError(
                f"render needs out of shape [1..{self.blocksize}, {self.channels}], got {out.shape}"
            )
        out.fill(0.0)
        start = self._frame
        end = start + frames
        self._rt_pickup_swaps()
        self._rt_run_calls()
        self._rt_run_hooks(start, frames)
        inbox = self._inbox
        pending = self._pending
        while inbox:
            heapq.heappush(pending, inbox.popleft())
        cursor = 0
        while pending and pending[0].key < end:
            queued = heapq.heappop(pending)
            offset = queued.key - start
            if offset < 0:
                if queued.key >= 0:
                    self._counters[_LATE_EVENTS] += 1
                offset = 0
            if offset > cursor:
                self._rt_segment(out, cursor, offset)
                cursor = offset
            event = queued.event
            self._handlers[event.KIND](event)
        if cursor < frames:
            self._rt_segment(out, cursor, frames)
        self._rt_finish_block(out, frames)
        # output level for a meter: the block's peak, or the held peak falling 20 dB a second (two scalar
        # reductions over the block, no allocation)
        block = out[:frames]
        peak = max(float(block.max()), -float(block.min()))
        if not math.isfinite(peak):  # NaN or infinity (a mix that overflowed float32): never to the device or the
            block.fill(0.0)  # meter, where an inf would stay held for ever; the reductions above already tell, so
            peak = 0.0  # the check costs one comparison a block
            self._counters[_SILENCED] += 1
        held = self._level * 10.0 ** (-frames / self.samplerate)
        self._level = peak if peak > held else held
        self._frame = end
        elapsed = time.perf_counter_ns() - t0
        counters = self._counters
        timed = int(counters[_TIMED])
        self._times[timed % self._times.size] = elapsed
        counters[_TIMED] = timed + 1
        counters[_BLOCKS] += 1
        counters[_FRAMES] += frames
        if elapsed > frames * self._ns_per_frame:
            counters[_DEADLINE_MISSES] += 1

    def _rt_pickup_swaps(self) -> None:
        swaps = self._swaps
        while swaps:
            index, installed = swaps.popleft()
            if installed is not None:
                installed.follow_rate(self.samplerate)  # staged before a set_format()
            old = self._slots[index]
            self._slots[index] = installed
            if old is not None:
                self._retired.append(old.buffer)
            self._counters[_SWAPS] += 1
            self._rt_retarget(index, installed)

    def _rt_retarget(self, index: int, installed: _Installed | None) -> None:
        """Point the voices playing slot ``index`` at its new buffer (or free them)."""
        hi = self._hi
        if hi == 0:
            return
        mask = self._m_a[:hi]
        np.equal(self._slot[:hi], index, out=mask)
        np.logical_and(mask, self._active[:hi], out=mask)
        count = int(np.count_nonzero(mask))
        if count == 0:
            return
        if installed is None:
            self._counters[_ORPHANED] += count
            self._rt_free(mask)
            return
        rate = self._t_a[:hi]
        np.subtract(self._note[:hi], installed.root, out=rate)
        np.divide(rate, 12.0, out=rate)
        np.exp2(rate, out=rate)
        np.multiply(rate, installed.ratio * self._bend, out=rate)
        np.copyto(self._rate[:hi], rate, where=mask)
        np.copyto(self._last[:hi], installed.last, where=mask)

    def _rt_run_calls(self) -> None:
        calls = self._calls
        latest = self._latest_call
        while calls:
            call = calls.popleft()
            if call.id is not None and latest.get(call.id) != call.seq:
                continue  # replaced by a later call with the same id
            try:
                call.fn(*call.args)
            except Exception as exc:  # a user's callable must not stop the audio
                self._counters[_CALL_ERRORS] += 1
                self.last_error = exc

    def _rt_run_hooks(self, start: int, frames: int) -> None:
        for hook in self._hooks:
            try:
                hook(start, frames)
            except Exception as exc:  # a user's hook must not stop the audio
                self._counters[_HOOK_ERRORS] += 1
                self.last_error = exc

    def _rt_finish_block(self, out: npt.NDArray[np.float32], frames: int) -> None:
        """Apply the master gain (ramped over the block when it changed) and update counters."""
        now, target = self._master_now, self._master_target
        if now != target:
            ramp = self._gain_ramp[:frames]
            np.multiply(self._ramp1[:frames], (target - now) / frames, out=ramp)
            np.add(ramp, now, out=ramp)
            np.multiply(out, ramp[:, None], out=out, casting="same_kind")
            self._master_now = target
        elif now != 1.0:
            np.multiply(out, now, out=out, casting="same_kind")
        active = self._active
        if self._hi and not active[self._hi - 1]:
            if active.any():
                self._hi = self._voices - int(np.argmax(active[::-1]))
            else:
                self._hi = 0
        count = int(np.count_nonzero(active[: self._hi]))
        counters = self._counters
        counters[_ACTIVE] = count
        if count > counters[_PEAK]:
            counters[_PEAK] = count
        if self._suspended and count == 0:
            self._silent_token = self._suspend_applied

    # -- events --------------------------------------------------------

    def _rt_note_on(self, event: NoteOn) -> None:
        if self._suspended:
            self._counters[_SUSPENDED_NOTES] += 1
            return
        slot = event.slot
        installed = self._slots[slot] if slot < self._max_slots else None
        if installed is None:
            self._counters[_MISSING_BUFFER] += 1
            return
        v = self._rt_allocate()
        if v < 0:
            return
        self._active[v] = True
        self._dying[v] = False
        self._releasing[v] = False
        self._sustained[v] = False
        self._fade_kill[v] = False
        self._pos[v] = 0.0
        self._rate[v] = installed.ratio * self._bend * 2.0 ** ((event.note - installed.root) / 12.0)
        self._last[v] = installed.last
        self._vgain[v] = event.velocity
        self._env[v] = 0.0
        self._env_step[v] = self._attack_step
        self._env_target[v] = 1.0
        self._fade[v] = 1.0
        self._fade_step[v] = 0.0
        self._fade_target[v] = 1.0
        self._slot[v] = slot
        self._note[v] = event.note
        self._note_id[v] = event.note_id
        self._start_order[v] = self._order
        self._order += 1
        if v >= self._hi:
            self._hi = v + 1

    def _rt_allocate(self) -> int:
        """Index of a free physical voice, stealing per policy; -1 if the note is refused."""
        counted = self._m_a
        np.logical_not(self._dying, out=counted)
        np.logical_and(counted, self._active, out=counted)
        if np.count_nonzero(counted) >= self.max_voices:
            if self._steal_code == 3:  # "none"
                self._counters[_REFUSED] += 1
                return -1
            victim = self._rt_pick_victim(counted)
            self._rt_start_fade(victim, 0.0, self._steal_frames)
            self._dying[victim] = True
            self._counters[_STOLEN] += 1
        free = int(np.argmin(self._active))
        if not self._active[free]:
            return free
        # Every extra voice is still fading out: cut the oldest fading one.
        order = self._t_i
        np.copyto(order, self._start_order)
        np.logical_not(self._dying, out=self._m_b)
        np.copyto(order, _NEVER, where=self._m_b)
        victim = int(np.argmin(order))
        self._counters[_HARD_STEALS] += 1
        mask = self._m_b
        mask.fill(False)
        mask[victim] = True
        self._rt_free(mask)
        return victim

    def _rt_pick_victim(self, counted: npt.NDArray[np.bool_]) -> int:
        not_counted = self._m_b
        np.logical_not(counted, out=not_counted)
        code = self._steal_code
        if code == 2:  # "quietest"
            level = self._t_a
            np.multiply(self._vgain, self._env, out=level)
            np.multiply(level, self._fade, out=level)
            np.copyto(level, np.inf, where=not_counted)
            return int(np.argmin(level))
        order = self._t_i
        np.copyto(order, self._start_order)
        if code == 0:  # "oldest"
            np.copyto(order, _NEVER, where=not_counted)
            return int(np.argmin(order))
        np.copyto(order, -1, where=not_counted)  # "newest"
        return int(np.argmax(order))

    def _rt_start_fade(self, v: int, end: float, frames: float) -> None:
        self._fade_target[v] = end
        self._fade_step[v] = (end - self._fade[v]) * _OVERSHOOT / frames
        self._fade_kill[v] = True

    def _rt_note_off(self, event: NoteOff) -> None:
        hi = self._hi
        if hi == 0:
            return
        mask = self._m_a[:hi]
        if event.note_id is not None:
            np.equal(self._note_id[:hi], event.note_id, out=mask)
        elif event.note is not None:
            np.equal(self._note[:hi], event.note, out=mask)
        else:  # NoteOff validates that one of the two is set
            return
        np.logical_and(mask, self._active[:hi], out=mask)
        self._rt_release(mask, hi)

    def _rt_release(self, mask: npt.NDArray[np.bool_], hi: int) -> None:
        """Start the release ramp of the voices in ``mask`` (or hold them for the pedal)."""
        np.logical_and(mask, np.logical_not(self._releasing[:hi], out=self._m_b[:hi]), out=mask)
        if self._pedal:
            np.logical_or(self._sustained[:hi], mask, out=self._sustained[:hi])
            return
        step = self._t_a[:hi]
        np.multiply(self._env[:hi], -_OVERSHOOT / self._release_frames, out=step)
        np.copyto(self._env_step[:hi], step, where=mask)
        np.copyto(self._env_target[:hi], 0.0, where=mask)
        np.copyto(self._releasing[:hi], True, where=mask)
        np.copyto(self._sustained[:hi], False, where=mask)

    def _rt_control_change(self, event: ControlChange) -> None:
        controller, value = event.controller, event.value
        self._cc[controller] = value
        if controller == 7:
            self._master_target = self.gain * value
        elif controller == 64:
            down = value >= 0.5
            if self._pedal and not down:
                self._pedal = False
                hi = self._hi
                if hi:
                    mask = self._m_a[:hi]
                    np.logical_and(self._sustained[:hi], self._active[:hi], out=mask)
                    self._rt_release(mask, hi)
            self._pedal = down
        elif controller == 120:
            self._rt_kill_mask_all(self._steal_frames)
        elif controller == 123 and self._hi:
            hi = self._hi
            mask = self._m_a[:hi]
            np.copyto(mask, self._active[:hi])
            self._rt_release(mask, hi)

    def _rt_pitch_bend(self, event: PitchBend) -> None:
        bend = 2.0 ** (event.value * self.bend_range / 12.0)
        hi = self._hi
        if hi:
            rate = self._rate[:hi]
            np.multiply(rate, bend / self._bend, out=rate)  # free voices hold rate 0: unchanged
        self._bend = bend

    def _rt_fade(self, event: Fade) -> None:
        hi = self._hi
        if hi == 0:
            return
        mask = self._m_a[:hi]
        np.equal(self._note_id[:hi], event.note_id, out=mask)
        np.logical_and(mask, self._active[:hi], out=mask)
        np.logical_and(mask, np.logical_not(self._dying[:hi], out=self._m_b[:hi]), out=mask)
        if not mask.any():
            return
        fade = self._fade[:hi]
        if event.start is not None:
            np.copyto(fade, event.start, where=mask)
        frames = event.duration_ms * self.samplerate / 1000.0
        if frames < 1.0:
            np.copyto(fade, event.end, where=mask)
            np.copyto(self._fade_step[:hi], 0.0, where=mask)
            np.copyto(self._fade_target[:hi], event.end, where=mask)
            if event.kill_at_end:
                self._rt_free(mask)
            return
        step = self._t_a[:hi]
        np.subtract(event.end, fade, out=step)
        np.multiply(step, _OVERSHOOT / frames, out=step)
        np.copyto(self._fade_step[:hi], step, where=mask)
        np.copyto(self._fade_target[:hi], event.end, where=mask)
        np.copyto(self._fade_kill[:hi], event.kill_at_end, where=mask)

    def _rt_kill_all(self, event: KillAllVoices) -> None:
        self._rt_kill_mask_all(event.fade_ms * self.samplerate / 1000.0)

    def _rt_kill_mask_all(self, frames: float) -> None:
        hi = self._hi
        if hi == 0:
            return
        active = self._active[:hi]
        if frames < 1.0:
            self._rt_free(self._rt_copy_mask(active, hi))
            return
        mask = self._m_a[:hi]
        np.logical_not(self._dying[:hi], out=mask)
        np.logical_and(mask, active, out=mask)
        step = self._t_a[:hi]
        np.multiply(self._fade[:hi], -_OVERSHOOT / frames, out=step)
        np.copyto(self._fade_step[:hi], step, where=mask)
        np.copyto(self._fade_target[:hi], 0.0, where=mask)
        np.copyto(self._fade_kill[:hi], True, where=mask)
        np.copyto(self._dying[:hi], True, where=mask)

    def _rt_copy_mask(self, source: npt.NDArray[np.bool_], hi: int) -> npt.NDArray[np.bool_]:
        mask = self._m_a[:hi]
        np.copyto(mask, source)
        return mask

    def _rt_suspend(self, event: _Suspend) -> None:
        self._suspended = True
        self._suspend_applied = event.token
        self._rt_kill_mask_all(event.fade_ms * self.samplerate / 1000.0)

    def _rt_resume(self, event: _Resume) -> None:
        self._suspended = False

    def _rt_free(self, mask: npt.NDArray[np.bool_]) -> None:
        """Silence and free the voices in ``mask`` (a view of length <= voices)."""
        n = mask.shape[0]
        for array, value in self._free_table:
            np.copyto(array[:n], value, where=mask)

    # -- rendering -----------------------------------------------------

    def _rt_segment(self, out: npt.NDArray[np.float32], a: int, b: int) -> None:
        """Render frames ``[a, b)`` of the block for all voices at once and mix into ``out``.

        Steady voices (no envelope or fade ramping, none reaching its sample's
        end in the segment: the common case) are weighted by one gain per
        voice; otherwise the gain is computed per voice and frame.  Both give
        the same samples for a steady voice.
        """
        hi = self._hi
        if hi == 0:
            return
        n = b - a
        pos = self._w_pos[:hi, :n]
        np.multiply(self._rate[:hi, None], self._ramp0[:n], out=pos)
        np.add(pos, self._pos[:hi, None], out=pos)
        gain = self._rt_gains(hi, n, pos)
        idx = self._w_idx[:hi, :n]
        np.copyto(idx, pos, casting="unsafe")  # truncation is floor: positions are >= 0
        frac = self._w_frac[:hi, :n]
        np.subtract(pos, idx, out=frac, casting="same_kind")
        self._rt_mix_slots(out, a, b, hi, gain, idx, frac)
        self._rt_advance(hi, n)

    def _rt_gains(self, hi: int, n: int, pos: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """Gain per voice (``[hi]``, steady voices) or per voice and frame (``[hi, n]``).

        Velocity x envelope x fade, stepping the ramps, and zero past each
        sample's end.
        """
        scale = self._t_a[:hi]
        ending = self._m_b[:hi]
        np.greater_equal(pos[:, n - 1], self._last[:hi], out=ending)  # a read position runs off the end
        np.logical_and(ending, self._active[:hi], out=ending)
        fading = bool(np.count_nonzero(self._fade_step[:hi]))
        if not fading and not np.count_nonzero(self._env_step[:hi]) and not ending.any():
            g = self._g_voice[:hi]
            np.multiply(self._vgain[:hi], self._fade[:hi], out=scale)
            np.multiply(self._env[:hi], scale, out=g, casting="same_kind")
            return g
        env = self._env[:hi]
        ramp = self._w_env[:hi, :n]
        self._rt_ramp(ramp, env, self._env_step[:hi], self._env_target[:hi], n)
        gain = self._w_gain[:hi, :n]
        if fading:
            fade_ramp = self._w_fade[:hi, :n]
            self._rt_ramp(fade_ramp, self._fade[:hi], self._fade_step[:hi], self._fade_target[:hi], n)
            np.multiply(ramp, fade_ramp, out=ramp)
            np.multiply(ramp, self._vgain[:hi, None], out=gain, casting="same_kind")
        else:
            np.multiply(self._vgain[:hi], self._fade[:hi], out=scale)
            np.multiply(ramp, scale[:, None], out=gain, casting="same_kind")
        valid = self._w_valid[:hi, :n]
        np.less(pos, self._last[:hi, None], out=valid)
        np.multiply(gain, valid, out=gain)
        return gain

    def _rt_ramp(
        self, ramp: npt.NDArray[np.float64], level: npt.NDArray[np.float64],
        step: npt.NDArray[np.float64], target: npt.NDArray[np.float64], n: int,
    ) -> None:
        """Linear ramp from ``level`` by ``step`` per frame, clamped at ``target``; updates ``level``.

        Frame t holds ``level + step * (t + 1)``: a voice starting with level 0
        is audible on its first frame.  Clamping makes the ramp land exactly on
        its target (a release ends at exactly 0.0).
        """
        hi = level.shape[0]
        lo = self._t_b[:hi]
        np.minimum(level, target, out=lo)
        np.multiply(step[:, None], self._ramp1[:n], out=ramp)
        np.add(ramp, level[:, None], out=ramp)
        np.maximum(ramp, lo[:, None], out=ramp)  # np.clip, as two ufuncs (np.clip's wrapper costs more)
        np.maximum(level, target, out=lo)
        np.minimum(ramp, lo[:, None], out=ramp)
        np.copyto(level, ramp[:, n - 1])

    def _rt_mix_slots(
        self, out: npt.NDArray[np.float32], a: int, b: int, hi: int,
        gain: npt.NDArray[np.float32], idx: npt.NDArray[np.intp], frac: npt.NDArray[np.float32],
    ) -> None:
        """Gather, interpolate and sum the voices of each buffer slot in use."""
        slots = self._slot[:hi]
        active = self._active[:hi]
        first = int(np.minimum.reduce(slots, where=active, initial=_NEVER))
        if first == _NEVER:
            return
        last = int(np.maximum.reduce(slots, where=active, initial=-1))
        slot = first
        while True:
            installed = self._slots[slot]
            mask = self._m_a[:hi]
            np.equal(slots, slot, out=mask)
            np.logical_and(mask, active, out=mask)
            if installed is None:  # cannot happen after a swap; never crash if it does
                self._counters[_ORPHANED] += int(np.count_nonzero(mask))
                self._rt_free(mask)
            else:
                slot_gain = gain
                if first != last:
                    if gain.ndim == 1:
                        slot_gain = self._g_slot[:hi]
                        np.multiply(gain, mask, out=slot_gain)
                    else:
                        slot_gain = self._w_gain_slot[:hi, : gain.shape[1]]
                        np.multiply(gain, mask[:, None], out=slot_gain)
                self._rt_mix_one(out, a, b, installed, slot_gain, idx, frac)
            if slot >= last:
                return
            above = self._m_b[:hi]
            np.greater(slots, slot, out=above)
            np.logical_and(above, active, out=above)
            slot = int(np.minimum.reduce(slots, where=above, initial=_NEVER))
            if slot == _NEVER:
                return

    def _rt_mix_one(
        self, out: npt.NDArray[np.float32], a: int, b: int, installed: _Installed,
        gain: npt.NDArray[np.float32], idx: npt.NDArray[np.intp], frac: npt.NDArray[np.float32],
    ) -> None:
        hi, n = idx.shape
        s0 = self._w_s0[:hi, :n]
        s1 = self._w_s1[:hi, :n]
        col = self._col[:n]
        spec = "vt,v->t" if gain.ndim == 1 else "vt,vt->t"
        for column, following, outputs in zip(installed.columns, installed.nexts, installed.routes):
            column.take(idx, out=s0, mode="clip")
            following.take(idx, out=s1, mode="clip")  # the frame after each index
            np.subtract(s1, s0, out=s1)
            np.multiply(s1, frac, out=s1)
            np.add(s0, s1, out=s0)
            np.einsum(spec, s0, gain, out=col)
            for o in outputs:
                target = out[a:b, o]
                np.add(target, col, out=target)

    def _rt_advance(self, hi: int, n: int) -> None:
        """Move read positions past the segment and free voices that finished in it."""
        pos = self._pos[:hi]
        step = self._t_a[:hi]
        np.multiply(self._rate[:hi], float(n), out=step)
        np.add(pos, step, out=pos)
        done = self._m_a[:hi]
        np.greater_equal(pos, self._last[:hi], out=done)  # ran off the end of the sample
        released = self._m_b[:hi]
        np.equal(self._env[:hi], 0.0, out=released)
        np.logical_and(released, self._releasing[:hi], out=released)
        np.logical_or(done, released, out=done)
        reached = self._m_b[:hi]
        np.equal(self._env[:hi], self._env_target[:hi], out=reached)
        np.copyto(self._env_step[:hi], 0.0, where=reached)  # an envelope at its target holds (steady gain)
        np.equal(self._fade[:hi], self._fade_target[:hi], out=reached)
        np.copyto(self._fade_step[:hi], 0.0, where=reached)  # a finished fade stops ramping
        np.logical_and(reached, self._fade_kill[:hi], out=reached)
        np.logical_or(done, reached, out=done)
        np.logical_and(done, self._active[:hi], out=done)
        if done.any():
            self._rt_free(done)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")

# REALTIME CODE — read before editing.
#
# ``_native_process`` (compiled by numba into a C function; JACK calls it
# directly, without the GIL) is JACK's process callback in render-ahead mode.
# It runs once per cycle on JACK's realtime thread and MAY only do integer
# arithmetic on the shared header, call the libjack/libc functions bound below
# (``jack_port_get_buffer``, ``jack_midi_get_event_count``,
# ``jack_midi_event_get``, ``memcpy``, ``memset``, and ``write`` on an eventfd)
# and return.  It MAY NOT touch a Python object: there is no GIL on that thread.
#
# ``AheadRing.fill`` runs on the render thread (SCHED_FIFO just below JACK's
# thread, holding the GIL while it renders): it is realtime code as the Python
# process callback is (see ``audio/_jack.py``): no allocation per block beyond
# small event objects, no lock other than the ring's own (taken only by a
# format change, while JACK holds its cycle), no log.

"""Render-ahead: JACK's callback in native code, the engine rendering a few blocks ahead.

In the default mode the engine renders inside JACK's process callback, in
Python: the callback needs the GIL, and on a machine whose host steals the
CPU now and then (a VM) any stall of that thread is a lost cycle.  With
``[audio] jack_ahead = N`` (N >= 1) the JACK backend instead gives JACK a
process callback compiled to machine code (by numba, ``pip install
'ensemble-rt[native]'``) that only copies the next rendered block from a ring
into the output ports, and a render thread of ours keeps ``N`` blocks ready
in that ring.  JACK's callback then takes microseconds, like a C client's,
and the render has ``N`` periods of slack against a stall, at the price of
``N`` periods of output latency (``N * blocksize / samplerate``: 2.7 ms a
block at 128 frames and 48 kHz).

MIDI stays sample-accurate: the native callback reads each event of its
cycle with the offset JACK gives and records it for the block that will be
rendered next for that cycle (``N`` blocks later); the render thread hands it
to the decoder at the same offset inside that block.  Every MIDI event so
arrives exactly ``N`` blocks late, and the timing between events is kept to
the frame.

A cycle that finds the ring empty (the render thread fell ``N`` blocks
behind) outputs silence: an audible drop that JACK does not see, counted as
``underflows`` in the engine's stats and ``ahead_underruns`` in the backend's.
A cycle of another size than the ring's (a size change JACK has not yet
announced) outputs silence too (``ahead_odd_cycles``).

The header shared by the two sides is one int64 array (:data:`HEADER` slots
plus the MIDI ring); the audio ring is a float32 array ``[slots, channels,
frames]``.  While both run, each index has one writer: the native callback
writes ``READ``, ``UNDERRUNS``, ``CYCLES``, ``ODD``, ``MIDI_WRITE``,
``MIDI_DROPPED``, the MIDI ring, ``CLOCK``, ``TIMED`` and the timing ring;
the render thread writes ``WRITTEN``,
``MIDI_READ`` and the ring's blocks.  A format change rewrites the sizes and
``WRITTEN`` while JACK holds its cycle and the render thread waits for the
ring's lock.  The ring relies on x86-64's store order (an aligned int64 store
is atomic, and stores are seen in the order they were made: the render thread
stores a block's samples before it moves ``WRITTEN``, the callback reads
``WRITTEN`` before it copies, through a call the compiler cannot move loads
across), so render-ahead is offered on x86-64 only; weaker memory models
(ARM64) would need fences the Python side cannot issue.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
import time
from typing import Any, Callable

import numpy as np

from ._engine import Engine
from ._midi_in import MidiDecoder

__all__ = ["AheadRing", "NativeUnavailable", "native_callback", "realtime_priority", "require", "warm_native"]

# header slots (int64)
READ, WRITTEN, SLOTS, FRAMES, CHANNELS, RING_ADDR, EVENTFD, UNDERRUNS = range(8)
CYCLES, ONE_ADDR, DEAD, ODD, MIDI_PORT, MIDI_WRITE, MIDI_READ, MIDI_DROPPED = range(8, 16)
AHEAD, SELF_ADDR, ENDED = 16, 17, 18
EVENT = 20  # 3 slots: a jack_midi_event_t {uint32 time; size_t size; uint8 *buffer}
BYTES = 23  # the event's first 8 bytes
PORTS = 24  # output port pointers, up to MAX_CHANNELS
MAX_CHANNELS = 32
CLOCK = PORTS + MAX_CHANNELS  # 2 slots: a struct timespec
TIMED = CLOCK + 2  # callbacks timed (their durations are in the timing ring)
HEADER = TIMED + 2
MIDI_CAP = 1024  # events in the MIDI ring (3 slots each: block, offset, bytes)
MIDI_SLOTS = 3
TIMES = HEADER + MIDI_CAP * MIDI_SLOTS  # the timing ring: each callback's duration in ns
TIMES_CAP = 8192  # cycles kept for the timing percentiles (the JACK backend's own rings are as long)
TOTAL = TIMES + TIMES_CAP

_cached: Any = None
_lock = threading.Lock()


class NativeUnavailable(RuntimeError):
    """Render-ahead cannot work here (numba or libjack missing); the message says what to install."""


def native_callback() -> Any:
    """The compiled process callback (a numba ``cfunc``; ``.address`` is its C pointer), built once per process.

    Raises :class:`NativeUnavailable` when numba or libjack cannot be loaded.
    Context: non-realtime.  Cost: ``import numba`` (~0.3 s) and a compile of
    ~0.7 s, once per process.
    """
    global _cached
    with _lock:
        if _cached is None:
            _cached = _compile()
        return _cached


def require(channels: int) -> None:
    """Raise :class:`NativeUnavailable`, saying why, unless render-ahead can play ``channels`` channels here
    (numba, libjack and x86-64 present; the callback compiled).  Context: non-realtime."""
    if channels > MAX_CHANNELS:
        raise NativeUnavailable(f"render-ahead plays at most {MAX_CHANNELS} channels, the engine has {channels}")
    native_callback()


def warm_native() -> None:
    """Compile the callback now if it can be (at normal priority, before a thread turns realtime); never raises:
    the backend says why it cannot when it starts.  Context: non-realtime."""
    try:
        native_callback()
    except NativeUnavailable:
        pass


def realtime_priority(client: int) -> int:
    """The SCHED_FIFO priority of a JACK client's process thread (``client``: its ``jack_client_t *`` as an int);
    -1 when JACK does not run it realtime.  Context: non-realtime."""
    fn = _function(_libjack(), "jack_client_real_time_priority", ctypes.c_int, ctypes.c_int64)
    return int(fn(client))


def _libjack() -> Any:
    path = ctypes.util.find_library("jack") or "libjack.so.0"
    try:
        return ctypes.CDLL(path)
    except OSError as exc:
        raise NativeUnavailable(f"the JACK library (libjack) cannot be loaded ({exc})") from exc


def _function(lib: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


def _compile() -> Any:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise NativeUnavailable(f"render-ahead runs on x86-64 only (this machine is {platform.machine()}: its ring "
                                "needs x86's store order)")
    try:
        import numba
        from numba import carray, types  # type: ignore[attr-defined]
    except ImportError as exc:
        raise NativeUnavailable("render-ahead needs numba: pip install 'ensemble-rt[native]'") from exc
    libjack = _libjack()
    libc = ctypes.CDLL(None)
    i64, u32, size = ctypes.c_int64, ctypes.c_uint32, ctypes.c_size_t
    # every pointer crosses as an int64 (x86-64 and ARM64 pass both in the same registers)
    get_buffer = _function(libjack, "jack_port_get_buffer", i64, i64, u32)
    event_count = _function(libjack, "jack_midi_get_event_count", u32, i64)
    event_get = _function(libjack, "jack_midi_event_get", ctypes.c_int, i64, i64, u32)
    memcpy = _function(libc, "memcpy", i64, i64, i64, size)
    memset = _function(libc, "memset", i64, i64, ctypes.c_int, size)
    write = _function(libc, "write", ctypes.c_ssize_t, ctypes.c_int, i64, size)
    clock_gettime = _function(libc, "clock_gettime", ctypes.c_int, ctypes.c_int, i64)
    monotonic = 1  # CLOCK_MONOTONIC
    total = TOTAL

    def process(nframes: int, arg: Any) -> int:  # pragma: no cover - runs as machine code
        h = carray(arg, (total,), dtype=np.int64)
        clock_gettime(monotonic, h[SELF_ADDR] + CLOCK * 8)
        began = h[CLOCK] * 1000000000 + h[CLOCK + 1]
        if h[DEAD] != 0:  # a client given up for dead whose server came back: end its thread
            h[ENDED] = 1
            return -1
        frames = h[FRAMES]
        ch = h[CHANNELS]
        r = h[READ]
        w = h[WRITTEN]
        played = 0
        if nframes == frames and w > r:
            base = h[RING_ADDR] + (r % h[SLOTS]) * ch * frames * 4
            for c in range(ch):
                memcpy(get_buffer(h[PORTS + c], nframes), base + c * frames * 4, frames * 4)
            played = 1
        else:
            for c in range(ch):
                memset(get_buffer(h[PORTS + c], nframes), 0, nframes * 4)
            if nframes != frames:
                h[ODD] += 1
            else:
                h[UNDERRUNS] += 1
        if h[MIDI_PORT] != 0:
            buf = get_buffer(h[MIDI_PORT], nframes)
            count = event_count(buf)
            target = r + h[AHEAD]  # the block rendered for this cycle's events
            for i in range(count):
                if event_get(h[SELF_ADDR] + EVENT * 8, buf, i) != 0:
                    continue
                n = h[EVENT + 1]
                if n <= 0:
                    continue
                h[BYTES] = 0
                memcpy(h[SELF_ADDR] + BYTES * 8, h[EVENT + 2], min(n, 3))
                mw = h[MIDI_WRITE]
                if mw - h[MIDI_READ] >= MIDI_CAP:
                    h[MIDI_DROPPED] += 1
                    continue
                at = HEADER + (mw % MIDI_CAP) * MIDI_SLOTS
                h[at] = target
                h[at + 1] = h[EVENT] & 0xFFFFFFFF
                h[at + 2] = h[BYTES]
                h[MIDI_WRITE] = mw + 1
        h[READ] = r + played  # only now: the block it frees is rendered after this cycle's events are recorded
        h[CYCLES] += 1
        write(h[EVENTFD], h[ONE_ADDR], 8)  # wake the render thread
        clock_gettime(monotonic, h[SELF_ADDR] + CLOCK * 8)
        h[TIMES + h[TIMED] % TIMES_CAP] = h[CLOCK] * 1000000000 + h[CLOCK + 1] - began
        h[TIMED] += 1
        return 0

    # not cached on disk: the libjack and libc addresses it calls are compiled in, and differ per process
    return numba.cfunc(types.int32(types.uint32, types.voidptr), nopython=True)(process)  # type: ignore[call-arg]


class AheadRing:
    """The ring of rendered blocks between the render thread and the native callback, and that thread.

    ``ahead``: how many blocks the render thread keeps ready (the caller
    has called :func:`require`).  ``midi``: the
    decoder the MIDI events of the client's ``midi_in`` port go to.  Context
    of each method: see its docstring.
    """

    def __init__(self, engine: Engine, ahead: int, midi: MidiDecoder) -> None:
        assert engine.channels <= MAX_CHANNELS, "checked by require()"
        self.engine = engine
        self.ahead = ahead
        self.midi = midi
        self.header = np.zeros(TOTAL, dtype=np.int64)
        self._one = np.ones(1, dtype=np.int64)
        self._fd = os.eventfd(0, os.EFD_CLOEXEC)
        h = self.header
        h[EVENTFD], h[ONE_ADDR], h[SELF_ADDR], h[AHEAD] = self._fd, self._one.ctypes.data, h.ctypes.data, ahead
        self._ring = np.zeros((1, 1, 1), dtype=np.float32)
        self._out = np.zeros((1, 1), dtype=np.float32)
        self._lock = threading.Lock()  # a format change against a render in progress
        self._thread: threading.Thread | None = None
        self._stop = False
        self.reported_underruns = 0
        self.render_ns = np.zeros(TIMES_CAP, dtype=np.int64)  # each block's render time (ring)
        self.timed = 0
        self.callbacks_from = 0  # the callback's timing ring counts from this cycle (see reset_timing)
        self.thread_policy = ""
        self.last_error: BaseException | None = None
        self.errors = 0

    @property
    def address(self) -> int:
        """The header's address: the native callback's ``arg``."""
        return int(self.header.ctypes.data)

    def bind(self, outs: list[int], midi_port: int) -> None:
        """Record the client's port pointers (ints).  Context: before the client activates."""
        h = self.header
        h[PORTS:PORTS + len(outs)] = outs
        h[MIDI_PORT] = midi_port

    def prepare(self, frames: int, before: Callable[[], None] | None = None) -> None:
        """Size the ring for ``frames``-frame cycles, empty it and render ``ahead`` blocks into it.

        ``before`` runs first, with the render thread held (the engine's
        format change).  Context: before activation, or JACK's buffer-size
        or sample-rate callback (the cycle is halted then).  Waits for a
        render in progress.
        """
        with self._lock:
            if before is not None:
                before()
            channels = self.engine.channels
            h = self.header
            slots = self.ahead + 1
            if self._ring.shape != (slots, channels, frames):
                self._ring = np.zeros((slots, channels, frames), dtype=np.float32)
                self._out = np.zeros((frames, channels), dtype=np.float32)
            h[FRAMES], h[CHANNELS], h[SLOTS], h[RING_ADDR] = frames, channels, slots, self._ring.ctypes.data
            h[WRITTEN] = h[READ]
            self._fill()

    def stats(self) -> dict[str, Any]:
        """Figures for ``status``: the render thread's timing and the ring's drops.  Context: non-realtime.

        ``jack_done_*_ms``: each block's render time (the render thread's,
        not JACK's callback); ``ahead_callback_*_ms``: the native callback's
        own time over its last :data:`TIMES_CAP` cycles since :meth:`reset_timing`;
        ``ahead_underruns``: cycles that found no block
        ready and played silence (also counted in the engine's ``underflows``).
        """
        n = min(self.timed, len(self.render_ns))
        done = self.render_ns[:n] / 1e6
        h = self.header
        t = int(h[TIMED])
        m = max(0, min(t - self.callbacks_from, TIMES_CAP))
        callback = h[TIMES:TIMES + TIMES_CAP][np.arange(t - m, t) % TIMES_CAP] / 1e6
        return {
            "jack_ahead": self.ahead,
            "ahead_callback_p999_ms": float(np.percentile(callback, 99.9)) if m else 0.0,
            "ahead_callback_max_ms": float(callback.max()) if m else 0.0,
            "jack_done_p99_ms": float(np.percentile(done, 99.0)) if n else 0.0,
            "jack_done_max_ms": float(done.max()) if n else 0.0,
            "ahead_underruns": int(h[UNDERRUNS]),
            "ahead_odd_cycles": int(h[ODD]),
            "ahead_render_errors": self.errors,
            "ahead_midi_dropped": int(h[MIDI_DROPPED]),
            "ahead_latency_ms": self.ahead * int(h[FRAMES]) * 1000.0 / self.engine.samplerate,
        }

    def reset_timing(self) -> None:
        """Forget the timings so far (the render thread's, and the native callback's: as the callback is its ring's
        only writer, its cycles before now are left out of :meth:`stats` instead).  Context: non-realtime."""
        self.timed = 0
        self.callbacks_from = int(self.header[TIMED])

    def kill(self) -> None:
        """Make the native callback end its thread at its next cycle (a client given up for dead)."""
        self.header[DEAD] = 1

    @property
    def ended(self) -> bool:
        """Whether the callback ended its thread after :meth:`kill`."""
        return bool(self.header[ENDED])

    # ------------------------------------------------------------------ the render thread
    def start(self, priority: int) -> None:
        """Start the render thread at SCHED_FIFO ``priority`` (normal priority where refused)."""
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(priority,), name="ensemble-render", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the render thread (after the client stopped calling back).  Context: non-realtime."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop = True
        os.eventfd_write(self._fd, 1)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"render thread still busy {timeout} s after stop()")

    def close(self) -> None:
        """Stop the thread and close the eventfd (the ring must no longer be in any client's use)."""
        self.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _run(self, priority: int) -> None:
        from ._realtime import promote_current_thread, thread_policy
        notice = promote_current_thread(priority)
        self.thread_policy = thread_policy() + (f" ({notice})" if notice else "")
        fd = self._fd
        while True:
            try:
                os.eventfd_read(fd)
            except OSError:
                return
            if self._stop:
                return
            with self._lock:
                try:
                    self._fill()
                except Exception as exc:  # noqa: BLE001 - the thread must go on (the block stays unrendered)
                    self.errors += 1
                    self.last_error = exc

    def _fill(self) -> None:
        """Render until ``ahead`` blocks are ready; report new underruns.  Context: the render thread."""
        h, engine, ring, out = self.header, self.engine, self._ring, self._out
        frames = int(h[FRAMES])
        under = int(h[UNDERRUNS])
        while self.reported_underruns < under:
            self.reported_underruns += 1
            engine.report_status(underflow=True)
        while True:
            written = int(h[WRITTEN])
            ready = written - int(h[READ])
            if ready >= self.ahead:
                return
            began = time.perf_counter_ns()
            self._midi(written, engine.frame, frames)
            engine.render(out)
            ring[written % ring.shape[0]] = out.T
            h[WRITTEN] = written + 1
            i = self.timed % TIMES_CAP
            self.render_ns[i] = time.perf_counter_ns() - began
            self.timed += 1

    def _midi(self, block: int, start: int, frames: int) -> None:
        """Hand the decoder every recorded MIDI event due in ``block`` (or earlier), at its offset."""
        h = self.header
        read, end = int(h[MIDI_READ]), int(h[MIDI_WRITE])
        message = self.midi.message
        while read < end:
            at = HEADER + (read % MIDI_CAP) * MIDI_SLOTS
            target = int(h[at])
            if target > block:
                break
            offset = int(h[at + 1]) if target == block else 0
            data = int(h[at + 2])
            message(data & 0xFF, (data >> 8) & 0xFF, (data >> 16) & 0xFF, start + min(offset, frames - 1))
            read += 1
            h[MIDI_READ] = read

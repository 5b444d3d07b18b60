# REALTIME CODE (one method) — read before editing.
#
# ``ArrivalQueue.block`` is an engine block hook: it runs on the audio
# thread at the start of every block.  It reads the clock, pops the deque the
# RtMidi thread fills, hands each message to ``MidiDecoder.message`` (itself
# realtime code) and bumps counters: no lock, no log, no allocation beyond the
# decoder's one event object, never raises.  Everything else in this module
# runs off the audio thread (the processor's main thread, RtMidi's thread).

"""MIDI sources outside JACK's graph, and the list of every source (``ensemble midi list`` / ``connect``).

A JACK MIDI output is connected to the JACK backend's ``midi_in`` port and is
sample-accurate: JACK gives each event's frame (see :mod:`audio._jack`).  A
device that is not in JACK's graph — an ALSA sequencer port (a hardware
keyboard, a virtual one) — is opened with RtMidi (``python-rtmidi``) as a
:class:`TimedMidiInput`.  RtMidi delivers messages on its own thread, on
arrival, with no notion of our blocks, so:

* each message is **timestamped on arrival** (``time.perf_counter_ns()`` in
  RtMidi's callback);
* at the start of each block the audio thread maps the timestamp onto the
  engine's frame line and plays the message **one period later than it
  arrived**: a message that arrived ``d`` ns after the previous block began
  is placed ``d`` into the current block.  The latency this adds is therefore
  constant, one period (5.3 ms at 256 frames / 48 kHz, 2.7 ms at 128), and
  the relative timing of messages is kept to within the jitter of the
  timestamps (RtMidi's thread must get the GIL before it can stamp a message:
  at most the switch interval, 0.2 ms while a backend runs, plus scheduling)
  and of the block clock estimate below.  ``bench/midi_latency.py`` measures
  it beside the JACK-native path.
* The block clock: when the current block began is estimated from the times
  the hook ran, filtered to their minimum (a hook that runs late because the
  callback waited does not move the estimate; one that runs earlier than
  predicted, or more than four periods late — an xrun, a server restart —
  re-anchors it).  The minimum is re-taken every 2048 blocks so the estimate
  follows a device clock that drifts from the system clock.

A message that arrived so long ago that its slot has passed (the audio thread
stalled) is played at the block's first frame and counted in ``late``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._backends import BackendUnavailable
from ._engine import Engine
from ._midi_in import MidiDecoder
from .messages import MIDI_VIAS  # with MidiConnect's schema (the supervisor checks it without this module)

__all__ = ["MIDI_VIAS", "ArrivalQueue", "MidiPort", "TimedMidiInput", "list_ports", "rtmidi_module"]

_CAPACITY = 4096  # messages waiting between two blocks; more are dropped and counted
_REANCHOR_BLOCKS = 2048


@dataclass(frozen=True)
class MidiPort:
    """A MIDI source ``ensemble midi connect`` can take: its name, how it is reached, whether it is connected."""

    name: str
    via: str  # "jack" or "alsa"
    connected: bool = False


def rtmidi_module() -> Any:
    """Import python-rtmidi; raises :class:`BackendUnavailable` saying how to install it.  Context: non-realtime."""
    try:
        import rtmidi
    except ImportError as exc:
        raise BackendUnavailable("python-rtmidi is not installed; pip install python-rtmidi") from exc
    return rtmidi


def _api(rtmidi: Any, via: str) -> int:
    return int(rtmidi.API_UNIX_JACK if via == "rtmidi-jack" else rtmidi.API_LINUX_ALSA)


def _midi_in(via: str, name: str) -> Any:
    """A new ``rtmidi.MidiIn`` on ``via``'s API ("alsa" or "rtmidi-jack").

    Raises :class:`BackendUnavailable` saying why not; for ALSA without
    ``/dev/snd/seq`` before RtMidi is asked (see :func:`alsa_sequencer_reason`).
    ALSA's own error lines ("ALSA lib seq_hw.c:...") are kept off stderr
    meanwhile: what they say is in the exception.  Context: non-realtime.
    """
    rtmidi = rtmidi_module()
    reason = "" if via == "rtmidi-jack" else alsa_sequencer_reason()
    if reason:
        raise BackendUnavailable(f"the ALSA sequencer is unavailable: {reason}")
    try:
        with _alsa_quiet():
            return rtmidi.MidiIn(_api(rtmidi, via), name=name)
    except Exception as exc:  # rtmidi raises SystemError / RtMidiError from C++
        api = "RtMidi's JACK client" if via == "rtmidi-jack" else "the ALSA sequencer"
        raise BackendUnavailable(f"RtMidi cannot open {api} ({_first_line(exc)})") from exc


# void (*)(const char *file, int line, const char *function, int err, const char *fmt, ...): the variadic rest is
# not declared, and not read
_ALSA_ERROR_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                       ctypes.c_char_p)
_ALSA_SILENT = _ALSA_ERROR_HANDLER(lambda *_: None)  # kept alive here: libasound holds the bare pointer


@functools.cache
def _libasound() -> Any:
    """libasound (the one RtMidi uses: loaded once per process), or None where it cannot be loaded."""
    try:
        lib = ctypes.CDLL("libasound.so.2")
        lib.snd_lib_error_set_handler.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib


@contextlib.contextmanager
def _alsa_quiet() -> Iterator[None]:
    """libasound prints nothing on stderr inside (its error handler is a no-op), then prints as before.

    Process-wide for its duration: an ALSA error of another thread is not
    printed either.  Context: non-realtime.
    """
    lib = _libasound()
    if lib is None:
        yield
        return
    lib.snd_lib_error_set_handler(ctypes.cast(_ALSA_SILENT, ctypes.c_void_p))
    try:
        yield
    finally:
        lib.snd_lib_error_set_handler(None)  # NULL: libasound's own handler again


def rtmidi_inputs(via: str = "alsa") -> list[str]:
    """The input ports RtMidi sees through ``via`` ("alsa" or "rtmidi-jack").

    Context: non-realtime.  Cost: opens and closes a sequencer client.  Raises
    :class:`BackendUnavailable` when python-rtmidi is missing or the API
    cannot open (no ``/dev/snd/seq``: the ``snd-seq`` kernel module is not
    loaded; no JACK server).
    """
    probe = _midi_in(via, "ensemble-probe")
    try:
        return [str(p) for p in probe.get_ports()]
    finally:
        probe.delete()


def list_ports(jack_client: Any = None, connected_to: str = "") -> tuple[list[MidiPort], list[str]]:
    """Every MIDI source visible from this process: (ports, notes on what could not be looked at).

    JACK MIDI outputs through ``jack_client`` (an open ``jack.Client``, or
    None to skip JACK), marked ``connected`` when connected to the port named
    ``connected_to``; then ALSA sequencer inputs through RtMidi.  Context:
    non-realtime.
    """
    ports: list[MidiPort] = []
    notes: list[str] = []
    if jack_client is not None:
        linked = set()
        if connected_to:
            try:
                linked = {p.name for p in jack_client.get_all_connections(connected_to)}
            except Exception:  # noqa: BLE001 - no such port (the processor is not on this server)
                linked = set()
        for port in jack_client.get_ports(is_midi=True, is_output=True):
            ports.append(MidiPort(port.name, "jack", port.name in linked))
    try:
        ports.extend(MidiPort(name, "alsa") for name in rtmidi_inputs("alsa"))
    except BackendUnavailable as exc:
        notes.append(str(exc))  # why, in one line: no /dev/snd/seq, RtMidi refused, no python-rtmidi
    return ports, notes


class ArrivalQueue:
    """Messages stamped on arrival (any one thread), placed into blocks one period later (audio thread).

    The timing half of :class:`TimedMidiInput`, apart from RtMidi so it can
    be tested and measured with given times.  Counters: ``received``,
    ``late`` (played at a block's first frame because their slot had passed),
    ``dropped`` (the queue was full).
    """

    def __init__(self, engine: Engine, decoder: MidiDecoder) -> None:
        self.engine = engine
        self.decoder = decoder
        self.received = 0
        self.late = 0
        self.dropped = 0
        self._queue: deque[tuple[int, int, int, int]] = deque()
        self._anchor_frame = -1
        self._anchor_ns = 0
        self._window_min = 0
        self._blocks = 0

    def arrive(self, stamp: int, status: int, d1: int, d2: int) -> None:
        """Queue a channel message that arrived at ``stamp`` (``perf_counter_ns``).  Any one thread; O(1)."""
        if len(self._queue) >= _CAPACITY:
            self.dropped += 1
            return
        self._queue.append((stamp, status, d1, d2))

    def block(self, start: int, frames: int, now: int | None = None) -> None:
        """Engine block hook (audio thread): place every queued message in this block at its arrival offset.

        ``now``: when the hook runs (default: the clock now).  Never raises.
        """
        if now is None:
            now = time.perf_counter_ns()
        ns_per_frame = 1e9 / self.engine.samplerate
        began = self._block_began(start, frames, now, ns_per_frame)
        queue = self._queue
        if not queue:
            return
        last = start + frames - 1
        message = self.decoder.message
        while queue:
            stamp, status, d1, d2 = queue.popleft()
            at = start + frames + round((stamp - began) / ns_per_frame)  # one period after it arrived
            if at < start:
                self.late += 1
                at = start
            message(status, d1, d2, min(at, last))
            self.received += 1

    def _block_began(self, start: int, frames: int, now: int, ns_per_frame: float) -> int:
        """When the block at ``start`` began on the system clock: the minimum-filtered estimate."""
        predicted = self._anchor_ns + int((start - self._anchor_frame) * ns_per_frame)
        lateness = now - predicted
        if self._anchor_frame < 0 or lateness < 0 or lateness > 4 * frames * ns_per_frame:
            self._anchor_frame, self._anchor_ns = start, now
            self._window_min = 0
            self._blocks = 0
            return now
        self._blocks += 1
        if self._blocks == 1 or lateness < self._window_min:
            self._window_min = lateness
        if self._blocks >= _REANCHOR_BLOCKS:  # follow drift: the earliest hook of the window is the block start
            self._anchor_frame, self._anchor_ns = start, predicted + self._window_min
            self._blocks = 0
        return predicted


class TimedMidiInput:
    """One RtMidi input port feeding ``decoder`` through an :class:`ArrivalQueue`.

    ``via``: "alsa" (the ALSA sequencer) or "rtmidi-jack" (RtMidi's own JACK
    client: the same timestamped path where ALSA's sequencer is missing).
    ``port``: the port's name as :func:`rtmidi_inputs` lists it (exact, else
    the only one containing it).  Register :meth:`block` as an engine block
    hook running before the script host's.  Raises
    :class:`BackendUnavailable` when the API or port cannot be opened, naming
    the ports there are.  Context: non-realtime.
    """

    def __init__(self, engine: Engine, decoder: MidiDecoder, port: str, via: str = "alsa") -> None:
        self.via = via
        self.queue = ArrivalQueue(engine, decoder)
        self.block = self.queue.block
        self._midi = _midi_in(via, "ensemble")
        names = [str(p) for p in self._midi.get_ports()]
        matches = [i for i, n in enumerate(names) if n == port] or [i for i, n in enumerate(names) if port in n]
        if len(matches) != 1:
            self._midi.delete()
            what = "no" if not matches else "more than one"
            raise BackendUnavailable(f"{what} {via} MIDI input matches {port!r}; there are: {', '.join(names) or 'none'}")
        self.name = names[matches[0]]
        self._midi.ignore_types(sysex=True, timing=True, active_sense=True)
        self._midi.set_callback(self._arrive)
        self._midi.open_port(matches[0], name="ensemble-in")

    def _arrive(self, event: tuple[list[int], float], data: Any = None) -> None:
        """RtMidi's thread: stamp the message and queue it for the next block (channel messages only)."""
        stamp = time.perf_counter_ns()
        message = event[0]
        if message and message[0] < 0xF0:
            n = len(message)
            self.queue.arrive(stamp, message[0], message[1] if n > 1 else 0, message[2] if n > 2 else 0)

    def close(self) -> None:
        """Close the port and RtMidi's client.  Context: non-realtime (after the hook is removed)."""
        midi, self._midi = self._midi, None
        if midi is not None:
            midi.cancel_callback()
            midi.close_port()
            midi.delete()

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``.  Context: any."""
        q = self.queue
        return {"port": self.name, "via": self.via, "received": q.received, "late": q.late, "dropped": q.dropped}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def alsa_sequencer_reason() -> str:
    """Why the ALSA sequencer is not usable here ('' when ``/dev/snd/seq`` exists).  Context: any."""
    return "" if os.path.exists("/dev/snd/seq") else ("no /dev/snd/seq, the snd-seq kernel module is not loaded "
                                                     "(`sudo modprobe snd-seq` loads it)")

# REALTIME CODE — read before editing.
#
# ``JackBackend._process`` is JACK's process callback: it runs once per cycle
# on the client thread JACK created (SCHED_FIFO when the server runs with -R).
# That code:
#
# MAY   call the libjack functions JACK allows in a process callback
#       (``jack_port_get_buffer``, ``jack_midi_get_event_count``,
#       ``jack_midi_event_get``, ``jack_frames_since_cycle_start``) through the
#       cffi handles bound in ``_bind_ports``; run ``Engine.render`` and
#       ``MidiDecoder.message`` (realtime code of their own); copy with
#       ``np.copyto`` and ``ffi.memmove`` between arrays preallocated in
#       ``_prepare``; write ints into the preallocated ring and counters.
# MAY NOT allocate arrays, take locks, log or print, call ``jack.Client`` /
#       ``jack.Port`` methods (they build wrapper objects and bytes), wait, or
#       raise: an exception is counted in ``callback_errors``, kept in
#       ``last_error``, and the cycle outputs silence (a raise would make
#       JACK drop the client).
#
# Every other method runs off the realtime path: the caller's thread
# (``start``/``stop``), JACK's notification thread (xrun, shutdown, buffer
# size, sample rate and port registration callbacks: they only count, resize
# while the server has the cycle halted, or set a flag and wake the watcher),
# and the backend's watcher thread (connections, fallback, reconnects).

"""The JACK-native backend: the processor as a JACK client of its own.

:class:`JackBackend` opens a client named ``ensemble`` (JACK makes it
``ensemble-01`` ... if taken) with audio outputs ``out_0`` .. ``out_<n-1>``
and one MIDI input ``midi_in``.  The engine renders in JACK's process
callback with the block size JACK gives; when the server's buffer size or
sample rate differs from the engine's, or changes while running
(``jack_bufsize 128``), the engine follows (:meth:`audio.Engine.set_format`).

Connections: with ``autoconnect`` the outputs go to the physical playback
ports (``system:playback_1`` ...) at start.  ``midi_in`` is a list of JACK
port-name regular expressions (as ``jack_lsp`` prints names, e.g.
``system:midi_capture_1`` or ``a2j:.*``); matching MIDI outputs are connected
to ``midi_in`` at start and whenever a matching port appears later.

Every MIDI event of a cycle enters the engine at its exact frame (block start
plus the offset JACK gives) through :class:`audio._midi_in.MidiDecoder`.

Xruns are counted the way JACK counts them: JACK's xrun callback
(``EngineStats.xruns``; the worst ``delayed_usecs`` is kept).  They are JACK's
view of the whole graph, so an xrun another client causes is counted too.
Xruns JACK reports before this client's first cycle has run (while it joins
the graph) are reported apart as ``startup_xruns``.

JACK going away (server stopped or killed, client kicked out) is seen through
the shutdown callback, or, should that never come, through cycles that stop:
no process cycle for :data:`SILENCE_LIMIT` seconds while connected counts as
JACK gone too (a server stopped with ``SIGSTOP``, a shutdown notice lost).
The watcher thread keeps the engine running on a :class:`audio.NullBackend`
clock (scripts, timers and ``wait()`` go on; no sound) with ``state ==
"null-clock"`` and a notice, and tries to open a new client every
``reconnect_interval`` seconds.  The dead client is left as it is, never
deactivated or closed (see ``_fall_back``: closing it could hang the process).  When the
server is back, the clock is stopped, the client set up again and
``state == "connected"``, ``reconnects`` counts it.

Where the lost time went (and why the GIL switch interval matters): see
audio/README.md, "Xruns and the GIL".
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ._ahead import CYCLES, TIMES_CAP, AheadRing, NativeUnavailable, native_callback, realtime_priority, require
from ._backends import JACK_CLIENT_NAME, Backend, BackendUnavailable, NullBackend
from ._engine import Engine
from ._midi_in import MidiDecoder
from ._realtime import CONTROL_PRIORITY, GcPause, SwitchInterval, thread_policy

__all__ = ["JackBackend", "jack_module", "open_client"]

_RING = TIMES_CAP  # cycles of wake-up lateness kept for percentiles (as many as render-ahead's timing ring)
SILENCE_LIMIT = 3.0  # seconds without a process cycle, while connected, after which JACK counts as gone
_WATCH_EVERY = 0.5  # seconds between the watcher's looks at the cycle count while connected
_ENDED_CLOSE_AFTER = 1.0  # seconds after a dead client's thread ended itself before it is closed
_jack_errors: deque[str] = deque(maxlen=20)  # libjack's error lines, instead of stderr


def jack_module() -> Any:
    """Import JACK-Client (``import jack``); raises :class:`BackendUnavailable` when it cannot load.

    libjack's own error and info lines (printed to stderr by default, e.g.
    "Cannot connect to server socket" on every probe without a server) are
    kept in a short ring instead (:func:`last_jack_errors`).  Context:
    non-realtime.
    """
    try:
        import jack
    except OSError as exc:
        raise BackendUnavailable(f"the JACK library (libjack) is not installed ({exc})") from exc
    except ImportError as exc:
        raise BackendUnavailable("JACK-Client is not installed; pip install JACK-Client") from exc
    jack.set_error_function(_jack_errors.append)
    jack.set_info_function(lambda message: None)
    return jack


def _address(ffi: Any, pointer: Any) -> int:
    """A cffi pointer as an int (what the native callback's header holds)."""
    return int(ffi.cast("uintptr_t", pointer))


def last_jack_errors() -> list[str]:
    """libjack's most recent error lines (at most 20).  Context: any."""
    return list(_jack_errors)


def open_client(name: str = JACK_CLIENT_NAME) -> Any:
    """Open a ``jack.Client`` without ever starting a server; raises :class:`BackendUnavailable`.

    Context: non-realtime.  Cost: a round trip to the server (a few ms), or
    an immediate failure when no server runs.
    """
    jack = jack_module()
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackOpenError as exc:
        raise BackendUnavailable(f"no JACK server reachable ({exc})") from exc


class JackBackend(Backend):
    """Renders the engine in JACK's process callback; a JACK client of its own.

    ``client`` is an already opened ``jack.Client`` to use (``choose_backend``
    probes the server with it), else one is opened by :meth:`start`.
    ``midi`` decodes the ``midi_in`` port (default: a :class:`MidiDecoder`
    playing the engine's default sampler).  See the module docstring for
    connections, format changes, xrun accounting and shutdown handling.

    Attributes read by the processor's status: ``state`` ("connected",
    "null-clock" or "stopped"), ``jack_client`` (the name JACK gave),
    ``notice``, ``thread_policy``, :meth:`stats`.
    """

    def __init__(
        self, engine: Engine, *, client_name: str = JACK_CLIENT_NAME, autoconnect: bool = True,
        midi_in: tuple[str, ...] | list[str] = (), midi: MidiDecoder | None = None,
        reconnect_interval: float = 1.0, client: Any = None, ahead: int = 0,
    ) -> None:
        super().__init__(engine)
        self.client_name = client_name
        self.autoconnect = autoconnect
        self.midi_in = tuple(midi_in)
        self.midi = midi or MidiDecoder(engine)
        self.reconnect_interval = reconnect_interval
        self.ahead = ahead  # blocks rendered ahead by the render thread (0: render in JACK's callback)
        self.ahead_refused = ""  # why render-ahead was asked for and could not be had
        self._ring: AheadRing | None = None  # the live client's, in render-ahead mode
        self._dead_rings: dict[int, AheadRing] = {}  # the dead clients' (their callbacks may still run)
        self.state = "stopped"
        self.jack_client: str | None = None
        self.thread_policy = ""
        self.reconnects = 0
        self.startup_xruns = 0
        self.xrun_max_delay_us = 0.0
        self.callback_errors = 0
        self.late_cycles = 0  # cycles whose callback began more than half a period late
        self.overrun_cycles = 0  # cycles whose callback ended after the period (JACK's deadline)
        self.last_error: BaseException | None = None
        self._client = client
        self._jack: Any = None
        self._fallback: NullBackend | None = None
        self._watcher: threading.Thread | None = None
        self._wake = threading.Event()
        self._lost = ""  # the shutdown reason, set by JACK's shutdown callback
        self._rescan = False
        self._stopping = False
        self._in_cycle = False
        self._cycles = 0
        self._gen = 0  # the live client's number: a process callback of an older one renders nothing
        self._dead: dict[int, Any] = {}  # clients given up for dead, by number (see _fall_back)
        self._ended: dict[int, float] = {}  # their number -> when their thread ended itself (closed a while later)
        self._timed = 0  # cycles in the timing rings since the last reset_timing()
        self._held = False
        self._late = np.zeros(_RING, dtype=np.int64)  # frames since cycle start when the callback began
        self._done = np.zeros(_RING, dtype=np.int64)  # ns from cycle start to the callback's end
        self._prepare(engine.blocksize)

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True from :meth:`start` to :meth:`stop`, on JACK or on the fallback clock."""
        return self.state != "stopped"

    def start(self) -> None:
        """Open (or take) the client, register ports, follow the server's format, activate, connect.

        Context: non-realtime.  Cost: a few JACK round trips and one full GC
        pass (see ``GcPause``).  Raises :class:`BackendUnavailable` when no
        server is reachable or the client cannot be set up, and
        :class:`RuntimeError` if already running.
        """
        if self.running:
            raise RuntimeError("JackBackend is already running; stop() it first")
        self._jack = jack_module()
        if self.ahead:
            try:
                require(self.engine.channels)
            except NativeUnavailable as exc:
                self.ahead_refused = f"{exc}; rendering in JACK's callback instead of {self.ahead} block(s) ahead"
                self.ahead = 0
        client, self._client = self._client, None
        if client is None:
            client = open_client(self.client_name)
        self._stopping = False
        GcPause.enter()
        SwitchInterval.enter()
        self._held = True
        try:
            self._go_live(client)
        except BaseException:
            self._release_holds()
            raise
        if self.ahead_refused:
            self.notice = "; ".join(x for x in (self.ahead_refused, self.notice) if x)
        self._watcher = threading.Thread(target=self._watch, name="ensemble-jack-watch", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deactivate and close the client (or stop the fallback clock); join the watcher.

        Context: non-realtime.  Stopping a stopped backend does nothing.
        Raises :class:`RuntimeError` if the watcher is still busy after
        ``timeout`` seconds.
        """
        if self.state == "stopped" and self._watcher is None:
            self._close_client()  # a client choose_backend opened for a backend never started
            return
        self._stopping = True
        self._wake.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(timeout)
            if watcher.is_alive():
                raise RuntimeError(f"JACK watcher thread still busy {timeout} s after stop()")
        try:
            self._close_client()
            self._stop_fallback()
        finally:
            self.state = "stopped"
            self._release_holds()

    def _release_holds(self) -> None:
        if self._held:
            self._held = False
            SwitchInterval.exit()
            GcPause.exit()

    # ------------------------------------------------------------------ going live
    def _go_live(self, client: Any, reconnect: bool = False) -> None:
        """Set up ``client`` and activate it: the engine renders on JACK from the next cycle."""
        jack = self._jack
        try:
            self._follow_format(client.samplerate, client.blocksize)
            channels = self.engine.channels
            outs = [client.outports.register(f"out_{c}") for c in range(channels)]
            midi = client.midi_inports.register("midi_in")
            self._bind_ports(client, outs, midi)
            self._gen += 1
            gen = self._gen
            if self.ahead:
                self._go_ahead(client, outs, midi)

            def process(frames: int) -> None:
                if gen != self._gen:  # a client given up for dead whose server came back: libjack ends its
                    self._ended.setdefault(gen, time.monotonic())  # thread when the callback fails
                    raise jack.CallbackExit
                self._process(frames)

            def shutdown(status: Any, reason: str) -> None:
                if gen == self._gen:  # not a dead client's, once its server resumed: that would end the live one
                    self._on_shutdown(status, reason)

            if not self.ahead:
                client.set_process_callback(process)
            client.set_xrun_callback(self._on_xrun)
            client.set_shutdown_callback(shutdown)
            client.set_blocksize_callback(self._on_blocksize)
            client.set_samplerate_callback(self._on_samplerate)
            client.set_port_registration_callback(self._on_port_registration)
            self._cycles = 0
            self._lost = ""
            client.activate()
        except jack.JackError as exc:
            client.close()
            self._close_ring()
            raise BackendUnavailable(f"cannot set up the JACK client: {exc}") from exc
        self._client = client
        self.jack_client = client.name
        if reconnect:  # counted before the state says so: status is read from another thread
            self.reconnects += 1
            self.notice = f"reconnected to JACK as {self.jack_client!r} (reconnect #{self.reconnects})"
        self.state = "connected"
        self._connect_ports(first=True)

    def _go_ahead(self, client: Any, outs: list[Any], midi: Any) -> None:
        """Render-ahead mode: the native process callback, a ring filled ``ahead`` blocks deep, its thread."""
        jack, ffi = self._jack, self._ffi
        ring = AheadRing(self.engine, self.ahead, self.midi)
        ring.bind([_address(ffi, p._ptr) for p in outs], _address(ffi, midi._ptr))
        ring.prepare(self._frames)
        status = self._lib.jack_set_process_callback(
            client._ptr, ffi.cast("JackProcessCallback", native_callback().address), ffi.cast("void *", ring.address))
        if status != 0:
            ring.close()
            raise jack.JackError(f"jack_set_process_callback failed ({status})")
        jack_priority = realtime_priority(_address(ffi, client._ptr))
        ring.start(max(CONTROL_PRIORITY + 1, jack_priority - 1))  # below JACK's thread, above the main thread
        self._ring = ring

    def _close_ring(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()

    def _cycle_count(self) -> int:
        """JACK cycles the live client has seen (its native callback counts them in render-ahead mode)."""
        ring = self._ring
        return int(ring.header[CYCLES]) if ring is not None else self._cycles

    def _bind_ports(self, client: Any, outs: list[Any], midi: Any) -> None:
        jack = self._jack
        self._lib, self._ffi = jack._lib, jack._ffi
        self._client_ptr = client._ptr
        self._out_ptrs = tuple(p._ptr for p in outs)
        self._midi_ptr = midi._ptr
        self._midi_port = midi
        self._event = self._ffi.new("jack_midi_event_t*")
        self._port_rows = tuple(zip(self._out_ptrs, self._rows))

    def _prepare(self, frames: int) -> None:
        """Preallocate the per-cycle arrays for ``frames``-frame cycles."""
        channels = self.engine.channels
        self._frames = frames
        self._late_limit = frames // 2
        self._ns_per_frame = 1e9 / self.engine.samplerate
        self._period_ns = frames * self._ns_per_frame
        self._nbytes = frames * 4
        self._out = np.zeros((frames, channels), dtype=np.float32)
        self._planar = np.zeros((channels, frames), dtype=np.float32)
        self._planar_t = self._planar.T  # [frames, channels] view: np.copyto(self._planar_t, self._out)
        self._rows = tuple(self._planar[c] for c in range(channels))
        self._silence = np.zeros(frames, dtype=np.float32)
        if hasattr(self, "_out_ptrs"):
            self._port_rows = tuple(zip(self._out_ptrs, self._rows))

    def _follow_format(self, samplerate: int, blocksize: int) -> None:
        engine = self.engine
        if (samplerate, blocksize) != (engine.samplerate, engine.blocksize):
            changes = []
            if samplerate != engine.samplerate:
                changes.append(f"sample rate {engine.samplerate} -> {samplerate} Hz")
            if blocksize != engine.blocksize:
                changes.append(f"block size {engine.blocksize} -> {blocksize} frames")
            engine.set_format(samplerate, blocksize)
            self.notice = "following the JACK server: " + ", ".join(changes)
            self._prepare(blocksize)
        elif blocksize != self._frames:
            self._prepare(blocksize)

    def _connect_ports(self, first: bool = False) -> None:
        """Auto-connect the outputs (at start) and every MIDI source matching ``midi_in``."""
        client = self._client
        if client is None:
            return
        try:
            if first and self.autoconnect:
                playback = client.get_ports(is_audio=True, is_input=True, is_physical=True)
                for port, target in zip(client.outports, playback):
                    self._connect(client, port.name, target.name)
            if self.midi_in:
                own = self._midi_port.name
                wanted = [re.compile(p) for p in self.midi_in]
                for source in client.get_ports(is_midi=True, is_output=True):
                    if any(w.fullmatch(source.name) for w in wanted):
                        self._connect(client, source.name, own)
        except self._jack.JackError as exc:
            self.notice = f"JACK port connection failed: {exc}"

    def connect_midi(self, source: str) -> None:
        """Connect the JACK MIDI output ``source`` to ``midi_in`` now, and again after every reconnect.

        ``ensemble midi connect``.  Context: non-realtime.  Cost: a round trip
        to the server.  Raises :class:`BackendUnavailable` when the processor
        is not on JACK right now or ``source`` is not a JACK MIDI output.
        """
        client = self._client
        if client is None or self.state != "connected":
            raise BackendUnavailable(f"the processor is not on JACK right now (state {self.state!r})")
        jack = self._jack
        try:
            port = client.get_port_by_name(source)
        except jack.JackError:
            port = None
        if port is None or not (port.is_midi and port.is_output):
            raise BackendUnavailable(f"no JACK MIDI output named {source!r}; `ensemble midi list` shows them")
        try:
            self._connect(client, source, self._midi_port.name)
        except jack.JackError as exc:
            raise BackendUnavailable(f"JACK refused to connect {source!r} to {self._midi_port.name!r}: {exc}") from exc
        pattern = re.escape(source)
        if pattern not in self.midi_in:
            self.midi_in = (*self.midi_in, pattern)

    def midi_sources(self) -> list[str]:
        """The JACK ports connected to ``midi_in`` now ([] off JACK).  Context: non-realtime."""
        client = self._client
        if client is None or self.state != "connected":
            return []
        try:
            return sorted(p.name for p in client.get_all_connections(self._midi_port))
        except Exception:  # noqa: BLE001 - a client on its way out
            return []

    def _connect(self, client: Any, source: str, destination: str) -> None:
        jack = self._jack
        try:
            client.connect(source, destination)
        except jack.JackErrorCode as exc:
            if exc.code != 17:  # EEXIST: connected already
                raise

    # ------------------------------------------------------------------ the process callback
    def _process(self, frames: int) -> None:
        lib = self._lib
        entered = time.perf_counter_ns()
        late = lib.jack_frames_since_cycle_start(self._client_ptr)  # GIL wait + wake-up, in frames
        cycle_start = entered - int(late * self._ns_per_frame)
        self._in_cycle = True
        cycles, timed = self._cycles, self._timed
        self._late[timed % _RING] = late
        if late > self._late_limit:
            self.late_cycles += 1
        try:
            if cycles == 0:
                self.thread_policy = thread_policy()  # two syscalls, once
            start = self.engine.frame
            self._read_midi(lib, frames, start)
            if frames == self._frames:
                self.engine.render(self._out)
                np.copyto(self._planar_t, self._out)
                memmove, nbytes = self._ffi.memmove, self._nbytes
                for port, row in self._port_rows:
                    memmove(lib.jack_port_get_buffer(port, frames), row, nbytes)
            else:
                self._process_odd(lib, frames)
        except Exception as exc:  # never out of a JACK callback: JACK would drop the client
            self.callback_errors += 1
            self.last_error = exc
            self._output_silence(lib, frames)
        done = time.perf_counter_ns() - cycle_start  # not frames_since_cycle_start: it restarts at the next cycle
        self._done[timed % _RING] = done
        if done > self._period_ns:
            self.overrun_cycles += 1
        self._timed = timed + 1
        self._cycles = cycles + 1
        self._in_cycle = False

    def _read_midi(self, lib: Any, frames: int, start: int) -> None:
        buf = lib.jack_port_get_buffer(self._midi_ptr, frames)
        count = lib.jack_midi_get_event_count(buf)
        if not count:
            return
        event, message = self._event, self.midi.message
        for i in range(count):
            if lib.jack_midi_event_get(event, buf, i) != 0:
                continue
            size = event.size
            if size:
                data = event.buffer
                message(data[0], data[1] if size > 1 else 0, data[2] if size > 2 else 0, start + event.time)

    def _process_odd(self, lib: Any, frames: int) -> None:
        """A cycle of another size than prepared (a size change not yet seen): render in pieces.

        Only array views are made (small objects); JACK2 announces every size
        change before the first cycle of that size, so this is a safety net.
        """
        engine, done, ffi = self.engine, 0, self._ffi
        while done < frames:
            n = min(frames - done, engine.blocksize, self._frames)
            piece = self._out[:n]
            engine.render(piece)
            np.copyto(self._planar[:, :n], piece.T)
            for port, row in self._port_rows:
                dest = ffi.cast("float *", lib.jack_port_get_buffer(port, frames)) + done
                ffi.memmove(dest, row, n * 4)
            done += n

    def _output_silence(self, lib: Any, frames: int) -> None:
        try:
            for port in self._out_ptrs:
                self._ffi.memset(lib.jack_port_get_buffer(port, frames), 0, frames * 4)
        except Exception:  # noqa: BLE001 - nothing more can be done inside the callback
            pass

    # ------------------------------------------------------------------ JACK notifications (non-realtime)
    def _on_xrun(self, delayed_usecs: float) -> None:
        if self._cycle_count() == 0:
            self.startup_xruns += 1
        else:
            self.engine.report_status(xrun=True)
        if delayed_usecs > self.xrun_max_delay_us:
            self.xrun_max_delay_us = delayed_usecs

    def _on_blocksize(self, blocksize: int) -> None:
        # JACK2 runs this with the cycle halted (driver stopped, clients notified synchronously).
        self._reformat(self.engine.samplerate, blocksize)

    def _on_samplerate(self, samplerate: int) -> None:
        self._reformat(samplerate, self.engine.blocksize)

    def _reformat(self, samplerate: int, blocksize: int) -> None:
        ring = self._ring
        if ring is None:
            self._follow_format(samplerate, blocksize)
        else:  # the render thread renders outside JACK's cycle: wait for its block, then refill at the new size
            ring.prepare(blocksize, before=lambda: self._follow_format(samplerate, blocksize))

    def _on_shutdown(self, status: Any, reason: str) -> None:
        self._lost = reason or "the JACK server shut the client down"
        self._wake.set()

    def _on_port_registration(self, port: Any, register: bool) -> None:
        if register and self.midi_in:
            self._rescan = True
            self._wake.set()

    # ------------------------------------------------------------------ the watcher thread
    def _watch(self) -> None:
        seen, since = -1, time.monotonic()  # the cycle count last looked at, and when it last moved
        while not self._stopping:
            self._wake.wait(_WATCH_EVERY if self.state == "connected" else self.reconnect_interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                now = time.monotonic()
                self._close_ended(now)
                cycles = self._cycle_count()
                if cycles != seen or self.state != "connected":
                    seen, since = cycles, now
                elif now - since > SILENCE_LIMIT and not self._lost:
                    self._lost = f"no process cycle from JACK for {now - since:.1f} s"
                if self._lost and self.state == "connected":
                    self._fall_back(self._lost)
                elif self.state == "null-clock":
                    self._try_reconnect()
                if self._rescan and self.state == "connected":
                    self._rescan = False
                    self._connect_ports()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failure
                self.last_error = exc
                self.notice = f"JACK watcher: {type(exc).__name__}: {exc}"

    def _close_ended(self, now: float) -> None:
        """Close the dead clients whose realtime thread ended itself a second ago (their server came back):
        no thread of theirs can be cancelled while it waits for the GIL any more (see _fall_back)."""
        for gen, ring in self._dead_rings.items():
            if ring.ended:  # its native callback ended the thread
                self._ended.setdefault(gen, now)
        for gen, when in list(self._ended.items()):
            if now - when > _ENDED_CLOSE_AFTER:
                del self._ended[gen]
                dead = self._dead.pop(gen, None)
                if dead is not None:
                    dead.close(ignore_errors=True)
                if gen in self._dead_rings:
                    self._dead_rings.pop(gen).close()

    def _fall_back(self, reason: str) -> None:
        deadline = time.monotonic() + 0.5
        while self._in_cycle and time.monotonic() < deadline:  # a last cycle still finishing
            time.sleep(0.001)
        self._gen += 1  # the dead client's cycles, should its server resume, end its thread (CallbackExit)
        ring, self._ring = self._ring, None
        if ring is not None:  # its callback ends its thread instead; the ring stays while libjack may call it
            ring.kill()
            ring.stop()
            self._dead_rings[self._gen - 1] = ring
        dead, self._client = self._client, None
        if dead is not None:
            # Never deactivated or closed: with its server gone, libjack cancels the client's realtime thread
            # (pthread_cancel) at once, and if that thread is waiting for the GIL at that moment it dies
            # holding the GIL's mutex and the whole process hangs (seen after an orderly `jackd` stop: the
            # processor silent until the supervisor killed it). Left alone it stays parked in libjack, or
            # ends itself at its next cycle if its server resumes; kept here so that no collection closes it.
            self._dead[self._gen - 1] = dead
        fallback = NullBackend(self.engine)
        fallback.start()
        self._fallback = fallback
        self.state = "null-clock"
        self.notice = (f"JACK went away ({reason}); rendering on the null clock (no sound), "
                       f"reconnecting every {self.reconnect_interval:g} s")

    def _try_reconnect(self) -> None:
        try:
            client = open_client(self.client_name)
        except BackendUnavailable:
            return
        self._stop_fallback()
        try:
            self._go_live(client, reconnect=True)
        except BackendUnavailable as exc:
            self.notice = f"JACK is back but the client could not be set up ({exc}); retrying"
            fallback = NullBackend(self.engine)
            fallback.start()
            self._fallback = fallback

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.deactivate(ignore_errors=True)
            client.close(ignore_errors=True)
        self._close_ring()

    def _stop_fallback(self) -> None:
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            fallback.stop()

    # ------------------------------------------------------------------ status
    def reset_timing(self) -> None:
        """Forget the recorded callback start/end times (e.g. after warm-up).  Context: non-realtime."""
        self._timed = 0
        if self._ring is not None:
            self._ring.reset_timing()

    def stats(self) -> dict[str, Any]:
        """Backend figures for ``status``: connection state, JACK's view of load and xruns, MIDI counts.

        ``jack_late_*_ms``: how long after the start of JACK's cycle the
        callback began running Python (waiting for the GIL and the scheduler),
        over the last ``_RING`` (8192) cycles.  Context: non-realtime.  Cost: sorts the
        ring.
        """
        n = min(self._timed, _RING)
        rate = self.engine.samplerate
        ring = self._ring
        if ring is not None:
            self.thread_policy = ring.thread_policy
            return {**self._stats(0, rate), **ring.stats()}
        return self._stats(n, rate)

    def _stats(self, n: int, rate: int) -> dict[str, Any]:
        if n:
            late_ms = self._late[:n] * (1000.0 / rate)
            p50, p99 = (float(v) for v in np.percentile(late_ms, (50.0, 99.0)))
            top = float(late_ms.max())
            done_ms = self._done[:n] / 1e6
            done_p99, done_top = float(np.percentile(done_ms, 99.0)), float(done_ms.max())
        else:
            p50 = p99 = top = done_p99 = done_top = 0.0
        client = self._client
        cpu = 0.0
        if client is not None and self.state == "connected":
            try:
                cpu = float(client.cpu_load())
            except Exception:  # noqa: BLE001 - a client on its way out
                cpu = 0.0
        return {
            "jack_state": self.state,
            "jack_reconnects": self.reconnects,
            "jack_startup_xruns": self.startup_xruns,
            "jack_xrun_max_delay_ms": self.xrun_max_delay_us / 1000.0,
            "jack_cpu_load": cpu,
            "jack_late_p50_ms": float(p50),
            "jack_late_p99_ms": float(p99),
            "jack_late_max_ms": top,
            "jack_late_cycles": self.late_cycles,
            "jack_done_p99_ms": float(done_p99),
            "jack_done_max_ms": done_top,
            "jack_overrun_cycles": self.overrun_cycles,
            "jack_callback_errors": self.callback_errors,
            "midi_sources": self.midi_sources(),
            "midi_events": self.midi.events,
            "midi_ignored": self.midi.ignored,
            "midi_dropped": self.midi.dropped,
            "jack_ahead": 0,
            "jack_ahead_refused": self.ahead_refused,
        }

"""Backends: what clocks :meth:`audio.Engine.render` — a device, a thread, or a file.

These three and the JACK backend (``audio._jack``) share one interface
(:class:`Backend`: ``start``, ``stop``, ``running``, ``notice``, context
manager) and drive the same engine, so the processor's code is identical with
a sound card, without one, and offline.  ``audio._choose`` picks one.

``sounddevice`` is imported lazily, inside :class:`SoundDeviceBackend`,
:func:`devices` and :func:`load_sounddevice`, so ``import audio`` works on a
machine without the PortAudio library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np
import soundfile

from ._engine import Engine
from ._events import Event
from ._realtime import DEFAULT_PRIORITY, GcPause, SwitchInterval, promote_current_thread, thread_policy

__all__ = [
    "Backend",
    "BackendUnavailable",
    "NullBackend",
    "OfflineBackend",
    "OutputDevice",
    "SoundDeviceBackend",
    "devices",
    "render_offline",
]

JACK_CLIENT_NAME = "ensemble"
"""JACK client name the sounddevice backend asks for: ports appear as ``ensemble:out_0`` …"""

# libsndfile's SFC_SET_ADD_PEAK_CHUNK (sndfile.h): a float WAV's PEAK chunk
# carries the time of writing, which would make two renders differ.
_SFC_SET_ADD_PEAK_CHUNK = 0x1050


class BackendUnavailable(RuntimeError):
    """Raised when a requested audio backend cannot run here (no PortAudio, no device)."""


class Backend:
    """Drives an engine's ``render`` from a clock; a context manager.

    Subclasses implement :meth:`start` and :meth:`stop`.  ``notice`` holds a
    one-line remark about how the backend runs (e.g. realtime priority was
    refused), '' when there is nothing to say.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.notice = ""

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        raise NotImplementedError

    def start(self) -> None:
        """Start rendering.  Context: non-realtime."""
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        """Stop rendering and release what ``start`` took.  Context: non-realtime."""
        raise NotImplementedError

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class NullBackend(Backend):
    """Renders in real time on its own thread, with no device; output is discarded.

    The thread keeps an absolute schedule (block ``k`` is due at ``t0 + k *
    period``), so it does not drift however long each render takes.  When it
    falls more than one block behind it counts an xrun and restarts the
    schedule from now instead of bursting to catch up, as a device would.
    Falling behind is counted as a clock slip (``EngineStats.clock_slips``),
    never as an xrun: there is no device to under-run.

    With ``realtime=True`` the thread asks for SCHED_FIFO at ``priority``; when
    the OS refuses, it runs at normal priority and ``notice`` says so.
    """

    def __init__(self, engine: Engine, *, realtime: bool = True, priority: int = DEFAULT_PRIORITY) -> None:
        super().__init__(engine)
        self.realtime = realtime
        self.priority = priority
        self.thread_policy = ""
        self.error: BaseException | None = None
        self._out = np.zeros((engine.blocksize, engine.channels), dtype=np.float32)
        self._thread: threading.Thread | None = None
        self._stop_flag = False
        self._started = threading.Event()

    @property
    def running(self) -> bool:
        """True while the rendering thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the clock thread; returns once it is rendering.

        Context: non-realtime.  Cost: one full GC pass (see ``GcPause``).
        Raises :class:`RuntimeError` if already running or the thread did not
        come up within 5 s.
        """
        if self.running:
            raise RuntimeError("NullBackend is already running; stop() it first")
        self._stop_flag = False
        self.error = None
        self._started.clear()
        GcPause.enter()
        SwitchInterval.enter()
        self._thread = threading.Thread(target=self._run, name="ensemble-null-audio", daemon=True)
        self._thread.start()
        if not self._started.wait(5.0):
            self._stop_flag = True
            SwitchInterval.exit()
            GcPause.exit()
            raise RuntimeError("NullBackend thread did not start within 5 s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and join it.

        Context: non-realtime.  Raises :class:`RuntimeError` if the thread is
        still alive after ``timeout`` seconds, or if rendering failed (chained
        to the error).  Stopping a stopped backend does nothing.
        """
        thread = self._thread
        if thread is None:
            return
        self._stop_flag = True
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"NullBackend thread still running {timeout} s after stop()")
        self._thread = None
        SwitchInterval.exit()
        GcPause.exit()
        if self.error is not None:
            raise RuntimeError("NullBackend rendering failed") from self.error

    def _run(self) -> None:
        if self.realtime:
            self.notice = promote_current_thread(self.priority)
        self.thread_policy = thread_policy()
        self._started.set()
        engine, out = self.engine, self._out
        period = engine.blocksize / engine.samplerate
        due = time.perf_counter()
        try:
            while not self._stop_flag:
                engine.render(out)
                due += period
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -period:
                    engine.report_status(slip=True)
                    due = time.perf_counter()
        except BaseException as exc:  # reported by stop(); the thread must end cleanly
            self.error = exc


@dataclass(frozen=True)
class OutputDevice:
    """An output device PortAudio offers."""

    index: int
    name: str
    host_api: str
    channels: int
    default_samplerate: float


class SoundDeviceBackend(Backend):
    """Plays through PortAudio (python-sounddevice): ALSA, JACK, CoreAudio, WASAPI…

    The stream uses the engine's samplerate, blocksize and channels; ``device``
    is anything ``sounddevice`` accepts (index, name substring, None for the
    default).  On JACK the client is named ``client_name`` (PortAudio's
    ``PaJack_SetClientName``), so the ports show as ``ensemble:out_0``,
    ``ensemble:out_1`` … (PortAudio numbers ports from 0; a second stream in
    the same process continues the numbering; a second process gets
    ``ensemble-01`` from JACK).  ``jack_client`` holds the name JACK gave.

    The callback renders the engine, counts PortAudio's output underflow /
    overflow flags as underflows (``EngineStats.underflows``; on PortAudio's
    JACK host API they stand for JACK's xrun notifications, delivered with the
    next block) and priming blocks as priming, and on its first
    call records the thread's scheduling policy (``thread_policy``), asking for
    SCHED_FIFO if the host API did not already give it.
    """

    def __init__(
        self, engine: Engine, device: int | str | None = None, *,
        client_name: str = JACK_CLIENT_NAME, latency: float | str = "low",
        priority: int = DEFAULT_PRIORITY,
    ) -> None:
        super().__init__(engine)
        self.device = device
        self.client_name = client_name
        self.latency = latency
        self.priority = priority
        self.jack_client: str | None = None
        self.host_api = ""
        self.thread_policy = ""
        self._stream: Any = None
        self._first_call = True

    @property
    def running(self) -> bool:
        """True while the PortAudio stream is active."""
        return self._stream is not None and bool(self._stream.active)

    def start(self) -> None:
        """Open and start the output stream.

        Context: non-realtime.  Cost: opens the device (tens of ms).  Raises
        :class:`BackendUnavailable` when PortAudio is missing or the device
        cannot be opened with the engine's format (chained to sounddevice's
        error), :class:`RuntimeError` if already running.
        """
        if self._stream is not None:
            raise RuntimeError("SoundDeviceBackend is already running; stop() it first")
        sd = load_sounddevice(self.client_name)
        engine = self.engine
        self._first_call = True
        try:
            stream = sd.OutputStream(
                samplerate=engine.samplerate, blocksize=engine.blocksize,
                channels=engine.channels, dtype="float32", device=self.device,
                latency=self.latency, callback=self._callback,
            )
        except Exception as exc:  # sounddevice.PortAudioError, ValueError
            raise BackendUnavailable(
                f"cannot open output device {self.device!r} at {engine.samplerate} Hz, "
                f"{engine.channels} channels, blocksize {engine.blocksize}: {exc}"
            ) from exc
        info = sd.query_devices(stream.device)
        self.host_api = str(sd.query_hostapis(info["hostapi"])["name"])
        self.jack_client = _jack_client_name(sd)
        GcPause.enter()
        SwitchInterval.enter()
        try:
            stream.start()
        except Exception as exc:
            SwitchInterval.exit()
            GcPause.exit()
            stream.close()
            raise BackendUnavailable(f"cannot start output stream: {exc}") from exc
        self._stream = stream

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and close the stream (waits for the last callback).  Context: non-realtime."""
        stream = self._stream
        if stream is None:
            return
        self._stream = None
        try:
            stream.stop()
        finally:
            stream.close()
            SwitchInterval.exit()
            GcPause.exit()

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        # Audio thread.  Everything below is realtime-safe except the one-off
        # scheduler syscalls on the very first call.
        if self._first_call:
            self._first_call = False
            policy = thread_policy()
            if policy.startswith("SCHED_OTHER"):
                self.notice = promote_current_thread(self.priority)
                policy = thread_policy()
            self.thread_policy = policy
        if status:
            self.engine.report_status(
                underflow=bool(status.output_underflow or status.output_overflow),
                priming=bool(status.priming_output),
            )
        self.engine.render(outdata)


def load_sounddevice(client_name: str | None = JACK_CLIENT_NAME) -> ModuleType:
    """Import sounddevice, first naming PortAudio's JACK client ``client_name``.

    PortAudio reads the JACK client name when it initialises (on
    ``import sounddevice``).  If sounddevice was imported earlier under
    another name and a JACK server is up, PortAudio is restarted
    (``Pa_Terminate``/``Pa_Initialize``), which closes any stream this process
    had open: call this before opening streams.

    Context: non-realtime.  Raises :class:`BackendUnavailable` when the
    PortAudio library or the sounddevice package is missing.
    """
    fresh = "sounddevice" not in sys.modules
    if fresh and client_name:
        path = ctypes.util.find_library("portaudio")
        if path is not None:
            _set_jack_client_name(path, client_name)
    try:
        import sounddevice as sd
    except OSError as exc:
        raise BackendUnavailable(
            f"PortAudio library not found ({exc}); install libportaudio2 (Debian/Ubuntu) "
            "or portaudio"
        ) from exc
    except ImportError as exc:
        raise BackendUnavailable("python-sounddevice is not installed; pip install sounddevice") from exc
    if client_name:
        current = _jack_client_name(sd)
        if current is not None and current != client_name and not current.startswith(client_name + "-"):
            sd._terminate()
            _set_jack_client_name(sd._libname, client_name)
            sd._initialize()
    module: ModuleType = sd
    return module


_jack_name_buffers: list[ctypes.Array[ctypes.c_char]] = []  # PortAudio keeps the pointer


def _set_jack_client_name(library: str, name: str) -> None:
    try:
        lib = ctypes.CDLL(library)
        setter = lib.PaJack_SetClientName
    except (OSError, AttributeError):
        return  # a PortAudio built without JACK: the name does not matter
    buffer = ctypes.create_string_buffer(name.encode())
    _jack_name_buffers.append(buffer)
    setter.argtypes = [ctypes.c_char_p]
    setter(buffer)


def _jack_client_name(sd: ModuleType) -> str | None:
    """The name of PortAudio's JACK client, or None when PortAudio has no JACK host API up."""
    if not any("JACK" in str(api["name"]) for api in sd.query_hostapis()):
        return None  # asking PortAudio anyway makes it print an error line to stderr
    try:
        getter = ctypes.CDLL(sd._libname).PaJack_GetClientName
    except (OSError, AttributeError):
        return None
    getter.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    name = ctypes.c_char_p()
    if getter(ctypes.byref(name)) != 0 or name.value is None:
        return None
    return name.value.decode(errors="replace")


def devices() -> list[OutputDevice]:
    """List the output devices PortAudio offers (host APIs with a running server only).

    Context: non-realtime.  Cost: a PortAudio query.  Raises
    :class:`BackendUnavailable` when PortAudio cannot be loaded.
    """
    sd = load_sounddevice()
    apis = sd.query_hostapis()
    found = []
    for info in sd.query_devices():
        if info["max_output_channels"] > 0:
            found.append(OutputDevice(
                index=int(info["index"]), name=str(info["name"]),
                host_api=str(apis[info["hostapi"]]["name"]),
                channels=int(info["max_output_channels"]),
                default_samplerate=float(info["default_samplerate"]),
            ))
    return found


class OfflineBackend(Backend):
    """Renders as fast as possible into a WAV file, in the calling thread.

    ``start()`` renders ``seconds`` of audio (rounded up to whole blocks, then
    trimmed to the exact frame count) and returns when the file is written;
    ``events`` (any order; ``at=None`` means frame 0) are posted block by block
    just before the block that plays them.  Deterministic: the same engine
    settings, buffers and events give a bit-identical file (float WAV without
    the time-stamped PEAK chunk).
    """

    def __init__(
        self, engine: Engine, path: str | Path, seconds: float,
        events: Iterable[Event] = (), *, subtype: str = "FLOAT",
        feed: Callable[[Event], None] | None = None,
        between_blocks: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(engine)
        self.feed = feed or engine.post  # where due events go (a script host takes them instead)
        self.between_blocks = between_blocks  # called with each block's first frame, before it renders
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        self.path = Path(path)
        self.frames = int(round(seconds * engine.samplerate))
        self.subtype = subtype
        self._events = sorted(events, key=lambda e: -1 if e.at is None else e.at)
        self._running = False

    @property
    def running(self) -> bool:
        """True while ``start()`` is rendering."""
        return self._running

    def start(self) -> None:
        """Render the whole file.  Context: non-realtime.  Raises what soundfile raises on I/O."""
        engine = self.engine
        block = np.zeros((engine.blocksize, engine.channels), dtype=np.float32)
        chunk_blocks = max(1, 16384 // engine.blocksize)
        chunk = np.zeros((chunk_blocks * engine.blocksize, engine.channels), dtype=np.float32)
        events, next_event = self._events, 0
        written, filled = 0, 0
        self._running = True
        try:
            with soundfile.SoundFile(self.path, "w", engine.samplerate, engine.channels,
                                     subtype=self.subtype, format="WAV") as sink:
                _disable_peak_chunk(sink)
                while written + filled < self.frames:
                    block_end = engine.frame + engine.blocksize
                    while next_event < len(events) and (events[next_event].at or 0) < block_end:
                        self.feed(events[next_event])
                        next_event += 1
                    if self.between_blocks is not None:
                        self.between_blocks(engine.frame)
                    engine.render(block)
                    chunk[filled:filled + engine.blocksize] = block
                    filled += engine.blocksize
                    if filled == chunk.shape[0]:
                        keep = min(filled, self.frames - written)
                        sink.write(chunk[:keep])
                        written, filled = written + keep, 0
                if filled:
                    keep = min(filled, self.frames - written)
                    sink.write(chunk[:keep])
        finally:
            self._running = False

    def stop(self, timeout: float = 5.0) -> None:
        """Nothing to stop: ``start`` returns when the file is complete."""


def _disable_peak_chunk(sink: soundfile.SoundFile) -> None:
    """Ask libsndfile not to write the PEAK chunk (it holds a timestamp)."""
    try:
        lib, ffi, handle = soundfile._snd, soundfile._ffi, sink._file
        lib.sf_command(handle, _SFC_SET_ADD_PEAK_CHUNK, ffi.NULL, 0)
    except AttributeError:  # a soundfile without these internals: files differ in 4 bytes
        pass


def render_offline(
    engine: Engine, path: str | Path, seconds: float, events: Iterable[Event] = (),
    *, subtype: str = "FLOAT",
) -> Path:
    """Render ``seconds`` of ``engine`` with ``events`` into the WAV file ``path``; returns the path.

    See :class:`OfflineBackend`.  Context: non-realtime; blocks until done.
    """
    backend = OfflineBackend(engine, path, seconds, events, subtype=subtype)
    backend.start()
    return backend.path

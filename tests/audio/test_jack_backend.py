"""The JACK-native backend in a running daemon: live MIDI in at exact frames, sustain, scripts, JACK restarts.

Sources and sinks are JACK's own example clients (``jack_midiseq`` plays a
looped note sequence, ``jack_rec`` records ensemble's output) or a small
JACK-Client MIDI source in the test process.  Every timing check is relative
to the first note heard, in frames of the recording, never wall-clock.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audio import BackendUnavailable
from audio._buffers import BUILTIN_FREQUENCY
from audio._jack import jack_module
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.jack

RATE = 48000
RELEASE = 4800  # the engine's default 100 ms release at 48 kHz
LOOP = 48000
SEQUENCE = [(0, 60), (9000, 67), (21000, 72), (33333, 64)]  # (start frame in the loop, note); odd gaps on purpose
LENGTH = 4000  # frames each note is held; release included, every note ends before the next starts


def _jack_lsp(env: dict[str, str] | None = None) -> str | None:
    try:
        result = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10, env=env)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"JACK example clients not installed ({', '.join(missing)}; Debian: jackd2)")
    try:
        jack_module()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def jack_server() -> None:
    """Skip unless the default JACK server runs and the clients the tests drive are installed."""
    if _jack_lsp() is None:
        pytest.skip("no JACK server running (jack_lsp failed); start one with: jackd -R -d dummy -r 48000 -p 256")
    _need("jack_midiseq", "jack_rec")


def _processor(d: Daemon) -> dict[str, Any]:
    return dict(d.actor("processor").stats)


@pytest.fixture(params=["0", "2"], ids=["in-callback", "ahead-2"])
def ahead(request: pytest.FixtureRequest) -> str:
    """``[audio] jack_ahead``: render in JACK's callback (0), or 2 blocks ahead behind a native callback."""
    if request.param != "0":
        try:
            from audio._ahead import native_callback
            native_callback()
        except Exception as exc:  # noqa: BLE001 - numba or libjack missing: say which
            pytest.skip(f"render-ahead unavailable: {exc}")
    return str(request.param)


def _jack_daemon(make_daemon: Callable[..., Daemon], source: str, **env: str) -> tuple[Daemon, str]:
    """A daemon whose processor is a JACK client taking MIDI from ports matching ``source``; (daemon, client name)."""
    d = make_daemon(workers=0, extra_env={
        "ENSEMBLE_AUDIO_BACKEND": "auto", "ENSEMBLE_AUDIO_AUTOCONNECT": "false",
        "ENSEMBLE_AUDIO_MIDI_IN": source, **env,
    })
    d.up()
    stats = wait_for(lambda: (s := _processor(d)).get("jack_state") == "connected" and s, what="the JACK backend")
    assert stats["backend"] == "jack"
    return d, str(stats["jack_client"])


class Recording:
    """``jack_rec`` recording one port to a 32-bit WAV for ``seconds``; a context manager."""

    def __init__(self, path: Path, port: str, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.log = path.with_suffix(".log")
        # -B: a ring buffer holding the whole recording, so a stalled disk thread cannot drop frames
        frames = 1 << max(14, int(seconds * RATE + RATE).bit_length())
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["jack_rec", "-f", str(path), "-d", f"{seconds:g}", "-b", "32", "-B", str(frames), port],
                stdout=log, stderr=subprocess.STDOUT)

    def samples(self) -> np.ndarray:
        """Wait for the recording to end (jack_rec stops after ``seconds``) and read channel 1; no frame lost."""
        code = self.proc.wait(timeout=self.seconds + 60)
        said = self.log.read_text(errors="replace")
        assert code == 0 and "overruns" not in said, f"jack_rec failed (exit {code}): {said}"
        audio, rate = soundfile.read(str(self.path), dtype="float64", always_2d=True)
        assert rate == RATE
        return audio[:, 0]

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Sequencer:
    """``jack_midiseq NAME 48000 [start note 4000] ...``: the loop in :data:`SEQUENCE`, until closed."""

    def __init__(self, name: str, sequence: list[tuple[int, int]], loop: int = LOOP) -> None:
        args = [str(x) for start, note in sequence for x in (start, note, LENGTH)]
        self.proc = subprocess.Popen(["jack_midiseq", name, str(loop), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def onsets(signal_: np.ndarray) -> list[int]:
    """Frames where sound starts after exact silence (not the first frame of the recording)."""
    sounding = signal_ != 0.0
    return [int(i) + 1 for i in np.flatnonzero(sounding[1:] & ~sounding[:-1])]


def pitch_note(signal_: np.ndarray, start: int) -> int:
    """The MIDI note whose built-in-sample pitch the 3000 frames after ``start`` (past the attack) have."""
    segment = signal_[start + 200 : start + 3200] * np.hanning(3000)
    spectrum = np.abs(np.fft.rfft(segment, 1 << 17))
    freq = float(np.fft.rfftfreq(1 << 17, 1 / RATE)[np.argmax(spectrum)])
    return int(round(60 + 12 * np.log2(freq / BUILTIN_FREQUENCY)))


def check_timeline(recorded: np.ndarray, sequence: list[tuple[int, int]], transpose: int = 0, loop: int = LOOP) -> int:
    """Every note in ``recorded`` starts where the looped ``sequence`` says, relative to the first; returns the count."""
    starts = onsets(recorded)
    if starts and not recorded[: starts[0]].any():
        # after nothing but the recording's leading silence (jack_rec's first period): it may be a note that began
        # before the recording did (seen in CI: the tail of a note heard as one starting at frame 256); its start
        # cannot be timed, so the timeline starts at the next one
        starts = starts[1:]
    heard = [(frame, pitch_note(recorded, frame)) for frame in starts if frame + 3200 < recorded.size]
    assert len(heard) >= 2 * len(sequence), f"too few notes heard: {heard}"
    index = {note + transpose: i for i, (_, note) in enumerate(sequence)}
    first_frame, first_note = heard[0]
    assert first_note in index, f"first note heard has pitch {first_note}, not one of the sequence's"
    k0 = index[first_note]
    for n, (frame, note) in enumerate(heard):
        expected_note = sequence[(k0 + n) % len(sequence)][1] + transpose
        loops, k = divmod(k0 + n, len(sequence))
        expected_frame = first_frame + loops * loop + sequence[k][0] - sequence[k0][0]
        assert (frame, note) == (expected_frame, expected_note), f"note {n} of {heard}"
    return len(heard)


def in_time(d: Daemon, record: Callable[[int], np.ndarray], check: Callable[[np.ndarray], Any], takes: int = 5) -> Any:
    """``check(record(take))`` for the first take that passes; a failed take counts only if JACK saw no xrun in it.

    When a client is late JACK skips cycles of the clients after it in the
    graph, ``jack_rec`` among them: a take with an xrun may have lost whole
    periods, and every note after the loss is heard early.  Such a take is
    recorded again (a loaded machine gets more takes, never a looser check); a
    take without an xrun that fails the check fails the test.
    """
    lost = []
    for take in range(takes):
        before = _processor(d)["xruns"]
        recorded = record(take)
        xruns = _processor(d)["xruns"] - before
        try:
            return check(recorded)
        except AssertionError as exc:
            if not xruns:
                raise
            lost.append(f"take {take} ({xruns} xruns): {exc}")
    raise AssertionError("every take had JACK xruns and failed the check:\n" + "\n".join(lost))


@pytest.mark.slow  # records seconds of JACK audio: ~4 s
def test_midiseq_notes_start_on_their_frames_at_their_pitch(
    jack_server: None, make_daemon: Callable[..., Daemon], tmp_path: Path, ahead: str
) -> None:
    seq_name = f"ens-seq-{os.getpid()}"
    d, client = _jack_daemon(make_daemon, f"{seq_name}:out", ENSEMBLE_AUDIO_JACK_AHEAD=ahead)
    assert _processor(d).get("jack_ahead", 0) == int(ahead)
    sequencer = Sequencer(seq_name, SEQUENCE)
    try:
        wait_for(lambda: _processor(d)["midi_events"] >= 2, what="MIDI from jack_midiseq to arrive")

        def record(take: int) -> np.ndarray:
            with Recording(tmp_path / f"out{take}.wav", f"{client}:out_0", 3.5) as rec:
                return rec.samples()

        heard = in_time(d, record, lambda recorded: check_timeline(recorded, SEQUENCE))
    finally:
        sequencer.close()
    stats = _processor(d)
    print(f"\n{heard} notes at their exact frames; JACK xruns {stats['xruns']} "
          f"(startup {stats['jack_startup_xruns']}), callback late p99 {stats['jack_late_p99_ms']:.3f} ms")
    assert stats["midi_dropped"] == 0 and stats["late_events"] == 0


@pytest.mark.slow  # plays and records JACK MIDI: ~3.5 s
def test_midi_reaches_the_script_with_its_frame(
    jack_server: None, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    script = tmp_path / "octave.py"
    script.write_text(
        "from controller.script import play_note, release_voice\n"
        "held = {}\n"
        "def on_note(event):\n"
        "    held[event.note] = play_note(event.note + 12, event.velocity)\n"
        "def on_release(event):\n"
        "    note_id = held.pop(event.note, 0)\n"
        "    if note_id:\n"
        "        release_voice(note_id)\n"
    )
    seq_name = f"ens-oct-{os.getpid()}"
    d, client = _jack_daemon(make_daemon, f"{seq_name}:out")
    d.client().load_script(str(script))
    wait_for(lambda: _processor(d).get("script") == str(script), what="the script in the processor")
    sequence = [(0, 60), (10001, 64)]
    sequencer = Sequencer(seq_name, sequence, loop=24000)
    try:
        wait_for(lambda: _processor(d)["midi_events"] >= 2, what="MIDI to arrive")

        def record(take: int) -> np.ndarray:
            with Recording(tmp_path / f"out{take}.wav", f"{client}:out_0", 2.0) as rec:
                return rec.samples()

        # on_note played an octave up, on the note's frame
        in_time(d, record, lambda recorded: check_timeline(recorded, sequence, transpose=12, loop=24000))
    finally:
        sequencer.close()
    assert _processor(d)["script_errors"] == 0


class MidiSource:
    """A JACK MIDI output in the test process that plays ``(frame, bytes)`` events once armed."""

    def __init__(self, name: str) -> None:
        jack = jack_module()
        self.client = jack.Client(name, no_start_server=True)
        self.port = self.client.midi_outports.register("out")
        self.pending: list[tuple[int, bytes]] = []
        self.position = -1  # frames since arming; -1: not armed
        self.client.set_process_callback(self._process)
        self.client.activate()

    def play(self, events: list[tuple[int, bytes]]) -> None:
        self.pending = sorted(events)
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= 0 and not self.pending

    def _process(self, frames: int) -> None:
        self.port.clear_buffer()
        if self.position < 0:
            return
        while self.pending and self.pending[0][0] < self.position + frames:
            frame, data = self.pending.pop(0)
            self.port.write_midi_event(frame - self.position, data)
        self.position += frames

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


@pytest.fixture
def midi_source() -> Iterator[MidiSource]:
    source = MidiSource(f"ens-src-{os.getpid()}")
    try:
        yield source
    finally:
        source.close()


@pytest.mark.slow  # records seconds of JACK audio: ~3 s
def test_sustain_pedal_holds_a_release_until_it_lifts(
    jack_server: None, make_daemon: Callable[..., Daemon], midi_source: MidiSource, tmp_path: Path, ahead: str
) -> None:
    d, client = _jack_daemon(make_daemon, midi_source.port.name, ENSEMBLE_AUDIO_JACK_AHEAD=ahead)
    wait_for(lambda: midi_source.port.is_connected_to(f"{client}:midi_in"), what="the source connected to midi_in")
    note_on, pedal_down, note_off, pedal_up = 0, 1000, 12000, 48000
    played = 0

    def record(take: int) -> np.ndarray:
        nonlocal played
        with Recording(tmp_path / f"out{take}.wav", f"{client}:out_0", 2.5) as rec:
            jack = midi_source.client
            wait_for(lambda: jack.get_all_connections(f"{client}:out_0"), what="jack_rec to connect")
            midi_source.play([
                (note_on, bytes([0x90, 60, 100])), (pedal_down, bytes([0xB0, 64, 127])),
                (note_off, bytes([0x80, 60, 0])), (pedal_up, bytes([0xB0, 64, 0])),
            ])
            wait_for(lambda: midi_source.done, what="the source to play its events")
            played += 4
            return rec.samples()

    def check(recorded: np.ndarray) -> None:
        sounding = np.flatnonzero(recorded != 0.0)
        assert sounding.size, "nothing was heard"
        first, last = int(sounding[0]), int(sounding[-1])
        assert np.all(recorded[first : first + note_off + RELEASE + 1000] != 0.0)  # held past note off + release
        assert last - first == pedal_up - note_on + RELEASE - 2  # released at the pedal's frame: exactly 0 on the release's last frame

    in_time(d, record, check)
    assert _processor(d)["midi_events"] == played


def _start_private_server(name: str, rate: int = RATE) -> subprocess.Popen[bytes]:
    env = dict(os.environ, JACK_DEFAULT_SERVER=name)
    proc = subprocess.Popen(["jackd", "-n", name, "-r", "-d", "dummy", "-r", str(rate), "-p", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: _jack_lsp(env) is not None, what=f"a private JACK server {name!r}")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _daemon_on(make_daemon: Callable[..., Daemon], server: str, ahead: str = "0") -> tuple[Daemon, int]:
    """A daemon with no workers whose processor is a client of JACK server ``server``: (it, the processor's pid)."""
    d = make_daemon(workers=0, extra_env={"JACK_DEFAULT_SERVER": server, "ENSEMBLE_AUDIO_BACKEND": "auto",
                                          "ENSEMBLE_AUDIO_JACK_AHEAD": ahead})
    d.up()
    wait_for(lambda: _processor(d).get("jack_state") == "connected", what="the JACK backend")
    return d, d.actor("processor").pid


@pytest.mark.slow  # restarts a JACK server: ~2.3 s
def test_processor_survives_jack_going_away_and_reconnects(make_daemon: Callable[..., Daemon], ahead: str) -> None:
    _need("jackd")
    server = f"ens-test-{os.getpid()}"
    jackd = _start_private_server(server)
    try:
        d, pid = _daemon_on(make_daemon, server, ahead)
        _stop(jackd, signal.SIGKILL)  # JACK killed under a running daemon
        lost = wait_for(lambda: (s := _processor(d)).get("jack_state") == "null-clock" and s, what="the null clock")
        assert "JACK went away" in lost["notice"]
        wait_for(lambda: _processor(d)["blocks"] > lost["blocks"] + 50, what="blocks on the null clock")
        assert d.actor("processor").pid == pid  # the same process kept running
        jackd = _start_private_server(server)
        back = wait_for(lambda: (s := _processor(d)).get("jack_state") == "connected" and s, timeout=60,
                        what="the processor to reconnect")
        assert back["jack_reconnects"] == 1 and d.actor("processor").pid == pid
        ports = _jack_lsp(dict(os.environ, JACK_DEFAULT_SERVER=server)) or ""
        assert f"{back['jack_client']}:out_0" in ports.split()
        d.down()
    finally:
        _stop(jackd)
        _remove_semaphores(server)


@pytest.mark.slow  # SILENCE_LIMIT (3 s) of a stopped server, then its return
def test_a_server_that_stops_running_cycles_is_given_up_and_rejoined(make_daemon: Callable[..., Daemon],
                                                                    ahead: str) -> None:
    """No shutdown notice at all (jackd stopped with SIGSTOP): cycles that stop count as JACK gone; when the
    server resumes, the processor joins it again with a new client and the old one is dropped."""
    _need("jackd")
    server = f"ens-stop-{os.getpid()}"
    jackd = _start_private_server(server)
    try:
        d, pid = _daemon_on(make_daemon, server, ahead)
        jackd.send_signal(signal.SIGSTOP)
        try:
            lost = wait_for(lambda: (s := _processor(d)).get("jack_state") == "null-clock" and s, timeout=60,
                            what="the null clock")
            assert "no process cycle from JACK" in lost["notice"]
            wait_for(lambda: _processor(d)["blocks"] > lost["blocks"] + 50, what="blocks on the null clock")
        finally:
            jackd.send_signal(signal.SIGCONT)
        back = wait_for(lambda: (s := _processor(d)).get("jack_state") == "connected" and s, timeout=60,
                        what="the processor to rejoin the server")
        assert back["jack_reconnects"] == 1 and d.actor("processor").pid == pid
        env = dict(os.environ, JACK_DEFAULT_SERVER=server)
        wait_for(lambda: [p for p in (_jack_lsp(env) or "").split() if p.endswith(":out_0")] == [
            f"{back['jack_client']}:out_0"], what="the old client to be dropped")
        d.down()
    finally:
        jackd.send_signal(signal.SIGCONT)
        _stop(jackd)
        _remove_semaphores(server)


def _remove_semaphores(server: str) -> None:
    """This test's own server's semaphores: a jackd killed, or restarted under its clients, leaves them."""
    for leftover in Path("/dev/shm").glob(f"jack_sem.*_{server}_*"):
        leftover.unlink(missing_ok=True)


@pytest.mark.slow  # several seconds: two JACK servers in turn under one daemon
def test_a_server_back_at_another_sample_rate_is_followed(make_daemon: Callable[..., Daemon]) -> None:
    """JACK cannot change its rate while running: a server restarted at 44.1 kHz is how the rate changes."""
    _need("jackd")
    server = f"ens-rate-{os.getpid()}"
    jackd = _start_private_server(server, 48000)
    try:
        d = make_daemon(workers=0, extra_env={"JACK_DEFAULT_SERVER": server, "ENSEMBLE_AUDIO_BACKEND": "auto"})
        d.up()
        first = wait_for(lambda: (s := _processor(d)).get("jack_state") == "connected" and s, what="the JACK backend")
        assert first["samplerate"] == 48000
        _stop(jackd)  # an orderly shutdown this time: JACK tells its clients
        wait_for(lambda: _processor(d).get("jack_state") == "null-clock", what="the null clock")
        jackd = _start_private_server(server, 44100)
        back = wait_for(lambda: (s := _processor(d)).get("jack_state") == "connected" and s["samplerate"] == 44100
                        and s, timeout=60, what="the processor back at 44100 Hz")
        assert back["period_ms"] == pytest.approx(256 / 44100 * 1000, rel=1e-6)
        wait_for(lambda: _processor(d)["blocks"] > back["blocks"] + 50, what="blocks at the new rate")
        d.down()
    finally:
        _stop(jackd)
        _remove_semaphores(server)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))

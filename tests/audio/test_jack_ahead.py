"""Render-ahead on JACK (``[audio] jack_ahead``): a native process callback playing blocks a render thread keeps ready.

The backend runs in this process on the default JACK server, so the tests
can stall the render thread and read the ring's counters; the buffer-size
change runs in a child process on a private server (a process can talk to
one JACK server only).  What a daemon does with
it (notes at their exact frames, the pedal, JACK going away) is in
``test_jack_backend.py``, parametrised over both modes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from audio import Engine, builtin_sample
from audio._ahead import TIMED, TIMES, TIMES_CAP
from audio._backends import BackendUnavailable
from audio._jack import JackBackend, jack_module
from tests.conftest import Daemon, wait_for

pytestmark = pytest.mark.jack


def _jack_lsp(env: dict[str, str] | None = None) -> bool:
    try:
        return subprocess.run(["jack_lsp"], env=env, capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def server() -> None:
    """The default JACK server (one process may only talk to one server: PortAudio's JACK tests use it too)."""
    try:
        jack_module()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    if not _jack_lsp():
        pytest.skip("no JACK server running (jack_lsp failed); start one with: jackd -R -d dummy -r 48000 -p 256")


def _engine() -> Engine:
    engine = Engine(48000, 128, 2, max_voices=8)
    engine.set_buffer(0, builtin_sample(48000, 30.0))
    return engine


def _native() -> None:
    try:
        from audio._ahead import native_callback
        native_callback()
    except Exception as exc:  # noqa: BLE001 - numba missing: say so
        pytest.skip(f"render-ahead unavailable: {exc}")


def test_the_ring_keeps_up_and_a_stalled_render_thread_is_counted_as_underruns(server: None) -> None:
    _native()
    engine = _engine()
    backend = JackBackend(engine, client_name="ahead-test", autoconnect=False, ahead=2)
    stall = {"ms": 0.0}

    def hook(start: int, frames: int) -> None:  # runs on the render thread, inside each block's render
        if stall["ms"]:
            ms, stall["ms"] = stall["ms"], 0.0
            time.sleep(ms / 1000.0)

    engine.add_block_hook(hook)
    backend.start()
    try:
        assert backend.state == "connected" and backend.ahead == 2
        engine.note_on(60, 0.5)
        wait_for(lambda: backend.stats()["jack_done_p99_ms"] > 0 and engine.stats().blocks > 200,
                 what="blocks rendered ahead")
        s = backend.stats()
        assert s["jack_ahead"] == 2 and s["ahead_latency_ms"] == pytest.approx(2 * engine.blocksize / 48, rel=1e-9)
        assert s["ahead_render_errors"] == 0 and engine.stats().output_peak > 0
        assert s["ahead_callback_max_ms"] > 0  # the native callback times itself
        # reset_timing leaves the callback's earlier cycles out (it is its timing ring's only writer)
        h = backend._ring.header
        t = int(h[TIMED])
        h[TIMES + (t - 1) % TIMES_CAP] = 10**12  # an earlier cycle said to have taken 1,000 s
        assert backend.stats()["ahead_callback_max_ms"] >= 1e6
        backend.reset_timing()
        wait_for(lambda: int(h[TIMED]) > t + 20, what="cycles timed after the reset")
        assert 0 < backend.stats()["ahead_callback_max_ms"] < 1e6
        before = s["ahead_underruns"]
        stall["ms"] = 150.0  # 28 periods of 256 frames: the ring (2 blocks) runs dry, JACK's callback plays silence
        wait_for(lambda: backend.stats()["ahead_underruns"] >= before + 10, what="underruns while the render stalls")
        # each one is also the engine's underflow (reported by the render thread once it runs again)
        wait_for(lambda: engine.stats().underflows == backend.stats()["ahead_underruns"], what="underflows reported")
        blocks = engine.stats().blocks
        wait_for(lambda: engine.stats().blocks > blocks + 100, what="rendering again")
    finally:
        backend.stop()
    assert backend.state == "stopped"


_RESIZE = """
import json, subprocess, sys, time
from audio import Engine, builtin_sample
from audio._jack import JackBackend
engine = Engine(48000, 128, 2, max_voices=8)
engine.set_buffer(0, builtin_sample(48000, 30.0))
backend = JackBackend(engine, client_name="ahead-size", autoconnect=False, ahead=1)
backend.start()
def until(cond, what):
    deadline = time.monotonic() + 60
    while not cond():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.01)
try:
    until(lambda: engine.stats().blocks > 50, "blocks at 128 frames")
    subprocess.run(["jack_bufsize", "256"], check=True, capture_output=True, timeout=30)
    until(lambda: engine.blocksize == 256, "the engine at 256 frames")
    blocks = engine.stats().blocks
    until(lambda: engine.stats().blocks > blocks + 50, "blocks at 256 frames")
    print(json.dumps(backend.stats()))
finally:
    backend.stop()
"""


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_a_buffer_size_change_resizes_the_ring_and_the_engine(tmp_path: Path) -> None:
    """In a child process on a private server: ``jack_bufsize`` under a render-ahead client (whose ring and
    engine follow), without touching the server the other tests share."""
    if shutil.which("jackd") is None or shutil.which("jack_bufsize") is None:
        pytest.skip("jackd not installed (Debian: jackd2)")
    _native()
    name = f"ens-ahead-{os.getpid()}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    jackd = subprocess.Popen(["jackd", "-n", name, "-r", "-d", "dummy", "-r", "48000", "-p", "128"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: _jack_lsp(env), what="the private JACK server")
        child = subprocess.run([sys.executable, "-c", _RESIZE], env=env, capture_output=True, text=True, timeout=300)
        assert child.returncode == 0, child.stderr[-2000:]
        stats = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        jackd.terminate()
        try:
            jackd.wait(timeout=20)
        except subprocess.TimeoutExpired:
            jackd.kill()
            jackd.wait()
        for leftover in Path("/dev/shm").glob(f"jack_sem.*_{name}_*"):
            leftover.unlink(missing_ok=True)
    assert stats["jack_ahead"] == 1 and stats["ahead_render_errors"] == 0
    assert stats["ahead_odd_cycles"] == 0  # no cycle of a size the ring was not prepared for
    assert stats["ahead_latency_ms"] == pytest.approx(256 / 48, rel=1e-9)


def test_without_numba_the_backend_says_so_and_renders_in_jacks_callback(
    server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audio._ahead as ahead
    monkeypatch.setattr(ahead, "_cached", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # numba not installed: its import fails
    engine = _engine()
    backend = JackBackend(engine, client_name="ahead-none", autoconnect=False, ahead=2)
    backend.start()
    try:
        assert backend.ahead == 0
        assert "render-ahead needs numba: pip install 'ensemble-rt[native]'" in backend.notice
        assert "rendering in JACK's callback" in backend.notice
        wait_for(lambda: engine.stats().blocks > 50, what="blocks rendered in JACK's callback")
        assert backend.stats()["jack_ahead"] == 0
        assert backend.stats()["jack_ahead_refused"].startswith("render-ahead needs numba")
    finally:
        backend.stop()



def test_more_channels_than_render_ahead_plays_are_refused_and_rendered_in_jacks_callback(server: None) -> None:
    """The refusal was raised from inside the client's set-up: the backend, and the processor, failed to start."""
    _native()
    engine = Engine(48000, 128, 33, max_voices=4)
    backend = JackBackend(engine, client_name="ahead-wide", autoconnect=False, ahead=2)
    backend.start()
    try:
        assert backend.ahead == 0 and backend.state == "connected"
        assert "render-ahead plays at most 32 channels, the engine has 33" in backend.notice
        wait_for(lambda: engine.stats().blocks > 50, what="blocks rendered in JACK's callback")
    finally:
        backend.stop()


def _compiled(pid: int) -> bool:
    """Whether process ``pid`` has numba's compiler (llvmlite's library) mapped: it compiled the native callback."""
    return "llvmlite" in Path(f"/proc/{pid}/maps").read_text()


def test_the_processor_compiles_the_native_callback_only_when_jack_is_its_backend(
        server: None, make_daemon: Callable[..., Daemon]) -> None:
    _native()
    # backend auto and no JACK server under that name: the processor falls back, and spends no second compiling
    gone = make_daemon(workers=0, extra_env={"JACK_DEFAULT_SERVER": f"ens-none-{os.getpid()}",
                                             "ENSEMBLE_AUDIO_BACKEND": "auto", "ENSEMBLE_AUDIO_JACK_AHEAD": "2"})
    gone.up()
    stats = dict(gone.actor("processor").stats)
    assert stats.get("backend") != "jack", stats
    assert not _compiled(gone.actor("processor").pid)
    gone.down()
    # the same with the server there: JACK is the backend, and the callback is compiled before the blocks play
    there = make_daemon(workers=0, extra_env={"ENSEMBLE_AUDIO_BACKEND": "auto", "ENSEMBLE_AUDIO_JACK_AHEAD": "2"})
    there.up()
    wait_for(lambda: dict(there.actor("processor").stats).get("jack_ahead") == 2, what="rendering ahead on JACK")
    assert _compiled(there.actor("processor").pid)

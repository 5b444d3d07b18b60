"""``ensemble top``: the rendered screen, and the real command in a terminal (tmux) quitting on q."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest
from rich.console import Console

from actors._top import render
from actors.messages import ActorInfo, DaemonInfo, JobInfo, StatusReply
from tests.conftest import Daemon, wait_for


def _status() -> StatusReply:
    daemon = DaemonInfo("studio", 100, "0.1.0", 12.0, "/run", "/state", "/state/daemon.log", 2, 3, 1, 30 << 20)
    actors = [
        ActorInfo("processor", "processor", 101, "running", 12.0, 0, 0.1, 40 << 20, "",
                  {"backend": "null", "blocks": 2250, "callback_p999_ms": 0.3, "period_ms": 5.33, "xruns": 0}),
        ActorInfo("worker-1", "worker", 102, "failed", 0.0, 5, 0.0, 0, "gave up: 5 restarts within 10s"),
    ]
    return StatusReply(daemon, actors)


def test_render_shows_actors_jobs_and_audio() -> None:
    jobs = [JobInfo(7, "examples.jobs:countdown", "", "running", 0.42, "3.0s left"),
            JobInfo(6, "examples.jobs:add", "", "done", 1.0)]
    console = Console(record=True, width=160)
    console.print(render(_status(), jobs))
    text = console.export_text()
    for needle in ("daemon studio", "processor", "worker-1", "failed", "gave up", "countdown", "3.0s left",
                   "backend null", "xruns 0"):
        assert needle in text, needle
    assert text.index("countdown") < text.index("examples.jobs:add")  # running jobs first


def test_render_shows_dropped_blocks_and_render_ahead() -> None:
    """Underflows (PortAudio's flags, render-ahead's empty ring) beside JACK's xruns, and the render-ahead latency."""
    status = _status()
    stats = {"backend": "jack", "blocks": 9000, "period_ms": 2.67, "xruns": 1, "underflows": 3, "jack_ahead": 2,
             "ahead_latency_ms": 5.333}
    status.actors[0] = ActorInfo("processor", "processor", 101, "running", 12.0, 0, 0.1, 40 << 20, "", stats)
    console = Console(record=True, width=200)
    console.print(render(status, []))
    text = " ".join(console.export_text().split())
    for needle in ("xruns 1", "underflows 3", "rendering 2 block(s) ahead (+5.33 ms)"):
        assert needle in text, needle


def test_render_suggests_render_ahead_for_xruns_in_jacks_callback() -> None:
    """JACK's xruns while the engine renders in its callback: the panel names render-ahead and its latency, or
    why it was refused; none on another backend, or with no xrun."""
    status = _status()
    seen = {}
    for label, extra in (("in-callback", {}), ("refused", {"jack_ahead_refused": "render-ahead needs numba"}),
                         ("no xrun", {"xruns": 0}), ("null", {"backend": "null"})):
        stats = {"backend": "jack", "blocks": 9000, "period_ms": 2.67, "xruns": 4, "underflows": 0, "jack_ahead": 0,
                 **extra}
        status.actors[0] = ActorInfo("processor", "processor", 101, "running", 12.0, 0, 0.1, 40 << 20, "", stats)
        console = Console(record=True, width=400)
        console.print(render(status, []))
        seen[label] = " ".join(console.export_text().split())
    assert "[audio] jack_ahead = 2 renders 2 blocks ahead, +5.34 ms of latency" in seen["in-callback"]
    assert "(render-ahead refused: render-ahead needs numba)" in seen["refused"]
    assert "jack_ahead" not in seen["no xrun"] and "jack_ahead" not in seen["null"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_top_runs_in_a_terminal_and_quits_on_q(daemon: Daemon) -> None:
    session = f"enstop{daemon.base.name}"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in daemon.env.items() if k.startswith(("ENSEMBLE_", "PYTHONPATH")))
    command = f"env {env} {sys.executable} -m actors top --refresh 0.2; echo EXIT=$?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", command], check=True)
    try:
        screen = lambda: subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                        text=True).stdout  # noqa: E731
        wait_for(lambda: "worker-2" in screen() and "processor" in screen(), 60, what="top to show the actors")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_for(lambda: "EXIT=0" in screen(), 30, what="top to quit with status 0 on q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

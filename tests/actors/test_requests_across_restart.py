"""A thread's own request (``Client.cancel``, ``ping``, a handle's poll) when its daemon restarts or is given up.

The sync client makes these on a socket of the calling thread, not through the I/O thread that watches the link.
When the daemon was killed they waited out their timeout (``cancel(block=True, timeout=None)`` for ever), a
handle's ``result()`` raised ``NoAnswer`` 30 s after its job's end had come, and a call made while the daemon was
away outlived the client's giving up and was carried out by a daemon started later.  Real daemons, killed -9.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from actors import DaemonError, JobLost, NoAnswer, TransportError
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for


def _kill(d: Daemon) -> None:
    os.kill(d.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its workers to die")


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - what the call raised is what the test looks at
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _asking(thread: threading.Thread) -> int:
    """The number (``corr``) of the request of its own ``thread`` waits in for the daemon's answer; 0: none."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "_ask":
            return int(frame.f_locals.get("corr", 0))
        frame = frame.f_back
    return 0


@pytest.mark.slow  # a daemon killed and started again
def test_a_blocking_cancel_sent_to_a_daemon_that_was_killed_fails_once_the_link_drops(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client(timeout=60)
    job = c.submit("tests.jobs:stubborn", grace=60.0)  # ignores the abort: the cancel waits for its grace
    # in its function, not only sent to a worker: an abort that reaches a job before its function starts ends it at
    # once, and the cancel was answered before the daemon was killed
    wait_for(lambda: job.refresh().status == "started", 60, what="the job's function to start")
    thread, out = _in_thread(lambda: job.cancel(block=True, timeout=None))
    wait_for(lambda: "abort" in [e[1] for e in job.events()], 60, what="the daemon to act on the cancel")
    _kill(d)
    d.up()
    thread.join(60)
    assert not thread.is_alive(), "cancel(block=True) still waits for the answer of a daemon that was killed"
    assert isinstance(out[0], TransportError) and "closed the connection before answering Cancel" in str(out[0])
    assert c.ping().pid == d.pid  # the thread's next request goes to the new daemon


@pytest.mark.slow  # a daemon killed, and away for two of the client's timeouts
def test_a_handle_s_result_waits_through_its_polls_that_found_no_daemon_and_ends_as_its_job_did(
        make_daemon: Callable[..., Daemon], caplog: pytest.LogCaptureFixture) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client(timeout=2)  # each poll of the handle gives up after 2 s; the wait is result()'s own, 300 s
    job = c.submit("tests.jobs:sleep", 120.0)
    wait_for(lambda: job.refresh().state == "running", 60, what="the job to start")
    thread, out = _in_thread(lambda: job.result(timeout=300))
    _kill(d)
    wait_for(lambda: "event=daemon-disconnected" in caplog.text, 30, what="the client to notice")
    mark = next(c.conn._corr)  # (requests numbered past this one were made while the daemon was away)
    first = wait_for(lambda: _asking(thread) > mark and _asking(thread), 60, what="the handle's poll")
    wait_for(lambda: not thread.is_alive() or _asking(thread) > first, 60, what="the handle's next poll")
    assert thread.is_alive(), out  # (result() raised its poll's NoAnswer: "did not answer GetJobs within 2s")
    d.up()
    thread.join(120)
    assert not thread.is_alive()
    assert isinstance(out[0], JobLost), out  # the job's end, once the daemon is back


@pytest.mark.slow  # a daemon killed, given up, and started again
def test_a_request_made_while_the_daemon_was_away_fails_when_it_is_given_up_and_is_never_carried_out_later(
        make_daemon: Callable[..., Daemon], caplog: pytest.LogCaptureFixture) -> None:
    d = make_daemon(workers=1, jobs_only=True, extra_env={"ENSEMBLE_JOBS_RECONNECT_WAIT": "2"})
    d.up()
    c = d.client(timeout=600)  # (the giving up ends the cancel long before)
    running = c.submit("tests.jobs:sleep", 120.0)
    queued = c.submit("examples.jobs:add", 2, 2)  # behind it
    wait_for(lambda: running.refresh().state == "running", 60, what="the first job to start")
    _kill(d)
    wait_for(lambda: "event=daemon-disconnected" in caplog.text, 30,  # (else the cancel went to the dead one)
             what="the client to notice")
    thread, out = _in_thread(lambda: c.cancel(queued.id))  # held by ZeroMQ for a daemon that is not there
    thread.join(60)
    assert not thread.is_alive(), "the cancel outlived the client's giving up on its daemon"
    assert isinstance(out[0], DaemonError) and "was not back within 2 s" in str(out[0]), out
    d.up()
    with d.client(timeout=60) as fresh:  # (the given-up client refuses every call)
        assert fresh.job(queued.id).result(60) == 4  # the later daemon never saw the cancel: the job ran


@pytest.mark.slow  # a daemon killed and started again
def test_a_request_that_timed_out_while_the_daemon_was_away_is_never_carried_out_by_the_next_one(
        make_daemon: Callable[..., Daemon], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """ZeroMQ holds a thread's request for a daemon that is away and sends it to the next one: a cancel its
    caller was told went unanswered (``NoAnswer``) was carried out once the daemon was back.  The timed-out
    request's socket is dropped with what it held."""
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    c = d.client(timeout=600)
    running = c.submit("tests.jobs:sleep", 120.0)
    gate = tmp_path / "gate"
    queued = c.submit("tests.jobs:wait_file", str(gate), 120.0)  # behind it; returns "aborted" if cancelled
    wait_for(lambda: running.refresh().state == "running", 60, what="the first job to start")
    _kill(d)
    wait_for(lambda: "event=daemon-disconnected" in caplog.text, 30,  # (else the cancel went to the dead one)
             what="the client to notice")
    with pytest.raises(NoAnswer):
        queued.cancel(timeout=2.0)
    d.up()
    # the job runs on the daemon back, and the client's sockets are linked to it again (a frame held for it
    # would have been sent by now: ZeroMQ reconnects every 100 ms)
    wait_for(lambda: queued.refresh().status.startswith("waiting for"), 60, what="the queued job to start again")
    assert c.ping().pid == d.pid
    gate.touch()
    assert queued.result(60) == "released"  # the daemon back never saw the cancel

"""The command line following a job whose daemon dies or stops answering: ``submit --wait``, ``watch`` and
``result`` under kill -9 (they waited for updates for ever), Ctrl-C while the daemon does not answer (the cancel
waited out its 30 s timeout, then said "did not answer Cancel").

Real daemons and CLI processes; each test fails on the code before its fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Callable

import pytest

from actors.client import Client
from tests.conftest import Daemon, pid_alive, processes_mentioning, wait_for

Make = Callable[..., Daemon]


def _follow(d: Daemon, *args: str) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """``ensemble ARGS`` started, its stderr lines collected as they come (by the thread returned)."""
    proc = subprocess.Popen([sys.executable, "-m", "actors", *args], env=d.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    return proc, lines, reader


def _said(lines: list[str], fragment: str) -> bool:
    return any(fragment in line for line in lines)


def _following(lines: list[str], jid: int) -> None:
    """Wait until the follower says the job is still queued (the daemon has no worker): it is following."""
    wait_for(lambda: _said(lines, f"ensemble: note: job {jid} is still queued: no workers are running"), 60,
             what="the follower to say the job is still queued")


def _without_workers(make_daemon: Make) -> Daemon:
    """A jobs-only daemon with one worker, scaled to none: a job stays queued and its follower says so."""
    d = make_daemon(jobs_only=True, workers=1)  # (not 0: `up` waits for an actor to run)
    d.up()
    d.cli("scale", "0")
    wait_for(lambda: not [a for a in d.status().actors if a.role == "worker"], 60, what="the worker to retire")
    return d


def _end(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
    """Let ``proc`` end (60 s; killed after: a hang), and its reader."""
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(10)


@pytest.mark.parametrize("command", ["submit --wait", "watch", "result"])
@pytest.mark.slow  # a daemon killed under a follower: ~5 s each
def test_following_a_job_ends_with_a_clear_line_when_the_daemon_is_killed(make_daemon: Make, command: str) -> None:
    """kill -9 of the daemon while a job is followed: the command waited for updates for ever."""
    d = _without_workers(make_daemon)  # the job stays queued, and the follower says so: it follows
    if command in ("watch", "result"):
        with Client(config=d.config) as c:
            jid = c.submit("examples.jobs:add", 1, 2).id
        proc, lines, reader = _follow(d, command, str(jid))
    else:
        proc, lines, reader = _follow(d, "submit", "--wait", "examples.jobs:add", "1", "2")
        jid = 1  # the daemon's first job
    try:
        _following(lines, jid)
        os.kill(d.pid, signal.SIGKILL)
    finally:
        _end(proc, reader)
    assert proc.returncode == 1, lines
    assert "Traceback" not in "".join(lines)
    assert not [line for line in lines if "event=" in line]  # one line says it: not the client's log line too
    assert lines[-1].strip() == (f"ensemble: error: job {jid} is not finished and the daemon (pid {d.pid}) is gone; "
                                 f"the job is in the daemon's journal: once the daemon is back (`ensemble up --name t`), "
                                 f"`ensemble result --name t {jid}`")
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its workers to be gone")
    d.up()  # what the line says to do: the job is in the journal, still queued, and runs on the worker it starts
    assert d.cli("result", str(jid)).stdout.strip() == "3"


@pytest.mark.slow  # waits for a silent daemon's note: ~5 s
def test_ctrl_c_while_the_daemon_does_not_answer_exits_at_once_and_says_the_job_is_not_cancelled(
        make_daemon: Make) -> None:
    """The cancel Ctrl-C asks for waited out the client's 30 s, then said "did not answer Cancel"."""
    d = _without_workers(make_daemon)
    proc, lines, reader = _follow(d, "submit", "--wait", "examples.jobs:add", "1", "2")
    stopped = False
    try:
        _following(lines, 1)
        os.kill(d.pid, signal.SIGSTOP)
        stopped = True
        wait_for(lambda: _said(lines, "ensemble: note: the daemon does not answer (stopped or overloaded?); job 1 "
                                      "is followed again should it answer within 30s"), 30,
                 what="the follower to say the daemon does not answer")  # (a ping a second, waited a second)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(60)  # (was: 30 s, the Cancel's timeout)
    finally:
        if stopped:
            os.kill(d.pid, signal.SIGCONT)
        _end(proc, reader)
    assert proc.returncode == 130, lines
    assert "Traceback" not in "".join(lines)
    assert lines[-1].strip() == ("ensemble: error: interrupted; job 1 is not cancelled: the daemon does not answer. "
                                 "It is in the daemon's journal: `ensemble cancel 1` once the daemon is back")
    with Client(config=d.config) as c:  # true: it waits on, and can be cancelled as said
        job = c.job(1)
        assert job.state == "queued"
    assert d.cli("cancel", "1").stdout.strip() == "job 1: cancelled"


@pytest.mark.slow  # a daemon of its own, stopped: ~5 s
def test_the_follower_s_look_for_a_ready_worker_never_outwaits_its_pulse(make_daemon: Make) -> None:
    """A followed job that waits behind others makes the follower ask every 2 s whether a worker is ready; that
    ``status`` waited out the client's whole timeout when the daemon stopped answering (30 s; here 600), holding
    off Ctrl-C and the check that the daemon is gone, and then said only that Status was not answered."""
    from actors.cli import _no_worker_hint

    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    with Client(config=d.config, timeout=600) as c:
        assert _no_worker_hint(c) == ""  # a worker is ready
        os.kill(d.pid, signal.SIGSTOP)
        try:
            assert _no_worker_hint(c) == ""  # not known: the pulse says the daemon does not answer (was: 600 s)
        finally:
            os.kill(d.pid, signal.SIGCONT)


@pytest.mark.slow  # waits out the 10 s a Shutdown is asked for
def test_down_of_a_daemon_that_does_not_answer_signals_it_as_its_help_says(make_daemon: Make) -> None:
    """A daemon whose loop does not answer (blocked in a Ray join, or stopped): `down` said "did not answer
    Shutdown" and left it running; its help promises SIGTERM, then SIGKILL."""
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    os.kill(d.pid, signal.SIGSTOP)  # (a stopped process takes SIGKILL; SIGTERM waits for it to run)
    out = d.cli("down", "--timeout", "2", check=False)
    assert out.returncode == 1, out.stderr
    assert f"the daemon (pid {d.pid}) does not answer; sending it SIGTERM, SIGKILL after 2s" in out.stderr
    assert f"the daemon did not stop within 2s; killed pid {d.pid}" in out.stderr
    wait_for(lambda: not pid_alive(d.pid) and not processes_mentioning(str(d.base)), 30,
             what="the daemon and its workers to be gone")

"""One Client shared by threads: closing it while they make requests, and a thread per request.

The races run in a child Python (``_run``): without the fix a run could abort
(libzmq's ``Assertion failed ... signaler.cpp``, a socket closed under its
thread) or hang in ``zmq_ctx_term``, which must fail the test, not the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT, Daemon, running_daemon

_CLOSE_RACE = r'''
import collections, json, sys, threading, time
from ensemble import Client

rounds, threads = int(sys.argv[1]), int(sys.argv[2])
errors = collections.Counter()
for _ in range(rounds):
    c = Client(timeout=30)
    calls = [0] * threads

    def poll(i):
        try:
            while True:
                c.status()
                calls[i] += 1
        except Exception as e:
            errors[f"{type(e).__module__}.{type(e).__name__}"] += 1

    ts = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    end = time.monotonic() + 30
    while not all(calls) and time.monotonic() < end:  # every thread has its socket and is in a request
        time.sleep(0.005)
    c.close()
    for t in ts:
        t.join(30)
    errors["threads still running"] += sum(t.is_alive() for t in ts)
    if errors["threads still running"]:
        break
print(json.dumps(dict(errors)))
'''

_CANCEL_THEN_CLOSE = r'''
import json, threading
from ensemble import Client
from tests.conftest import wait_for

with Client(timeout=30) as watcher:
    c = Client(timeout=30)
    h = c.submit("tests.jobs:stubborn", grace=10)  # ignores the abort: killed 10 s after it
    wait_for(lambda: h.status_message == "started", what="the job to start")
    got = []

    def cancel():
        try:
            got.append(f"returned {h.cancel(block=True)}")
        except Exception as e:
            got.append(f"{type(e).__module__}.{type(e).__name__}")

    t = threading.Thread(target=cancel, daemon=True)
    t.start()
    # the daemon heard the cancel: the thread waits in it for the job to stop
    wait_for(lambda: any(e[1] == "abort" for e in watcher.job(h.id).events()), what="the abort to reach the job")
    c.close()
    t.join(30)
    print(json.dumps({"cancelling thread": got or ["still blocked"]}))
'''


@pytest.fixture(scope="module")
def jobs_only() -> Iterator[Daemon]:
    """A jobs-only daemon for this module's tests."""
    yield from running_daemon(Path(tempfile.mkdtemp(prefix="ens-m")), jobs_only=True)


def _run(d: Daemon, script: str, *args: str, timeout: float = 60) -> Any:
    """Run ``script`` in a child Python against ``d``; what it printed last, as JSON.  It must exit 0 in time
    (a libzmq assertion aborts it; a close that hangs runs out the timeout)."""
    env = {**d.env, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=str(ROOT), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # (subprocess.run killed it)
        raise AssertionError(f"the script hung (a close that never returned?): {exc.stderr!r}") from None
    assert proc.returncode == 0, f"the script failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_closing_a_client_while_threads_make_requests_fails_them_with_client_closed(jobs_only: Daemon) -> None:
    """close() closed the threads' sockets under them: it hung in zmq_ctx_term, libzmq aborted the process
    (``Assertion failed: pfd.revents & POLLIN``), or the threads got zmq's ContextTerminated."""
    errors = _run(jobs_only, _CLOSE_RACE, "30", "8")
    assert errors == {"actors._errors.ClientClosed": 30 * 8, "threads still running": 0}


def test_a_thread_blocked_in_cancel_gets_client_closed_when_another_closes_the_client(jobs_only: Daemon) -> None:
    """``h.cancel(block=True)`` on a job that ignores its abort raised zmq's ContextTerminated."""
    got = _run(jobs_only, _CANCEL_THEN_CLOSE)
    assert got == {"cancelling thread": ["actors._errors.ClientClosed"]}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow  # 2-4 s: the default suite keeps under its 5 minutes
def test_a_thread_per_request_leaves_no_socket_behind(jobs_only: Daemon) -> None:
    """Each thread that made a request kept its socket (two descriptors) for good: after ~1,018 threads, as a
    ThreadingHTTPServer makes them, calls failed with zmq's raw 'Too many open files'."""
    from ensemble import Client

    with Client(config=jobs_only.config, timeout=30) as c:
        h = c.submit("examples.jobs:add", 1, 2)
        h.result(30)
        errors: list[BaseException] = []

        def handle_request() -> None:
            try:
                assert h.state == "done"
                c.jobs(limit=1)
            except BaseException as exc:  # noqa: BLE001 - looked at below
                errors.append(exc)

        before = _open_fds()
        for _ in range(1100):
            t = threading.Thread(target=handle_request)
            t.start()
            t.join()
            if errors:
                break
        assert errors == []
        assert _open_fds() - before < 20  # (it grew by 2 a thread)

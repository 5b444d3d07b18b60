"""Job functions used by the tests (allowed by the default allow-list as ``tests.jobs.*``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from actors import Task


def pid(task: Task) -> int:
    """Return the worker's pid."""
    return os.getpid()


def sleep(task: Task, seconds: float) -> float:
    """Sleep without checking should_abort()."""
    time.sleep(seconds)
    return seconds


def spin(task: Task, seconds: float = 3600.0) -> None:
    """Busy loop holding the GIL, never checking should_abort()."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def ignore_abort_with_grandchild(task: Task, pidfile: str) -> None:
    """Start a grandchild that ignores SIGTERM, write its pid, then ignore aborts forever."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    child = subprocess.Popen([sys.executable, "-c", code])
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(0.01)


def polite(task: Task, seconds: float = 60.0) -> str:
    """Loop checking should_abort() every 10 ms; returns 'aborted' when asked."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if task.should_abort():
            return "aborted"
        time.sleep(0.01)
    return "finished"


def stall_after_check(task: Task, seconds: float) -> str:
    """Call should_abort() once, then stay away longer than the timeout."""
    task.should_abort()
    time.sleep(seconds)
    task.should_abort()
    return "ok"


def crash(task: Task) -> None:
    """Kill the worker process itself."""
    os.kill(os.getpid(), signal.SIGKILL)


def props(task: Task, n: int) -> dict[str, Any]:
    """Set progress, status and properties, then wait for an abort."""
    task.set_progress(0.5)
    task.set_status_message("half way")
    task.set_property("n", n)
    while not task.should_abort():
        time.sleep(0.01)
    return {"n": n}


def swap_while_silent(task: Task) -> bool:
    """kill_voices_and_call: runs a function while the processor is silent; reports whether it ran."""
    ran: list[bool] = []
    ok = task.kill_voices_and_call(lambda: ran.append(True))
    return ok and ran == [True]

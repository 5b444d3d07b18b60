"""An Executor whose workers cannot start raises ``BrokenProcessPool`` in a program that never imported it;
one whose private daemon cannot start raises at the submit, and the program still exits.

The daemon fails the queued jobs with ProcessPoolExecutor's error once every
worker gave up restarting; the client rebuilds that error as its own class
only if it has the class, and ``concurrent.futures.process`` is imported by
nothing until a pool breaks.  Run in a fresh interpreter: the test process
itself has imported it.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_main

_SCRIPT = '''\
import concurrent.futures
import sys

from ensemble import Executor


def work(x):
    return x


if __name__ == "__main__":
    with Executor(1) as ex:
        try:
            ex.submit(work, 1).result(120)
        except concurrent.futures.BrokenExecutor as exc:
            print("caught", type(exc).__name__, flush=True)
        except Exception as exc:
            print("not caught", type(exc).__name__, exc, flush=True)
'''


def test_workers_that_cannot_start_break_the_pool_as_processpoolexecutor_s_do(tmp_path: Path) -> None:
    proc = run_main(tmp_path, _SCRIPT, ENSEMBLE_TEST_CRASH_ROLE="worker")
    assert proc.stdout.splitlines() == ["caught BrokenProcessPool"], proc.stdout + proc.stderr


_NO_START = '''\
import os
import sys

from ensemble import Executor

OWNER = os.getpid()


def refuse(event, args):
    # fault injection: the private daemon (a fork of this process) fails as it opens its journal
    if event == "sqlite3.connect" and os.getpid() != OWNER:
        raise OSError("no journal here (the test's audit hook)")


def work(x):
    return x


if __name__ == "__main__":
    sys.addaudithook(refuse)
    ex = Executor(2)
    try:
        ex.submit(work, 1)
    except Exception as exc:
        print("submit raised", type(exc).__name__, flush=True)
    print("end of script", flush=True)
'''


def test_a_submit_whose_private_daemon_cannot_start_raises_and_the_program_still_exits(tmp_path: Path) -> None:
    """The future of that submit ends with the error too: the exit's shutdown waited for it for ever."""
    proc = run_main(tmp_path, _NO_START)
    assert proc.stdout.splitlines() == ["submit raised DaemonError", "end of script"], proc.stdout + proc.stderr

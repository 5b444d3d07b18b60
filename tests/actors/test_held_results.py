"""A finished job whose result the worker still held back when the next job killed it (actors.worker._hold).

A worker holds a short job's result back (at most 10 ms) while more jobs wait
there, to send them together.  If the next job kills the worker in that time,
the result dies with it.  A job without retries runs at most once
(tests/reliability/test_faults.py), so it is not run again: it ends
``worker-lost``, and its error says that it had returned and which job took
the worker down, not that it died while running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from actors import JobLost
from actors.client import make_spec
from tests.conftest import Daemon


def test_a_result_lost_behind_the_job_that_killed_the_worker_says_so(make_daemon: Callable[..., Daemon],
                                                                    tmp_path: Path) -> None:
    d = make_daemon(workers=1, jobs_only=True)
    d.up()
    runs = tmp_path / "runs"
    # one submit: a fresh worker is handed both at once, so the first's result is held while the second runs
    first, killer = d.client().submit_many([make_spec("tests.jobs:record_execution", [str(runs)], {}),
                                            make_spec("tests.jobs:crash", [], {})])
    lost = killer.wait(60)
    assert lost.state == "worker-lost" and "died while running the job" in lost.error_message, lost
    info = first.wait(60)
    assert info.state == "worker-lost", info
    assert "the job returned" in info.error_message and f"the job after it, {killer.id}" in info.error_message, info
    assert "runs at most once" in info.error_message
    assert len(runs.read_text().splitlines()) == 1  # at most once
    try:
        first.result(1)
    except JobLost as exc:
        assert "the job returned" in str(exc)
    else:
        raise AssertionError("the result of a lost job was returned")

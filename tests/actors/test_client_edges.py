"""Edges of the client's surface: a timeout that is no number of seconds, and a daemon with no actors at all."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.conftest import Daemon


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), True, "3", None])
def test_a_client_timeout_that_is_no_number_of_seconds_is_refused_before_anything_starts(timeout: Any) -> None:
    """It was taken, and every call then failed with a raw error (NaN) or waited for ever (inf)."""
    from ensemble import Client

    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        Client(timeout=timeout)


def test_up_of_a_jobs_only_daemon_with_no_workers_is_ready(make_daemon: Callable[..., Daemon]) -> None:
    """`ensemble up` waited for actors that never come, said "did not get ready" and left the daemon running."""
    d = make_daemon(workers=0, jobs_only=True)
    d.up()
    st = d.status()
    assert st.actors == [] and st.daemon.workers_wanted == 0


def test_a_submit_to_a_daemon_with_no_worker_says_once_why_its_jobs_wait(make_daemon: Callable[..., Daemon],
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Scaled to 0 (or started with none), the daemon keeps its queue (a worker may come), and a submit then
    waited with no word of why: `result()` for ever.  The submit's answer says it now: once in the client's log
    (not once a job), on stderr after the id for `ensemble submit`; and no more once a worker runs."""
    d = make_daemon(workers=0, jobs_only=True)
    d.up()
    c = d.client()
    why = "this daemon has no worker (scaled to 0, or started with none): its jobs wait in the queue until"
    with caplog.at_level("WARNING", logger="ensemble.client"):
        first = c.submit("tests.jobs:square", 3)
        second = c.submit_many([c.spec("tests.jobs:square", n) for n in range(5)])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=no-worker")]
    assert len(said) == 1 and why in said[0], said
    assert c.conn.waiting.startswith(why)
    out = d.cli("submit", "tests.jobs:square", "4")
    job_id = int(out.stdout.strip())
    assert out.stderr.strip() == f"ensemble: note: job {job_id} waits: {c.conn.waiting}", out.stderr
    c.scale(1)
    assert first.result(timeout=60) == 9 and [h.result(timeout=60) for h in second] == [0, 1, 4, 9, 16]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ensemble.client"):
        assert c.submit("tests.jobs:square", 5).result(timeout=60) == 25
    assert c.conn.waiting == "" and not [r for r in caplog.records if "no-worker" in r.getMessage()]
    assert d.cli("submit", "tests.jobs:square", "6").stderr == ""


@pytest.mark.parametrize("state, message, said", [
    ("killed", "killed: shutdown (no return within 500 ms of the abort)",
     "job 7 (m:f) killed: shutdown (no return within 500 ms of the abort)"),
    ("cancelled", "cancelled", "job 7 (m:f) cancelled"),
    ("cancelled", "cancelled before it started", "job 7 (m:f) cancelled: cancelled before it started"),
])
def test_a_job_cancelled_or_killed_says_its_end_once(state: str, message: str, said: str) -> None:
    """A job killed at the daemon's stop raised "killed: killed: shutdown ...": the daemon's text starts with the
    state the client names too."""
    from actors import JobCancelled
    from actors.client import _raise_for
    from actors.messages import JobInfo

    with pytest.raises(JobCancelled) as got:
        _raise_for(JobInfo(7, "m:f", "", state, error_type="JobCancelled", error_message=message))
    assert str(got.value) == said

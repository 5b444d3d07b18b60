"""Edges of the client's surface: a timeout that is no number of seconds, and a daemon with no actors at all."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.conftest import Daemon, wait_for


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), True, "3", None])
def test_a_client_timeout_that_is_no_number_of_seconds_is_refused_before_anything_starts(timeout: Any) -> None:
    """It was taken, and every call then failed with a raw error (NaN) or waited for ever (inf)."""
    from ensemble import Client

    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        Client(timeout=timeout)


def test_up_of_a_jobs_only_daemon_with_no_workers_is_ready(make_daemon: Callable[..., Daemon]) -> None:
    """`ensemble up` waited for actors that never come, said "did not get ready" and left the daemon running.
    Asked for what only audio or scripts answer, it said "unknown message kind 65" and no more."""
    d = make_daemon(workers=0, jobs_only=True)
    d.up()
    st = d.status()
    assert st.actors == [] and st.daemon.workers_wanted == 0
    for command in (["note", "60"], ["param", "list"], ["sample", "list"]):
        out = d.cli(*command, check=False)
        assert out.returncode == 1 and "this daemon runs jobs only" in out.stderr and \
            'extensions = ["*"]' in out.stderr, out.stderr
    assert d.status().daemon.workers_wanted == 0  # and it goes on answering


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


def test_a_watch_callback_that_raises_is_logged_and_never_raised_into_the_caller(
        module_daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """The first snapshot's exception escaped ``watch()``; those of the pushes after it were dropped in silence.
    The first is logged with its traceback, and how many there were at the job's end."""
    calls: list[str] = []

    def broken(info: Any) -> None:
        calls.append(info.state)
        raise RuntimeError("a bug of the callback")

    c = module_daemon.client()
    job = c.submit("examples.jobs:countdown", 0.5, 0.05)
    c.watch(job.id, broken)  # (raised here before)
    assert job.result(60) == "done"
    wait_for(lambda: "failures=" in caplog.text, 30, what="the end to reach the callback")
    logged = [r for r in caplog.records if "event=watch-callback-failed" in r.getMessage()]
    assert len(logged) == 2 and logged[0].exc_info, [r.getMessage() for r in logged]  # the first, then how many
    assert f"failures={len(calls)} " in logged[1].getMessage()


def test_a_submit_held_behind_a_blocked_watch_callback_says_so(module_daemon: Daemon) -> None:
    """The client's I/O thread runs the callbacks; one that blocks holds the submit's answer, and the submit's
    timeout blamed the daemon ("did not acknowledge")."""
    import threading

    from actors import TransportError

    release, entered = threading.Event(), threading.Event()
    seen: list[Any] = []

    def slow(info: Any) -> None:
        seen.append(info)
        if len(seen) == 2:  # a push, on the I/O thread (the first is watch()'s own snapshot, on this thread)
            entered.set()
            release.wait(120)

    c = module_daemon.client(timeout=3)
    try:
        job = c.submit("examples.jobs:countdown", 1.0, 0.05)
        c.watch(job.id, slow)
        assert entered.wait(60)
        with pytest.raises(TransportError, match=r"did not acknowledge the submit within 3s; this client's I/O "
                                                 r"thread has been running a watch callback for \d+s"):
            c.submit("examples.jobs:add", 1, 2)
    finally:
        release.set()


@pytest.mark.parametrize("timeout", [float("nan"), "1", True])
def test_a_wait_s_timeout_that_is_no_number_of_seconds_is_refused_by_both_clients(module_daemon: Daemon,
                                                                                  timeout: Any) -> None:
    """NaN waited for ever in one client and timed out at once in the other; a string raised a raw TypeError."""
    import asyncio

    from ensemble import AsyncClient

    c = module_daemon.client()
    job = c.submit("examples.jobs:add", 1, 2)
    with pytest.raises(ValueError, match="timeout must be None .no limit. or a number of seconds, got "):
        job.result(timeout=timeout)
    assert job.result(timeout=float("inf")) == 3

    async def run() -> None:
        async with AsyncClient(config=module_daemon.config) as ac:
            handle = await ac.submit("examples.jobs:add", 2, 2)
            with pytest.raises(ValueError, match="timeout must be None .no limit. or a number of seconds"):
                await handle.result(timeout=timeout)
            assert await handle.result(timeout=float("inf")) == 4

    asyncio.run(run())


@pytest.mark.parametrize("option, value", [("priority", 1.5), ("priority", "7"), ("priority", True),
                                           ("priority", None), ("priority", float("nan")), ("retries", 2.9),
                                           ("retries", "3")])
def test_a_job_option_that_is_no_whole_number_is_refused_naming_it(module_daemon: Daemon, option: str,
                                                                   value: Any) -> None:
    """``int()`` took 1.5 as 1, "7" as 7 and True as 1, and NaN or None raised its own error naming nothing."""
    c = module_daemon.client()
    with pytest.raises(TypeError, match=f"^{option} must be a whole number, got "):
        c.submit("examples.jobs:add", 1, 2, **{option: value})


def test_a_listing_of_one_state_given_as_text_lists_that_state(module_daemon: Daemon) -> None:
    c = module_daemon.client()
    job = c.submit("examples.jobs:add", 1, 2)
    assert job.result(60) == 3
    assert job.id in [i.id for i in c.jobs("done", limit=1000)]  # (it listed the states "d", "o", "n", "e")

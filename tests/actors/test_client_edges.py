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

"""Job ids are numbers in one journal: a client never follows another journal's job under its own job's id.

A daemon started on another journal (the old one removed, or replaced by a
copy from elsewhere) numbers its jobs anew, so the same id names another
job there.  A client that reconnected watched its jobs' ids again and
followed whatever job held them: a handle could end with a stranger's
result.  Each journal has an identity, made with it, in ``Submitted`` and in
the replies of ``Watch``; a client whose daemon came back on another journal
ends its jobs as lost, saying why.
"""

from __future__ import annotations

import shutil
from typing import Callable

import pytest

from actors import JobLost
from actors.client import Client
from tests.conftest import Daemon, wait_for


def _journal_files(d: Daemon) -> list:
    return sorted((d.base / "state").glob("jobs.sqlite3*"))


def test_a_daemon_back_on_another_journal_ends_the_jobs_of_the_one_before_as_lost(
        make_daemon: Callable[..., Daemon]) -> None:
    ours, other = make_daemon(workers=0, jobs_only=True), make_daemon(workers=0, jobs_only=True)
    ours.up()
    other.up()
    with Client(config=other.config) as c:  # its job 1: queued (no workers), another function
        assert c.submit("examples.jobs:countdown", 30.0).id == 1
    other.down()

    with Client(config=ours.config) as c:  # (not ours.client(): `down` closes those)
        handle = c.submit("examples.jobs:add", 1, 2)  # our job 1, queued
        assert handle.id == 1
        ours.down()
        for f in _journal_files(ours):
            f.unlink()
        for f in _journal_files(other):  # ours comes back on a copy of the other's journal: its job 1 is not ours
            shutil.copy(f, ours.base / "state" / f.name)
        ours.up()
        wait_for(lambda: handle.done(), 60, what="the handle to hear that its daemon came back on another journal")
        with pytest.raises(JobLost, match="the daemon restarted on another journal"):
            handle.result(0)  # was: it followed the other journal's job 1 (examples.jobs:countdown)
        assert c.job(1).refresh().fn == "examples.jobs:countdown"  # the id names that job now

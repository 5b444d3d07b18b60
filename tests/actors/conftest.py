"""Fixtures for the actors tests: one daemon shared by a module's well-behaved tests.

Tests that kill, stop or reconfigure a daemon use the function-scoped ``daemon``
/ ``make_daemon`` fixtures of ``tests/conftest.py``; tests that only submit
jobs and read state share ``module_daemon`` to keep the suite fast.  It is
started as ``ensemble up`` starts one (``Daemon.up``) and stopped as ``ensemble
down`` stops it at the end of the module (``Daemon.cleanup`` kills whatever is
left).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import Daemon


def running_daemon(base: Path, **kwargs: Any) -> Iterator[Daemon]:
    """A module fixture's body: ``Daemon(base, **kwargs)`` up, yielded, then stopped and ``base`` removed."""
    d = Daemon(base, **kwargs)
    try:
        d.up()
        yield d
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[Daemon]:
    """A running daemon (2 workers, fast heartbeats) shared by one test module."""
    yield from running_daemon(Path(tempfile.mkdtemp(prefix="ens-m")))

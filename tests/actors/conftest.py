"""Fixtures for the actors tests: one daemon shared by a module's well-behaved tests.

Tests that kill, stop or reconfigure a daemon use the function-scoped ``daemon``
/ ``make_daemon`` fixtures of ``tests/conftest.py``; tests that only submit
jobs and read state share ``module_daemon`` to keep the suite fast.  It is
started through the real CLI and stopped with ``ensemble down`` at the end of
the module (``Daemon.cleanup`` kills whatever is left).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Daemon


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[Daemon]:
    """A running daemon (2 workers, fast heartbeats) shared by one test module."""
    base = Path(tempfile.mkdtemp(prefix="ens-m", dir="/tmp"))
    d = Daemon(base)
    try:
        d.up()
        yield d
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)

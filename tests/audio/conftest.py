"""Audio fixtures: an engine playing a constant signal, and a poller."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from audio import Engine

from .signals import make_engine


@pytest.fixture
def dc_engine() -> Engine:
    """An engine whose slot 0 holds ten seconds of 1.0 (mono)."""
    engine = make_engine()
    engine.set_buffer(0, np.ones(480000, dtype=np.float32))
    return engine


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """Poll a condition until it is truthy; fail with ``what`` after ``timeout`` seconds."""

    def wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.01)

    return wait

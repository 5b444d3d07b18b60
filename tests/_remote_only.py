"""An exception class only a worker imports (tests.jobs.raise_remote_only): the client has no such class."""

from __future__ import annotations


class OnlyThereError(Exception):
    """Raised by a job; the client process never imports this module."""

"""ensemble's runtime: messages, supervisor, workers, clients and the CLI.

Public names are re-exported here; everything else lives in ``_private``
modules and may change.
"""

from __future__ import annotations

from actors import _command_start

_command_start.guard()  # first: a Ctrl-C while the `ensemble` command imports is one line, not a traceback

from typing import TYPE_CHECKING  # noqa: E402

__version__ = "0.1.0"

from actors._errors import (
    ClientClosed,
    ConfigError,
    DaemonAlreadyRunning,
    DaemonError,
    DaemonNotRunning,
    EnsembleError,
    JobCancelled,
    JobError,
    JobLost,
    JobNotFound,
    JobRefused,
    JobTimeout,
    NoAnswer,
    OutOfRange,
    PermissionDenied,
    ProtocolError,
    QueueFull,
    RemoteError,
    TransportError,
    WaitTimeout,
    WrongContextError,
)
from actors._state import FINAL, JobState
from actors._task import Task, current_task
from actors.config import Config, load_config

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from actors._child import Child, child_main
    from actors.client import AsyncClient, Client, Executor, JobHandle

_CLIENT_NAMES = ("AsyncClient", "Client", "Executor", "JobHandle")
_CHILD_NAMES = ("Child", "child_main")


def __getattr__(name: str) -> object:
    """``actors.Client`` and friends, and ``actors.Child`` (the base of a supervised process), on first use.

    Imported lazily so that ``import actors`` stays light for workers and clients.
    """
    if name in _CLIENT_NAMES:
        from actors import client

        return getattr(client, name)
    if name in _CHILD_NAMES:
        from actors import _child

        return getattr(_child, name)
    raise AttributeError(f"module 'actors' has no attribute {name!r}")


__all__ = [
    "__version__",
    "AsyncClient",
    "Child",
    "Client",
    "Executor",
    "JobHandle",
    "ClientClosed",
    "Config",
    "ConfigError",
    "FINAL",
    "DaemonAlreadyRunning",
    "DaemonError",
    "DaemonNotRunning",
    "EnsembleError",
    "JobCancelled",
    "JobError",
    "JobLost",
    "JobNotFound",
    "JobRefused",
    "JobState",
    "JobTimeout",
    "NoAnswer",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "Task",
    "TransportError",
    "WaitTimeout",
    "WrongContextError",
    "child_main",
    "current_task",
    "load_config",
]

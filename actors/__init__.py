"""ensemble's runtime: messages, supervisor, workers, clients and the CLI.

Public names are re-exported here; everything else lives in ``_private``
modules and may change.
"""

from __future__ import annotations

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
    PermissionDenied,
    ProtocolError,
    QueueFull,
    RemoteError,
    TransportError,
    WrongContextError,
)
from actors._task import Task, current_task
from actors.config import Config, load_config

_CLIENT_NAMES = ("AsyncClient", "Client", "Executor", "JobHandle")


def __getattr__(name: str) -> object:
    """``actors.Client`` and friends, imported on first use (keeps ``import actors`` light for workers)."""
    if name in _CLIENT_NAMES:
        from actors import client

        return getattr(client, name)
    raise AttributeError(f"module 'actors' has no attribute {name!r}")


__all__ = [
    "__version__",
    "AsyncClient",
    "Client",
    "Executor",
    "JobHandle",
    "ClientClosed",
    "Config",
    "ConfigError",
    "DaemonAlreadyRunning",
    "DaemonError",
    "DaemonNotRunning",
    "EnsembleError",
    "JobCancelled",
    "JobError",
    "JobLost",
    "JobNotFound",
    "JobRefused",
    "JobTimeout",
    "PermissionDenied",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "Task",
    "TransportError",
    "WrongContextError",
    "current_task",
    "load_config",
]

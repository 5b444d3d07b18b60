"""ensemble: the one import for programs that use the runtime.

``from ensemble import Client, Executor`` gives the full client (jobs, notes,
samples, scripts and parameters: :class:`controller.Client`) and the
``concurrent.futures`` executor.  The layers underneath stay importable on
their own: :mod:`actors` (the runtime: jobs only), :mod:`audio` (adds the
processor), :mod:`controller` (adds scripts).  This package sits on top of all
three and nothing imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors import (
    ClientClosed as ClientClosed,
    Config as Config,
    ConfigError as ConfigError,
    DaemonAlreadyRunning as DaemonAlreadyRunning,
    DaemonError as DaemonError,
    DaemonNotRunning as DaemonNotRunning,
    EnsembleError as EnsembleError,
    FINAL as FINAL,
    JobCancelled as JobCancelled,
    JobError as JobError,
    JobLost as JobLost,
    JobNotFound as JobNotFound,
    JobRefused as JobRefused,
    JobState as JobState,
    JobTimeout as JobTimeout,
    OutOfRange as OutOfRange,
    PermissionDenied as PermissionDenied,
    ProtocolError as ProtocolError,
    QueueFull as QueueFull,
    RemoteError as RemoteError,
    Task as Task,
    TransportError as TransportError,
    WaitTimeout as WaitTimeout,
    WrongContextError as WrongContextError,
    current_task as current_task,
    load_config as load_config,
    __version__ as __version__,
)

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from actors import AsyncClient, Child, Executor, JobHandle, child_main
    from controller.client import Client, ScriptLoadError

_LAZY = {"AsyncClient", "Child", "Executor", "JobHandle", "child_main"}


def __getattr__(name: str) -> object:
    """The clients on first use, so that ``import ensemble`` stays light (no numpy, no sockets)."""
    if name == "Client":
        from controller.client import Client

        return Client
    if name == "ScriptLoadError":  # what load_script(wait=...) raises for a script whose module code failed
        from controller.client import ScriptLoadError

        return ScriptLoadError
    if name in _LAZY:
        import actors

        return getattr(actors, name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")


__all__ = ['AsyncClient', 'Child', 'Client', 'ClientClosed', 'Config', 'ConfigError', 'DaemonAlreadyRunning', 'DaemonError', 'DaemonNotRunning', 'EnsembleError', 'Executor', 'FINAL', 'JobCancelled', 'JobError', 'JobHandle', 'JobLost', 'JobNotFound', 'JobRefused', 'JobState', 'JobTimeout', 'OutOfRange', 'PermissionDenied', 'ProtocolError', 'QueueFull', 'RemoteError', 'ScriptLoadError', 'Task', 'TransportError', 'WaitTimeout', 'WrongContextError', '__version__', 'child_main', 'current_task', 'load_config']

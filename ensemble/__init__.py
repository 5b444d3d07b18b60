"""ensemble: the one import for programs that use the runtime.

``from ensemble import Client, Executor`` gives the full client (jobs, notes,
samples, scripts and parameters: :class:`controller.Client`) and the
``concurrent.futures`` executor.  The layers underneath stay importable on
their own: :mod:`actors` (the runtime: jobs only), :mod:`audio` (adds the
processor), :mod:`controller` (adds scripts).  This package sits on top of all
three and nothing imports it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING


def _check_not_shadowed(*names: str) -> None:
    """Refuse, naming the file and the fix, a module of the user's that hides one of ensemble's packages ``names``.

    ensemble's packages are top-level (``actors``, ``audio``, ``controller``):
    an ``actors.py`` beside the user's script comes first on ``sys.path`` and
    every import below would fail with an error that does not say why.
    ``audio`` and ``controller`` are checked when the full client is first
    used: a program that only runs jobs may have an ``audio.py`` of its own.
    """
    import importlib.util
    import os

    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    for name in names:
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) if mod is not None else None
        if mod is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
        if origin and os.path.dirname(os.path.dirname(os.path.realpath(origin))) != here:
            raise ImportError(f"ensemble cannot import its package {name!r}: {origin} hides it (a module of yours "
                              f"with the same name, found first on sys.path); rename that module. ensemble's "
                              f"top-level packages are actors, audio, controller and ensemble", name=name, path=origin)


_check_not_shadowed("actors")

from actors import (  # noqa: E402 - after the check above
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
    NoAnswer as NoAnswer,
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
    from controller.client import Client, ParamNotApplied, ScriptLoadError

_LAZY = {"AsyncClient", "Child", "Executor", "JobHandle", "child_main"}


def __getattr__(name: str) -> object:
    """The clients on first use, so that ``import ensemble`` stays light (no numpy, no sockets)."""
    if name in ("Client", "ParamNotApplied", "ScriptLoadError"):
        _check_not_shadowed("audio", "controller")
    if name == "Client":
        from controller.client import Client

        return Client
    if name == "ScriptLoadError":  # what load_script(wait=...) raises for a script whose module code failed
        from controller.client import ScriptLoadError

        return ScriptLoadError
    if name == "ParamNotApplied":  # what set_param(wait=True) raises for a value the script refused or left unset
        from controller.client import ParamNotApplied

        return ParamNotApplied
    if name in _LAZY:
        import actors

        return getattr(actors, name)
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")


__all__ = ['AsyncClient', 'Child', 'Client', 'ClientClosed', 'Config', 'ConfigError', 'DaemonAlreadyRunning', 'DaemonError', 'DaemonNotRunning', 'EnsembleError', 'Executor', 'FINAL', 'JobCancelled', 'JobError', 'JobHandle', 'JobLost', 'JobNotFound', 'JobRefused', 'JobState', 'JobTimeout', 'NoAnswer', 'OutOfRange', 'ParamNotApplied', 'PermissionDenied', 'ProtocolError', 'QueueFull', 'RemoteError', 'ScriptLoadError', 'Task', 'TransportError', 'WaitTimeout', 'WrongContextError', '__version__', 'child_main', 'current_task', 'load_config']

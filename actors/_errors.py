"""The exception tree of ensemble.

Every error the runtime raises on purpose derives from :class:`EnsembleError`,
so a user can catch the whole family in one ``except``.  Third-party errors
(zmq, msgpack, sqlite3) are translated where they are caught and chained with
``raise ... from exc``.
"""

from __future__ import annotations

import sys
from typing import Any, cast


class EnsembleError(Exception):
    """Base of every error ensemble raises on purpose."""


class ConfigError(EnsembleError):
    """Raised when a config file, environment variable or flag has a bad value."""


class DaemonError(EnsembleError):
    """Raised when a daemon cannot be started, found or stopped."""


class DaemonAlreadyRunning(DaemonError):
    """Raised by ``up`` when a daemon with the same name already holds the lock."""


class DaemonNotRunning(DaemonError):
    """Raised when no daemon answers under the given name."""


class TransportError(EnsembleError):
    """Raised when the connection to the daemon broke or did not answer in time."""


# apart from the other TransportErrors so that a caller asking again after a wait that ran out can tell it from a
# request that failed: comparing clocks could not (a socket's wait is approximate by some ms)
class NoAnswer(TransportError):
    """Raised when the daemon did not answer one request within its timeout (the connection may well be fine)."""

    @classmethod
    def to(cls, request: str, seconds: float | None) -> "NoAnswer":
        """The error for ``request`` (its message's name) unanswered after ``seconds``, saying what to look at."""
        return cls(f"the daemon did not answer {request} within {seconds:g}s; is it overloaded or stopped? "
                   "(`ensemble status`)")


class ClientClosed(EnsembleError):
    """Raised when a client is used after ``close()`` (you closed it; nothing broke)."""

    def __init__(self, message: str = "this client was closed; create a new one") -> None:
        super().__init__(message)


class WaitTimeout(EnsembleError, TimeoutError):
    """Raised when your wait for a job ran out of time; the job itself goes on."""


class OutOfRange(EnsembleError, ValueError):
    """Raised when a request carries a value outside its range (a note above 127, a negative delay)."""


class PermissionDenied(EnsembleError):
    """Raised when a remote peer asks for something its key's role does not grant."""


class ProtocolError(EnsembleError):
    """Raised when a frame is not a valid ensemble message (size, version, kind, fields)."""


class UnknownKind(ProtocolError):
    """A frame of a message kind this process has no class for: a package it did not load (``kind``: its number)."""

    def __init__(self, kind: object) -> None:
        super().__init__(f"unknown message kind {kind!r}")
        self.kind = kind


class WrongContextError(EnsembleError):
    """Raised when a script function is called in a context where it is not available."""


class JobError(EnsembleError):
    """Base of the errors that concern one job."""


class JobRefused(JobError):
    """Raised at submit when the daemon will not accept a job (allow-list, bad function, queue full)."""


class QueueFull(JobRefused):
    """Raised at submit when the daemon's queue is at its configured limit."""


class JobNotFound(JobError):
    """Raised when a job id is unknown to the daemon (never submitted, or pruned)."""


class JobTimeout(JobError):
    """Raised by ``result()`` when the job passed its deadline (``deadline=``) and was stopped."""


class JobCancelled(JobError):
    """Raised by ``result()`` when the job was cancelled or killed before it returned."""


class JobLost(JobError):
    """Raised by ``result()`` when the worker running the job died and no retry was left."""


class RemoteError(JobError):
    """Raised by ``result()`` when the job function raised; carries the remote type and traceback."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.remote_message}"
        if self.traceback_text:
            text += "\n\nRemote traceback:\n" + self.traceback_text.rstrip()
        return text


def error_name(cls: type) -> str:
    """An exception class's name as Python's tracebacks print it: bare for builtins, ``module.qualname`` otherwise.

    What a worker reports as a failed job's ``error_type``, so that a client
    can find the class again (:func:`remote_error`).
    """
    module = getattr(cls, "__module__", "builtins")
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


_AS_ORIGINAL: dict[type, type] = {}  # the job's exception class -> its RemoteError twin (see remote_error)


def remote_error(type_name: str, message: str, traceback_text: str = "", raised: BaseException | None = None
                 ) -> RemoteError:
    """The error a client raises for a job that raised ``type_name``: a RemoteError, of the job's own class too.

    When this process has the class ``type_name`` names (a builtin, a class
    of a module already imported here, or one of the script run as
    ``__main__``: nothing is imported on a remote peer's word; see
    :func:`_find_class`), the error is an instance of a subclass of both, named as
    the original: ``except ValueError`` and ``except RemoteError`` both catch
    it.  Its text is the original's, as ``concurrent.futures`` re-raises it
    (``str()`` is ``boom``, a traceback ends ``TypeError: boom``, never
    ``TypeError: TypeError: boom``; ``args`` is ``(message,)``), and its
    cause is a plain RemoteError whose text carries the remote traceback, as
    ``ProcessPoolExecutor`` chains its own.  Only ``Exception`` subclasses
    qualify (a job's ``KeyboardInterrupt`` or ``SystemExit`` must not stop
    the caller); otherwise a plain RemoteError, whose text names the job's
    type (``TypeError: boom``, its own name being ``RemoteError``) and carries
    the remote traceback.

    ``raised``: the job's exception itself, when it reached this process (a
    local client's job: its worker pickled it).  The error then has its
    ``args`` and attributes too (an ``OSError``'s ``errno`` and ``filename``,
    the fields of a class of the user's), as under ``ProcessPoolExecutor``.
    """
    cls = _find_class(type_name)
    twin = _AS_ORIGINAL.get(cls) if cls is not None else None
    if cls is not None and twin is None:
        try:
            twin = type(cls.__name__, (cls, RemoteError), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__str__": _original_text,
                "__doc__": cls.__doc__})
        except Exception:  # noqa: BLE001 - a class that cannot be combined (layout, metaclass): plain RemoteError
            twin = RemoteError
        _AS_ORIGINAL[cls] = twin
    if twin is None or twin is RemoteError:
        return RemoteError(type_name, message, traceback_text)
    made = _as_raised(twin, cls, raised, type_name, message, traceback_text) if type(raised) is cls else None
    try:
        error = made or cast(Any, twin).__new__(twin)  # the class's own __new__ (OSError's, say), not its __init__
        if made is None:
            RemoteError.__init__(error, type_name, message, traceback_text)
            error.args = (message,)
    except Exception:  # noqa: BLE001 - a __new__ that wants its own arguments
        return RemoteError(type_name, message, traceback_text)
    assert isinstance(error, RemoteError)
    error.__cause__ = RemoteError(type_name, message, traceback_text)
    return error


def _as_raised(twin: type, cls: type, raised: Any, type_name: str, message: str, traceback_text: str) -> Any:
    """A ``twin`` with the state of ``raised`` (an instance of ``cls``), rebuilt as pickle rebuilds it (its
    ``__reduce__``: the arguments its ``__new__`` reads, an ``OSError``'s ``errno``, ``strerror`` and
    ``filename``, then its ``__dict__``); None when it does not reduce that way."""
    try:
        reduced = raised.__reduce__()
        if type(reduced) is not tuple or len(reduced) < 2 or reduced[0] is not cls or type(reduced[1]) is not tuple:
            return None
        error = cast(Any, twin).__new__(twin, *reduced[1])
        RemoteError.__init__(error, type_name, message, traceback_text)
        error.args = raised.args
        state = reduced[2] if len(reduced) > 2 else None
        if isinstance(state, dict):
            fields = {"type_name", "remote_message", "traceback_text"}
            error.__dict__.update({k: v for k, v in state.items() if k not in fields})
        return error
    except Exception:  # noqa: BLE001 - a class whose rebuilding wants more: the plain twin, as before
        return None


def rebuilt_exception(cls: type, args: tuple[Any, ...], state: dict[str, Any] | None) -> BaseException:
    """An exception of ``cls`` with ``args`` and the attributes in ``state``, made without calling its
    ``__init__`` (as ``copy`` makes one): how a worker pickles an exception whose ``__init__`` cannot be called
    with its own ``args`` (see :func:`actors.worker._pickled_error`)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseException)) or type(args) is not tuple:
        raise TypeError("rebuilt_exception takes an exception class and a tuple of arguments")
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _original_text(self: RemoteError) -> str:
    """``str()`` of a RemoteError twin: the job's exception's own text (its type is the twin's name already)."""
    return self.remote_message


# ProcessPoolExecutor's error for a pool whose processes died or whose initializer failed
BROKEN_POOL = "concurrent.futures.process.BrokenProcessPool"
# the type of a job's failure when the pool broke: no worker is left to run it, or its worker's initializer
# raised. Raised as BROKEN_POOL's class, and an Executor is broken from then on; a job that raises
# BrokenProcessPool itself (its own pool lost a process) is named BROKEN_POOL and breaks nothing.
POOL_BROKEN = "concurrent.futures.BrokenProcessPool"


def _find_class(type_name: str) -> type | None:
    """The ``Exception`` subclass ``type_name`` names in this process, or None (imports none but BROKEN_POOL's).

    ``type_name`` as :func:`error_name` wrote it: a builtin's bare name, ``module.qualname`` of a module
    imported here, or the bare qualname of a class of the script run as ``__main__``, as a traceback names it.
    That is where a job of the script finds it when its worker was forked from this process, as
    ``pickle`` finds ``__main__.MyError`` here for ``ProcessPoolExecutor``; a worker that loaded the script
    itself ran it as ``__mp_main__``, which :func:`actors.callables.head` made a name of this process's
    ``__main__`` when it sent the job.  A bare name is a builtin's first; in ``__main__`` only a class the
    script defined counts (not one it imported under that name).
    """
    import builtins

    if type_name in (BROKEN_POOL, POOL_BROKEN):  # the one exception: a standard module, imported by no client
        import concurrent.futures.process  # until its pool broke

        if type_name == POOL_BROKEN:
            return concurrent.futures.process.BrokenProcessPool

    if "." not in type_name:
        found = _attribute(builtins, [type_name])
        if found is None:
            found = _script_class(type_name)
    else:
        parts = type_name.split(".")
        found = None
        for cut in range(len(parts) - 1, 0, -1):  # the longest imported module prefix, then the qualname in it
            module = sys.modules.get(".".join(parts[:cut]))
            if module is not None:
                found = _attribute(module, parts[cut:])
                break
        else:
            found = _script_class(type_name)  # a class nested in one of the script's (``Outer.MyError``)
    if isinstance(found, type) and issubclass(found, Exception) and not issubclass(found, RemoteError):
        return found
    return None


def _attribute(owner: object, names: list[str]) -> object:
    """``owner.a.b`` for ``names`` ``["a", "b"]``, or None."""
    found: object = owner
    for name in names:
        found = getattr(found, name, None)
    return found


def _script_class(qualname: str) -> object:
    """The class ``qualname`` names in the script run as ``__main__``, if the script defined it, else None."""
    found = _attribute(sys.modules.get("__main__"), qualname.split("."))
    return found if getattr(found, "__module__", None) in ("__main__", "__mp_main__") else None


# Error codes carried in an ``Error`` reply, mapped back to classes by the client.
ERROR_CODES: dict[str, type[EnsembleError]] = {
    "protocol": ProtocolError,
    "refused": JobRefused,
    "queue-full": QueueFull,
    "not-found": JobNotFound,
    "config": ConfigError,
    "daemon": DaemonError,
    "context": WrongContextError,
    "permission": PermissionDenied,
    "range": OutOfRange,
}


def error_from_code(code: str, message: str) -> EnsembleError:
    """Build the exception a client raises for an ``Error`` reply."""
    return ERROR_CODES.get(code, EnsembleError)(message)


def code_of(exc: EnsembleError) -> str:
    """The wire code for an exception (the inverse of :func:`error_from_code`)."""
    for code, cls in ERROR_CODES.items():
        if type(exc) is cls:
            return code
    for code, cls in ERROR_CODES.items():
        if isinstance(exc, cls):
            return code
    return "error"

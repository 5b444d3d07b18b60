"""The exception tree of ensemble.

Every error the runtime raises on purpose derives from :class:`EnsembleError`,
so a user can catch the whole family in one ``except``.  Third-party errors
(zmq, msgpack, sqlite3) are translated where they are caught and chained with
``raise ... from exc``.
"""

from __future__ import annotations


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


class ClientClosed(EnsembleError):
    """Raised when a client is used after ``close()`` (you closed it; nothing broke)."""


class WaitTimeout(EnsembleError, TimeoutError):
    """Raised when your wait for a job ran out of time; the job itself goes on."""


class OutOfRange(EnsembleError, ValueError):
    """Raised when a request carries a value outside its range (a note above 127, a negative delay)."""


class PermissionDenied(EnsembleError):
    """Raised when a remote peer asks for something its key's role does not grant."""


class ProtocolError(EnsembleError):
    """Raised when a frame is not a valid ensemble message (size, version, kind, fields)."""


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

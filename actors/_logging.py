"""One log line per record, in every ensemble process.

Values in log records often come from peers (sample names, script paths,
error messages); control characters in them are escaped, so no value can
start a line of its own and forge a record.  Tracebacks stay multi-line.

The daemon's log follows log rotation: the daemon reopens its file on SIGHUP
(:meth:`DaemonLogHandler.reopen`, called by :mod:`actors._childoutput`), and
the children it starts append their own records to the file by its path
(:class:`FollowedFileHandler`), opening it again once it was moved.  What the
children print is not written there by them: it comes through the daemon
(:mod:`actors._childoutput`), each line marked as their output.
"""

from __future__ import annotations

import copy
import io
import logging
import logging.handlers
import os
from typing import IO

CONTROL = str.maketrans({c: f"\\x{c:02x}" for c in range(32)} | {127: "\\x7f"})

# Set by the daemon in the environment of a child it starts (actors._spawn): the daemon's log, which the child
# appends its records to (its stdout and stderr are a pipe to the daemon).  Removed by setup(): nothing a job
# starts sees it.
LOG_FILE_ENV = "_ENSEMBLE_LOG_FILE"


# A record with this attribute set holds several records' messages, one a line (the daemon's children's output,
# actors._childoutput: one record, one write, for all the lines one read of a pipe got).
LINES = "one_record_a_line"
_SLOT = "\ue000"  # where the message goes in a formatted line (a private-use character: never escaped)


class OneLineFormatter(logging.Formatter):
    """A Formatter whose message part never spans lines (a :data:`LINES` record: one formatted line each)."""

    def format(self, record: logging.LogRecord) -> str:
        if not getattr(record, LINES, False):
            return super().format(record)
        one = copy.copy(record)
        one.msg, one.args = _SLOT, None
        head, _, tail = super().format(one).partition(_SLOT)
        return "\n".join(head + line.translate(CONTROL) + tail for line in record.getMessage().split("\n"))

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(CONTROL)
        return super().formatMessage(record)


class DaemonLogHandler(logging.FileHandler):
    """The daemon's ``daemon.log`` (mode 0600 under its umask), which :meth:`reopen` opens again by its path."""

    def reopen(self) -> None:
        """Close the file and open its path again: a new file once logrotate moved the old one away.

        Any thread; waits for a record being written (the handler's lock).
        Raises ``OSError`` if the path cannot be opened (the old file is
        kept, and written on).
        """
        new = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, new
        finally:
            self.release()
        if old is not None:
            old.close()


class FollowedFileHandler(logging.handlers.WatchedFileHandler):
    """A child's records, appended to the daemon's log by its path; opened again when the path names another
    file or none (moved by logrotate), before the next record.  Costs one ``stat`` a record.

    A file it has to create is made 0600, as the daemon makes its own (the child runs with the user's umask).
    """

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def setup(role: str, stream: IO[str] | None = None, path: str | None = None, level: int = logging.INFO) -> None:
    """Log ``ROLE pid=N name: message`` lines to ``stream`` and/or the file ``path`` (replacing other handlers).

    ``path`` is the daemon's own log (a :class:`DaemonLogHandler`).  A process
    the daemon started, whose environment names the daemon's log
    (:data:`LOG_FILE_ENV`), appends its records to that file instead of
    ``stream`` (its stderr is a pipe to the daemon, whose lines are logged as
    its output), following the file when it is moved.
    """
    fmt = OneLineFormatter(f"%(asctime)s %(levelname)s {role} pid=%(process)d %(message)s" if role == "supervisor"
                           else f"%(asctime)s %(levelname)s {role} pid=%(process)d %(name)s: %(message)s")
    daemons_log = os.environ.pop(LOG_FILE_ENV, None)
    root = logging.getLogger()
    root.handlers.clear()
    handlers: list[logging.Handler] = []
    if path is not None:
        handlers.append(DaemonLogHandler(path, encoding="utf-8", errors="backslashreplace"))
    if daemons_log and path is None:
        handlers.append(FollowedFileHandler(daemons_log, encoding="utf-8", errors="backslashreplace"))
    elif stream is not None:
        handlers.append(logging.StreamHandler(stream))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)


def reopen_files() -> list[tuple[str, OSError]]:
    """Reopen every :class:`DaemonLogHandler` of the root logger (SIGHUP: see :mod:`actors._childoutput`).

    Any thread.  Returns the paths that could not be opened again, with why.
    """
    failed = []
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, DaemonLogHandler):
            try:
                handler.reopen()
            except OSError as exc:
                failed.append((handler.baseFilename, exc))
    return failed

"""One log line per record, in every ensemble process.

Values in log records often come from peers (sample names, script paths,
error messages); control characters in them are escaped, so no value can
start a line of its own and forge a record.  Tracebacks stay multi-line.
"""

from __future__ import annotations

import logging
from typing import IO

CONTROL = str.maketrans({c: f"\\x{c:02x}" for c in range(32)} | {127: "\\x7f"})


class OneLineFormatter(logging.Formatter):
    """A Formatter whose message part never spans lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(CONTROL)
        return super().formatMessage(record)


def setup(role: str, stream: IO[str] | None = None, path: str | None = None, level: int = logging.INFO) -> None:
    """Log ``ROLE pid=N name: message`` lines to ``stream`` and/or the file ``path`` (replacing other handlers)."""
    fmt = OneLineFormatter(f"%(asctime)s %(levelname)s {role} pid=%(process)d %(message)s" if role == "supervisor"
                           else f"%(asctime)s %(levelname)s {role} pid=%(process)d %(name)s: %(message)s")
    root = logging.getLogger()
    root.handlers.clear()
    handlers: list[logging.Handler] = []
    if path is not None:
        handlers.append(logging.FileHandler(path))
    if stream is not None:
        handlers.append(logging.StreamHandler(stream))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)

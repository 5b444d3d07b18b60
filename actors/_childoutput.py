"""What the daemon's children print, in the daemon's log: one marked record a line, read on a thread of its own.

A child the daemon starts (a worker, the controller, the processor) has a
pipe to the daemon as its stdout and stderr, not the log file: what its jobs
and scripts print, their tracebacks, what their subprocesses write.  The
:class:`ChildOutput` thread reads every such pipe and logs each line as a
record of the daemon's, marked as that process's output::

    ... INFO supervisor pid=100 event=job-output pid=4242 text=ERROR supervisor: worker 3 died
    ... INFO supervisor pid=100 event=child-output module=controller.actor pid=4243 text=loaded

so a line a job prints can never pass for a record, and every line names
the process that wrote it (the daemon's ``event=spawn name=... pid=...``
record says which actor that is).  Control characters are escaped
(:mod:`actors._logging`).  These records are written whatever ``[daemon]
log_level`` says: they are what the jobs chose to write, as before.  The
children's own records do not come this way: they append them to the log
themselves (:class:`actors._logging.FollowedFileHandler`).

Bounded: a line longer than :data:`MAX_LINE` bytes is logged cut, marked
``[cut: longer than 8192 bytes]``, the rest of it dropped; text with no
newline is logged, marked ``[no newline]``, once its process has been silent
for :data:`PARTIAL_AFTER` s or has ended.  So the daemon holds at most one
line of each child, whatever a job prints; a job printing faster than the
daemon takes it waits on its pipe, as it would on a slow disk.  The lines of
one read are one record (:data:`actors._logging.LINES`) and one write: about
2.5 µs of the daemon's CPU a line (23 µs as a record each).  The daemon's loop
only hands pipes over (:meth:`ChildOutput.attach`) and never waits on them.

The same thread reopens the daemon's log on SIGHUP (:meth:`ChildOutput.reopen`,
for logrotate's ``postrotate``), so the children's output follows at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import selectors
import threading
import time

from actors._logging import LINES, reopen_files

MAX_LINE = 8192  # bytes of a line that are logged; the rest of a longer one is dropped (and said so)
PARTIAL_AFTER = 0.5  # seconds of silence after which text with no newline is logged as it is
_CHUNK = 65536  # one read of one pipe (the pipes take turns)
_LEFT_CHUNKS = 64  # reads of what an ended process left (4 MiB at most: an orphan of its jobs may write on)

log = logging.getLogger("ensemble.output")
_log = logging.getLogger("ensemble.log")
_current: ChildOutput | None = None


class _Pipe:
    """One child's output pipe, as the reading thread sees it."""

    __slots__ = ("fd", "pidfd", "label", "head", "cutting", "last")

    def __init__(self, fd: int, pidfd: int, label: str) -> None:
        self.fd = fd  # -1 once closed
        self.pidfd = pidfd  # readable once the process ended; -1: none (then the pipe's end of file ends it)
        self.label = label
        self.head = bytearray()  # the line begun, at most MAX_LINE bytes
        self.cutting = False  # the line begun was logged cut: drop its rest, up to its newline
        self.last = 0.0  # monotonic instant of its last read


class ChildOutput:
    """The daemon's reader of its children's output pipes and reopener of its log (one thread)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        # never closed: a signal handler may write here until the process ends
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pipes: dict[int, _Pipe] = {}  # by read end (the thread's only)
        self._lock = threading.Lock()
        self._incoming: list[_Pipe] = []  # handed over by attach(), registered by the thread
        self._stopping = False
        self._reopen = False
        self._thread = threading.Thread(target=self._run, name="child-output", daemon=True)
        self._thread.start()

    def attach(self, fd: int, pid: int, module: str) -> None:
        """Log what comes on ``fd`` (a pipe's read end, taken over) as the output of child ``pid`` (``python -m
        module``), until that process has ended.  Any thread; costs a pidfd and a wake-up, never waits."""
        label = f"event=job-output pid={pid}" if module == "actors.worker" else \
            f"event=child-output module={module} pid={pid}"
        os.set_blocking(fd, False)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # ended already, or no descriptor left: its pipe's end of file ends it
            pidfd = -1
        with self._lock:
            if not self._stopping:
                self._incoming.append(_Pipe(fd, pidfd, label))
                fd = -1
        if fd >= 0:  # stopped: nobody will read it
            os.close(fd)
            if pidfd >= 0:
                os.close(pidfd)
            return
        self._wake()

    def reopen(self) -> None:
        """Have the thread reopen the daemon's log files (:func:`actors._logging.reopen_files`).

        Safe in a signal handler: it sets a flag and writes one byte.
        """
        self._reopen = True
        self._wake()

    def close(self, timeout: float = 5.0) -> None:
        """Log what the pipes still hold, close them and end the thread (waits for it ``timeout`` s at most)."""
        with self._lock:
            self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # full: the thread has wake-ups to read already
            pass

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            try:
                for key, _ in self._selector.select(self._timeout()):
                    if key.data is None:
                        self._woken()
                    else:
                        pipe, ended = key.data
                        if pipe.fd < 0:  # closed earlier in this round
                            continue
                        if ended:
                            self._ended(pipe)
                        else:
                            self._read(pipe)
                self._log_silent(time.monotonic())
                if self._stopping:
                    break
            except Exception:  # noqa: BLE001 - the thread must go on: a child whose pipe is not read would block
                _log.exception("event=child-output-error detail=reading the children's output goes on")
                time.sleep(0.1)  # (whatever failed is not retried in a tight loop)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for pipe in [*self._pipes.values(), *incoming]:
            self._ended(pipe)
        self._selector.close()

    def _woken(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for pipe in incoming:
            self._pipes[pipe.fd] = pipe
            self._selector.register(pipe.fd, selectors.EVENT_READ, (pipe, False))
            if pipe.pidfd >= 0:
                self._selector.register(pipe.pidfd, selectors.EVENT_READ, (pipe, True))
        if self._reopen:
            self._reopen = False
            failed = reopen_files()
            for path, exc in failed:
                _log.error("event=log-reopen-failed path=%s reason=%s detail=still writing to the file it had open",
                           path, exc)
            if not failed:
                _log.info("event=log-reopened signal=SIGHUP")

    def _timeout(self) -> float | None:
        """Until the first text with no newline is due (None: no such text, wait for the pipes)."""
        due = [p.last for p in self._pipes.values() if p.head]
        return max(0.0, min(due) + PARTIAL_AFTER - time.monotonic()) if due else None

    def _read(self, pipe: _Pipe) -> None:
        try:
            data = os.read(pipe.fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # every writer closed it
            self._close(pipe)
            return
        pipe.last = time.monotonic()
        self._feed(pipe, data)

    def _ended(self, pipe: _Pipe) -> None:
        """Its process ended: log what it left in the pipe, and close it."""
        for _ in range(_LEFT_CHUNKS):
            try:
                data = os.read(pipe.fd, _CHUNK)
            except OSError:  # (BlockingIOError: nothing more is there)
                break
            if not data:
                break
            self._feed(pipe, data)
        self._close(pipe)

    def _close(self, pipe: _Pipe) -> None:
        if pipe.fd < 0:
            return
        if pipe.head:
            self._emit([_line(pipe, pipe.head, " [no newline]")])
        for fd in (pipe.fd, pipe.pidfd):
            if fd < 0:
                continue
            try:
                self._selector.unregister(fd)
            except KeyError:  # (still incoming at the stop)
                pass
            os.close(fd)
        self._pipes.pop(pipe.fd, None)
        pipe.fd = pipe.pidfd = -1

    def _feed(self, pipe: _Pipe, data: bytes) -> None:
        """Log the lines ``data`` ends (in one record: see :func:`actors._logging.LINES`); keep the one it begins."""
        lines: list[str] = []
        *ended, rest = data.split(b"\n")
        for part in ended:
            if pipe.cutting:  # the end of a line logged cut already
                pipe.cutting = False
                continue
            if pipe.head or len(part) > MAX_LINE:
                self._add(pipe, part, lines)
                if pipe.cutting:
                    pipe.cutting = False
                    continue
                part = bytes(pipe.head)
                pipe.head.clear()
            lines.append(_line(pipe, part.removesuffix(b"\r")))
        self._add(pipe, rest, lines)
        self._emit(lines)

    def _add(self, pipe: _Pipe, part: bytes, lines: list[str]) -> None:
        """Add ``part`` to the line begun; a line that grows past MAX_LINE bytes goes to ``lines``, cut."""
        if pipe.cutting or not part:
            return
        room = MAX_LINE - len(pipe.head)
        if len(part) <= room:
            pipe.head += part
            return
        pipe.head += part[:room]
        lines.append(_line(pipe, pipe.head, f" [cut: longer than {MAX_LINE} bytes]"))
        pipe.head.clear()
        pipe.cutting = True

    def _log_silent(self, now: float) -> None:
        """Log the text with no newline of the pipes silent for PARTIAL_AFTER s."""
        for pipe in self._pipes.values():
            if pipe.head and now - pipe.last >= PARTIAL_AFTER:
                self._emit([_line(pipe, pipe.head, " [no newline]")])
                pipe.head.clear()

    def _emit(self, lines: list[str]) -> None:
        """Log ``lines`` as one record of as many lines (one write; see :data:`actors._logging.LINES`).

        ``handle()``, not ``info()``: written whatever the log level is, as the output was before.
        """
        if lines:
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", ("\n".join(lines),), None,
                                      extra={LINES: True}))


def _line(pipe: _Pipe, text: bytes | bytearray, note: str = "") -> str:
    return f"{pipe.label} text={bytes(text).decode('utf-8', 'backslashreplace')}{note}"


def start() -> ChildOutput:
    """This process's reader (the daemon's: started with its logging, once), stopped at the interpreter's exit."""
    global _current
    if _current is None:
        _current = ChildOutput()
        atexit.register(stop)
    return _current


def current() -> ChildOutput | None:
    """This process's reader, if :func:`start` started one (the daemon's), else None."""
    return _current


def stop() -> None:
    """Log what the children's pipes still hold and end the reader (at exit; ``os._exit`` callers call it)."""
    if _current is not None:
        _current.close()

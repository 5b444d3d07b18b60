"""The child side of supervision: connect, say hello, heartbeat, obey stop.

Every supervised process (controller, processor, worker) runs a :class:`Child`
loop (:meth:`Child.serve`) on its main thread, a worker on a thread of its own
(its main thread runs jobs): a DEALER socket to the supervisor's internal ROUTER,
a heartbeat every ``heartbeat_interval``, and an exit when the supervisor has
been silent past ``heartbeat_timeout`` (belt and braces beside the
parent-death signal).

Test hook: with ``ENSEMBLE_TEST_CRASH_ROLE=<role>`` in the daemon's environment,
every child of that role exits with code 3 at start (a crash loop on demand).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import zmq

from actors._errors import ProtocolError
from actors._logging import setup as one_line_logging
from actors._spawn import restore_user_env, take_job_output
from actors.config import Config
from actors.messages import Heartbeat, Hello, Limits, Message, Stop, decode, encode

log = logging.getLogger("ensemble.child")
# a poll sleeps at most this long (s) and the loop goes round: a heartbeat interval of weeks (the config allows
# a year) overflowed the poll's milliseconds (OverflowError past 2**31 - 1), and every worker failed
_LONGEST_POLL = 3600.0
_POLLIN = int(zmq.POLLIN)  # a plain int: `&` on the IntFlag costs a Python call


class Outbox:
    """Messages from another thread (script thread, audio thread) for the main loop to send.

    ``put`` appends to a deque (atomic under the GIL) and writes an eventfd the
    main loop polls: no lock, no allocation beyond the message, never blocks,
    so the audio thread may use it.
    """

    def __init__(self) -> None:
        self.items: collections.deque[Message] = collections.deque()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def put(self, msg: Message) -> None:
        """Queue ``msg`` and wake the main loop (any thread)."""
        self.items.append(msg)
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass

    def clear_wakeup(self) -> None:
        """Reset the eventfd (main loop)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass


class Child:
    """Base class of a supervised process; subclasses handle their own messages."""

    role = "child"
    # whether a local child of this kind waits out its daemon's silence (_silence_outlived): one that holds a job
    # or a script's state would lose it by leaving; one that holds neither (the panel) leaves and is started again
    waits_out_silence = True

    def __init__(self, cfg: Config, name: str, endpoint: str | None = None,
                 curve: tuple[str, str] | None = None) -> None:
        """Connect to the supervisor: its ipc socket, or ``endpoint`` (tcp, with ``curve`` =
        (own secret key file, daemon public key file)) for a worker on another host."""
        self.cfg = cfg
        self.remote = endpoint is not None
        self._parent = os.getppid()  # a local child's daemon (it waits out the daemon's silences: _silence_outlived)
        self._silence_noted = -1.0  # the last_heard of the silence last said in the log
        self._sentinel_fd = -1
        if not self.remote and os.getpgrp() == os.getpid():  # a child of the local daemon
            from actors._spawn import guard_process_group

            # first, before ZeroMQ starts threads: our group dies with us, job subprocesses too
            self._sentinel_fd = guard_process_group()
        self.name = name
        self.limits = Limits(max_frame=cfg.daemon.max_frame)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, name.encode())
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        from actors._rundir import RunDir

        if curve is not None:
            from actors._keys import curve_client

            curve_client(self.sock, curve[0], curve[1])
        self.sock.connect(endpoint or RunDir(cfg.run_dir).internal_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.outbox = Outbox()
        self.poller.register(self.outbox.fd, zmq.POLLIN)
        self.running = True
        self.last_heard = time.monotonic()
        self.last_sent = 0.0
        self.stop_reason = ""
        self.exit_code = 0  # what run() returns (a worker retiring on changed code sets its own)
        self.resources: dict[str, float] = {}  # what a remote worker tells the daemon it offers jobs

    def send(self, msg: Message) -> None:
        """Send one message to the supervisor."""
        self.sock.send(encode(msg))
        self.last_sent = time.monotonic()

    def stats(self) -> dict[str, Any]:
        """Stats attached to every heartbeat (subclasses add theirs)."""
        return {}

    def handle(self, msg: Message) -> None:
        """Handle a message other than heartbeat or stop (subclasses override)."""
        log.warning("%s: unexpected message %s", self.name, type(msg).__name__)

    def extra_sockets(self) -> list[Any]:
        """Further sockets or fds to poll (subclasses override)."""
        return []

    def on_ready(self, sock: Any) -> None:
        """One of :meth:`extra_sockets` is readable."""

    def tick(self, now: float) -> None:
        """Called every loop iteration (subclasses do periodic work here)."""

    def poll_timeout(self) -> float:
        """Seconds the loop may sleep (subclasses shorten it while busy)."""
        return self.cfg.supervision.heartbeat_interval

    def on_stop(self) -> None:
        """Called once when a stop was requested, before the loop ends."""

    def run(self) -> int:
        """Catch the signals, then run :meth:`serve` on this, the main thread; returns the process exit code.

        A worker overrides it: its main thread runs jobs, :meth:`serve` a thread of its own.
        """
        self.catch_signals()
        return self.serve()

    def catch_signals(self) -> None:
        """Install the child's SIGTERM handler (an orderly stop) and SIGINT handler (none) (main thread)."""
        signal.signal(signal.SIGTERM, self.on_sigterm)
        # a Ctrl-C is the daemon's to act on (it stops its children in order): caught and dropped here, not
        # ignored, since an ignored signal stays ignored through exec: a job's subprocess (`jack_rec`, ffmpeg)
        # would ignore the SIGINT that asks it to stop
        signal.signal(signal.SIGINT, _dropped)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler (main thread, between two bytecodes): ask the loop to stop."""
        self._request_stop("SIGTERM")

    def serve(self) -> int:
        """The supervision loop: Hello, heartbeats, messages, until a stop; then :meth:`on_stop`, the last
        messages out and the socket closed.  Returns the process exit code.  Blocks until the stop."""
        for s in self.extra_sockets():
            self.poller.register(s, zmq.POLLIN)
        self.send(Hello(self.role, self.name, os.getpid(), self.resources))
        self.send(Heartbeat(self.stats()))  # stats (e.g. the audio backend's notice) at once
        sup = self.cfg.supervision
        while self.running:
            events = dict(self.poller.poll(int(min(self.poll_timeout(), _LONGEST_POLL) * 1000)))
            now = time.monotonic()
            if events.pop(self.sock, 0):
                self._drain()
            if events.pop(self.outbox.fd, 0):
                self.outbox.clear_wakeup()
            while self.outbox.items:
                self.send(self.outbox.items.popleft())
            for s in events:
                self.on_ready(s)
            now = time.monotonic()
            self.tick(now)
            if now - self.last_sent >= sup.heartbeat_interval:
                self.send(Heartbeat(self.stats()))
            if now - self.last_heard > sup.heartbeat_timeout:
                self._drain()  # what came while this thread could not run (a job held the GIL in C) counts
                if self.running and time.monotonic() - self.last_heard > sup.heartbeat_timeout:
                    if self._silence_outlived(now):
                        continue
                    log.error("%s: supervisor silent for %.1fs, exiting", self.name, now - self.last_heard)
                    self._request_stop("supervisor silent")
                    break
        self.on_stop()
        while self.outbox.items:
            self.send(self.outbox.items.popleft())
        self.sock.close(linger=500)
        os.close(self.outbox.fd)
        _deliver_and_term(self.ctx, timeout=1.0)
        return self.exit_code

    def _silence_outlived(self, now: float) -> bool:
        """The supervisor said nothing for ``heartbeat_timeout``: whether this child waits on (True) or leaves.

        A local child (unless :attr:`waits_out_silence` is False) waits while its daemon lives: the daemon is its parent, and its death kills this process
        (the parent-death signal, :mod:`actors._spawn`), so a silent parent is a slow one (its loop held by one
        long request, the host's scheduler): leaving would lose the job it runs and the state it holds for a
        stall.  A remote worker cannot tell a slow daemon from a lost one, and leaves.  Said once a silence.
        """
        if self.remote or not self.waits_out_silence or os.getppid() != self._parent:
            return False
        if self._silence_noted != self.last_heard:
            self._silence_noted = self.last_heard
            log.warning("%s: supervisor silent for %.1fs; it is alive (its parent): waiting for it", self.name,
                        now - self.last_heard)
        return True

    def _die(self) -> None:
        """A remote worker told to die (its job ignored an abort): exit at once; its keeper then kills what its
        jobs started (:mod:`actors._keeper`), not its process group, which it may share (``... | tee log``)."""
        log.error("%s: killed by the supervisor", self.name)
        os._exit(137)

    def unreadable(self, frame: bytes) -> None:
        """A frame from the supervisor that :func:`decode` refused (logged already): what it held that can still
        be read, for a child that must answer for it (a worker's jobs).  Nothing by default."""

    def _request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.running = False

    def _drain(self) -> None:
        for n in range(1000):
            # the poller saw the first frame; before each further one ask ZMQ_EVENTS (a read that finds
            # nothing raises Again, which costs more than asking)
            if n and not self.sock.getsockopt(zmq.EVENTS) & _POLLIN:  # type: ignore[operator]
                return
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                # stored: the daemon passes object-store keys to Ray-placed workers
                _, msg = decode(frame, self.limits, stored=True)
            except ProtocolError as exc:
                log.error("%s: bad frame from supervisor: %s", self.name, exc)
                self.unreadable(frame)
                continue
            if isinstance(msg, Heartbeat):
                continue
            if isinstance(msg, Stop):
                if msg.reason == "kill" and self.remote:
                    self._die()
                if self.remote and msg.reason.startswith("refused: "):  # its join (see Supervisor._remote_hello)
                    log.error("%s: the daemon %s", self.name, msg.reason)
                    self.exit_code = 1
                self._request_stop(msg.reason or "stop")
                continue
            self.handle(msg)


def _dropped(signum: int, frame: Any) -> None:
    """The children's SIGINT handler: nothing (see :meth:`Child.run`)."""


def _deliver_and_term(ctx: zmq.Context[Any], timeout: float) -> None:
    """Let ZeroMQ deliver what was sent before the process ends (waits at most ``timeout`` s).

    Children leave through ``os._exit``, which would kill ZeroMQ's I/O thread
    with the last messages (results, the final JobsDone) still queued.
    ``ctx.term()`` waits for closed sockets to flush (their linger) but also for
    every socket to be closed, so it runs in a thread and is given up on after
    ``timeout`` if a stuck job still holds one (a worker's).
    """
    thread = threading.Thread(target=ctx.term, name="zmq-term", daemon=True)
    thread.start()
    thread.join(timeout)


def child_main(cls: type[Child]) -> None:
    """Entry point shared by every child module: ``python -m X <config-json> <name>``."""
    log_stream = None
    if cls.role == "worker":
        log_stream = take_job_output()  # a private daemon's: its jobs print to its owner
        restore_user_env()
    one_line_logging(cls.role, log_stream or sys.stderr)
    if log_stream is not None:  # the jobs' own warnings reach the owner's stderr too, as Python's last resort prints
        user = logging.StreamHandler(sys.stderr)
        user.setLevel(logging.WARNING)
        user.addFilter(lambda record: not record.name.startswith("ensemble"))
        logging.getLogger().addHandler(user)
    if len(sys.argv) != 3:
        sys.stderr.write(f"usage: python -m {cls.__module__} CONFIG_JSON NAME\n")
        sys.exit(2)
    crash_role, _, crash_while = os.environ.get("ENSEMBLE_TEST_CRASH_ROLE", "").partition(":")
    if crash_role == cls.role and (not crash_while or os.path.exists(crash_while)):
        # Test hook: a child of this role fails at start (``ROLE``, or ``ROLE:FILE`` while FILE exists), so
        # tests can drive the restart-intensity limit.  Unset in normal use; costs one dict lookup.
        sys.stderr.write(f"{cls.role}: ENSEMBLE_TEST_CRASH_ROLE={cls.role}: exiting at start\n")
        sys.exit(3)
    cfg = Config.from_json(sys.argv[1])
    child = cls(cfg, sys.argv[2])
    # what the code run here (jobs, scripts) sees as its command line: not the daemon's whole configuration
    # (a job of a script run as __main__ gets its caller's: actors.callables.use_main)
    sys.argv = [sys.argv[0]]
    code = child.run()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a job closed or broke stdout: nothing is left to write there
        pass
    os._exit(code)

"""One DEALER connection to a daemon, owned by a background I/O thread.

Every client front end (:class:`actors.Client`, :class:`actors.Executor`,
:class:`actors.AsyncClient`) sits on a :class:`Connection`.  Calls from any
thread are queued and the I/O thread sends them; submits queued together are
merged into one :class:`Submit` (batched submits).  Replies complete
``concurrent.futures.Future`` objects; pushes (job updates, results) go to
listeners registered per job id.

A connection to a private daemon (``watch``: its pid) also watches that
process: should it die, every call and job waiting on it ends at once with an
error that says how it died, instead of waiting for answers that cannot come
(a shared daemon may come back and resume its journal's jobs; a private one
never does).

A shared daemon that stops or restarts under a connection: ZeroMQ reconnects
the socket by itself, but what was asked of the old daemon is never answered
and the new one knows nothing of this client's watches.  So when the link
drops (a socket monitor's ``DISCONNECTED``) the requests still waiting fail
with a TransportError that says so, and when it comes back (``CONNECTED``)
every job with a listener is watched again: the reply brings each one's
current state (a job that ended meanwhile ends now) and the rest is pushed as
it happens.  A job the new daemon does not know ends as lost.  A daemon that
is not back within ``[jobs] reconnect_wait`` seconds is given up, as a
private one that died is: the jobs waited on end and every call fails, saying
that the jobs are still in its journal (a ``with Executor()`` on a daemon
killed for good would otherwise wait for ever).

Threads: :meth:`Connection.request` runs on the calling thread, on a DEALER
socket of that thread's own (ZeroMQ sockets are not thread-safe).  A thread's
socket is closed when the thread ends; :meth:`Connection.close` closes those
not in use itself, and terminating the context ends the calls in flight
(ZeroMQ's ``ETERM``), whose threads then close their own: every call pending
or made after it raises ClientClosed.  In a fork's child the parent's
connections are refused, never touched (:func:`_forked`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable

import msgspec
import zmq

from actors._arrays import ClientArrays
from actors._errors import (
    ClientClosed, DaemonError, DaemonNotRunning, EnsembleError, JobNotFound, NoAnswer, PermissionDenied,
    ProtocolError, TransportError, WrongContextError, error_from_code,
)
from actors._state import FINAL
from actors._procs import alive as process_alive
from actors._rundir import RunDir, check_private_path
from actors.config import Config
from actors.messages import (
    MAX_SUBMIT, Error, JobInfo, JobInfos, JobSpec, Limits, ListJobs, Message, Submit, Submitted, Watch, decode, encode,
    peek_corr,
)

Listener = Callable[[JobInfo], None]
log = logging.getLogger("ensemble.client")
_MAX_BATCH = 5000


def payload_bytes(spec: JobSpec) -> int:
    """About what a job's arguments add to a frame: its bytes and strings (a local Executor's pickled payload is
    one bytes argument), and its Executor's initargs, which every job carries.  Submits are merged into one
    frame until their payloads reach half the frame limit."""
    return _text_bytes(spec.args) + setup_bytes(spec)


def setup_bytes(spec: JobSpec) -> int:
    """What a job's Executor setup adds to its frame: its initargs' bytes and strings (see :func:`payload_bytes`)."""
    return 0 if spec.setup is None else _text_bytes(spec.setup.initargs)


def _text_bytes(values: list[Any]) -> int:
    return sum(len(a) for a in values if isinstance(a, (bytes, bytearray, str)))


def _pieces(specs: list[JobSpec], fut: Future[list[int]],
            listener: Listener | None) -> list[tuple[list[JobSpec], Future[list[int]], Listener | None]]:
    """A batch longer than one Submit may carry, as pieces of :data:`MAX_SUBMIT` jobs, each with a future of its own;
    ``fut`` gets the ids of all of them in order once each has its own, or the first piece's error (the pieces
    accepted before it run on: a queue that fills midway refuses only what came after)."""
    parts = [specs[i:i + MAX_SUBMIT] for i in range(0, len(specs), MAX_SUBMIT)]
    futs: list[Future[list[int]]] = [Future() for _ in parts]

    def one_done(_: Future[list[int]]) -> None:
        if fut.done():
            return
        for f in futs:
            if not f.done():
                return
            exc = f.exception()
            if exc is not None:
                fut.set_exception(exc)
                return
        fut.set_result([jid for f in futs for jid in f.result()])

    for f in futs:
        f.add_done_callback(one_done)
    return [(part, f, listener) for part, f in zip(parts, futs)]


def _context(search_cwd: bool = False) -> tuple[str, list[str]]:
    """This process's working directory and import path: where its jobs' functions and relative paths live.

    ``search_cwd``: the directory first on the path, as ``python -m`` has it
    (the ``ensemble`` command's own path starts with its script's directory).
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the directory was removed under us
        return "", []
    path = [os.path.join(cwd, p) if not os.path.isabs(p) else p for p in sys.path]
    return cwd, [cwd, *path] if search_cwd and cwd not in path else path


def _unguessable_id() -> bytes:
    """A routing id for a tcp socket: 16 random bytes, so no other key can wait under it for our replies."""
    return b"c" + os.urandom(15)


class _Sink:
    """The part of a Future the submit path uses, for one submit's ids, resolved once on the I/O thread.

    ``done``/``set_result``/``set_exception``/``result``/``exception``/
    ``add_done_callback`` as a Future has them, with no lock or Condition:
    only the I/O thread resolves it, and nobody waits on it.
    """

    __slots__ = ("_fn", "_callbacks", "_value", "_error", "_done")

    def __init__(self, fn: Callable[[list[int] | None, BaseException | None], None]) -> None:
        self._fn = fn
        self._callbacks: list[Callable[["_Sink"], None]] = []
        self._value: list[int] | None = None
        self._error: BaseException | None = None
        self._done = False

    def done(self) -> bool:
        return self._done

    def result(self) -> list[int] | None:
        return self._value

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, fn: Callable[["_Sink"], None]) -> None:
        self._callbacks.append(fn)

    def set_result(self, value: list[int]) -> None:
        self._end(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._end(None, error)

    def _end(self, value: list[int] | None, error: BaseException | None) -> None:
        if self._done:
            return
        self._done, self._value, self._error = True, value, error
        for cb in self._callbacks:
            cb(self)
        self._fn(value, error)


class _Direct:
    """One thread's own DEALER socket for :meth:`Connection.request`, kept in that thread's ``threading.local``.

    ``busy`` (under the connection's lock) while its thread is in a request:
    :meth:`Connection.close` closes an idle socket itself and leaves a busy
    one to its thread.  The thread-local holds the only strong reference, so
    the object goes when its thread ends, and a finalizer closes the socket
    then (:func:`_drop_socket`): a thread per request leaves no socket behind.
    """

    __slots__ = ("sock", "monitor", "rcvtimeo", "busy", "__weakref__")

    def __init__(self, sock: zmq.Socket[bytes], monitor: zmq.Socket[Any] | None = None) -> None:
        self.sock = sock
        # a remote client's: its socket's CURVE handshake refused (a revoked key), which its requests then say
        self.monitor = monitor
        self.rcvtimeo: int | None = None  # the receive timeout last set on it (ms), None before the first
        self.busy = False

    def close(self) -> None:
        """Close the socket (and its monitor): what ZeroMQ still held to send in it is dropped."""
        _drop_socket(self.sock, os.getpid(), self.monitor)


def _drop_socket(sock: zmq.Socket[bytes], pid: int, monitor: zmq.Socket[Any] | None = None) -> None:
    """A thread's :class:`_Direct` went (the thread ended, or its connection was dropped): close its socket.

    Runs where the object is freed: in the ending thread, which owned it, or
    in the thread that dropped the connection, when nothing can use it any
    more.  In a fork's child (the parent's threads' objects are freed there
    too) the parent's socket is left alone: closing it there would touch the
    parent's ZeroMQ context (pyzmq only drops it).
    """
    if os.getpid() == pid:
        if monitor is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:  # (closed already)
                pass
            monitor.close(linger=0)
        sock.close(linger=0)


class Connection:
    """Thread-safe request/reply and push routing over one DEALER socket."""

    def __init__(self, cfg: Config, endpoint: str | None = None, curve: tuple[str, str] | None = None,
                 watch: int | None = None) -> None:
        """``watch``: the pid of a private daemon this process started (see the module's doc)."""
        self.cfg = cfg
        self.curve = curve
        self.search_cwd = False  # jobs import from the working directory first (the command line's submit)
        if endpoint is not None and endpoint.startswith("tcp://") and curve is None:
            raise ProtocolError(f"{endpoint}: tcp needs CURVE keys: pass curve=(your .key_secret file, the daemon's server.key)")
        self.limits = Limits(max_frame=cfg.daemon.max_frame)
        rundir = RunDir(cfg.run_dir)
        if endpoint is None:
            check_private_path(rundir.path)  # never talk to a socket another user planted
            if not rundir.control.exists():
                raise DaemonNotRunning(
                    f"no daemon named {cfg.name!r} is running (no socket at {rundir.control}); start one with `{cfg.command('up')}`"
                )
            pid = rundir.read_pid()
            if pid is None or not process_alive(pid):  # a socket left by a daemon that was killed
                raise DaemonNotRunning(
                    f"no daemon named {cfg.name!r} is running (pid {pid} is gone; its files in {rundir.path} "
                    f"are stale); start one with `{cfg.command('up')}`, which cleans them up"
                )
            endpoint = rundir.control_endpoint
        self.endpoint = endpoint
        remote = endpoint.startswith("tcp://")  # another host: arrays travel inline, never as shared memory
        self.local = not remote  # on the daemon's host: values MessagePack cannot carry cross pickled (ext 5)
        self.arrays = ClientArrays(cfg.shm_key, cfg.daemon.max_frame if remote else cfg.jobs.inline_array_limit,
                                   pickles=self.local, run_dir=None if remote else cfg.run_dir,
                                   hand_over=watch is None)  # (a private daemon's jobs end with it)
        self.ctx = zmq.Context()
        self._corr = itertools.count(1)
        self._lock = threading.Lock()
        self._outgoing: collections.deque[tuple[Any, ...]] = collections.deque()
        self._waiting: dict[int, tuple[Future[Any], Callable[[Message], Any] | None]] = {}
        self._listings: set[int] = set()  # correlation ids of ListJobs calls in flight (see _send_call)
        # job id -> its listener, or a list of them when there are several (one object less per job: a client
        # holding thousands of jobs makes the collector's full passes that much shorter)
        self._listeners: dict[int, Listener | list[Listener]] = {}
        # the identity of the daemon's journal, as its last Submitted or JobInfos reply said: the listeners' job
        # ids are numbers in that journal (a daemon back on another one numbers anew: _watch_again)
        self.journal = ""
        # why the jobs of the last submit wait for a worker nobody started (Submitted.waiting; "" when one runs):
        # said once in the log as it turns non-empty (one line for a map of thousands of jobs, not one each)
        self.waiting = ""
        self._closed = False  # (under _lock, read without it on the fast paths)
        self.pid = os.getpid()  # the process that made it; in a fork's child it is refused (see _forked)
        self.forked = False  # this process is a fork's child of ``pid``: nothing here is usable, nor closed
        self._local = threading.local()  # .direct: the calling thread's _Direct
        self._direct: weakref.WeakSet[_Direct] = weakref.WeakSet()  # every live thread's (changed under _lock)
        self._wake_addr = f"inproc://wake-{id(self)}"
        self._wake_rx = self.ctx.socket(zmq.PAIR)
        self._wake_rx.bind(self._wake_addr)
        self._wake_tx = self.ctx.socket(zmq.PAIR)
        self._wake_tx.connect(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._wake_pending = False  # a wake-up was sent and the I/O thread has not read the queue since
        self.gone: Exception | None = None  # the watched daemon died: every call raises this
        # how many times the link to the daemon dropped (I/O thread): a thread's own request sent before a drop is
        # never answered (the daemon that had it is gone), and fails as the I/O thread's do (see _ask)
        self.drops = 0
        self._unsent: collections.deque[bytes] = collections.deque()  # frames the I/O socket would not take yet
        self.in_listener = 0.0  # monotonic time the I/O thread entered a job's listener (a user's callback); 0: not
        # what its death is, for this connection's user: the error every call raises (made from the message),
        # and the (state, error_type) of the JobInfo that jobs still waiting end with (an Executor: its pool broke)
        self.gone_as: Callable[[str], Exception] = DaemonError
        self.lost_as = ("worker-lost", "DaemonError")
        self._lost_at = 0.0  # monotonic time the link to a shared daemon dropped (see _give_up)
        self._watch: tuple[int, int] | None = None  # (pid, pidfd) of the private daemon
        if watch is not None:
            self._watch = (watch, os.pidfd_open(watch))  # a zombie's pidfd opens too, and is readable at once
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None  # what stopped the I/O thread making its socket
        self._thread = threading.Thread(target=self._io, name="ensemble-client-io", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._setup_error is not None:  # (a key file that is no key): raised here, not left to hang the caller
            self._thread.join()
            self._wake_tx.close(linger=0)
            self.ctx.term()
            raise self._setup_error
        _LIVE.add(self)

    # ------------------------------------------------------------------ API (any thread)
    def call(self, msg: Message, convert: Callable[[Message], Any] | None = None) -> Future[Any]:
        """Send a request; the future completes with the reply (or ``convert(reply)``), or an error."""
        fut: Future[Any] = Future()
        self._enqueue(("call", msg, fut, convert))
        return fut

    def request(self, msg: Message, timeout: float | None) -> Message:
        """Request and reply on the calling thread's own socket (no hand-off to the I/O thread).

        For requests whose answer is the whole story (ping, status, listings,
        cancel, scale, audio, parameters); pushes still arrive on the I/O thread.
        Blocks the calling thread until the answer, ``timeout`` seconds at most
        (None: no limit).  Raises the ``Error`` reply as its exception,
        NoAnswer (a TransportError) on timeout, ClientClosed when the connection is closed
        before or meanwhile (from another thread), WrongContextError in a
        fork's child.  The first request of a thread opens its socket, which
        is closed when the thread ends.
        """
        direct = self._begin()
        try:
            return self._ask(direct, msg, timeout)
        except zmq.ZMQError as exc:  # (zmq.Again is handled in _ask)
            if self._closed:  # closed meanwhile: the context's termination ended the call (ETERM)
                raise self._refusal() from exc
            raise TransportError(f"the request {type(msg).__name__} to the daemon failed: {exc}") from exc
        finally:
            with self._lock:
                direct.busy = False
                if self._closed:  # close() left this socket to this thread, which used it: closed here
                    direct.close()

    def _begin(self) -> _Direct:
        """The calling thread's socket, made at its first request, marked busy; the refusal once closed."""
        direct: _Direct | None = getattr(self._local, "direct", None)
        with self._lock:  # (a socket is made, or marked busy, only while the connection is open: see close)
            if self._closed:
                raise self._refusal()
            if self.gone is not None:
                raise self.gone
            if direct is None:
                direct = self._new_direct()
            direct.busy = True
        return direct

    def _new_direct(self) -> _Direct:
        """Open and connect a socket for the calling thread (under ``_lock``); TransportError if ZeroMQ cannot."""
        try:
            sock = self.ctx.socket(zmq.DEALER)
        except zmq.ZMQError as exc:  # (EMFILE: ZeroMQ's limit of sockets per context, or the process's of files)
            raise TransportError(f"no socket to the daemon could be opened for this thread: {exc} ({len(self._direct)} "
                                 "threads hold one; each thread that makes requests holds one until it ends)") from exc
        monitor = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                from actors._keys import curve_client

                curve_client(sock, *self.curve)
                sock.routing_id = _unguessable_id()
                monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            sock.connect(self.endpoint)
        except BaseException as exc:
            _drop_socket(sock, self.pid, monitor)
            if isinstance(exc, zmq.ZMQError):
                raise TransportError(f"could not connect to the daemon at {self.endpoint}: {exc}") from exc
            raise
        direct = _Direct(sock, monitor)
        weakref.finalize(direct, _drop_socket, sock, self.pid, monitor).atexit = False  # (at exit: _drop_socket)
        self._local.direct = direct
        self._direct.add(direct)
        return direct

    def _ask(self, direct: _Direct, msg: Message, timeout: float | None) -> Message:
        """Send ``msg`` on ``direct`` and wait for its answer (see :meth:`request`); ZMQError passes through."""
        sock = direct.sock
        corr = next(self._corr)
        frame = encode(msg, corr)
        if len(frame) > self.limits.max_frame:
            raise ProtocolError(f"{type(msg).__name__} is {len(frame)} bytes, over the daemon's frame limit of "
                                f"{self.limits.max_frame}")
        drops = self.drops
        end = None if timeout is None else time.monotonic() + timeout
        while True:  # (a DEALER with no peer blocks a send: a refused handshake leaves it none, see _send_unsent)
            try:
                sock.send(frame, zmq.NOBLOCK)
                break
            except zmq.Again:
                self._check_link(direct, msg, drops)
                if end is not None and time.monotonic() >= end:
                    self._drop_direct(direct)
                    raise NoAnswer.to(type(msg).__name__, timeout) from None
                sock.poll(_GONE_CHECK_MS, zmq.POLLOUT)
        # waits in slices: the link may drop meanwhile (the daemon restarted: it never answers), or the daemon be
        # given up (or a remote client's key refused): self.drops and self.gone say so (_check_link)
        while True:
            wait = -1 if end is None else max(0, int((end - time.monotonic()) * 1000))
            if not 0 <= wait <= _GONE_CHECK_MS:
                wait = _GONE_CHECK_MS
            # Set the receive timeout only when it moved by more than 50 ms (or between waiting forever and not):
            # asking libzmq costs two calls per request, and the wait is approximate by that much at most.
            last = direct.rcvtimeo
            if last is None or (last < 0) != (wait < 0) or abs(last - wait) > 50:
                sock.rcvtimeo = wait
                direct.rcvtimeo = wait
            try:
                answer = sock.recv()  # one blocking call (poll then recv costs a second round into libzmq)
            except zmq.Again:
                self._check_link(direct, msg, drops)
                if end is None or time.monotonic() < end:
                    continue
                # the frame may still wait in the socket for a daemon that is away: dropped with it, so that no
                # daemon acts later on a request its caller was told went unanswered
                self._drop_direct(direct)
                raise NoAnswer.to(type(msg).__name__, timeout) from None
            got, reply = decode(answer, self.limits)
            if got != corr:
                continue  # the late answer to a request that timed out earlier
            if isinstance(reply, Error):
                raise error_from_code(reply.code, reply.message)
            if isinstance(reply, JobInfos):  # a listing shows results without taking them (ClientArrays.import_info)
                take = not isinstance(msg, ListJobs)
                reply = JobInfos([self.arrays.import_info(i, strict=False, take=take) for i in reply.jobs],
                                 reply.journal)
            return reply

    def _check_link(self, direct: _Direct, msg: Message, drops: int) -> None:
        """While a thread's request waits: raise if it can no longer be answered.

        The daemon was given up (or a remote client's key refused): ``gone``.
        The link dropped since the request was sent (``drops`` then): the
        daemon that had it stopped or restarted, and a new one never answers
        it; a TransportError that says so, as the I/O thread's calls get.
        Either way the thread's socket is dropped first, and with it a frame
        ZeroMQ may still hold for the daemon: a daemon started later never
        acts on a request whose caller was told it failed.
        """
        refused = direct.monitor is not None and bool(direct.monitor.poll(0))  # (the only event it reports)
        if self.gone is None and self.drops == drops and not refused:
            return
        self._drop_direct(direct)
        if self.gone is not None:
            raise self.gone
        if refused:
            raise self._key_refused()
        raise TransportError(f"the daemon closed the connection before answering {type(msg).__name__} (it stopped "
                             "or restarted); a cancel or scale may or may not have been carried out: look before "
                             "asking again")

    def _drop_direct(self, direct: _Direct) -> None:
        """Close the calling thread's own socket (its next request opens another), and what it held to send."""
        with self._lock:
            self._direct.discard(direct)
            if getattr(self._local, "direct", None) is direct:
                self._local.direct = None
        direct.close()

    def held_by_listener(self) -> str:
        """Why an answer the I/O thread reads may be late, for a timeout's error: it has been running a job's
        listener (a ``watch`` callback of the user's) for over a second; else ""."""
        since = self.in_listener
        held = time.monotonic() - since if since else 0.0
        if held < 1.0:
            return ""
        return (f"; this client's I/O thread has been running a watch callback for {held:.0f}s, and reads the "
                "daemon's answers only after it: keep on_update callbacks short (hand long work to a thread)")

    def _key_refused(self) -> PermissionDenied:
        return PermissionDenied(
            f"the daemon at {self.endpoint} refused this client's key in the CURVE handshake: the key was "
            "revoked, or this daemon never issued it (`ensemble keys list` on its host); ask its operator "
            "for a key")

    def submit(self, specs: list[JobSpec], listener: Listener | None = None) -> Future[list[int]]:
        """Submit jobs (merged with other pending submits); the future gives their ids.

        Large numpy arrays in the arguments are moved to shared memory here, on
        the calling thread (see :mod:`actors._arrays`).
        """
        fut: Future[list[int]] = Future()
        self._submit(specs, listener, fut)
        return fut

    def submit_then(self, specs: list[JobSpec], listener: Listener | None,
                    on_ids: Callable[[list[int] | None, BaseException | None], None], progress: bool = False) -> None:
        """:meth:`submit` without a Future: ``on_ids(ids, None)`` or ``on_ids(None, error)`` on the I/O thread.

        For callers that make one submit per job (``Executor.submit``): a Future
        costs a Condition and a lock, a third of that path's time.  ``progress``:
        the listener hears each job's start and progress too (``Submit.progress``).
        """
        self._submit(specs, listener, _Sink(on_ids), progress)

    def sent(self) -> Future[None]:
        """A future done once the I/O thread has sent everything queued before it, unmerged with what follows.

        The I/O thread merges queued submits into one frame; a caller whose
        first submit should reach the daemon now (``map``'s first batch, so
        workers start while it packs the rest) waits for this in between: its
        own packing would otherwise hold the GIL and delay the send.
        """
        fut: Future[None] = Future()
        self._enqueue(("sent", None, fut, None))
        return fut

    def _submit(self, specs: list[JobSpec], listener: Listener | None, fut: "Future[list[int]] | _Sink",
                progress: bool = False) -> None:
        borrowed: list[list[Any]] = []
        out = []
        for spec in specs:
            if spec.pickled and len(spec.args) == 1:  # a local Executor's pickled values, with no array beside them
                out.append(spec)
                borrowed.append([])
                continue
            lent: list[Any] = []
            changed: list[bool] = []
            try:
                args = self.arrays.export(spec.args, lent, changed)
                kwargs = self.arrays.export(spec.kwargs, lent, changed)
            except BaseException:  # a value that cannot cross: the pooled segments taken so far go back
                for taken in (*borrowed, lent):
                    self.arrays.return_unused(taken)
                raise
            out.append(msgspec.structs.replace(spec, args=args, kwargs=kwargs) if changed else spec)
            borrowed.append(lent)
        if any(borrowed):
            fut.add_done_callback(lambda f: self._lend(f, borrowed))
        self._enqueue(("submit+progress" if progress else "submit", out, fut, listener))

    def _lend(self, fut: "Future[list[int]] | _Sink", borrowed: list[list[Any]]) -> None:
        exc = fut.exception()
        if exc is not None:
            # a submit whose answer never came (the client closed, the link dropped) may have been journaled: its
            # segments stay the jobs' (handed over at close); one the daemon refused goes back to the pool
            if not isinstance(exc, (ClientClosed, TransportError)):
                for lent in borrowed:
                    self.arrays.return_unused(lent)
            return
        for jid, lent in zip(fut.result() or [], borrowed):
            self.arrays.lend(jid, lent)

    def listen(self, job_id: int, listener: Listener) -> None:
        """Call ``listener(info)`` (on the I/O thread) for every push about ``job_id``."""
        with self._lock:
            self._add_listener(job_id, listener)

    def _add_listener(self, job_id: int, listener: Listener) -> None:
        """(under ``_lock``)"""
        found = self._listeners.get(job_id)
        if found is None:
            self._listeners[job_id] = listener
        elif isinstance(found, list):
            found.append(listener)
        else:
            self._listeners[job_id] = [found, listener]

    def unlisten(self, job_id: int, listener: Listener) -> None:
        """Remove a listener added with :meth:`listen`."""
        with self._lock:
            found = self._listeners.get(job_id)
            if isinstance(found, list):
                if listener in found:
                    found.remove(listener)
                    if not found:
                        del self._listeners[job_id]
            elif found is not None and found == listener:
                del self._listeners[job_id]

    def on_io_thread(self) -> bool:
        """Whether the caller runs on this connection's I/O thread (where :meth:`close` cannot join it)."""
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Stop the I/O thread and close the sockets; pending calls fail with ClientClosed (any thread).

        Sockets not in use are closed here; the calls in flight on other
        threads end with ClientClosed at once (the context's termination
        interrupts them) and their threads close their own sockets.  Returns
        once they did, or at once when the I/O thread is held up (a listener
        that does not return): the context is then terminated in the
        background.  In a fork's child it does nothing (the parent's
        connection: see :func:`_forked`).  Closing again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            directs = list(self._direct)  # (dropped after the lock: a dead thread's object may go with it)
            for direct in directs:
                if not direct.busy:  # its thread is not in it, and marks it busy only while open (_begin)
                    direct.close()
        self._wake()
        if not self.on_io_thread():
            self._thread.join(timeout=5)
        if self._watch is not None:
            os.close(self._watch[1])
        with self._wake_lock:  # (no _wake sends on it meanwhile)
            self._wake_tx.close(linger=0)
        if self._thread.is_alive():  # its sockets are still open: terminating would wait for them
            threading.Thread(target=self.ctx.term, name="ensemble-client-term", daemon=True).start()
        else:  # interrupts the requests in flight (ETERM), and returns once their threads closed their sockets
            self.ctx.term()
        self.arrays.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or this process is a fork's child of the one that made it)."""
        return self._closed

    def _refusal(self) -> EnsembleError:
        """What a call on a closed connection raises: ClientClosed, or WrongContextError in a fork's child."""
        if self.forked:
            return WrongContextError(
                f"this client belongs to process {self.pid}, and this process ({os.getpid()}) is a fork of it: a "
                "connection does not cross a fork; make a new Client() or Executor() in this process")
        return ClientClosed()

    def _in_child(self) -> None:
        """This process is a fork's child of the one that made the connection (:func:`_forked`): refuse every call
        from now on, touching nothing of ZeroMQ's (the context, its sockets and the I/O thread are the parent's)
        nor the parent's shared memory.  The locks are made anew: a thread of the parent's may have held one."""
        self._lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self.forked = True
        self._closed = True
        self._wake_pending = True  # (no wake-up is sent: nothing reads it here)

    # ------------------------------------------------------------------ internals
    def _enqueue(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            raise self._refusal()
        if self.gone is not None:
            raise self.gone
        self._outgoing.append(item)
        self._wake()
        if self._closed:  # closed meanwhile: the I/O thread may have failed the queue already, before this item
            self._fail_queued(self._refusal())
        elif self.gone is not None:  # likewise given up meanwhile (a key refused in the handshake): no answer comes
            self._fail_queued(self.gone)

    def _wake(self) -> None:
        """Wake the I/O thread, unless a wake-up is already on its way (a burst of calls costs one)."""
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                self._wake_pending = False

    def _io(self) -> None:
        # the user's Ctrl-C and SIGTERM are the main thread's: the kernel never hands them to this thread instead
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        sock = self.ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.IDENTITY, f"client-{os.getpid()}-{id(self):x}".encode())
            if self.curve is not None:
                from actors._keys import curve_client

                curve_client(sock, *self.curve)
                sock.routing_id = _unguessable_id()
            sock.connect(self.endpoint)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor, which raises it
            sock.close(linger=0)
            self._wake_rx.close(linger=0)
            self._setup_error = exc
            self._ready.set()
            return
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        if self._watch is not None:
            poller.register(self._watch[1], zmq.POLLIN)
        link = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
        if self.endpoint.startswith("tcp://"):  # CURVE: the daemon's ZAP handler may refuse our key
            link |= zmq.EVENT_HANDSHAKE_FAILED_AUTH
        monitor = sock.get_monitor_socket(link)
        poller.register(monitor, zmq.POLLIN)
        self._link_lost = False
        self._ready.set()
        try:
            while not self._closed:
                events = dict(poller.poll(1000 if not self._unsent else _GONE_CHECK_MS))
                if self._wake_rx in events:
                    while True:
                        try:
                            self._wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                    self._wake_pending = False  # before the queue is read: a call queued after this wakes us again
                self._send_pending(sock)
                if sock in events:
                    self._receive(sock)
                if monitor in events:
                    self._link_events(monitor, sock)
                if self._watch is not None and self._watch[1] in events:
                    poller.unregister(self._watch[1])
                    self._daemon_died(sock)
                if self._link_lost and self.gone is None and \
                        time.monotonic() - self._lost_at >= self.cfg.jobs.reconnect_wait:
                    self._give_up(sock)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            self._wake_rx.close(linger=0)
            self._fail_all(ClientClosed("the client was closed before the daemon answered"))

    def _send_pending(self, sock: zmq.Socket[bytes]) -> None:
        if self.gone is not None:  # queued after _end_all failed the queue: the daemon would never answer them
            self._fail_queued(self.gone)
            return
        self._send_unsent(sock)
        submits: list[tuple[list[JobSpec], Future[list[int]], Listener | None]] = []
        queued = 0  # jobs in ``submits`` (a running count: re-summing made big batches quadratic)
        size = 0  # their payloads' bytes: merged submits over the frame limit failed all together (see payload_bytes)
        budget = self.limits.max_frame // 2
        progress = False  # that of the submits in ``submits`` (one Submit carries one)
        while self._outgoing:
            kind, payload, fut, extra = self._outgoing.popleft()
            if kind == "submit" or kind == "submit+progress":
                adds = sum(payload_bytes(spec) for spec in payload)
                if submits and ((kind != "submit") != progress or size + adds > budget):
                    self._send_submits(sock, submits, progress)
                    submits, queued, size = [], 0, 0
                progress = kind != "submit"
                submits.append((payload, fut, extra))
                queued += len(payload)
                size += adds
                if queued >= _MAX_BATCH:
                    self._send_submits(sock, submits, progress)
                    submits, queued, size = [], 0, 0
                continue
            if kind == "sent":
                if submits:
                    self._send_submits(sock, submits, progress)
                    submits, queued, size = [], 0, 0
                if not fut.done():
                    fut.set_result(None)
                continue
            self._send(sock, payload, fut, extra)
        if submits:
            self._send_submits(sock, submits, progress)

    def _send(self, sock: zmq.Socket[bytes], msg: Message, fut: Future[Any], convert: Any) -> None:
        corr = next(self._corr)
        try:
            frame = encode(msg, corr)
            if len(frame) > self.limits.max_frame:
                raise ProtocolError(
                    f"{type(msg).__name__} is {len(frame)} bytes, over the daemon's frame limit of "
                    f"{self.limits.max_frame}; pass large arrays through shared memory (client.empty / upload)"
                )
        except ProtocolError as exc:
            if not fut.done():  # (its caller may have cancelled it: a cancelled future takes nothing)
                fut.set_exception(exc)
            return
        self._waiting[corr] = (fut, convert)
        if type(msg) is ListJobs:  # its reply shows results without taking them (see request)
            self._listings.add(corr)
        if not self._unsent:
            try:
                sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
        self._unsent.append(frame)  # sent in order once the socket takes frames again (see _send_unsent)

    def _send_unsent(self, sock: zmq.Socket[bytes]) -> None:
        """Send the frames the socket would not take (I/O thread).

        A DEALER blocks a send while it has no peer: a remote client whose
        CURVE handshake the daemon refused (a revoked key) has none between
        the refusal and the next attempt, and a blocking send held the I/O
        thread there for ever: the refusal was never read, every call and
        job waited.  Frames wait here instead, in order, until the socket
        takes them, or the calls fail (:meth:`_fail_all` drops them).
        """
        while self._unsent:
            try:
                sock.send(self._unsent[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self._unsent.popleft()

    def _send_submits(self, sock: zmq.Socket[bytes], submits: list[tuple[list[JobSpec], Future[list[int]], Listener | None]],
                      progress: bool = False) -> None:
        """Send the pending submits merged, in frames of at most :data:`MAX_SUBMIT` jobs (the daemon refuses a longer
        one); a batch longer than that goes in pieces, and its future has every piece's ids, or the first error."""
        if sum(len(s[0]) for s in submits) <= MAX_SUBMIT:  # (nearly always: one frame)
            self._send_submit_frame(sock, submits, progress)
            return
        frame: list[tuple[list[JobSpec], Future[list[int]], Listener | None]] = []
        count = 0
        for specs, fut, listener in submits:
            pieces = [(specs, fut, listener)] if len(specs) <= MAX_SUBMIT else _pieces(specs, fut, listener)
            for piece in pieces:
                if count + len(piece[0]) > MAX_SUBMIT:
                    self._send_submit_frame(sock, frame, progress)
                    frame, count = [], 0
                frame.append(piece)
                count += len(piece[0])
        if frame:
            self._send_submit_frame(sock, frame, progress)

    def _send_submit_frame(self, sock: zmq.Socket[bytes],
                           submits: list[tuple[list[JobSpec], Future[list[int]], Listener | None]],
                           progress: bool = False) -> None:
        specs = [spec for s in submits for spec in s[0]]
        outer: Future[Any] = Future()

        def split(reply: Message) -> None:
            assert isinstance(reply, Submitted)
            pos = 0
            with self._lock:
                for batch, _, listener in submits:
                    if listener is not None:
                        for jid in reply.ids[pos : pos + len(batch)]:
                            self._add_listener(jid, listener)
                    pos += len(batch)
            pos = 0
            for batch, fut, _ in submits:
                if not fut.done():  # one caller's cancel must not fail the submits merged with its own
                    fut.set_result(reply.ids[pos : pos + len(batch)])
                pos += len(batch)

        def propagate(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                for _, fut, _ in submits:
                    if not fut.done():
                        fut.set_exception(exc)

        outer.add_done_callback(propagate)
        self._send(sock, Submit(specs, True, *_context(self.search_cwd), progress), outer, split)

    def _note_waiting(self, why: str) -> None:
        """A submit's answer said why its jobs wait (or not): the log hears it once, as it starts (I/O thread)."""
        if why and not self.waiting:
            log.warning("event=no-worker detail=%s", why)
        self.waiting = why

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        for _ in range(10_000):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                corr, msg = decode(frame, self.limits)
            except ProtocolError as exc:
                self._unreadable(frame, exc)
                continue
            if corr == 0:
                if isinstance(msg, JobInfos):
                    self._route(msg.jobs)
                continue
            entry = self._waiting.pop(corr, None)
            if entry is None:
                continue
            fut, convert = entry
            if isinstance(msg, Error):
                if not fut.done():
                    fut.set_exception(error_from_code(msg.code, msg.message))
                continue
            if isinstance(msg, (Submitted, JobInfos)) and msg.journal:
                self.journal = msg.journal
            if isinstance(msg, Submitted):
                self._note_waiting(msg.waiting)
            listing = corr in self._listings
            if listing:
                self._listings.discard(corr)
            try:
                if isinstance(msg, JobInfos):
                    msg = JobInfos([self.arrays.import_info(i, strict=False, take=not listing) for i in msg.jobs],
                                   msg.journal)
                fut.set_result(convert(msg) if convert is not None else msg)
            except EnsembleError as exc:
                if not fut.done():
                    fut.set_exception(exc)
            except Exception as exc:  # a listener bug must not kill the I/O thread
                if not fut.done():
                    fut.set_exception(exc)

    def _unreadable(self, frame: bytes, exc: ProtocolError) -> None:
        """A frame from the daemon that this client cannot read (over its ``max_frame``, another version):
        the request it answers fails with the reason at once, instead of waiting out its timeout; a push
        (no request) is said in the log, with what to change."""
        corr = peek_corr(frame)
        entry = self._waiting.pop(corr, None) if corr else None
        if entry is not None:
            if not entry[0].done():
                entry[0].set_exception(ProtocolError(
                    f"the daemon's reply could not be read: {exc} (does this client's daemon.max_frame match "
                    "the daemon's?)"))
            return
        log.warning("event=unreadable-push detail=a message from the daemon could not be read and was dropped: %s; "
                    "a job it reported may look unfinished here (give this client the daemon's daemon.max_frame)",
                    exc)

    def _route(self, infos: list[JobInfo]) -> None:
        for info in infos:
            terminal = info.state in FINAL
            with self._lock:
                found = self._listeners.get(info.id)
                listeners: list[Listener] | tuple[Listener, ...] = (
                    list(found) if isinstance(found, list) else () if found is None else (found,))
                if terminal:
                    self._listeners.pop(info.id, None)
            if terminal and listeners:  # (an end nobody here listens for any more leaves its arrays to their taker)
                try:
                    info = self.arrays.import_info(info)
                except EnsembleError as exc:
                    info = msgspec.structs.replace(info, state="failed", result=None,
                                                   error_type=type(exc).__name__, error_message=str(exc))
            for fn in listeners:
                self.in_listener = time.monotonic()
                try:
                    fn(info)
                except Exception as exc:  # noqa: BLE001 - the other listeners and jobs go on.  (A user's callback
                    # says its own failure, JobHandle._callback_failed; what is left is ours, expected: an async
                    # client's listener finding its loop closed.  No traceback kept: it would hold the client.)
                    log.debug("event=listener-failed job=%d reason=%s", info.id, exc)
                finally:
                    self.in_listener = 0.0
            if terminal:
                self.arrays.job_ended(info.id)

    def _link_events(self, monitor: zmq.Socket[Any], sock: zmq.Socket[bytes]) -> None:
        """The daemon closed the connection, or one was made again (see the module's doc)."""
        from zmq.utils.monitor import recv_monitor_message

        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator, arg-type]
            event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            if event == zmq.EVENT_DISCONNECTED and self._watch is None:  # (a private daemon's end: _daemon_died)
                self._receive(sock)  # what the daemon sent before it closed came first: it is answered
                self._link_lost = True
                self._lost_at = time.monotonic()
                self.drops += 1
                if self._listeners:  # say why results stop coming (a `with Executor()` would wait on in silence)
                    log.warning("event=daemon-disconnected jobs=%d detail=the daemon closed the connection; these "
                                "jobs are in its journal and end when it is back (`%s`), or end lost if it "
                                "is not back within %g s ([jobs] reconnect_wait)", len(self._listeners),
                                self.cfg.command("up"), self.cfg.jobs.reconnect_wait)
                waiting, self._waiting = self._waiting, {}
                self._unsent.clear()  # (their calls fail below: no later daemon gets them)
                for fut, _ in waiting.values():
                    if not fut.done():
                        fut.set_exception(TransportError(
                            "the daemon closed the connection before answering (it stopped or restarted); a submit "
                            "may or may not have been accepted: look at your jobs (`ensemble jobs`) before resubmitting"))
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.gone is None:  # no request would be answered
                self._end_all(self._key_refused())
            elif event == zmq.EVENT_CONNECTED and self._link_lost and self.gone is None:
                self._link_lost = False
                with self._lock:
                    ids = list(self._listeners)
                if ids:
                    log.info("event=daemon-reconnected jobs=%d detail=watching them again", len(ids))
                for start in range(0, len(ids), 10_000):  # the daemon's limit for one Watch is 100,000
                    self._watch_again(sock, ids[start:start + 10_000], self.journal)

    def _watch_again(self, sock: zmq.Socket[bytes], ids: list[int], journal: str) -> None:
        """Watch ``ids`` (numbers in ``journal``) on a daemon that came back; route their current states (I/O thread).

        A daemon back on another journal (the old one removed or replaced)
        numbers its jobs anew: there the same ids name other jobs, or none.
        """
        fut: Future[Any] = Future()

        def answered(f: Future[Any]) -> None:
            exc = f.exception()
            if not isinstance(exc, JobNotFound):  # routed; or the link dropped again: it asks again when back
                return
            if len(ids) > 1:  # some of them are unknown to it: ask one by one to tell which
                for jid in ids:
                    self._watch_again(sock, [jid], journal)
                return
            self._end_as_lost(ids, "the daemon restarted and does not know this job (its journal was removed, or "
                                   "pruned it)")

        def route(reply: JobInfos) -> None:
            if journal and reply.journal and reply.journal != journal:
                self._end_as_lost(ids, "the daemon restarted on another journal (its journal was removed or "
                                       "replaced): this job's id names another job there, or none")
            else:
                self._route(reply.jobs)

        fut.add_done_callback(answered)
        self._send(sock, Watch(ids, True), fut, route)

    def _daemon_died(self, sock: zmq.Socket[bytes]) -> None:
        """The private daemon exited: read what it sent before, then end every call and job still waiting."""
        pid = self._watch[0] if self._watch is not None else 0
        end = time.monotonic() + 1.0  # its last frames may still be on their way through ZeroMQ's I/O thread
        while time.monotonic() < end and sock.poll(50, zmq.POLLIN):
            self._receive(sock)
        self._end_all(self.gone_as(
            f"the private daemon (pid {pid}) {_how_it_ended(pid)}; the jobs it had are lost (create a new "
            "Executor or Client to go on)"))

    def _give_up(self, sock: zmq.Socket[bytes]) -> None:
        """The shared daemon went away and was not back within ``reconnect_wait``: end every call and job still
        waiting on it, as :meth:`_daemon_died` does for a private one (I/O thread).  The socket is disconnected
        first: the submits ZeroMQ holds for the daemon are dropped, so a daemon started later never runs a job
        whose caller was told it failed."""
        try:
            sock.disconnect(self.endpoint)
        except zmq.ZMQError:  # (never connected under that name: nothing is held for it)
            pass
        wait = self.cfg.jobs.reconnect_wait
        if self.local:
            who, restart = f"the daemon {self.cfg.name!r}", f"`{self.cfg.command('up')}` runs them"
        else:  # (a remote daemon: this client's config names none, and it is started on its own host)
            who, restart = f"the daemon at {self.endpoint}", "its operator's `ensemble up` on its host runs them"
        gone = self.gone_as(
            f"{who} went away and was not back within {wait:g} s ([jobs] reconnect_wait); the jobs it had are "
            f"still in its journal: {restart}, and Client.job(id) follows one then")
        log.warning("event=daemon-given-up detail=%s", gone)
        self._end_all(gone)

    def _end_all(self, gone: Exception) -> None:
        """The daemon is gone for good (``gone`` says why): every call fails with it, every job waited on ends
        lost, and every later call raises it (I/O thread)."""
        self.gone = gone
        self._fail_all(gone)
        with self._lock:
            ids = list(self._listeners)
        self._end_as_lost(ids, str(gone))

    def _end_as_lost(self, ids: list[int], why: str) -> None:
        """End jobs the daemon can no longer tell about, as :attr:`lost_as` says, with ``why`` (I/O thread)."""
        state, error_type = self.lost_as
        self._route([JobInfo(jid, "", "", state, error_type=error_type, error_message=why) for jid in ids])

    def _fail_all(self, exc: Exception) -> None:
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()
        self._unsent.clear()
        self._fail_queued(exc)

    def _fail_queued(self, exc: Exception) -> None:
        """Fail every call still queued for the I/O thread (from it, or from a caller that found it closed)."""
        while True:
            try:
                item = self._outgoing.popleft()
            except IndexError:  # (emptied, by the other thread too)
                return
            fut = item[2]
            if not fut.done():
                fut.set_exception(exc)


_GONE_CHECK_MS = 250  # a thread's request looks this often at whether it can still be answered (Connection._check_link)
_LIVE: "weakref.WeakSet[Connection]" = weakref.WeakSet()  # the connections made in this process (see _forked)


def _forked() -> None:
    """In a fork's child (``os.register_at_fork``): the parent's connections are refused from now on, saying
    so at once (their I/O thread is not in this process, so a call would wait out its timeout, and a future
    never end).  Costs nothing per call: the closed check every call makes already refuses them."""
    for conn in list(_LIVE):
        conn._in_child()
    _LIVE.clear()


os.register_at_fork(after_in_child=_forked)


def _how_it_ended(pid: int) -> str:
    """"exited with code N" or "was killed by SIGX", for a child that ended (without reaping it)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:  # reaped already (its owner stopping it): nothing more to say
        return "exited"
    if info is None:
        return "exited"
    if info.si_code == os.CLD_EXITED:
        return f"exited with code {info.si_status}"
    try:
        name = signal.Signals(info.si_status).name
    except ValueError:
        name = f"signal {info.si_status}"
    return f"was killed by {name}"

"""``Executor.map`` without a Future per item: chunks as jobs, sent in batches, results read in order.

``concurrent.futures.Executor.map`` submits one job and builds one Future
per item, and ignores ``chunksize``.  Here (a local client, whose values
cross pickled) the items are cut into chunks of ``chunksize``, each chunk is
one job whose pickled payload is a list with the chunk's slice of each
iterable (a submitted job's is an ``(args, kwargs)`` tuple; a callable sent
pickled, :mod:`actors.callables`, comes first in each chunk's list, as the
pools pickle the function with each chunk), the jobs go to the daemon in
batches of up to :data:`BATCH` (and half the frame limit of payload), each cut and packed as it goes (the first
of :data:`FIRST` jobs, each next one four times the jobs before it, so the
workers have jobs while the next is packed; a batch under :data:`BATCH`
leaves before the next is packed), and the I/O thread files each final
:class:`~actors.messages.JobInfo` into the slot of its chunk.  The consumer
unpickles chunk results in order and raises the first job's exception as
``ProcessPoolExecutor.map`` does (its original type, the remote traceback as
its cause).  Leaving the iterator early cancels the jobs not yet started.
"""

from __future__ import annotations

import concurrent.futures
import functools
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import msgspec

from actors._connection import setup_bytes
from actors._exact import dumps_range_chunk, spill, unpicklable
from actors._state import FINAL
from actors.messages import Cancel, JobInfo, JobSpec

if TYPE_CHECKING:
    from actors._connection import Connection

BATCH = 2000  # jobs per Submit
FIRST = 64  # jobs in the first Submit: the daemon starts them while the next is being packed
_SENT_WAIT = 1.0  # s the packing waits for a batch under BATCH to leave (it goes on after, sent or not)
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_CANCEL_WAIT = 10.0  # s leaving the iterator waits for the daemon to take its cancels (it goes on after)


class MapRun:
    """One ``map`` call in flight: its jobs' final infos, filed by chunk, and the iterator over their values.

    ``done`` is a Future that completes when every job has ended (the
    executor waits for it on ``shutdown`` and cancels it with
    ``cancel_futures``; cancelling it cancels the jobs still running).
    """

    def __init__(self, conn: "Connection", spec: JobSpec, cols: "list[Sequence[Any]]", chunksize: int,
                 head: list[Any], cancels: list[concurrent.futures.Future[Any]],
                 on_error: Callable[[JobInfo], None] | None = None) -> None:
        """``cols``: the items of each iterable, all as long; a chunk is ``head`` then each one's slice.

        ``cancels``: where the Cancel requests this run sends are kept (the
        executor waits for them on close).  ``on_error(info)``: called on the
        I/O thread for every job that ended with an error (the executor marks
        itself broken when a worker's initializer failed, as for a submitted
        job).
        """
        self.conn = conn
        self.on_error = on_error
        self.cancelled = False  # cancel() was called: jobs whose ids arrive later are cancelled on arrival
        items = len(cols[0])
        self.n = -(-items // chunksize)
        self.infos: list[JobInfo | None] = [None] * self.n
        self.index: dict[int, int] = {}
        self.early: dict[int, JobInfo] = {}  # final infos that arrived before their job's id was filed
        self.ended = 0
        self.cond = threading.Condition()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.done.set_running_or_notify_cancel()
        self.failed_submit: BaseException | None = None
        # the error of the chunk at index n, whose items (or callable) did not pickle: no job was sent for it or
        # for those after it; the iterator raises it there, after the values before it, as the pools' map raises
        # an item's pickling error where it reaches that item
        self.unsent: Exception | None = None
        self.acks: list[concurrent.futures.Future[list[int]]] = []
        self.cancels = cancels
        start, replace, dumps = 0, msgspec.structs.replace, pickle.dumps
        only = cols[0] if len(cols) == 1 and not head else None
        if type(only) is range:
            dumps = dumps_range_chunk  # type: ignore[assignment]
        budget = conn.limits.max_frame // 2  # a batch's payloads: one frame must hold them (see payload_bytes)
        each = setup_bytes(spec)  # what every job carries besides its chunk
        while start < self.n:  # each batch cut and packed as it goes: the first is small, so workers start early
            end = min(self.n, start + (FIRST if start == 0 else min(BATCH, 4 * start)))
            specs: list[JobSpec] = []
            size = 0
            for i in range(start * chunksize, end * chunksize, chunksize):
                try:
                    payload = dumps([*head, *[c[i:i + chunksize] for c in cols]], _PROTOCOL)
                except Exception as exc:  # noqa: BLE001 - PicklingError, TypeError...: an item that does not pickle
                    self.unsent = unpicklable_chunk(spec, head, cols, i, chunksize, exc)
                    end = start + len(specs)
                    break
                if specs and size + len(payload) + each > budget:  # big items: this batch ends here, the rest follow
                    end = start + len(specs)
                    break
                if len(payload) > budget:  # a chunk this big crosses beside the frame, through shared memory
                    specs.append(replace(spec, args=spill([payload], budget)))
                    size += each
                    continue
                specs.append(replace(spec, args=[payload]))
                size += len(payload) + each
            if specs:
                ack = conn.submit(specs, self._on_info)
                ack.add_done_callback(functools.partial(self._on_ids, first=start))
                self.acks.append(ack)
            if self.unsent is not None:
                self._stop_at(end)
                break
            if end - start < BATCH and end < self.n:  # gone before the next is packed (a failure shows in its ack)
                concurrent.futures.wait([conn.sent()], timeout=_SENT_WAIT)
            start = end
        if self.n == 0:
            self.done.set_result(None)

    def _stop_at(self, n: int) -> None:
        """The run has ``n`` jobs, not more (the chunk at ``n`` did not pickle); done if they all ended already."""
        with self.cond:
            self.n = n
            last = self.ended == n
        if last and n and not self.done.done():
            self.done.set_result(None)

    # -- I/O thread
    def _on_ids(self, ack: concurrent.futures.Future[list[int]], *, first: int) -> None:
        exc = ack.exception()
        with self.cond:
            if exc is not None:
                self.failed_submit = exc
                self.cond.notify_all()
            else:
                for offset, jid in enumerate(ack.result()):
                    self.index[jid] = first + offset
            late = self.cancelled and exc is None
            early = [self.early.pop(jid) for jid in (ack.result() if exc is None else ()) if jid in self.early]
        if exc is not None and not self.done.done():
            self.done.set_exception(exc)
        for info in early:
            self._on_info(info)
        if late:
            self.cancels.extend(self.conn.call(Cancel(jid, False, True)) for jid in ack.result())

    def _on_info(self, info: JobInfo) -> None:
        if info.state not in FINAL:
            return
        if info.error_type and self.on_error is not None:
            self.on_error(info)
        with self.cond:
            i = self.index.get(info.id)
            if i is None:  # its batch's ids have not been filed yet (the ack's callback runs on our caller's
                self.early[info.id] = info  # thread when it was already answered): _on_ids files it
                return
            if self.infos[i] is not None:
                return
            self.infos[i] = info
            self.ended += 1
            last = self.ended == self.n
            self.cond.notify_all()
        if last and not self.done.done():
            self.done.set_result(None)

    # -- the caller's thread
    def results(self, timeout: float | None, keep: Any = None) -> Iterator[Any]:
        """The values in order; raises the first failure, or TimeoutError past ``timeout`` (counted from this
        call, as the pools count it from ``map()``, not from the first ``next()``).

        ``keep``: an object the iterator holds until it is read to its end or
        dropped (the executor: ``list(Executor().map(f, xs))`` collected it as
        soon as map returned, and its finalizer closed the connection the
        results were coming on).  Held by the generator itself, not by a
        generator around it: one more generator step per value cost the
        caller ~0.8 us of CPU a chunk of 64 (bench/README, "A twelfth pass").
        """
        return self._results(None if timeout is None else time.monotonic() + timeout, keep)

    def _results(self, deadline: float | None, keep: Any) -> Iterator[Any]:
        try:
            i, infos = 0, self.infos
            while i < self.n:
                with self.cond:
                    while infos[i] is None:
                        if self.failed_submit is not None:
                            raise self.failed_submit
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise concurrent.futures.TimeoutError()
                        self.cond.wait(left)
                    ready: list[Any] = []  # every chunk ended from here on, taken under one hold of the lock
                    while i < self.n and infos[i] is not None:
                        ready.append(infos[i])
                        i += 1
                for info in ready:
                    if self.cancelled and info.state == "cancelled" and info.error_type == "JobCancelled":
                        # this run cancelled it (shutdown(cancel_futures=True)): the pools' map raises the
                        # cancelled future's CancelledError there, which `except CancelledError` expects
                        raise concurrent.futures.CancelledError()
                    yield from _values(info)
            if self.unsent is not None:
                raise self.unsent
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Ask the daemon to cancel the jobs that have not started (those whose ids are still coming, on
        arrival); those that started run to their end, as the pools' (their values are dropped)."""
        with self.cond:
            if self.ended == self.n:
                return
            self.cancelled = True
            pending = [jid for jid, i in self.index.items() if self.infos[i] is None]
        sent = [self.conn.call(Cancel(jid, False, True)) for jid in pending]
        self.cancels.extend(sent)
        if not self.conn.on_io_thread():  # as the pools' cancel: once this returns, no cancelled job starts
            concurrent.futures.wait(sent, timeout=_CANCEL_WAIT)


def unpicklable_chunk(spec: JobSpec, head: list[Any], cols: "list[Sequence[Any]]", start: int, chunksize: int,
                 exc: Exception) -> Exception:
    """The error of a chunk that did not pickle (:func:`actors._exact.unpicklable`): which item of which
    iterable (or the callable travelling with each chunk), and which part of it."""
    name = spec.name or spec.fn
    candidates = [(f"{name}: the callable", h) for h in head[-1:]]
    candidates += [(f"{name}: map item {k}" + (f" of iterable {j}" if len(cols) > 1 else ""), item)
                   for j, c in enumerate(cols) for k, item in enumerate(c[start:start + chunksize], start)]
    for where, value in candidates:
        try:
            pickle.dumps(value, _PROTOCOL)
        except Exception as own:  # noqa: BLE001
            return unpicklable(value, where, own)
    return unpicklable([*head, *[c[start:start + chunksize] for c in cols]], f"{name}: map chunk", exc)


def _values(info: JobInfo) -> list[Any]:
    """A chunk job's list of values, or its exception raised as the pools raise it (the futures' rule)."""
    from actors.client import _outcome  # the client imports this module

    values: list[Any] = _outcome(info, pickled=True)
    return values

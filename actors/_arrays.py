"""Numpy arrays in job arguments and results: shared memory instead of the socket.

Client side (:class:`ClientArrays`): an ordinary array larger than
``jobs.inline_array_limit`` is copied once into a pooled segment (kept mapped,
so its pages stay faulted in for the next job) and crosses as a handle; the
segment returns to the pool when the job ends.  An array from
``client.empty()`` crosses as its handle with no copy; the job sees (and may
write) the same memory.

Worker side: handles in arguments are mapped; a result that is a whole shared
array (an argument, or one from ``task.empty()``) crosses as its handle; any
other large result is copied once into a new segment.  The client maps a
result segment and unlinks its name, so the memory lives exactly as long as
the returned array.

A worker placed on a Ray cluster has an object-store link instead
(:class:`~actors._storelink.StoreLink`, set by ``run_remote``): arguments that
arrive as :class:`~actors.messages.StoredArray` keys are fetched through it,
and results of at least ``[cluster] object_store_min_bytes`` leave through it,
the frame carrying only their keys.

Both sides of a local job also pickle here what MessagePack cannot carry (a
dataclass, an ``Enum`` member, an array of objects: see :mod:`actors._values`),
a value at a time, as ``ext 5``; nothing is pickled for another host.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable

import msgspec

from actors._values import Pickled, flat, pickled, to_wire
from actors._errors import ClientClosed, ProtocolError
from actors._rundir import OwnedSegments
from actors.messages import ArrayHandle, JobInfo, StoredArray
from actors.shm import segment_prefix, SharedArray, handle_of, is_ndarray, shared_ndarray, walk

log = logging.getLogger("ensemble.client")
_PLAIN = frozenset({type(None), bytes, str, int, float, bool})  # results that hold no array
_SIZE_CLASS = 1 << 20  # pool segments are rounded up to whole MiB


def _size_class(nbytes: int) -> int:
    return max(_SIZE_CLASS, -(-nbytes // _SIZE_CLASS) * _SIZE_CLASS)


class _NoPickle(Exception):
    """A leaf that does not pickle (its error the cause): the caller names where it sits in the whole value."""


def _pickled_leaf(value: Any, limit: int, share: Any) -> Any:
    """``value`` (what MessagePack cannot carry) pickled to cross to a process of this host, its big numeric arrays
    and its shared ones left out and passed to ``share`` (they keep the shared-memory path); a ``memoryview``,
    which does not pickle, is left for MessagePack (bytes)."""
    if type(value) in (ArrayHandle, StoredArray, memoryview, Pickled):  # (a Pickled is on its way already)
        return value
    try:
        crossing = pickled(value, limit)
    except Exception as exc:  # noqa: BLE001 - pickle's own errors, or a __reduce__ of the user's that raised
        raise _NoPickle() from exc
    return Pickled(crossing.blob, [share(a) for a in crossing.refs]) if crossing.refs else crossing


def _exported(value: Any, leaf: Any, where: str) -> Any:
    """``to_wire(value, leaf)``, or pickle's error for the part that does not pickle, saying what and where
    (:func:`actors._exact.unpicklable`: ``the job's result['held'][0] ... a _thread.lock does not pickle``)."""
    try:
        return to_wire(value, leaf)
    except _NoPickle as exc:
        from actors._exact import unpicklable

        assert isinstance(exc.__cause__, Exception)
        raise unpicklable(value, where, exc.__cause__) from None


def _sent_remote(value: Any) -> Any:
    """A value a client on another host sends as MessagePack has it; an object with fields (a dataclass, an attrs
    class, a Struct), which the codec would turn into a dict, is refused naming its class."""
    if hasattr(type(value), "__dataclass_fields__") or hasattr(type(value), "__attrs_attrs__") \
            or isinstance(value, msgspec.Struct):
        cls = type(value)
        raise ProtocolError(f"cannot send a {cls.__module__}.{cls.__qualname__} to a daemon on another host: only "
                            "a client on its host sends your objects (pickled); send its fields as a dict")
    return value


class ClientArrays:
    """A client's shared-memory arrays: the argument pool and the user's own arrays.

    ``pickles``: the client is on the daemon's host, so a value MessagePack
    cannot carry crosses pickled (:mod:`actors._values`); from another host it
    is refused, naming its type.
    """

    def __init__(self, daemon: str, inline_limit: int, pickles: bool = True, run_dir: Path | None = None,
                 hand_over: bool = True) -> None:
        """``run_dir``: the daemon's run directory, where a local client lists the segments it makes, so that the
        daemon unlinks them should this process be killed (:class:`~actors._rundir.OwnedSegments`; None: another
        host's client, which makes none).  ``hand_over``: :meth:`close` leaves the segments of unfinished jobs
        to the daemon (False for a private daemon, whose jobs end with it)."""
        self._hand_over = hand_over
        self.daemon = daemon
        self.inline_limit = inline_limit
        self.pickles = pickles
        self._run_dir = run_dir
        self._owned: OwnedSegments | None = None  # made with the first segment (most clients make none)
        self._lock = threading.Lock()
        self._free: dict[int, list[SharedArray]] = collections.defaultdict(list)
        self._in_use: dict[int, list[SharedArray]] = {}  # job id -> pooled segments it borrowed
        self._by_name: dict[str, SharedArray] = {}
        self._lent: dict[str, SharedArray] = {}  # pooled segments returned as results, until collected
        self._user: dict[str, Any] = {}  # name -> SharedNDArray from empty()
        self._results: collections.OrderedDict[str, Any] = collections.OrderedDict()
        # segment name -> uses by submitted jobs not known to have ended (pooled and empty() arrays alike): what
        # close() hands over to the daemon instead of unlinking (a job the daemon accepted still needs it)
        self._out: collections.Counter[str] = collections.Counter()
        self._closed = False
        _OPEN[self] = os.getpid()  # closed at exit if its client was not (a fork of this process leaves it be)

    def empty(self, shape: Any, dtype: Any = "float64") -> Any:
        """A new array in shared memory that jobs receive without a copy (ClientClosed once closed: nothing
        would unlink it)."""
        if self._closed:
            raise ClientClosed()
        seg = SharedArray.create(self.daemon, shape, dtype)
        arr = shared_ndarray(seg)
        with self._lock:
            if self._closed:  # closed meanwhile, on another thread
                seg.unlink()
                raise ClientClosed()
            self._user[seg.handle.name] = arr
            self._list(seg.handle.name)
        return arr

    def _list(self, name: str) -> None:
        """Add a segment this client made to its list in the run directory (under ``_lock``; see ``run_dir``)."""
        if self._run_dir is None:
            return
        try:
            if self._owned is None:
                self._owned = OwnedSegments(self._run_dir)
            if self._owned.add(name):  # now and then, the list shrinks to what this client still holds
                self._owned.rewrite([*self._by_name, *self._user, *self._lent])
        except OSError as exc:  # (the run directory went, or is full): the sweep at `down` remains
            log.warning("event=segment-list-failed reason=%s detail=a kill of this process leaves its shared "
                        "memory until the daemon stops", exc)
            self._run_dir = None

    def free(self, array: Any) -> None:
        """Release an array from :meth:`empty` (its name is unlinked; the memory goes with the last view)."""
        h = handle_of(array)
        if h is not None:
            with self._lock:
                self._user.pop(h.name, None)
            SharedArray.unlink_name(h.name)

    def export(self, value: Any, borrowed: list[SharedArray], changed: list[bool]) -> Any:
        """Replace large arrays in ``value`` by handles (copying ordinary ones into pooled segments), and, on the
        daemon's host, what MessagePack cannot carry by its pickle (ProtocolError, saying where, for what does
        not pickle; from another host for an object with fields).

        Appends to ``borrowed`` the pooled segments used and to ``changed`` a
        marker for every array replaced.  Arguments of plain values only (the
        common job, and a list or dict of them) are not walked: a walk cost
        a tenth of ``submit_many``'s time in the caller for jobs of no arguments.
        """
        items = value if type(value) is list else value.values() if type(value) is dict else None
        if items is not None and flat(items):
            return value
        changed.append(True)  # (exact values: a tuple, a set, a datetime... leave as ext 4, see actors._values)
        pickles = self.pickles

        def leaf(v: Any) -> Any:
            if not is_ndarray(v) or pickles and not isinstance(v, sys.modules["numpy"].ndarray):  # (a numpy scalar)
                return _pickled_leaf(v, self.inline_limit, leaf) if pickles else _sent_remote(v)
            h = handle_of(v)
            if h is not None:
                changed.append(True)
                if h.name in self._user:  # the job needs it until it ends, as it needs a pooled one
                    borrowed.append(v._ens_segment)
                    self._out[h.name] += 1
                return h
            if v.dtype.kind not in "biufc" and pickles:  # an array of objects or strings, as a pool sends it
                return _pickled_leaf(v, self.inline_limit, leaf)
            if v.nbytes <= self.inline_limit or v.dtype.kind not in "biufc":
                return v
            seg = self._take(v.nbytes)
            borrowed.append(seg)
            self._out[seg.handle.name] += 1
            changed.append(True)
            view = seg.array[: v.nbytes].view(v.dtype).reshape(v.shape)
            view[...] = v
            return ArrayHandle(seg.handle.name, v.dtype.str, tuple(v.shape), 0)

        try:
            return _exported(value, leaf, "the arguments")
        except ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - refused at submit, as a value MessagePack cannot carry is
            notes = "; ".join(getattr(exc, "__notes__", ()))
            raise ProtocolError(f"{type(exc).__name__}: {exc}{f' ({notes})' if notes else ''}") from exc

    def _take(self, nbytes: int) -> SharedArray:
        size = _size_class(nbytes)
        with self._lock:
            free = self._free.get(size)
            if free:
                return free.pop()
        seg = SharedArray.create(self.daemon, size, "uint8")
        with self._lock:
            self._by_name[seg.handle.name] = seg
            self._list(seg.handle.name)
        return seg

    def lend(self, job_id: int, borrowed: list[SharedArray]) -> None:
        """Record which pooled segments a submitted job uses."""
        if borrowed:
            with self._lock:
                self._in_use[job_id] = borrowed

    def return_unused(self, borrowed: list[SharedArray]) -> None:
        """Segments of a submit that failed go straight back to the pool (no job has them)."""
        with self._lock:
            self._release(borrowed)

    def job_ended(self, job_id: int) -> None:
        """The job is over: its pooled segments go back to the pool."""
        with self._lock:
            self._release(self._in_use.pop(job_id, ()))

    def _release(self, borrowed: "Iterable[SharedArray]") -> None:
        """(under ``_lock``) A job no longer needs ``borrowed``: pooled ones go back to the pool."""
        out = self._out
        for seg in borrowed:
            name = seg.handle.name
            if out[name] <= 1:
                out.pop(name, None)
            else:
                out[name] -= 1
            if name in self._by_name:  # (not an empty() array, nor a pooled one lent to a caller as a result)
                self._free[seg.handle.nbytes].append(seg)

    def import_info(self, info: JobInfo, strict: bool = True, take: bool = True) -> JobInfo:
        """Turn result handles into arrays (mapping and unlinking result segments).

        ``strict=False`` leaves a handle whose segment is gone in place (a listing
        of old jobs); ``result()`` then says the array is no longer available.
        ``take=False`` (a listing) maps a result segment without unlinking it: a
        result in shared memory is handed over once, to whoever asks for that
        job's result (its owner's handle or future, ``ensemble result``), not to
        a listing that happens to show it.
        """
        if info.state != "done" or type(info.result) in _PLAIN:  # nothing to map (a pickled result is bytes)
            return info
        from actors._errors import JobError

        try:
            return msgspec.structs.replace(info, result=walk(info.result, self._import_leaf if take else self._view))
        except JobError:
            if strict:
                raise
            return info

    def _view(self, v: Any) -> Any:
        """A result segment mapped for a listing, its name left for the job's taker (see :meth:`import_info`)."""
        if type(v) is not ArrayHandle:
            return v
        with self._lock:
            mine = self._user.get(v.name)
            if mine is None:
                mine = self._results.get(v.name)
        if mine is not None or v.name in self._by_name:  # this client's own memory: taking it unlinks nothing
            return self._import_leaf(v)
        try:
            return SharedArray.attach(v, prefix=segment_prefix(self.daemon)).array
        except Exception as exc:  # taken by a client, or the daemon went down
            from actors._errors import JobError

            raise JobError(f"the job's result array ({v.name}) is no longer in shared memory: {exc}") from exc

    def _import_leaf(self, v: Any) -> Any:
        if type(v) is not ArrayHandle:
            return v
        with self._lock:
            user = self._user.get(v.name)
            cached = self._results.get(v.name)
            pooled = self._by_name.pop(v.name, None)
        if user is not None:
            return user
        if cached is not None:
            return cached
        if pooled is not None:  # the job returned its (copied) argument: lend the pooled segment to the caller
            with self._lock:
                for lst in self._free.values():
                    if pooled in lst:
                        lst.remove(pooled)
                self._lent[v.name] = pooled
            arr = pooled.array[: _nbytes(v)].view(v.dtype).reshape(v.shape)
            # back to the pool (pages still faulted in) once the caller drops the array and its views
            weakref.finalize(arr, self._give_back, pooled)
            return arr
        try:
            seg = SharedArray.attach(v, prefix=segment_prefix(self.daemon))
        except Exception as exc:  # taken by another client, or the daemon went down
            from actors._errors import JobError

            raise JobError(f"the job's result array ({v.name}) is no longer in shared memory: {exc}") from exc
        SharedArray.unlink_name(v.name)
        arr = seg.array
        with self._lock:
            self._results[v.name] = arr
            while len(self._results) > 64:
                self._results.popitem(last=False)
        return arr

    def _give_back(self, seg: SharedArray) -> None:
        with self._lock:
            if self._lent.pop(seg.handle.name, None) is not None:
                self._by_name[seg.handle.name] = seg
                self._free[seg.handle.nbytes].append(seg)

    def close(self) -> None:
        """Unlink every segment this client created (mappings live on in existing arrays), but those that jobs
        not known to have ended may still read: those are handed over to the daemon.

        A job the daemon accepted runs after its client has gone (a script
        that submits and exits, a client killed); its pooled or ``empty()``
        argument went with the client, and the job failed ("segment no
        longer exists").  Such segments stay listed, and the list is left
        for the daemon (:meth:`OwnedSegments.hand_over`), which unlinks each
        once no job it holds names it (:mod:`actors.supervisor._handed`).
        A submit whose answer never came counts as accepted: the daemon
        knows.  Without a list (another host's client, which makes no
        segment) there is nothing to hand over.
        """
        with self._lock:
            self._closed = True
            names = list(self._by_name) + list(self._user) + list(self._lent)
            hand = self._owned is not None and self._hand_over
            needed = [name for name in self._out if name in names] if hand else []
            self._lent.clear()
            self._by_name.clear()
            self._user.clear()
            self._free.clear()
            self._in_use.clear()
            self._out.clear()
            owned, self._owned = self._owned, None
        kept = set(needed)
        for name in names:
            if name not in kept:
                SharedArray.unlink_name(name)
        if owned is not None:
            if needed:
                owned.hand_over(needed)
            else:
                owned.close()


_OPEN: "weakref.WeakKeyDictionary[ClientArrays, int]" = weakref.WeakKeyDictionary()  # -> the pid that made it


@atexit.register
def _close_open() -> None:
    """At exit, unlink the segments of clients this process never closed: no one else would until the daemon's
    next start (``empty()`` arrays, the argument pool).  Not in a fork, whose exit is not its parent's."""
    me = os.getpid()
    for arrays, pid in list(_OPEN.items()):
        if pid == me:
            arrays.close()


def _nbytes(h: ArrayHandle) -> int:
    return h.nbytes


class WorkerArrays:
    """Arrays in a worker: map argument handles, export results."""

    def __init__(self, daemon: str, inline_limit: int, shared: bool = True, spill_over: int = 2**62) -> None:
        self.daemon = daemon
        self.inline_limit = inline_limit
        self.shared = shared  # False on a remote host: everything crosses as bytes
        self.spill_over = spill_over  # a pickled result's own bytes over this leave the frame (actors._exact.spill)
        self.link: Any = None  # a Ray-placed worker's StoreLink to its host actor (actors._storelink)

    def import_args(self, value: Any, mapped: list[SharedArray]) -> Any:
        def leaf(v: Any) -> Any:
            if type(v) is StoredArray:
                if self.link is None:
                    from actors._errors import ProtocolError

                    raise ProtocolError("an argument is in a Ray object store but this worker has no link to one "
                                        "(only Ray-placed workers do)")
                return self.link.get(v)
            if type(v) is not ArrayHandle:
                return v
            seg = SharedArray.attach(v, prefix=segment_prefix(self.daemon))
            mapped.append(seg)
            arr = shared_ndarray(seg)
            return arr

        return walk(value, leaf)

    def empty(self, shape: Any, dtype: Any = "float64") -> Any:
        """A result array in shared memory: returning it costs no copy."""
        if not self.shared:
            import numpy as np

            return np.empty(shape, dtype)
        return shared_ndarray(SharedArray.create(self.daemon, shape, dtype))

    def export_result(self, value: Any, inline: bool = False) -> Any:
        """Arrays in a result as handles (shared memory) or inline; ``inline``: the job's owner is on another
        host, so nothing goes to shared memory (a segment of this job's own is copied and its name removed)."""
        shared = self.shared and not inline  # (and so the job's owner is a client of this host: it may pickle)

        def leaf(v: Any) -> Any:
            if not is_ndarray(v) or shared and not isinstance(v, sys.modules["numpy"].ndarray):  # (a numpy scalar)
                return _pickled_leaf(v, self.inline_limit, leaf) if shared else v
            if v.dtype.kind not in "biufc" and shared:
                return _pickled_leaf(v, self.inline_limit, leaf)
            h = handle_of(v)
            if h is not None and shared:
                return h
            if type(v).__name__ == "SharedNDArray":  # derived from a shared one (a * 2, a.sum()): a plain array
                if h is not None:  # a whole segment (task.empty()) going inline: it is not needed after this
                    SharedArray.unlink_name(h.name)
                v = v.view(sys.modules["numpy"].ndarray)
            if self.link is not None and v.dtype.kind in "biufc" and self.link.wants(v.nbytes):
                return self.link.put(v)
            if v.nbytes <= self.inline_limit or v.dtype.kind not in "biufc" or not shared:
                return v
            seg = SharedArray.create(self.daemon, v.shape, v.dtype)
            seg.array[...] = v
            h = seg.handle
            seg.close()
            return h

        return _exported(value, leaf, "the job's result")

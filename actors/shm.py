"""Numpy arrays in POSIX shared memory, and the handles that name them on the wire.

Segments are named ``ensemble.<daemon>.<run-dir hash>.<pid>.<n>`` (see ``Config.shm_key``) so that the daemon can
sweep the ones a killed process left behind (at ``ensemble up`` and at
``ensemble down``), and tell the segments a worker made for a job's result
(:func:`made_by`), unlinked when the job is pruned should nobody take them
(:func:`unlink_ended`).  :class:`actors.messages.ArrayHandle` is the wire form.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterable

from actors._errors import ProtocolError
from actors._values import MANY, Exact, Pickled, scalars
from actors.messages import ArrayHandle

SHM_DIR = Path("/dev/shm")
log = logging.getLogger("ensemble.shm")
_counter = itertools.count()


def segment_prefix(daemon: str) -> str:
    """Name prefix of every segment belonging to the daemon ``daemon``."""
    return f"ensemble.{daemon}."


def new_segment_name(daemon: str) -> str:
    """A fresh segment name for this process."""
    return f"{segment_prefix(daemon)}{os.getpid()}.{next(_counter)}"


def process_prefix(prefix: str, pid: int) -> str:
    """Name prefix of the segments the process ``pid`` makes for the daemon whose prefix is ``prefix``."""
    return f"{prefix}{pid}."


_PLAIN = frozenset({type(None), bytes, str, int, float, bool})  # values that hold no array handle
_TAIL = re.compile(r"[0-9]{1,20}")  # what follows a process's prefix in the name of a segment it made
_OWN_NAME = re.compile(r"[0-9]{1,10}\.[0-9]{1,20}")  # what follows a daemon's prefix: <pid>.<n>
# a result segment made later than this after its job ended is another one of that name: a process with the same
# pid (once pids wrapped round, or after a restart) made it again; ctime is the kernel's coarse clock, ms behind
_MADE_AFTER_END_S = 1.0


def made_by(value: Any, maker: str) -> list[str]:
    """The names of the segments that ``value`` (a job's value as the daemon decoded it) names and one process
    made: ``maker`` is that process's prefix (:func:`process_prefix`), the worker that ran the job.

    So the segments of a job's result that nobody owns but its taker: what
    the worker copied a result into, or a ``task.empty()`` array; not an
    argument it returned (the client's ``empty()`` array, or the client's
    pooled segment), which its client keeps and unlinks.  Reads the
    handles only (a pickled value is never unpickled).  One type test for
    a value of no container (None, bytes, str, a number); else a walk of
    its leaves (:func:`walk`).
    """
    if type(value) in _PLAIN:
        return []
    found: dict[str, None] = {}
    start = len(maker)

    def leaf(v: Any) -> Any:
        if type(v) is ArrayHandle and v.name.startswith(maker) and _TAIL.fullmatch(v.name, start):
            found[v.name] = None
        return v

    walk(value, leaf)
    return list(found)


def unlink_ended(segments: Iterable[tuple[str, float]], prefix: str) -> int:
    """Unlink the result segments of jobs whose journal rows were pruned: ``(name, when its job ended)``
    pairs, ``prefix`` the daemon's own (``ensemble.<key>.``); how many it removed.

    A name is checked before anything is done with it (it came from a
    worker, and through the journal's file): it must be ``prefix`` then
    ``<pid>.<n>`` (else it is logged and skipped); the segment must be a
    file of this user, made no later than its job ended (one made after
    is another segment of that name, made again by a process with the same
    pid: left alone).  One already gone is fine: its result was taken (the
    taker unlinks it), or the daemon was stopped since (``down`` sweeps
    them; a start after a crash keeps those the journal records).  One
    ``lstat`` and one ``unlink`` a segment; what fails is logged, never
    raised (ValueError only for a ``prefix`` that is no daemon's).
    """
    if not prefix.startswith("ensemble.") or "/" in prefix:
        raise ValueError(f"{prefix!r} is not a daemon's segment prefix")
    removed = 0
    start = len(prefix)
    for name, ended in segments:
        if not name.startswith(prefix) or not _OWN_NAME.fullmatch(name, start):
            log.warning("event=foreign-result-segment name=%r detail=not one of this daemon's segment names; "
                        "left alone", name[:120])
            continue
        removed += _unlink_made_by(name, ended)
    return removed


def _unlink_made_by(name: str, when: float) -> int:
    """Unlink the segment ``name`` if it is a file of this user made no later than ``when`` (epoch seconds; one
    made after is another of that name, made again by a process with the same pid); 1 if it did, else 0.
    One ``lstat`` and one ``unlink``; one already gone is fine, another failure is logged, never raised."""
    path = SHM_DIR / name
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_ctime > when + _MADE_AFTER_END_S:
            return 0
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("event=unlink-failed name=%s reason=%s", name, exc.strerror)
        return 0


def unlink_listed(prefix: str, pid: int, names: Iterable[str], before: float) -> int:
    """Unlink the segments a gone client (process ``pid``) listed as its own (:class:`actors._rundir.OwnedSegments`),
    those still there and made no later than ``before`` (when its list last grew); how many it removed.

    Each name is checked first (the list is a file the client wrote): it
    must be ``<prefix><pid>.<n>``, a name that client made; any other is
    skipped.  Failures are logged, never raised.
    """
    return sum(_unlink_made_by(name, before) for name in set(_made_by_process(names, prefix, pid)))


def unlink_left_by(prefix: str, pid: int, keep: Iterable[str], died: float) -> int:
    """Unlink the segments a dead process ``pid`` made for the daemon whose prefix is ``prefix`` and that no
    result names (``keep``: the names a result's taker may still map); how many it removed.

    For a worker killed or crashed in a job: what the job had made
    (``task.empty()``, a result being copied out) has no owner once the
    worker is gone, and stayed until ``ensemble down``.  Only a file of this
    user, named ``<prefix><pid>.<n>``, made no later than ``died`` (epoch
    seconds; one made after is another process's that got the same pid).
    One directory listing, one ``lstat`` a candidate; failures are logged,
    never raised.
    """
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    kept = set(keep)
    return sum(_unlink_made_by(name, died) for name in _made_by_process(names, prefix, pid) if name not in kept)


def _made_by_process(names: Iterable[str], prefix: str, pid: int) -> list[str]:
    """Those of ``names`` that the process ``pid`` gives the segments it makes for the daemon whose prefix is
    ``prefix`` (``<prefix><pid>.<n>``); ValueError for a ``prefix`` that is no daemon's or a ``pid`` under 1."""
    if not prefix.startswith("ensemble.") or "/" in prefix or pid <= 0:
        raise ValueError(f"{prefix!r}, {pid} is not a daemon's segment prefix and a process id")
    maker = process_prefix(prefix, pid)
    return [n for n in names if n.startswith(maker) and _TAIL.fullmatch(n, len(maker))]


def sweep_segments(daemon: str, keep: "Iterable[str]" = ()) -> int:
    """Unlink every segment of ``daemon`` but those named in ``keep``; returns how many were removed."""
    n = 0
    prefix = segment_prefix(daemon)
    try:
        entries = list(SHM_DIR.iterdir())
    except FileNotFoundError:
        return 0
    uid = os.getuid()
    kept = set(keep)
    for p in entries:
        if p.name.startswith(prefix) and p.name not in kept:
            try:
                if os.lstat(p).st_uid != uid:  # planted by another user: not ours to remove, never used
                    log.warning("event=foreign-segment name=%s detail=owned by another user; skipped", p.name)
                    continue
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
            except PermissionError:
                log.warning("event=foreign-segment name=%s detail=cannot be removed; skipped", p.name)
    return n


class SharedArray:
    """A numpy array backed by a named shared-memory segment; a context manager.

    ``array`` is the numpy view; ``handle`` crosses sockets.  ``close()`` unmaps;
    ``unlink()`` removes the name (the memory is freed when every mapping is gone).
    """

    def __init__(self, handle: ArrayHandle, mm: mmap.mmap, owner: bool, readonly: bool = False) -> None:
        import numpy as np

        self.handle = handle
        self._mm = mm
        self.owner = owner
        count = 1
        for d in handle.shape:
            count *= d
        self.array = np.frombuffer(mm, dtype=np.dtype(handle.dtype), count=count, offset=handle.offset).reshape(handle.shape)
        if readonly:
            self.array.flags.writeable = False

    @classmethod
    def create(cls, daemon: str, shape: tuple[int, ...] | int, dtype: Any = "float64") -> "SharedArray":
        """Allocate a new zero-filled segment (pages pre-faulted) holding an array."""
        import numpy as np

        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        if dt.kind not in "biufc":
            raise ProtocolError(f"shared arrays must be numeric, not {dt}")
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
        for _ in range(100):  # a name somebody else planted is skipped, never opened
            name = new_segment_name(daemon)
            try:
                fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise ProtocolError(f"no free shared-memory name for {daemon!r} after 100 tries (planted names?)")
        try:
            os.ftruncate(fd, nbytes)
            mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        finally:
            os.close(fd)
        return cls(ArrayHandle(name, dt.str, shape, 0), mm, owner=True)

    @classmethod
    def attach(cls, handle: ArrayHandle, readonly: bool = False, prefix: str = "ensemble.") -> "SharedArray":
        """Map an existing segment named by a handle.

        ``prefix`` is the name prefix of the segments the caller may map (its
        daemon's: ``segment_prefix(cfg.shm_key)``).  Raises ProtocolError if the
        name is not one of them, the segment is gone, belongs to another user,
        is a symlink, or is too small for the handle.
        """
        if "/" in handle.name or not handle.name.startswith(prefix) or not prefix.startswith("ensemble."):
            raise ProtocolError(f"array handle names segment {handle.name[:80]!r}, which is not one of this "
                                f"daemon's ({prefix}*)")
        try:
            fd = os.open(SHM_DIR / handle.name, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise ProtocolError(f"shared-memory segment {handle.name} no longer exists") from exc
        except OSError as exc:
            raise ProtocolError(f"shared-memory segment {handle.name} cannot be opened: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid():
                raise ProtocolError(f"shared-memory segment {handle.name} belongs to another user; refused")
            size = st.st_size
            if handle.offset + handle.nbytes > size:
                raise ProtocolError(f"array handle {handle.name} claims {handle.nbytes} bytes at offset "
                                    f"{handle.offset}, segment has {size}")
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            os.close(fd)
        return cls(handle, mm, owner=False, readonly=readonly)

    def close(self) -> None:
        """Drop the numpy view and unmap (safe to call twice)."""
        self.array = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still alive elsewhere; the mapping goes with it

    @staticmethod
    def unlink_name(name: str) -> None:
        """Remove a segment by name (missing is fine)."""
        try:
            os.unlink(SHM_DIR / name)
        except FileNotFoundError:
            pass

    def unlink(self) -> None:
        """Remove the segment's name."""
        try:
            os.unlink(SHM_DIR / self.handle.name)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "SharedArray":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.owner:
            self.unlink()


# --------------------------------------------------------------------------- arrays in jobs
def _np() -> Any:
    import numpy as np

    return np


def _make_shm_ndarray_class() -> Any:
    np = _np()

    class SharedNDArray(np.ndarray):  # type: ignore[misc,name-defined]
        """A numpy array that lives in a whole shared-memory segment (crosses sockets as a handle).

        Views and slices are ordinary arrays as far as the wire is concerned
        (they are copied); only the whole array travels by handle.
        """

        _ens_segment: SharedArray | None = None

        def __array_finalize__(self, obj: Any) -> None:
            self._ens_segment = None  # views do not inherit the segment

        @property
        def shared_handle(self) -> ArrayHandle | None:
            """The handle if this is a whole segment's array, else None."""
            seg = self._ens_segment
            return seg.handle if seg is not None else None

    return SharedNDArray


_SharedNDArray: Any = None


def shared_ndarray(seg: SharedArray) -> Any:
    """Wrap a segment's array as a SharedNDArray that knows its handle."""
    global _SharedNDArray
    if _SharedNDArray is None:
        _SharedNDArray = _make_shm_ndarray_class()
    arr = seg.array.view(_SharedNDArray)
    arr._ens_segment = seg
    return arr


def handle_of(value: Any) -> ArrayHandle | None:
    """The handle of a whole shared array (SharedNDArray), else None."""
    return getattr(value, "shared_handle", None) if type(value).__name__ == "SharedNDArray" else None


def is_ndarray(value: Any) -> bool:
    """Whether ``value`` is a numpy array (without importing numpy for other values)."""
    return is_ndarray_type(type(value))


def is_ndarray_type(t: type) -> bool:
    """Whether values of type ``t`` are numpy arrays (ask once per distinct type of many values)."""
    return t.__module__ == "numpy" or t.__name__ == "SharedNDArray"


def copy_of(handle: ArrayHandle, prefix: str) -> Any:
    """A private copy of the array a handle names (segments named with ``prefix`` only; ProtocolError if gone)."""
    seg = SharedArray.attach(handle, readonly=True, prefix=prefix)
    try:
        return seg.array.copy()
    finally:
        seg.close()


def walk(value: Any, fn: Any, depth: int = 0) -> Any:
    """Apply ``fn`` to every leaf of nested lists, tuples (kept tuples), dicts, exact values in transit
    (:class:`actors._values.Exact`) and the arrays beside a pickled value (:class:`actors._values.Pickled`), to a
    bounded depth; sets and dict keys hold no arrays and are left as they are."""
    if depth > 16:
        return value
    cls = type(value)
    if isinstance(value, list):
        if cls is list and len(value) > MANY and scalars(value):  # no leaf to visit: the list itself (a C loop)
            return value
        return [walk(v, fn, depth + 1) for v in value]
    if cls is tuple:
        return value if len(value) > MANY and scalars(value) else tuple(walk(v, fn, depth + 1) for v in value)
    if isinstance(value, tuple):
        return [walk(v, fn, depth + 1) for v in value]
    if isinstance(value, dict):
        if cls is dict and len(value) > MANY and scalars(value.values()):
            return value
        return {k: walk(v, fn, depth + 1) for k, v in value.items()}
    if cls is Exact:
        return Exact(value.tag, walk(value.data, fn, depth + 1))
    if cls is Pickled:  # its arrays, beside the pickle
        return Pickled(value.blob, [walk(v, fn, depth + 1) for v in value.refs]) if value.refs else value
    return fn(value)

"""The daemon's run directory: lock file, pid file and socket paths (mode 0700).

One daemon per name: the daemon holds an exclusive ``flock`` on ``daemon.lock``
for its whole life.  A lock that can be taken means any files left in the
directory belong to a dead daemon (``kill -9``) and are swept.

Each local worker incarnation also keeps two files here, mapped shared so that
a ``kill -9`` of the worker loses nothing stored in them: ``started.<identity>``,
the jobs it started (:class:`StartedLog`), and ``held.<identity>``, the results
it holds back (:class:`HeldResults`).  The daemon reads and removes both when it
reaps that incarnation; those of a dead daemon's workers are read and removed
by the next daemon's recovery (:meth:`RunDir.take_all_held`,
:meth:`RunDir.take_all_started`).

Each local client that makes shared-memory segments lists them in
``clients/<pid>.<n>``, locked while it lives (:class:`OwnedSegments`): the
daemon unlinks what a killed client listed (:meth:`RunDir.take_gone_clients`).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from actors._errors import DaemonAlreadyRunning, DaemonError

_IPC_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes including the NUL
_LIST_MAX = 64 << 20  # bytes of a client's list of segments read at most (a million names)


def check_private_path(path: Path) -> None:
    """Refuse a directory another user could have planted or could write into.

    Every existing directory from ``/`` down to ``path`` must belong to root or
    to this user, and be writable by nobody else unless it is sticky (``/tmp``);
    ``path`` itself, when it exists, must be this user's.  A symlink counts as
    what it points to, and must itself belong to root or this user.  Raises
    :class:`DaemonError` naming the directory and the fix.
    """
    uid = os.getuid()
    p = Path(os.path.abspath(path))
    for part in (*reversed(p.parents), p):
        try:
            st = os.lstat(part)
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid not in (0, uid):
                    raise DaemonError(f"{part} is a symlink owned by uid {st.st_uid}, not by you or root; "
                                      "remove it or set ENSEMBLE_RUN_DIR to a directory of your own")
                st = os.stat(part)
        except FileNotFoundError:
            return  # created below, by us, with mode 0700
        if not stat.S_ISDIR(st.st_mode):
            raise DaemonError(f"{part} is not a directory; set ENSEMBLE_RUN_DIR to a directory of your own")
        mine = part == p or part.name.startswith("ensemble")
        if st.st_uid != uid and (mine or st.st_uid != 0):
            raise DaemonError(f"{part} belongs to uid {st.st_uid}, not to you (uid {uid}): another user may have "
                              "planted it; remove it or set ENSEMBLE_RUN_DIR to a directory of your own")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX and st.st_uid != uid:
            raise DaemonError(f"{part} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                              "set ENSEMBLE_RUN_DIR to a directory of your own")


def _mapped(path: Path, size: int) -> mmap.mmap:
    """A new (truncated) file of ``size`` bytes, mode 0600, mapped shared: what is stored there outlives a
    ``kill -9`` of the process (the pages belong to the file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class StartedLog:
    """A worker's record of the jobs it started: a count, then a ring of the last :data:`RING` job ids, then when
    the job it runs started (0 between jobs: :meth:`ended`).

    The file is mapped shared: each record is three stores into the page
    cache (the id, the start, then the count; the clock is read without a
    system call), and a ``kill -9`` loses none (the pages belong to the
    file, not to the process).  A job counts as begun only once the count
    is stored; a crash before leaves it not begun, which is the truth.
    """

    RING = 4096
    _SLOT = struct.Struct("<q")
    _SINCE = 8 + RING * 8  # where the start of the job recorded last is (CLOCK_BOOTTIME ns)

    def __init__(self, path: Path) -> None:
        self.map = _mapped(path, self._SINCE + 8)
        self.count = 0

    def record(self, job_id: int) -> None:
        """Note that ``job_id`` starts now (call before the job function)."""
        self._SLOT.pack_into(self.map, 8 + (self.count % self.RING) * 8, job_id)
        self._SLOT.pack_into(self.map, self._SINCE, time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        self.count += 1
        self._SLOT.pack_into(self.map, 0, self.count)

    def ended(self) -> None:
        """Note that the job recorded last returned (its start is no longer :meth:`last_start`)."""
        self._SLOT.pack_into(self.map, self._SINCE, 0)

    @classmethod
    def last_start(cls, path: Path) -> int:
        """When the job running in the worker started (``CLOCK_BOOTTIME`` ns, the clock ``/proc`` gives processes'
        start times on); 0 if none runs (or the file is gone)."""
        try:
            with open(path, "rb") as f:
                f.seek(cls._SINCE)
                data = f.read(8)
        except OSError:
            return 0
        return cls._SLOT.unpack(data)[0] if len(data) == 8 else 0

    def close(self) -> None:
        self.map.close()

    @classmethod
    def read(cls, path: Path) -> tuple[int, set[int]]:
        """``(last started id or 0, every started id still in the ring)`` of a log file (missing: nothing)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0, set()
        if len(data) < 16:
            return 0, set()
        count = int.from_bytes(data[:8], "little")
        ids = []
        for seq in range(max(0, count - cls.RING), count):
            at = 8 + (seq % cls.RING) * 8
            if at + 8 <= len(data):
                ids.append(int.from_bytes(data[at:at + 8], "little"))
        return (ids[-1] if ids else 0), set(ids)


class HeldResults:
    """A worker's record of the results it held back: each job id with its encoded ``JobDone``, in two halves.

    Layout: two halves of :data:`HALF` bytes, each the length in bytes of its
    published records (8 bytes), then the records, each ``[the size of the
    JobDone: 4 bytes][the job id: 8 bytes][the JobDone as MessagePack]``.  The
    file is mapped shared, as :class:`StartedLog` is: :meth:`add` writes a
    record past the published ones, then stores the new length, which
    publishes it (a crash before that store leaves the record unpublished,
    never half read).  Two stores and a copy into the page cache a record, no
    system call; a sparse file mapped once, whose pages take memory as they
    are written.

    A record stays after its result was sent (the frame may still wait in
    ZeroMQ's queue in the worker when a job kills it): records go when their
    half is reused, once the other half is full (:meth:`turn`), so the reader
    finds those of results it already has, and ignores them.
    """

    HALF = 512 << 10  # bytes of each half
    ITEM_MAX = 64 << 10  # a bigger result is not held: it leaves at once (see actors.worker Worker._hold)
    _LENGTH = struct.Struct("<Q")
    _HEAD = struct.Struct("<Iq")  # a record's head: the size of its JobDone, its job id

    def __init__(self, path: Path) -> None:
        self.map = _mapped(path, 2 * (8 + self.HALF))
        self.base = 0  # where the half written now starts
        self.used = 0  # bytes of records published there

    def fits(self, size: int) -> bool:
        """Whether the record of a ``JobDone`` of ``size`` bytes fits in the half written now."""
        return self.used + 12 + size <= self.HALF

    def add(self, job_id: int, item: bytes | memoryview) -> None:
        """Write a job's encoded ``JobDone`` (it must fit, see :meth:`fits`), then publish it."""
        at = self.base + 8 + self.used
        self._HEAD.pack_into(self.map, at, len(item), job_id)
        self.map[at + 12:at + 12 + len(item)] = item
        self.used += 12 + len(item)
        self._LENGTH.pack_into(self.map, self.base, self.used)

    def turn(self) -> None:
        """Write the other half from now on, emptied first: its records are a half's worth of results old."""
        self.base = 8 + self.HALF - self.base
        self.used = 0
        self._LENGTH.pack_into(self.map, self.base, 0)

    def close(self) -> None:
        self.map.close()

    @classmethod
    def read(cls, path: Path) -> list[tuple[int, bytes]]:
        """The published records of a file, ``(job id, encoded JobDone)`` each (missing: none); reads only those."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        records: list[tuple[int, bytes]] = []
        try:
            for base in (0, 8 + cls.HALF):
                head = os.pread(fd, 8, base)
                length = min(int.from_bytes(head, "little"), cls.HALF) if len(head) == 8 else 0
                data = os.pread(fd, length, base + 8) if length else b""
                at = 0
                while at + 12 <= len(data):
                    size, job_id = cls._HEAD.unpack_from(data, at)
                    if at + 12 + size > len(data):
                        break
                    records.append((job_id, data[at + 12:at + 12 + size]))
                    at += 12 + size
        finally:
            os.close(fd)
        return records


RESULTS_SUFFIX = b"/results"  # a local worker's job thread: its routing id on the internal socket is the worker's + this


class OwnedSegments:
    """The shared-memory segments one local client made (its ``empty()`` arrays, its argument pool), listed in a
    file of the daemon's run directory, ``clients/<pid>.<n>``, that the client holds locked (``flock``) while it
    lives.

    A client that exits unlinks its segments itself (at exit, or ``close``)
    and removes its file; one that is killed (SIGKILL, a crash in C,
    ``os._exit``) cannot, and its segments stayed until ``ensemble down``.
    The daemon takes the lock of a file whose holder is gone, unlinks what
    it lists and removes it (:meth:`RunDir.take_gone_clients`).  What the
    client hands over is not listed (an uploaded sample is the daemon's
    registry's).  Cost: one ``open``/``flock`` when the client makes its
    first segment, one ``write`` a segment made; the list is rewritten
    with what the client still holds every :data:`REWRITE_EVERY` names.
    A ``fork`` of the client shares the lock: its segments stay while the
    fork lives.  ``OSError`` if no file can be made (the caller goes on
    without one: the sweep at ``down`` remains).  A client that closes while
    jobs it submitted may still read some of its segments leaves those
    listed and unlocked (:meth:`hand_over`): the daemon unlinks each once
    no job it holds names it, as it does a killed client's.
    """

    REWRITE_EVERY = 256
    _seq = 0

    def __init__(self, run_dir: Path) -> None:
        folder = run_dir / "clients"
        folder.mkdir(mode=0o700, exist_ok=True)
        for _ in range(16):
            OwnedSegments._seq += 1
            path = folder / f"{os.getpid()}.{OwnedSegments._seq}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                mine = os.fstat(fd)
                now = os.stat(path, follow_symlinks=False)
                if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):  # not a file the daemon removed meanwhile
                    break
            except (BlockingIOError, FileNotFoundError):  # the daemon holds it, sweeping a dead namesake's
                pass
            os.close(fd)
        else:
            raise OSError(f"no list of this client's segments could be made in {folder}")
        self.path = path
        self.fd = fd
        self.size = os.fstat(fd).st_size  # (a dead namesake's names, if its list was left: kept, ours follow)
        self.added = 0

    def add(self, name: str) -> bool:
        """List a segment this client made; whether the list is due for a :meth:`rewrite`."""
        line = name.encode() + b"\n"
        os.pwrite(self.fd, line, self.size)
        self.size += len(line)
        self.added += 1
        return self.added % self.REWRITE_EVERY == 0

    def rewrite(self, names: list[str]) -> None:
        """Replace the list by ``names``, what the client still holds (the rest were unlinked or handed over):
        written over the old one, then cut to its length: a kill in between leaves every name it holds listed."""
        data = "".join(f"{name}\n" for name in names).encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        self.size = len(data)

    def close(self) -> None:
        """Remove the list (the client unlinked its segments itself)."""
        self.path.unlink(missing_ok=True)
        os.close(self.fd)

    def hand_over(self, names: list[str]) -> None:
        """Leave ``names`` to the daemon: the list becomes them and is unlocked, as a killed client's is; the
        daemon unlinks each once no job it holds names it (see :meth:`RunDir.take_gone_clients`)."""
        try:
            self.rewrite(names)
        finally:
            os.close(self.fd)


class RunDir:
    """Paths inside one daemon's run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_file = path / "daemon.lock"
        self.pid_file = path / "daemon.pid"
        self.control = path / "control"
        self.internal = path / "internal"
        self._lock_fd: int | None = None

    @property
    def control_endpoint(self) -> str:
        """ZeroMQ endpoint clients connect to."""
        return f"ipc://{self.control}"

    @property
    def internal_endpoint(self) -> str:
        """ZeroMQ endpoint the supervised children connect to."""
        return f"ipc://{self.internal}"

    def create(self) -> None:
        """Create the directory with mode 0700 (parents too) and check the socket path length."""
        if len(str(self.internal)) > _IPC_PATH_MAX:
            raise DaemonError(
                f"run directory {self.path} is too long for a unix socket path "
                f"({len(str(self.internal))} > {_IPC_PATH_MAX} characters); set ENSEMBLE_RUN_DIR "
                "to a shorter directory"
            )
        check_private_path(self.path)
        old = os.umask(0o077)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
        check_private_path(self.path)  # nobody slipped a directory in between
        os.chmod(self.path, 0o700)
        if self.path.parent.name.startswith("ensemble"):
            os.chmod(self.path.parent, 0o700)

    def acquire(self, name: str = "") -> None:
        """Take the daemon lock or raise :class:`DaemonAlreadyRunning`; sweep stale files.

        ``name``: the daemon's name, for the error (the directory's own name is
        not it when ``ENSEMBLE_RUN_DIR`` is set).
        """
        self.create()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.read_pid()
            name = name or self.path.name
            raise DaemonAlreadyRunning(
                f"a daemon named {name!r} is already running in {self.path}"
                + (f" (pid {pid})" if pid else "")
                + f"; stop it with `ensemble down --name {name}` or pick another --name"
            ) from None
        self._lock_fd = fd
        self.sweep(started=False)  # the started-job records are read by recovery (take_all_started)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def holds_lock(self) -> bool:
        """Whether this process took the daemon lock (:meth:`acquire`) and still holds it."""
        return self._lock_fd is not None

    def is_locked(self) -> bool:
        """Whether a live daemon holds the lock (without taking it)."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def started_file(self, identity: str) -> Path:
        """Where a local worker incarnation records the jobs it starts (see :class:`StartedLog`)."""
        return self.path / f"started.{identity}"

    def take_started(self, identity: str) -> int:
        """The id of the job a dead worker incarnation last started (0: none), removing its record.

        The worker records a job before it calls the job function, so the
        record survives a SIGKILL: the supervisor learns which of the jobs
        handed to the worker had really begun (a prefetched job may start before
        the result of the one ahead of it has left the process).
        """
        path = self.started_file(identity)
        last, _ = StartedLog.read(path)
        path.unlink(missing_ok=True)
        return last

    def held_file(self, identity: str) -> Path:
        """Where a local worker incarnation keeps the results it holds back (see :class:`HeldResults`)."""
        return self.path / f"held.{identity}"

    def take_held(self, identity: str, read: bool = True) -> list[tuple[int, bytes]]:
        """The results a dead worker incarnation held back, ``(job id, encoded JobDone)`` each, removing its file.

        Held results die with the process, but not this record of them: the
        daemon finishes the jobs among them it has no result for.  ``read``
        False only removes the file (the worker had nothing outstanding).
        """
        path = self.held_file(identity)
        records = HeldResults.read(path) if read else []
        path.unlink(missing_ok=True)
        return records

    def take_all_started(self) -> set[int]:
        """Every job id the workers of a dead daemon recorded as begun, removing their records.

        Read at start-up, before recovery: a job the journal still holds as
        queued may have run on a worker whose start never reached the journal.
        (Their held results are taken apart: :meth:`take_all_held`.)
        """
        begun: set[int] = set()
        for path in self.path.glob("started.*"):
            begun |= StartedLog.read(path)[1]
            path.unlink(missing_ok=True)
        return begun

    def take_all_held(self) -> dict[int, tuple[str, bytes]]:
        """The results the workers of a dead daemon held back, removing their files:
        ``{job id: (worker identity, encoded JobDone)}``.

        Read at start-up, before recovery: a job that had returned may have
        its result only here (held, or sent but never read or journaled by the
        daemon that died).  Most records are of results that daemon had
        already journaled (a record stays until its half is reused): recovery
        looks up only the jobs the journal holds as unfinished.  A job id in
        two files (none should be) keeps the record read last.
        """
        held: dict[int, tuple[str, bytes]] = {}
        for path in sorted(self.path.glob("held.*")):
            identity = path.name.partition(".")[2]
            for job_id, raw in HeldResults.read(path):
                held[job_id] = (identity, raw)
            path.unlink(missing_ok=True)
        return held

    def live_client_segments(self) -> set[str]:
        """The names the lists of live local clients hold (each list's lock is held: see :class:`OwnedSegments`).

        Their segments are theirs, not what a killed daemon left: a client's
        connection outlives a restart of its daemon, and its argument pool
        and ``empty()`` arrays must too.  A list whose lock is free is left
        for :meth:`take_gone_clients`.
        """
        live: set[str] = set()
        for _, held, data, _ in self._client_lists(take=False):
            if held:
                live.update(data.decode("ascii", "replace").split())
        return live

    def take_gone_clients(self) -> list[tuple[int, list[str], float]]:
        """The lists of segments of the local clients that are gone, removing them: ``(pid, names, when the
        list last grew)`` each (see :class:`OwnedSegments`).

        A list whose lock can be taken has no holder left: its client ended
        without removing it (killed).  One ``listdir``, and an ``open`` and
        a ``flock`` a list (one per live client, mostly).  The names are the
        file's words, unchecked: the caller checks each before it unlinks.
        """
        return [(pid, data.decode("ascii", "replace").split(), grew)
                for pid, held, data, grew in self._client_lists(take=True) if not held]

    def _client_lists(self, take: bool) -> Iterator[tuple[int, bool, bytes, float]]:
        """Each list of ``clients/``: ``(its client's pid, whether that client holds its lock, its bytes, when it
        last grew)``.  The bytes of a list whose lock is free only with ``take``, which removes it (under the
        lock: a client opening it then sees it went, and retries); a held one's only without ``take``."""
        folder = self.path / "clients"
        try:
            entries = os.listdir(folder)
        except OSError:
            return
        for entry in entries:
            pid, dot, seq = entry.partition(".")
            if not (dot and pid.isdigit() and seq.isdigit() and len(pid) <= 10):
                continue
            path = folder / entry
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = False
                except BlockingIOError:  # its client lives
                    held = True
                if held == take:  # (a free list is left for take_gone_clients; a held one is not taken)
                    continue
                st = os.fstat(fd)
                data = os.read(fd, min(st.st_size, _LIST_MAX)) if stat.S_ISREG(st.st_mode) else b""
                if take:
                    path.unlink(missing_ok=True)
            except OSError:
                continue
            finally:
                os.close(fd)
            yield int(pid), held, data, st.st_mtime

    def sweep(self, started: bool = True) -> list[str]:
        """Remove socket, pid and (with ``started``) the workers' started-job and held-result files a dead daemon
        left; returns their names."""
        removed = []
        workers = (*self.path.glob("started.*"), *self.path.glob("held.*")) if started else ()
        for p in (self.control, self.internal, self.pid_file, *workers):
            try:
                p.unlink()
                removed.append(p.name)
            except FileNotFoundError:
                pass
        return removed

    def read_pid(self) -> int | None:
        """The pid written by the running daemon, if any."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def release(self) -> None:
        """Remove sockets and pid file and drop the lock (the lock file itself stays)."""
        self.sweep()
        try:
            self.lock_file.unlink()
        except FileNotFoundError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        try:
            self.path.rmdir()
        except OSError:
            pass

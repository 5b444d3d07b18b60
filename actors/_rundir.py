"""The daemon's run directory: lock file, pid file and socket paths (mode 0700).

One daemon per name: the daemon holds an exclusive ``flock`` on ``daemon.lock``
for its whole life.  A lock that can be taken means any files left in the
directory belong to a dead daemon (``kill -9``) and are swept.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
from pathlib import Path

from actors._errors import DaemonAlreadyRunning, DaemonError

_IPC_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes including the NUL


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` is alive (a zombie counts as gone: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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


class StartedLog:
    """A worker's record of the jobs it started: a count, then a ring of the last :data:`RING` job ids.

    The file is mapped shared: each record is two stores into the page cache
    (the id, then the count), no system call, and a ``kill -9`` loses neither
    (the pages belong to the file, not to the process).  A job counts as begun
    only once both are stored; a crash in between leaves it not begun, which
    is the truth.
    """

    RING = 4096
    _SLOT = struct.Struct("<q")

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, 8 + self.RING * 8)
            self.map = mmap.mmap(fd, 8 + self.RING * 8)
        finally:
            os.close(fd)
        self.count = 0

    def record(self, job_id: int) -> None:
        """Note that ``job_id`` starts now (call before the job function)."""
        self._SLOT.pack_into(self.map, 8 + (self.count % self.RING) * 8, job_id)
        self.count += 1
        self._SLOT.pack_into(self.map, 0, self.count)

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


RESULTS_SUFFIX = b"/results"  # a local worker's job thread: its routing id on the internal socket is the worker's + this


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

    def take_all_started(self) -> set[int]:
        """Every job id the workers of a dead daemon recorded as begun, removing their records.

        Read at start-up, before recovery: a job the journal still holds as
        queued may have run on a worker whose start never reached the journal.
        """
        begun: set[int] = set()
        for path in self.path.glob("started.*"):
            begun |= StartedLog.read(path)[1]
            path.unlink(missing_ok=True)
        return begun

    def sweep(self, started: bool = True) -> list[str]:
        """Remove socket, pid and (with ``started``) started-job files a dead daemon left; returns their names."""
        removed = []
        for p in (self.control, self.internal, self.pid_file, *(self.path.glob("started.*") if started else ())):
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

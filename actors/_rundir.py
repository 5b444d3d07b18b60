"""The daemon's run directory: lock file, pid file and socket paths (mode 0700).

One daemon per name: the daemon holds an exclusive ``flock`` on ``daemon.lock``
for its whole life.  A lock that can be taken means any files left in the
directory belong to a dead daemon (``kill -9``) and are swept.
"""

from __future__ import annotations

import fcntl
import os
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
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        if self.path.parent.name.startswith("ensemble"):
            try:
                os.chmod(self.path.parent, 0o700)
            except PermissionError:
                pass

    def acquire(self) -> None:
        """Take the daemon lock or raise :class:`DaemonAlreadyRunning`; sweep stale files."""
        self.create()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.read_pid()
            raise DaemonAlreadyRunning(
                f"a daemon named {self.path.name!r} is already running"
                + (f" (pid {pid})" if pid else "")
                + f"; stop it with `ensemble down --name {self.path.name}` or pick another --name"
            ) from None
        self._lock_fd = fd
        self.sweep()
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def is_locked(self) -> bool:
        """Whether a live daemon holds the lock (without taking it)."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def sweep(self) -> list[str]:
        """Remove socket and pid files a dead daemon left behind; returns their names."""
        removed = []
        for p in (self.control, self.internal, self.pid_file):
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

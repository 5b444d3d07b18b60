"""A worker's view of the user's code: the client's cwd and import path, and whether that code changed on disk.

A local client's jobs run in the client's working directory with the client's
import path searched first, as under ``ProcessPoolExecutor``.  Modules imported
from those directories (not the standard library or site-packages) are the
user's own code; a worker never runs a job against one that changed on disk
since it imported it: it retires (exit code :data:`RETIRE_CODE`) and its
replacement imports the new code.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from types import ModuleType

RETIRE_CODE = 75  # EX_TEMPFAIL: "the code changed; start me again", not a failure
_UNKNOWN = -1  # the time of a file written while its module may have been imported: no file has it, so it is stale
_TICK_NS = 20_000_000  # more than a tick of the clock file times are stamped with (1-10 ms)

_SYSTEM = tuple(os.path.realpath(p) + os.sep for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib",
                                                                                           "purelib", "platlib")})

# ensemble's own packages (a job may import their modules later, lazily): never the user's code, even where the
# user's directory holds them (a checkout of ensemble on the client's path)
_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_RUNTIME = tuple(os.path.join(_ROOT, pkg) + os.sep for pkg in ("actors", "audio", "controller", "ensemble"))


class UserCode:
    """Tracks the client directories on ``sys.path`` and the modules imported from them (job thread only)."""

    def __init__(self) -> None:
        self.added: set[str] = set()  # what this worker put on sys.path
        self.paths: set[str] = set()  # every client directory, those on sys.path before included (PYTHONPATH)
        self.mtimes: dict[str, tuple[str, int]] = {}  # module name -> (file, mtime_ns when first seen)
        self.entered = ""  # the cwd of the last job
        self._seen = 0  # len(sys.modules) at the last scan: nothing new imported, nothing to look at
        # modules already looked at (and every module imported before the first job: the worker's own, which no
        # client directory provides): each module's path is resolved once, not at every scan (~400 realpaths,
        # 8 ms, in a worker forked from a private daemon)
        self._known: set[str] = set(sys.modules)

    def add_path(self, path: list[str]) -> None:
        """Search ``path`` (a client's import path) before the worker's own, from now on (as jobs arrive)."""
        fresh = [p for p in path if p not in self.added and p not in sys.path]
        if fresh:
            sys.path[:0] = fresh
            self.added.update(fresh)
        # a directory the worker had on its path already (the daemon's PYTHONPATH) holds the user's code too: its
        # modules are watched as well, or an edit there was never seen
        self.paths.update(path)

    def enter(self, cwd: str, look: bool = True) -> None:
        """Run the next job in ``cwd``; without ``look``, trust that the last job's ``cwd`` is still current.

        (The worker looks once per arrival of jobs: a job that changes the
        directory itself leaves it changed for the rest of that arrival, as
        ``ProcessPoolExecutor`` leaves it for every later job.)
        """
        if not look and cwd == self.entered:
            return
        self.entered = cwd
        if cwd and os.getcwd() != cwd:
            try:
                os.chdir(cwd)
            except (OSError, ValueError):  # gone since submit (or a NUL, which the daemon refuses before): the
                pass  # job runs where the worker is, and relative paths fail there

    def note_imports(self, since_ns: int = 0) -> None:
        """Remember the user modules imported so far (after a job ran) with their files' times.

        ``since_ns``: when the job that ran began (``time.time_ns()``).  A file
        whose time is later was written while that job ran, perhaps after it was
        imported: it is remembered as changed, so the next job is not run on
        what may be the code before the edit (the time read now is the edit's).
        """
        if not self.paths or len(sys.modules) == self._seen:
            return
        self._seen = len(sys.modules)
        roots = tuple(os.path.realpath(p) + os.sep for p in self.paths if p and "\0" not in p)
        known = self._known
        for name, mod in list(sys.modules.items()):
            if name in known:
                continue
            known.add(name)
            if not isinstance(mod, ModuleType):
                continue
            file = getattr(mod, "__file__", None)
            if not file:
                continue
            real = os.path.realpath(file)
            if real.startswith(roots) and not real.startswith(_SYSTEM) and not real.startswith(_RUNTIME):
                try:
                    mtime = os.stat(file).st_mtime_ns
                    # a file's time is the kernel's coarse clock, up to a tick behind time.time_ns(): allow one
                    self.mtimes[name] = (file, _UNKNOWN if since_ns and mtime >= since_ns - _TICK_NS else mtime)
                except OSError:
                    continue

    def stale(self) -> str:
        """The first user module whose file changed (or vanished) since it was imported, else ""."""
        for name, (file, mtime) in self.mtimes.items():
            try:
                if os.stat(file).st_mtime_ns != mtime:
                    return name
            except OSError:
                return name
        return ""

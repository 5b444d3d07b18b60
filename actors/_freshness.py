"""A worker's view of the user's code: the client's cwd and import path, and whether that code changed on disk.

A local client's jobs run in the client's working directory with the client's
import path searched first, as under ``ProcessPoolExecutor``.  Modules imported
from those directories (not the standard library or site-packages) are the
user's own code; a worker never runs a job against one that changed on disk
since it imported it: it retires (exit code :data:`RETIRE_CODE`) and its
replacement imports the new code.

A shared daemon's worker serves clients of several projects, and two of them
may each have a module of the same name (``shared.py``, ``mywork.py``).  So
the worker runs each job with its own client's path and modules only: when
the import path changes from one job to the next, the directories other
clients added leave ``sys.path``, and the user modules imported from
directories not on the new path leave ``sys.modules``, kept aside (not
re-imported: a module's state lives on) until a job whose path holds their
directory comes again.  A job then imports ``shared`` from its own project,
as its own process would.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from types import ModuleType
from typing import Iterable

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
        self.added: set[str] = set()  # what this worker put on sys.path (for any client)
        self.paths: set[str] = set()  # every client directory, those on sys.path before included (PYTHONPATH)
        self.mtimes: dict[str, tuple[str, int]] = {}  # user module file -> (its module's name, mtime_ns when seen)
        self.active: dict[str, str] = {}  # name -> real file of each user module in sys.modules
        self.aside: dict[tuple[str, str], ModuleType] = {}  # (name, real file) -> a module another path imported
        self.current: list[str] | None = None  # the import path of the last job entered
        self.entered = ""  # the cwd of the last job
        self._seen = 0  # len(sys.modules) at the last scan: nothing new imported, nothing to look at
        # modules already looked at (and every module imported before the first job: the worker's own, which no
        # client directory provides): each module's path is resolved once, not at every scan (~400 realpaths,
        # 8 ms, in a worker forked from a private daemon)
        self._known: set[str] = set(sys.modules)
        # a worker forked from a private daemon, itself a fork of its client: the client's modules it kept, watched
        forked = getattr(sys.modules.get("actors._daemonfork"), "FORKED_USER", {})
        for name, (real, mtime) in forked.items():
            if name in sys.modules:
                self.mtimes[real] = (name, mtime)
                self.active[name] = real

    def use(self, path: list[str]) -> bool:
        """Run the next jobs with ``path``, a client's import path: its directories first on ``sys.path``, no
        other client's there, and ``sys.modules`` holding the user modules of its directories only (those of
        other paths kept aside: see the module's doc).  Cheap when it is the path of the last job.  Whether
        modules were put aside or back: functions looked up before may no longer be the job's."""
        current = self.current
        if path is current:
            return False
        self.current = path
        if current is not None and path == current:
            return False
        # the client's own directories first, in its order; the worker's own entries (and what jobs added) after
        mine = [p for p in path if p in self.added or p not in sys.path]
        sys.path[:] = mine + [p for p in sys.path if p not in self.added]
        self.added.update(mine)
        # a directory the worker had on its path already (the daemon's PYTHONPATH) holds the user's code too: its
        # modules are watched as well, or an edit there was never seen
        self.paths.update(path)
        return bool(self.active or self.aside) and self._swap_modules(path)

    def _swap_modules(self, path: list[str]) -> bool:
        """Put aside the user modules no directory of ``path`` holds, and back those it holds (see :meth:`use`)."""
        roots = _roots(path)
        aside = len(self.aside)
        for name, real in list(self.active.items()):
            mod = sys.modules.get(name)
            if mod is None:  # (a job removed it itself)
                del self.active[name]
            elif not real.startswith(roots):
                self.aside[(name, real)] = mod
                del sys.modules[name], self.active[name]
                self._known.discard(name)  # the job may import its own module of that name: looked at then
        back: dict[str, tuple[int, str, ModuleType]] = {}  # name -> (its root's place in path, file, module)
        for (name, real), mod in self.aside.items():
            if name in sys.modules:
                continue
            place = next((i for i, root in enumerate(roots) if real.startswith(root)), -1)
            if place >= 0 and (name not in back or place < back[name][0]):
                back[name] = (place, real, mod)
        for name, (_, real, mod) in back.items():
            del self.aside[(name, real)]
            sys.modules[name] = mod
            self.active[name] = real
            self._known.add(name)
        if not back and len(self.aside) == aside:
            return False
        self._seen = -1  # sys.modules changed under the count: look again after the next job
        return True

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
        roots = _roots(self.paths)
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
                except OSError:
                    continue
                # a file's time is the kernel's coarse clock, up to a tick behind time.time_ns(): allow one
                self.mtimes[real] = (name, _UNKNOWN if since_ns and mtime >= since_ns - _TICK_NS else mtime)
                self.active[name] = real

    def stale(self) -> str:
        """The first user module whose file changed (or vanished) since it was imported, else ""."""
        for file, (name, mtime) in self.mtimes.items():
            try:
                if os.stat(file).st_mtime_ns != mtime:
                    return name
            except OSError:
                return name
        return ""


def _roots(paths: Iterable[str]) -> tuple[str, ...]:
    """The directories of an import path as the real files of their modules start (those no process can use left
    out: a NUL, the empty entry of the current directory, which a job's ``cwd`` is)."""
    return tuple(os.path.realpath(p) + os.sep for p in paths if p and "\0" not in p)

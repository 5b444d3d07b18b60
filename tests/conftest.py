"""Shared fixtures: a real daemon in a private run directory, and leak checks.

Every daemon a test starts gets its own short run directory under the
session's temporary directory, ``/tmp/ens-s<pid>-*`` (unix socket paths are
limited to ~100 characters), and its own state directory.  Tests that kill,
stop or reconfigure a daemon start their own (``daemon``, ``make_daemon``);
tests that only submit jobs and read state share one per module
(``module_daemon``, ``shared_daemon``) to keep the suite fast.  At the end of
the session no child process, no ``ensemble.*`` shared-memory segment and no
socket file may remain.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest.mock import patch

import pytest

from actors._procs import alive as pid_alive
from actors._procs import children, processes_mentioning
from actors.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent

# This session's temporary directory: every short directory a test makes, and every private daemon's directory
# (they follow $TMPDIR, see actors._private.private_parent), goes under it, so that the leak check (no_leaks) sees
# this session's directories only, and another suite run beside this one is not taken for a leak.  pytest's own
# tmp_path stays where it was (PYTEST_DEBUG_TEMPROOT).  Made when pytest configures, not at import: a worker that
# imports a test module for one of its jobs imports this module too, and would leave one behind.
SESSION_TMP = Path("/nonexistent")


def pytest_configure(config: pytest.Config) -> None:
    global SESSION_TMP
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    SESSION_TMP = Path(tempfile.mkdtemp(prefix=f"ens-s{os.getpid()}-", dir="/tmp"))
    os.environ["TMPDIR"] = tempfile.tempdir = str(SESSION_TMP)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


def without_overruns(errors: list[str]) -> list[str]:
    """Script errors less the processor's overruns: an overrun says a block's script callbacks took more than its
    budget by the clock, and on a loaded machine (the default suite runs in two processes) any block may."""
    return [e for e in errors if not e.startswith("Processor overrun:")]


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail loudly after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < end:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def watch_handshakes(sock: Any) -> Any:
    """A monitor of ``sock``'s handshakes, to attach before it connects (read it with :func:`wait_refused`)."""
    import zmq

    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                   | zmq.EVENT_DISCONNECTED)


def wait_refused(sock: Any, monitor: Any, timeout: float = 60.0, what: str = "the peer") -> int:
    """Wait until the peer refuses ``sock``'s handshake; the ZeroMQ event that said so.

    The proof that a frame queued on ``sock`` was never delivered, without
    sleeping and hoping: the handshake has to succeed before any frame
    crosses, and here it failed (or the peer hung up before it succeeded).
    A handshake that succeeds fails the test.  The monitor is closed after.
    """
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    refused = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
               zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not monitor.poll(200):
                continue
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                raise AssertionError(f"{what} accepted the handshake")
            if event in refused:
                return int(event)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} to refuse the handshake")
    finally:
        sock.disable_monitor()
        monitor.close(0)


def run_main(tmp_path: Path, script: str | None = None, timeout: float = 180, **env: str) -> Any:
    """``python main.py`` in ``tmp_path`` (``script`` written there first, when given) with no daemon running,
    so that an Executor starts a private one; ``env`` adds variables.  It must exit 0.  Returns the
    CompletedProcess, its output captured as text."""
    if script is not None:
        (tmp_path / "main.py").write_text(script)
    full = {**os.environ, "ENSEMBLE_NAME": "nobody-home", "ENSEMBLE_RUN_DIR": str(tmp_path / "run"),
            "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "main.py"], cwd=str(tmp_path), env=full, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def fd_targets(pid: int) -> list[str]:
    """What ``pid``'s descriptors lead to (``/proc/PID/fd`` links; one closed while they are read is skipped)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed since the listing (a process still starting opens and closes some)
            pass
    return held


class Daemon:
    """A daemon started for one test as ``ensemble up`` / ``down`` do (the CLI's own functions, see :meth:`up`).

    ``jobs_only``: no audio, controller or panel (``[daemon] extensions = []``,
    as an Executor's private daemon runs), for tests of jobs and workers; it is
    ready in a third of the time, without a processor and a controller to start.
    """

    def __init__(self, base: Path, name: str = "t", workers: int = 2, extra_env: dict[str, str] | None = None,
                 config_text: str = "", jobs_only: bool = False) -> None:
        self.base = base
        self.env = dict(os.environ)
        self.env.update({
            "ENSEMBLE_NAME": name,
            "ENSEMBLE_RUN_DIR": str(base / "run"),
            "ENSEMBLE_STATE_DIR": str(base / "state"),
            "ENSEMBLE_WORKERS": str(workers),
            "ENSEMBLE_AUDIO_BACKEND": "null",
            "ENSEMBLE_SUPERVISION_HEARTBEAT_INTERVAL": "0.2",
            "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": "2.0",
            "PYTHONPATH": str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", ""),
        })
        if jobs_only:
            self.env["ENSEMBLE_EXTENSIONS"] = ""
        self.env.update(extra_env or {})
        if config_text:
            cfg_file = base / "ensemble.toml"
            cfg_file.write_text(config_text)
            self.env["ENSEMBLE_CONFIG"] = str(cfg_file)
        self.config: Config = load_config(env=self.env)
        _SESSION_KEYS.add(self.config.shm_key)
        self.pid = 0
        self._clients: list[Any] = []

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``ensemble ARGS`` against this daemon."""
        proc = subprocess.run([sys.executable, "-m", "actors", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"ensemble {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cli_each(self, *commands: Sequence[str], timeout: float = 60.0) -> list[subprocess.CompletedProcess[str]]:
        """Run ``ensemble ARGS`` for each of ``commands``, a few at a time; their results in order (none checked).

        For commands that do not depend on each other (refusals, queries): a
        CLI process spends its time starting and importing, so two CPUs run
        two of them in the time of one.
        """
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self.cli(*args, check=False, timeout=timeout), commands))

    def up(self, *extra: str) -> None:
        """Start the daemon and wait until every actor is ready.

        With ``extra`` CLI flags, through ``ensemble up``; without, through the
        functions that command calls (:func:`actors._launch.start_daemon`,
        :func:`~actors._launch.wait_ready`) from this process, which saves the
        CLI's interpreter start on every test (``tests/actors/test_cli.py``
        covers the command itself).  The daemon is then this process's child:
        a thread reaps it when it exits, and :func:`no_leaks` does not count
        it as a leak while it runs (a module's daemon outlives its tests).
        """
        if extra:
            self.cli("up", *extra)
        else:
            self._start()
        self.pid = int((self.base / "run" / "daemon.pid").read_text())

    def _start(self) -> None:
        from actors._launch import start_daemon, wait_ready

        self.config = load_config(env=self.env)  # as the CLI would read it now (a test may have changed env)
        _SESSION_KEYS.add(self.config.shm_key)
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        err = self.config.state_dir / "daemon.err"
        with patch.dict(os.environ, self.env, clear=True):  # the daemon's environment is made from ours, as the CLI's
            proc = start_daemon(self.config, err)
        try:
            wait_ready(self.config, proc, 60.0, err)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise
        _DAEMONS.add(proc.pid)
        threading.Thread(target=_reap, args=(proc,), name=f"reap-daemon-{proc.pid}", daemon=True).start()

    def down(self) -> None:
        """Stop the daemon in order (also closes clients made by :meth:`client`), as ``ensemble down`` does."""
        self.close_clients()
        from actors._rundir import RunDir
        from actors.client import Client

        with Client(config=self.config, timeout=10) as c:
            c.shutdown()
        run = RunDir(self.config.run_dir)
        wait_for(lambda: not run.is_locked() and not pid_alive(self.pid), 30, what="the daemon to exit after shutdown")

    def client(self, **kw: Any) -> Any:
        """An :class:`ensemble.Client` (jobs, audio, scripts) connected to this daemon (closed at teardown)."""
        from ensemble import Client

        c = Client(config=self.config, **kw)
        self._clients.append(c)
        return c

    def close_clients(self) -> None:
        """Close every client made by :meth:`client` (and the shared memory they hold)."""
        for c in self._clients:
            c.close()
        self._clients.clear()

    def status(self) -> Any:
        """``status`` through a fresh client."""
        from actors.client import Client

        with Client(config=self.config, timeout=10) as c:
            return c.status()

    def actor(self, name: str) -> Any:
        """The ActorInfo of one actor."""
        return next(a for a in self.status().actors if a.name == name)

    def cleanup(self) -> None:
        """Make sure nothing of this daemon survives the test."""
        self.close_clients()
        run = self.base / "run"
        if (run / "daemon.lock").exists():
            if self.pid and pid_alive(self.pid):
                try:
                    self.down()
                except Exception:  # noqa: BLE001 - it did not stop in order: killed below
                    pass
            else:
                self.cli("down", check=False, timeout=60)
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(self.pid), 10, what="daemon to die")
        wait_for(lambda: not processes_mentioning(str(self.base)), 10,
                 what=f"processes of the daemon in {self.base} to exit")

    def socket_files(self) -> list[Path]:
        """Socket files left in the run directory."""
        run = self.base / "run"
        return [p for p in run.iterdir() if p.is_socket()] if run.exists() else []


_DAEMONS: set[int] = set()  # pids of daemons Daemon.up started from this process (its children until they exit)
# children a module-scoped fixture keeps across its module's tests (a shared Ray cluster's processes), until its
# teardown; the leak check after the module's last test then finds them gone
KEPT: set[int] = set()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a daemon this process started, so that it leaves no zombie (and is no child any more)."""
    proc.wait()
    _DAEMONS.discard(proc.pid)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths must stay under ~100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="ens-"))  # under SESSION_TMP
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_daemon(short_tmp: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory of daemons for one test; every one is stopped at teardown."""
    made: list[Daemon] = []

    def make(**kw: Any) -> Daemon:
        base = short_tmp / f"d{len(made)}"
        base.mkdir()
        d = Daemon(base, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon with 2 workers and fast heartbeats."""
    d = make_daemon()
    d.up()
    return d


@pytest.fixture
def jobs_daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running jobs-only daemon (no audio, controller or panel) with 2 workers, for a test of jobs alone."""
    d = make_daemon(jobs_only=True)
    d.up()
    return d


def running_daemon(base: Path, **kwargs: Any) -> Iterator[Daemon]:
    """A module fixture's body: ``Daemon(base, **kwargs)`` up, yielded, then stopped and ``base`` removed."""
    d = Daemon(base, **kwargs)
    try:
        d.up()
        yield d
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[Daemon]:
    """A running daemon (2 workers, fast heartbeats) shared by one test module's well-behaved tests.

    For tests that only submit jobs, load scripts and read state: a test that
    kills, stops, scales or reconfigures a daemon takes ``daemon`` or
    ``make_daemon`` (a daemon of its own).  Clients it makes stay open until
    the module ends; :func:`shared_daemon` closes them after each test.
    """
    yield from running_daemon(Path(tempfile.mkdtemp(prefix="ens-m")))


@pytest.fixture
def shared_daemon(module_daemon: Daemon) -> Iterator[Daemon]:
    """The module's daemon, with the clients this test made closed at its end.

    For tests that hold shared memory through their clients: the leak check
    (:func:`no_leaks`) runs after this teardown and sees every segment freed.
    """
    yield module_daemon
    module_daemon.close_clients()


_SESSION_KEYS: set[str] = set()  # shm keys of the daemons this test session made


def _our_segments() -> set[str]:
    """Segments of this session: of a daemon it made, or made by this process (others' suites may run beside)."""
    me = f".{os.getpid()}."
    try:
        names = [p for p in os.listdir("/dev/shm") if p.startswith("ensemble.")]
    except FileNotFoundError:
        return set()
    return {p for p in names if me in p or any(p.startswith(f"ensemble.{k}.") for k in _SESSION_KEYS)}


def _our_dirs() -> set[str]:
    """This session's ``ens-*`` directories (a private daemon's, a test's short one): under SESSION_TMP."""
    return {str(p) for p in SESSION_TMP.glob("ens-*") if p.is_dir()}


@pytest.fixture(autouse=True)
def not_a_job_process() -> Iterator[None]:
    """A test that ran a job's code in this process (``actors._task.activate``) left it marked as a worker's for
    the rest of the session, and a later ``Executor()`` here then started a daemon of its own instead of attaching
    (tests/actors/test_executor_map.py failed after tests/actors/test_task.py in one process)."""
    from actors import _task

    yield
    _task._ran_jobs = False
    _task._home[0] = None


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After every test: no child process, no new shared-memory segment of ours, no private daemon's directory."""
    before = _our_segments()
    dirs = _our_dirs()
    yield
    wait_for(lambda: not [p for p in children(os.getpid()) if p not in _DAEMONS and p not in KEPT], 15,
             what="child processes to exit")
    leaked = _our_segments() - before
    wait_for(lambda: not (_our_segments() - before), 10, what=f"shared-memory segments {leaked} to be unlinked")
    wait_for(lambda: not (_our_dirs() - dirs), 15, what=f"directories {sorted(_our_dirs() - dirs)} to be removed")

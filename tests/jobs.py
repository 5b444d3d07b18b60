"""Job functions used by the tests (allowed by the default allow-list as ``tests.jobs.*``)."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from actors import Task


def pid(task: Task) -> int:
    """Return the worker's pid."""
    return os.getpid()


def sleep(task: Task, seconds: float) -> float:
    """Sleep without checking should_abort()."""
    time.sleep(seconds)
    return seconds


def spin(task: Task, seconds: float = 3600.0) -> None:
    """Busy loop holding the GIL, never checking should_abort()."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def ignore_abort_with_grandchild(task: Task, pidfile: str) -> None:
    """Start a grandchild that ignores SIGTERM, write its pid, then ignore aborts forever."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    child = subprocess.Popen([sys.executable, "-c", code])
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.replace(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(0.01)


def ignore_abort_with_sessions(task: Task, pidfile: str) -> None:
    """Start a child in a session of its own and a grandchild in another (below a ``sh`` that waits on it), write
    their pids, then ignore aborts forever."""
    child = subprocess.Popen(["sleep", "1000"], start_new_session=True, stdin=subprocess.DEVNULL)
    shell = subprocess.Popen(["sh", "-c", "setsid sleep 1000 </dev/null & echo $!; wait"], stdout=subprocess.PIPE,
                             text=True)
    assert shell.stdout is not None
    grandchild = int(shell.stdout.readline())
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{child.pid} {grandchild}")
    os.replace(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(0.01)


def orphan_then(task: Task, pidfile: str, then: str) -> None:
    """Leave an orphan in a session of its own (``setsid sleep`` put in the background by a ``sh`` that exits), write
    its pid, then ignore aborts for ever (``then="ignore"``) or kill the worker (``"crash"``)."""
    shell = subprocess.run(["sh", "-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"],
                           capture_output=True, text=True, check=True, timeout=60)
    with open(pidfile + ".tmp", "w") as f:
        f.write(shell.stdout.strip())
    os.replace(pidfile + ".tmp", pidfile)
    if then == "crash":
        time.sleep(0.05)  # (after its start tick: the test waits for its own session first anyway)
        os.kill(os.getpid(), signal.SIGKILL)
    while True:
        time.sleep(0.01)


def polite(task: Task, seconds: float = 60.0) -> str:
    """Loop checking should_abort() every 10 ms; returns 'aborted' when asked (status 'started' once running)."""
    task.set_status_message("started")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if task.should_abort():
            return "aborted"
        time.sleep(0.01)
    return "finished"


def stall_after_check(task: Task, seconds: float) -> str:
    """Call should_abort() once, then stay away longer than the timeout."""
    task.should_abort()
    time.sleep(seconds)
    task.should_abort()
    return "ok"


def stall_often(task: Task, times: int, gap: float) -> int:
    """Stay away from should_abort() for ``gap`` seconds, ``times`` times over (one stall each, past a short
    timeout); how many gaps."""
    for _ in range(times):
        task.should_abort()
        time.sleep(gap)
    task.should_abort()
    return times


def daemon_of_client() -> str:
    """The name of the daemon a ``Client()`` made in this job reaches, with no ``ENSEMBLE_`` variable saying which
    (as when the daemon was started with ``--name`` or ``--config``); the variables are put back after."""
    from ensemble import Client

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ENSEMBLE_")}
    try:
        with Client() as c:
            return str(c.status().daemon.name)
    finally:
        os.environ.update(saved)


def crash(task: Task) -> None:
    """Kill the worker process itself."""
    os.kill(os.getpid(), signal.SIGKILL)


def exit_0(task: Task) -> None:
    """End the worker process with exit code 0, as if it had been asked to leave (no result, no goodbye)."""
    os._exit(0)


def props(task: Task, n: int) -> dict[str, Any]:
    """Set progress, status and properties, then wait for an abort."""
    task.set_progress(0.5)
    task.set_status_message("half way")
    task.set_property("n", n)
    while not task.should_abort():
        time.sleep(0.01)
    return {"n": n}


def hold_properties(task: Task, values: list[Any]) -> int:
    """Set property ``v<i>`` to each of ``values`` (as this job received them), then wait for an abort."""
    for i, value in enumerate(values):
        task.set_property(f"v{i}", value)
    task.set_progress(0.5)
    while not task.should_abort():
        time.sleep(0.01)
    return len(values)


def swap_while_silent(task: Task) -> bool:
    """kill_voices_and_call: runs a function while the processor is silent; reports whether it ran."""
    ran: list[bool] = []
    ok = task.kill_voices_and_call(lambda: ran.append(True))
    return ok and ran == [True]


def record(task: Task, path: str, tag: Any) -> Any:
    """Append ``tag`` as one line to ``path`` (O_APPEND: atomic across processes); return it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    return tag


def wait_file(task: Task, path: str, seconds: float = 120.0) -> str:
    """Poll (checking should_abort()) until ``path`` exists; 'released', 'aborted' or 'expired'."""
    task.set_status_message(f"waiting for {path}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if task.should_abort():
            return "aborted"
        if os.path.exists(path):
            return "released"
        time.sleep(0.01)
    return "expired"


def big_after_file(path: str, size: int, seconds: float = 120.0) -> str:
    """``size`` characters once ``path`` exists (a result whose row needs new pages of the journal)."""
    end = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)
    return "x" * size


def crash_once(task: Task, marker: str) -> str:
    """Kill the worker on the first attempt (leaving ``marker``); return 'survived' on a retry."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


class CustomJobError(Exception):
    """An exception type a test recognises by name."""


def boom(task: Task, message: str) -> None:
    """Raise CustomJobError(message) from a nested call."""
    def inner_helper() -> None:
        raise CustomJobError(message)

    inner_helper()


def raise_builtin(kind: str, message: str) -> None:
    """Raise the builtin exception named ``kind`` (ValueError, KeyError, FileNotFoundError ...) with ``message``."""
    import builtins

    raise getattr(builtins, kind)(message)


def raise_remote_only(message: str) -> None:
    """Raise an exception of a module the test process never imports (tests._remote_only)."""
    from tests._remote_only import OnlyThereError

    raise OnlyThereError(message)


def run_lines(task: Task, command: str, args: Any = (), timeout_ms: int = 500) -> dict[str, Any]:
    """Run a program through task.run_process and return what log_fn saw."""
    task.set_timeout(timeout_ms)
    seen: list[Any] = []

    def log_fn(t: Task, finished: bool, data: Any) -> None:
        assert t is task
        seen.append([finished, data])
        if not finished:
            t.set_status_message(str(data))  # the last line, readable by clients while it runs

    code = task.run_process(command, args, log_fn)
    return {"code": code, "calls": seen}


def square(x: float) -> float:
    """A plain function (no task argument) for the Executor."""
    return x * x


def plain_with_task(x: int) -> list[Any]:
    """A plain function that reaches its task handle through current_task()."""
    from actors import current_task

    t = current_task()
    t.set_progress(1.0)
    t.set_property("x", x)
    return [t.job_id, x, t.get_property("x")]


def plain_fail(message: str) -> None:
    """A plain function that raises."""
    raise KeyError(message)


def plain_sleep(seconds: float) -> float:
    """A plain function that sleeps."""
    time.sleep(seconds)
    return seconds


def numpy_sum(task: Task, array: Any) -> Any:
    """Return the array doubled and its sum."""
    return {"doubled": array * 2, "sum": float(array.sum())}


def scale_array(task: Task, array: Any, factor: float) -> Any:
    """Return ``array * factor`` (a new array: copied once into shared memory by the worker)."""
    return array * factor


def double_in_place(task: Task, array: Any) -> Any:
    """Double a shared array in place and return it (crosses back by handle)."""
    array *= 2
    return array


def make_shared(task: Task, n: int) -> Any:
    """Allocate the result in shared memory with task.empty (no copy on the way back)."""
    out = task.empty(n, "float32")
    out[:] = 1.5
    return out


def nap(task: Task, seconds: float, tag: Any) -> Any:
    """Sleep ``seconds`` (ignoring aborts) and return ``tag``."""
    time.sleep(seconds)
    return tag


def stubborn(task: Task) -> None:
    """Set the status 'started', then sleep forever ignoring should_abort()."""
    task.set_status_message("started")
    while True:
        time.sleep(0.01)


def _append_then_work(task: Task, path: str, line: str, seconds: float, step: float) -> None:
    """Append ``line`` to ``path`` (O_APPEND: one whole line per execution), then work ``seconds`` or until aborted."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not task.should_abort():
        time.sleep(step)


def record_run(task: Task, path: str, job_tag: int, seconds: float = 0.0) -> int:
    """Append ``job_tag`` to ``path`` (one line per execution, O_APPEND), optionally work a while."""
    _append_then_work(task, path, str(job_tag), seconds, 0.005)
    return job_tag


def spin_started(task: Task, seconds: float = 3600.0) -> None:
    """Say so, then spin holding the GIL without ever checking should_abort()."""
    task.set_status_message("spinning")
    task.set_progress(0.5)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def record_execution(task: Task, path: str, seconds: float = 0.0) -> int:
    """Append '<job id> <worker pid>' to ``path`` (O_APPEND, one line per execution), work a while; return the id."""
    _append_then_work(task, path, f"{task.job_id} {os.getpid()}", seconds, 0.002)
    return task.job_id


def record_then_crash(task: Task, path: str) -> None:
    """Append '<job id> <worker pid>' to ``path``, then SIGKILL the worker (a job that segfaults, say)."""
    record_execution(task, path)
    os.kill(os.getpid(), signal.SIGKILL)


def hold_gil(task: Task, path: str = "") -> int:
    """Say so (and touch ``path``), then hold the GIL in one C call for hours: even heartbeats stop."""
    task.set_status_message("holding the GIL")
    if path:
        open(path, "w").close()
    return sum(range(10**13))


def fill_shared(task: Task, n: int, path: str) -> None:
    """Allocate ``n`` float32 in shared memory, touch ``path`` (with the segment name), then fill it forever."""
    out = task.empty(n, "float32")
    with open(path + ".tmp", "w") as f:
        f.write(out.shared_handle.name)
    os.replace(path + ".tmp", path)
    value = 0.0
    while True:
        value += 1.0
        out[:] = value


def big_string(task: Task, n: int) -> str:
    """A result of ``n`` bytes (over a small frame limit)."""
    return "x" * n


def int_keys(task: Task) -> dict[int, str]:
    """A result msgpack can encode but the daemon refuses (map keys must be strings)."""
    return {1: "one"}


def plain_int_keys() -> dict[int, str]:
    """:func:`int_keys` without the task handle (for the Executor)."""
    return {1: "one"}


def plain_gate(marker_dir: str, gate: str, seconds: float = 120.0) -> int:
    """A plain function: drop a marker file, wait for ``gate`` to exist; returns this worker's pid."""
    Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    end = time.monotonic() + seconds
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.005)
    return os.getpid()


def plain_alone(busy: str, seconds: float) -> int:
    """A plain function that holds the file ``busy`` for ``seconds``: 1 if another job held it when it began (two
    ran at once), else 0."""
    try:
        fd = os.open(busy, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return 1
    os.close(fd)
    time.sleep(seconds)
    os.unlink(busy)
    return 0


class Crasher:
    """A callable with no job path of its own (an Executor sends it pickled) whose method ends its worker."""

    def crash(self) -> None:
        os._exit(3)


def identity(value: Any) -> Any:
    """A plain function returning its argument (values must come back exactly as they went)."""
    return value


def plain_env(name: str) -> str | None:
    """A plain function: the worker's environment variable ``name``."""
    return os.environ.get(name)


def plain_raise_value_error(message: str) -> None:
    """A plain function raising a builtin exception type."""
    raise ValueError(message)


def object_result(task: Task) -> object:
    """A result MessagePack cannot carry: a local client gets it pickled, a remote one an error."""
    return object()


def lock_result() -> Any:
    """A result neither MessagePack nor pickle carries."""
    import threading

    return {"held": [threading.Lock()]}


# -- one calling convention, ProcessPoolExecutor parity (tests/actors/test_executor_compat.py)
_INITIALISED: list[Any] = []  # what this executor's initializer set in this worker


def convention_plain(x: int) -> list[Any]:
    """No task parameter: called with the arguments alone; the handle through current_task()."""
    from actors import current_task

    return ["plain", current_task().job_id > 0, x]


def convention_named(task: Task, x: int) -> list[Any]:
    """A first parameter ``task: Task``: receives the handle first, from every entry point."""
    return ["named", task.job_id > 0, x]


def convention_annotated(handle: Task, x: int) -> list[Any]:
    """A first parameter annotated ``Task``: receives the handle first."""
    return ["annotated", handle.job_id > 0, x]


def init_worker(marker_dir: str, tag: Any) -> None:
    """An Executor initializer: note this worker's pid in ``marker_dir`` and keep ``tag`` for its jobs."""
    with open(os.path.join(marker_dir, f"{os.getpid()}-{os.urandom(4).hex()}"), "w") as f:
        f.write(str(tag))
    _INITIALISED[:] = [tag]


def initialised(x: Any) -> list[Any]:
    """``[worker pid, what the initializer set, x]``."""
    return [os.getpid(), list(_INITIALISED), x]


def init_table(table: bytes) -> None:
    """An initializer handing its jobs a lookup table (the usual reason for one: big data, sent once a worker)."""
    _INITIALISED[:] = [table]


def look_up(i: int) -> int:
    """Byte ``i`` (modulo its length) of the table :func:`init_table` set in this worker."""
    table = _INITIALISED[0]
    return table[i % len(table)]


def init_fails(message: str) -> None:
    """An initializer that raises."""
    raise ValueError(message)


def plain_pid(x: Any = None) -> int:
    """The worker's pid (no task parameter)."""
    return os.getpid()


def plain_divmod(a: int, b: int) -> tuple[int, int]:
    """A plain function of two arguments (Executor.map over two iterables)."""
    return divmod(a, b)


def reverse_array(task: Task, array: Any, marker: str = "") -> Any:
    """``[array reversed (a new array, same dtype and shape), its sum]``; with ``marker``, the first attempt
    writes its pid there and waits to be killed (the array already read)."""
    if marker and not os.path.exists(marker):
        total = float(array.sum())
        Path(marker + ".tmp").write_text(f"{os.getpid()} {total}")
        os.rename(marker + ".tmp", marker)
        while True:
            time.sleep(0.05)
    return [array[::-1].copy(), float(array.sum())]


def in_mapping(a: Any) -> bool:
    """Whether an array's memory is a mapping (a shared-memory segment), not the heap."""
    import mmap

    base = a
    while getattr(base, "base", None) is not None:
        base = base.base
    base = getattr(base, "obj", base)  # numpy keeps a memoryview of the mapping
    return isinstance(base, mmap.mmap)


def array_origin(a: Any, *rest: Any) -> Any:
    """Where an argument array came from: its type, whether it lives in a mapping (shared memory), and the rest."""
    return type(a).__name__, in_mapping(a), rest, a * 2, a.sum()


def fill_sevens(a: Any) -> Any:
    """Write into an array in place and return it (a shared one comes back as itself)."""
    a[...] = 7
    return a


class Scaler:
    """A picklable object whose methods and call are jobs (ProcessPoolExecutor pickles bound methods too)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def scale(self, x: int) -> int:
        return x * self.factor

    def __call__(self, x: int) -> list[int]:
        return [self.factor, x]

    @staticmethod
    def negate(x: int) -> int:
        return -x


def _private_helper(x: int) -> int:
    """A module function whose name no job path may have (it starts with '_')."""
    return x + 100


@dataclasses.dataclass
class Offset:
    """A callable object that cannot be hashed (a dataclass compares by value)."""

    by: int

    def __call__(self, x: int) -> int:
        return x + self.by


class Unprintable(Exception):
    """An exception whose ``str()`` raises (a user's broken ``__str__``)."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def raise_unprintable(task: Task) -> None:
    """Fail with an exception that cannot be printed."""
    raise Unprintable()


def mutate_property(task: Task, hold: float) -> str:
    """Set a list property, then put an object into it in place (past set_property's check); work ``hold`` s."""
    value: list[Any] = [1]
    task.set_property("items", value)
    value.append(object())
    task.set_progress(0.5)
    end = time.monotonic() + hold
    while time.monotonic() < end:
        time.sleep(0.01)
    return "survived"


def unsendable_updates(task: Task) -> list[str]:
    """Try each update a client could not receive; what each raised, in order."""
    said = []
    for call in (lambda: task.set_status_message("\ud800"), lambda: task.set_property("p", object()),
                 lambda: task.set_property("p", [1, Fraction(1, 3)]), lambda: task.set_timeout(1e300),
                 lambda: task.set_timeout(float("nan"))):
        try:
            call()
            said.append("accepted")
        except (TypeError, ValueError) as exc:
            said.append(type(exc).__name__)
    return said


def pool_sum(n: int = 50) -> int:
    """Sum ``abs`` over ``range(-n, n)`` in a ``multiprocessing.Pool(2)`` of the default start method (fork)."""
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        return sum(pool.map(abs, range(-n, n)))


def terminate_forked(how: str, seconds: float = 10.0) -> int | None:
    """Fork a child that sleeps ``seconds``, SIGTERM it at once and return how it ended (-15: killed by it).

    ``how``: ``"os"`` (``os.fork``) or ``"process"`` (``multiprocessing``'s fork
    start method).  A child that survives SIGTERM sleeps its time out and ends 0.
    """
    import multiprocessing

    if how == "process":
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(seconds,))
        child.start()
        child.terminate()
        child.join(seconds + 30)
        return child.exitcode
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)
    os.kill(pid, signal.SIGTERM)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def task_in_forked_child(task: Task) -> list[Any]:
    """Use the task handle in a child forked by the job; what the child saw (through a pipe), and the job's pid."""
    import json

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        seen: list[Any] = []
        try:
            task.set_progress(0.5)
            task.set_status_message("from the child")
            seen.append(task.get_progress())
            seen.append(in_mapping(task.empty(4)))
            try:
                seen.append(task.kill_voices_and_call(lambda: None))
            except Exception as exc:  # noqa: BLE001 - reported to the job
                seen.append(type(exc).__name__)
            os.write(write_end, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        seen = json.loads(f.read())
    os.waitpid(pid, 0)
    return [seen, task.get_progress(), task.get_status_message()]


def return_in_forked_child(task: Task, marker: str) -> str:
    """Fork, and return from the job in both processes (the child should have called ``os._exit``).

    The child creates ``marker`` (its pid) before it returns."""
    pid = os.fork()
    if pid == 0:
        Path(marker + ".tmp").write_text(str(os.getpid()))
        os.rename(marker + ".tmp", marker)
        return "child"
    os.waitpid(pid, 0)
    return "parent"


def wait_on_forked_children(pidfile: str, stubborn: bool = False) -> None:
    """Fork two children that sleep for an hour (``stubborn``: ignoring SIGTERM), write their pids, wait on them."""
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            if stubborn:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
            os._exit(0)
        pids.append(pid)
    Path(pidfile + ".tmp").write_text(" ".join(map(str, pids)))
    os.rename(pidfile + ".tmp", pidfile)
    for pid in pids:
        os.waitpid(pid, 0)


def subprocess_ignored_signals() -> int:
    """A plain function: the mask of signals a subprocess it starts ignores (SigIgn of /proc/PID/status)."""
    import subprocess

    out = subprocess.run(["sh", "-c", "grep SigIgn /proc/$$/status"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[1], 16)


def on_main_thread() -> list[Any]:
    """A plain function: whether it runs on its process's main thread, and that thread's name."""
    import threading

    return [threading.current_thread() is threading.main_thread(), threading.current_thread().name]


def alarm_timeout(seconds: int = 1, nap: float = 300.0) -> str:
    """A per-call timeout the usual way: a SIGALRM handler that raises, ``signal.alarm(seconds)``, then a call that
    runs long (a ``nap`` s sleep); 'timed out' when the alarm cut it short.  Restores the handler and the alarm."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        time.sleep(nap)
        return "slept through"
    except TimeoutError:
        return "timed out"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pid_then_wait(task: Task, marker: str, gate: str, seconds: float = 120.0) -> str:
    """Write the worker's pid to ``marker``, then :func:`wait_file` for ``gate``."""
    Path(marker + ".tmp").write_text(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    return wait_file(task, gate, seconds)


def own_sigterm_handler(marker: str) -> int:
    """Install a SIGTERM handler of the job's own (it writes ``marker``) and leave it there; the worker's pid."""

    def on_term(signum: int, frame: Any) -> None:
        Path(marker).write_text("caught")

    signal.signal(signal.SIGTERM, on_term)
    return os.getpid()


def leave_processes(pidfile: str) -> list[int]:
    """A plain function: start processes and return with them running: a child (``sh``) with a grandchild it waits
    on (``sleep``), and a grandchild left orphaned (a ``sleep`` its ``sh`` put in the background, then exited).
    Their pids, in that order, written to ``pidfile`` too."""
    import subprocess

    waited = pidfile + ".waited"
    child = subprocess.Popen(["sh", "-c", f'sleep 1000 & echo $! > "{waited}.tmp"; mv "{waited}.tmp" "{waited}"; wait'],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    orphan = subprocess.run(["sh", "-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"], capture_output=True,
                            text=True, check=True, timeout=60)
    end = time.monotonic() + 60
    while not os.path.exists(waited) and time.monotonic() < end:
        time.sleep(0.01)
    pids = [child.pid, int(Path(waited).read_text()), int(orphan.stdout)]
    child.returncode = 0  # left running on purpose: no "still running" warning when the handle goes
    Path(pidfile + ".tmp").write_text(" ".join(map(str, pids)))
    os.rename(pidfile + ".tmp", pidfile)
    return pids


_LIBC: Any = None  # the C library, for stuck_keeping_gil (looked up by record_keeping_gil)


def record_keeping_gil(task: Task, path: str) -> int:
    """:func:`record_execution`, after which the worker's main thread keeps the GIL until it blocks in a system
    call: Python no longer makes it hand the GIL to another thread (``sys.setswitchinterval``, for the rest of
    this worker's life).  The worker's loop thread then cannot run (nor send a result held back) while the main
    thread goes on to the next job, if that job blocks in C with the GIL held, as :func:`stuck_keeping_gil` does."""
    global _LIBC
    _LIBC = ctypes.PyDLL(None)  # PyDLL: its calls keep the GIL
    _LIBC.creat, _LIBC.sleep  # noqa: B018 - looked up now, not in the next job
    sys.setswitchinterval(3600.0)
    return record_execution(task, path)


def stuck_keeping_gil(marker: str) -> None:
    """Create ``marker``, then sleep an hour, both in C with the GIL held (a hung extension): from the moment the
    marker exists no other thread of the worker runs.  Follows :func:`record_keeping_gil` on the same worker."""
    _LIBC.creat(os.fsencode(marker), 0o600)
    _LIBC.sleep(3600)


def type_names(*args: Any, **kwargs: Any) -> list[str]:
    """The exact type of each argument, as the job received it (keyword arguments by sorted name)."""
    return [type(v).__name__ for v in args] + [type(kwargs[k]).__name__ for k in sorted(kwargs)]


def load_refused(why: str) -> Any:
    """What unpickling a :class:`LoadsNowhere` calls: it raises, wherever it is read."""
    raise ValueError(f"refused to load: {why}")


class LoadsNowhere:
    """A value that pickles but cannot be unpickled (its reduce names :func:`load_refused`)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return load_refused, ("LoadsNowhere",)


def unloadable_result() -> Any:
    """A result that pickles in the worker and cannot be rebuilt in the client."""
    return {"inside": LoadsNowhere()}


class FieldsError(Exception):
    """An exception with fields of its own beside its message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class StatusError(Exception):
    """The common form pickle cannot rebuild: ``__init__`` takes a field and the message, passes the message on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def raise_status(status: int, message: str) -> None:
    """Raises :class:`StatusError` (its ``args`` are ``(message,)``: pickle would call ``StatusError(message)``)."""
    raise StatusError(status, message)


def raise_with_fields(code: int, detail: str) -> None:
    """Raises :class:`FieldsError` (a client should see ``code`` and ``detail``)."""
    raise FieldsError(code, detail)


def open_missing(path: str) -> None:
    """Opens ``path``, which does not exist: FileNotFoundError with its errno and filename."""
    open(path).close()


def raise_big(nbytes: int) -> None:
    """Raises a ValueError whose args hold ``nbytes`` of bytes (its pickle is over a small frame limit)."""
    raise ValueError("too big to carry", b"x" * nbytes)


def leave_sessions(pidfile: str) -> list[int]:
    """A plain function: start processes outside the worker's process group and return with them running: a child
    in a session of its own (``start_new_session``), an orphan in one (``setsid sleep 1000`` put in the background
    by a ``sh`` that exited), and an orphan that ends within a second.  Their pids, in that order, written to
    ``pidfile`` too."""
    import subprocess

    child = subprocess.Popen(["sleep", "1000"], start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.returncode = 0  # left running on purpose: no "still running" warning when the handle goes
    pids = [child.pid]
    for seconds in (1000, 0.5):
        orphan = subprocess.run(["sh", "-c", f"setsid sleep {seconds} </dev/null >/dev/null 2>&1 & echo $!"],
                                capture_output=True, text=True, check=True, timeout=60)
        pids.append(int(orphan.stdout))
    Path(pidfile + ".tmp").write_text(" ".join(map(str, pids)))
    os.rename(pidfile + ".tmp", pidfile)
    return pids

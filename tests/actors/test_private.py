"""Zero setup: an Executor with no daemon running starts a private one, owned by it and stopped with it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from actors.client import Client, Executor
from tests import jobs
from tests.conftest import fd_targets, pid_alive, processes_mentioning, wait_for


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_an_executor_with_no_daemon_starts_a_private_one_and_stops_it(start: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLE_PRIVATE_START", start)
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))  # nothing runs there
    with Executor(2) as ex:
        private = ex._private
        assert private is not None
        assert private.proc is None  # started at the first submit or map, as ProcessPoolExecutor's processes
        assert list(ex.map(jobs.square, range(20))) == [x * x for x in range(20)]
        assert private.proc is not None
        pid, where = private.proc.pid, private.dir
        assert sum(a.role == "worker" for a in ex_status(ex).actors) == 2
        assert not any(a.role in ("controller", "processor") for a in ex_status(ex).actors)  # jobs only
    _stopped(pid, where, "executor")


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_private_executor_s_jobs_see_its_owner_s_environment(start: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """As a ProcessPoolExecutor's workers do: a variable set before the executor, and PATH and HOME."""
    monkeypatch.setenv("ENSEMBLE_PRIVATE_START", start)
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MY_APP_SETTING", "set by the owner")
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    names = ["MY_APP_SETTING", "PATH", "HOME", "PYTHONPATH", "PYTHONSAFEPATH", "ENSEMBLE_OWNER_PID",
             "ENSEMBLE_PRIVATE_DIR", "_ENSEMBLE_USER_ENV"]
    with Executor(1) as ex:
        seen = list(ex.map(jobs.plain_env, names))
    # and nothing the daemon's processes need for themselves: PYTHONSAFEPATH kept a job's own `python
    # script.py` from importing the modules beside the script
    assert seen == [os.environ.get(name) for name in names]


def test_an_executor_whose_workers_cannot_start_breaks_instead_of_waiting(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker exits at start until the daemon gives up on it: queued jobs fail at once, saying why."""
    from concurrent.futures.process import BrokenProcessPool

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("ENSEMBLE_TEST_CRASH_ROLE", "worker")  # test hook: a worker exits 3 as it starts
    monkeypatch.setenv("ENSEMBLE_SUPERVISION_MAX_RESTARTS", "1")
    monkeypatch.setenv("ENSEMBLE_SUPERVISION_RESTART_PERIOD", "120")  # a slow machine still gives up in one window
    with Executor(2) as ex:
        futures = [ex.submit(jobs.square, x) for x in range(5)]
        assert ex._private is not None and ex._private.proc is not None
        pid, where = ex._private.proc.pid, ex._private.dir
        for f in futures:
            with pytest.raises(BrokenProcessPool, match="no worker can run jobs: every worker .* gave up restarting"):
                f.result(120)
        with pytest.raises(BrokenProcessPool, match="gave up restarting"):  # the pool stays broken
            ex.submit(jobs.square, 1)
    _stopped(pid, where, "executor")


def test_an_executor_dropped_without_shutdown_releases_its_private_daemon(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """As a ProcessPoolExecutor collected unshut stops its processes: used or not, nothing stays behind.

    At its last reference, not at some later pass of the cycle collector (off here): an executor is in no
    reference cycle once its futures are done, and a future kept by the user does not keep it alive."""
    import gc

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    gc.disable()
    try:
        ex = Executor(1)
        assert ex._private is not None
        where = ex._private.dir
        assert where.exists()  # chosen at construction, the daemon not started
        del ex
        wait_for(lambda: not where.exists(), 30, what="an unused executor's directory to go")
        ex = Executor(1)
        kept = ex.submit(jobs.square, 3)
        assert kept.result(60) == 9 and list(ex.map(jobs.square, range(5))) == [0, 1, 4, 9, 16]
        assert ex._private is not None and ex._private.proc is not None
        pid, where = ex._private.proc.pid, ex._private.dir
        del ex
        wait_for(lambda: not pid_alive(pid) and not where.exists(), 60, what="a dropped executor's daemon to stop")
        assert kept.result() == 9
    finally:
        gc.enable()


def test_the_results_of_a_map_on_an_executor_nobody_holds_still_come(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``list(Executor().map(f, xs))``: the executor was collected as map returned, and the results failed with
    ClientClosed.  The results hold it now; once they are read it goes, its private daemon with it."""
    import gc

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    gc.disable()
    try:
        assert list(Executor(1).map(jobs.square, [1, 2, 3])) == [1, 4, 9]
        results = Executor(1).map(jobs.square, range(4), chunksize=2)
        assert [r for r in results] == [0, 1, 4, 9]
        assert sorted(str(p) for p in Path(tempfile.gettempdir()).glob("ens-*")) == []  # both daemons went
    finally:
        gc.enable()


def test_many_items_whose_total_is_over_the_frame_limit_cross_in_several_frames(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each item fits a frame, all of them together do not: map's batches (cut by job count only) and the
    client's merged submits went over the limit, and every item failed with ProtocolError (PPE: no limit)."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("ENSEMBLE_MAX_FRAME", str(64 * 1024))
    items = [b"y" * 3000 for _ in range(300)]  # 900 kB: fourteen frames' worth
    with Executor(2) as ex:
        assert sum(ex.map(len, items)) == 900_000
        assert sum(ex.map(len, items, chunksize=7)) == 900_000
        futures = [ex.submit(len, item) for item in items]  # queued faster than sent: merged, within the limit
        assert sum(f.result(60) for f in futures) == 900_000
        assert ex.submit(len, "z" * 70_000).result(60) == 70_000  # (a pickle over the limit crosses beside it)
        assert ex.submit(len, b"z" * 70_000).result(60) == 70_000  # (bytes over the limit cross as an array)


def ident(value: Any) -> Any:
    return value


def framed(data: bytes, *, extra: bytearray) -> tuple[str, bytes, bytearray]:
    return "meta", data, extra


def test_bytes_over_the_frame_limit_cross_both_ways_as_they_do_in_processpoolexecutor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bytes or bytearray argument or result over the daemon's frame limit leaves the frame through shared
    memory, as a big array does, and comes back of its own type (it was refused: over the frame limit)."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("ENSEMBLE_MAX_FRAME", str(64 * 1024))
    big, mutable = bytes(range(256)) * 1000, bytearray(b"m" * 200_000)  # 256 kB and 200 kB, over 64 kB
    with Executor(2) as ex:
        back = ex.submit(ident, big).result(60)
        assert back == big and type(back) is bytes
        back = ex.submit(ident, mutable).result(60)
        assert back == mutable and type(back) is bytearray
        out = ex.submit(framed, big, extra=mutable).result(60)
        assert out == ("meta", big, mutable) and [type(v) for v in out] == [str, bytes, bytearray]
        assert list(ex.map(ident, [b"small", big, mutable])) == [b"small", big, mutable]  # one job per item


def nested(d: dict[str, Any]) -> dict[str, Any]:
    return {"data": [d["data"][0] + b"!"], "text": d["text"].upper(), "n": len(d["numbers"])}


def test_values_whose_pickle_is_over_the_frame_limit_cross_both_ways(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever ProcessPoolExecutor carries crosses whatever its size: a str, bytes nested in a dict, a long
    list, a map's chunk; the pickle itself leaves the frame through shared memory (each was refused: over the
    frame limit, or the job failed with "cannot be sent")."""
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("ENSEMBLE_MAX_FRAME", str(64 * 1024))
    text = "".join(chr(0x41 + i % 50) for i in range(300_000))  # 300 kB
    value = {"data": [b"d" * 100_000], "text": text, "numbers": list(range(50_000))}
    with Executor(2) as ex:
        back = ex.submit(ident, text).result(60)
        assert back == text and type(back) is str
        back = ex.submit(ident, value).result(60)
        assert back == value and type(back["data"]) is list and type(back["data"][0]) is bytes
        assert ex.submit(nested, value).result(60) == {"data": [b"d" * 100_000 + b"!"], "text": text.upper(),
                                                       "n": 50_000}
        chunks = [text[i:i + 40_000] for i in range(0, 280_000, 40_000)]  # 7 items, two chunks of 4 and 3
        assert list(ex.map(ident, chunks, chunksize=4)) == chunks
        assert list(ex.map(str.upper, [text, "small"])) == [text.upper(), "SMALL"]


def _stopped(pid: int, where: Path, owner: str) -> None:
    """The private daemon ``pid`` stops with its ``owner`` and its directory ``where`` is removed."""
    wait_for(lambda: not pid_alive(pid), 30, what=f"the private daemon to stop with its {owner}")
    assert not where.exists()


def ex_status(ex: Executor) -> Any:
    with Client(config=ex.config, timeout=10) as c:
        return c.status()


def test_an_executor_attaches_to_a_running_daemon_and_caps_its_own_jobs(jobs_daemon: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in jobs_daemon.env.items():
        if key.startswith("ENSEMBLE_"):
            monkeypatch.setenv(key, value)
    markers, gate = tmp_path / "markers", tmp_path / "gate"
    markers.mkdir()
    with Executor(max_workers=1) as ex:  # the daemon has two workers; this executor may use one
        assert ex._private is None
        futures = [ex.submit(jobs.plain_gate, str(markers), str(gate)) for _ in range(3)]
        wait_for(lambda: len(list(markers.iterdir())) == 1, 60, what="the first job to start")
        try:
            mine = [j for j in jobs_daemon.client().jobs() if j.fn == "tests.jobs:plain_gate"]
            # all three are the daemon's, which runs one at a time (JobSpec.cap) though its second worker is idle:
            # the others wait queued, or in the line of the worker that holds the executor's jobs
            states = [j.state for j in mine]
            assert states.count("running") == 1 and set(states) <= {"running", "queued", "dispatched"}, mine
            held = "held: its executor runs at most 1 of its jobs at once (max_workers)"
            assert sorted(j.status for j in mine) == ["", held, held]  # why they wait, a worker idle beside them
        finally:
            gate.touch()
        assert len({f.result(60) for f in futures}) >= 1
    assert len(list(markers.iterdir())) == 3
    assert os.path.exists(gate)


def test_an_attached_executor_capped_at_one_never_runs_two_of_its_jobs_at_once(jobs_daemon: Any, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap counts the workers that hold the executor's jobs (each runs one at a time, with more in its line):
    on a daemon of two workers, a ``max_workers=1`` executor's short jobs never overlap, whichever worker runs
    them."""
    for key, value in jobs_daemon.env.items():
        if key.startswith("ENSEMBLE_"):
            monkeypatch.setenv(key, value)
    busy = str(tmp_path / "busy")
    with Executor(max_workers=1) as ex:
        assert ex._private is None
        assert sum(ex.map(jobs.plain_alone, [busy] * 40, [0.005] * 40)) == 0
        futures = [ex.submit(jobs.plain_alone, busy, 0.005) for _ in range(40)]
        assert sum(f.result(60) for f in futures) == 0


def test_an_attached_executor_takes_any_max_workers(jobs_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_workers=2_000_000`` (``ProcessPoolExecutor`` takes it) failed every submit with the daemon's bound
    on a cap the user never named; a cap over it caps nothing a queue could hold."""
    for key, value in jobs_daemon.env.items():
        if key.startswith("ENSEMBLE_"):
            monkeypatch.setenv(key, value)
    with Executor(max_workers=2_000_000) as ex:
        assert ex._private is None
        assert ex.submit(jobs.square, 3).result(60) == 9 and list(ex.map(jobs.square, range(4))) == [0, 1, 4, 9]


def test_a_client_starts_a_private_daemon_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import DaemonNotRunning

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(DaemonNotRunning):
        Client()
    with Client(private=True, max_workers=1) as c:
        pid, where = c._private.proc.pid, c._private.dir
        assert c.submit("tests.jobs:pid").result(60) in {a.pid for a in c.status().actors if a.role == "worker"}
    _stopped(pid, where, "client")


def test_an_async_client_starts_a_private_daemon_only_when_asked(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from actors import DaemonNotRunning
    from actors.client import AsyncClient

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(DaemonNotRunning):
        AsyncClient()

    async def main() -> tuple[int, Path, int, set[int]]:
        async with AsyncClient(private=True, max_workers=1) as c:
            assert c._private is not None
            pid, where = c._private.proc.pid, c._private.dir
            ran_on = await (await c.submit("tests.jobs:pid"))
            workers = {a.pid for a in (await c.status()).actors if a.role == "worker"}
        return pid, where, ran_on, workers

    pid, where, ran_on, workers = asyncio.run(main())
    assert ran_on in workers
    _stopped(pid, where, "client")


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_private_daemon_whose_owner_is_killed_stops_and_leaves_nothing(start: str, tmp_path: Path) -> None:
    """kill -9 of the program that owns a private daemon: the daemon notices (pidfd), stops in order, removes its dir."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import os, sys, time; from actors.client import Executor; from tests import jobs\n"
            "ex = Executor(2)\n"
            "assert ex.submit(jobs.square, 3).result(60) == 9\n"
            "print(ex._private.proc.pid, ex._private.dir, flush=True)\n"
            "time.sleep(600)\n")
    env = {**os.environ, "ENSEMBLE_NAME": "nobody-home", "ENSEMBLE_RUN_DIR": str(tmp_path / "run"),
           "PYTHONPATH": str(ROOT), "ENSEMBLE_PRIVATE_START": start}
    owner = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pid_text, where = owner.stdout.readline().split()
        daemon_pid = int(pid_text)
        assert pid_alive(daemon_pid) and Path(where).is_dir()
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        wait_for(lambda: not pid_alive(daemon_pid), 60, what="the private daemon to stop after its owner was killed")
        wait_for(lambda: not Path(where).exists(), 30, what="the private daemon's directory to be removed")
        wait_for(lambda: not processes_mentioning(where), 30, what="the private daemon's workers to exit")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(30)


def test_an_unknown_start_method_is_refused_with_the_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import ConfigError

    monkeypatch.setenv("ENSEMBLE_PRIVATE_START", "thread")
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    before = set(Path(tempfile.gettempdir()).glob("ens-*"))
    with pytest.raises(ConfigError, match="use fork .the default. or spawn"):
        Executor(1)
    assert set(Path(tempfile.gettempdir()).glob("ens-*")) <= before  # its directory was removed


def test_a_forked_private_daemon_is_a_daemon_not_a_copy_of_its_owner(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the fork must not keep of its owner: pipes, session, directory, signal handlers, log handlers."""
    import logging
    import signal
    import threading

    monkeypatch.setenv("ENSEMBLE_PRIVATE_START", "fork")
    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    read_end, write_end = os.pipe()  # a pipe of the owner's: the daemon must not hold it open
    seen = tmp_path / "owner.log"

    class Catch(logging.Handler):  # the owner's own log handler: the daemon must not write through it
        def emit(self, record: logging.LogRecord) -> None:
            with open(seen, "a") as f:
                f.write(f"{os.getpid()} {record.getMessage()}\n")

    handler = Catch()
    logging.getLogger("ensemble").addHandler(handler)
    logging.getLogger("ensemble").setLevel(logging.INFO)
    old_term = signal.signal(signal.SIGTERM, lambda *_: os.write(write_end, b"owner's handler ran"))
    made: list[Executor] = []
    try:
        def start() -> None:
            ex = Executor(1)
            ex.conn  # its first use starts the private daemon: forked from this thread, not main
            made.append(ex)

        starter = threading.Thread(target=start)
        starter.start()
        starter.join(120)
        assert made, "the executor did not start"
        with made[0] as ex:
            assert ex._private is not None and ex._private.proc is not None
            pid = ex._private.proc.pid
            assert ex.submit(jobs.square, 4).result(60) == 16
            assert os.getsid(pid) == pid != os.getsid(0)  # a session of its own
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            held = set(fd_targets(pid))
            assert f"pipe:[{os.fstat(read_end).st_ino}]" not in held
        wait_for(lambda: not pid_alive(pid), 30, what="the private daemon to stop with its executor")
    finally:
        signal.signal(signal.SIGTERM, old_term)
        logging.getLogger("ensemble").removeHandler(handler)
        logging.getLogger("ensemble").setLevel(logging.NOTSET)
        os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        assert r.read() == b""  # end of file at once: nobody else holds the write end, no handler of ours wrote
    lines = seen.read_text().splitlines() if seen.exists() else []
    assert not [line for line in lines if not line.startswith(f"{os.getpid()} ")]  # the daemon logs to its own file


_EDITED = '''
import os
import mod
from ensemble import Executor

with open("mod.py", "w") as f:
    f.write("def val():\\n    return 2\\n")
later = os.stat("mod.py").st_mtime_ns + 5_000_000_000
os.utime("mod.py", ns=(later, later))  # another mtime even on a coarse clock
with Executor(2) as ex:
    print(ex.submit(mod.val).result(60), mod.val())
'''


def test_a_forked_private_daemon_runs_the_user_s_code_as_it_is_on_disk(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("def val():\n    return 1\n")
    # the caller imported mod before editing it: the worker, a fork of a fork of the caller, still runs the new code
    assert _run_forked(tmp_path, _EDITED).split() == ["2", "1"]


def _run_forked(tmp_path: Path, main: str) -> str:
    """What ``main`` (written to ``tmp_path/main.py``) prints, run there with a forked private daemon."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "main.py").write_text(main)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), ENSEMBLE_NAME="nobody-home", ENSEMBLE_RUN_DIR=str(tmp_path / "run"),
               ENSEMBLE_PRIVATE_START="fork")
    out = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


_SCRIPT_OBJECTS = '''
import mywork
from ensemble import Executor


def make(n):
    return mywork.Point(n, [])


def check(x):
    return isinstance(x, mywork.Point)


if __name__ == "__main__":
    with Executor(1) as ex:
        print(ex.submit(make, 1).result(60), ex.submit(check, mywork.Point(1, [])).result(60))
'''


@pytest.mark.slow  # a daemon of its own: run by .ci/run's slow pass (default suite < 5 min)
def test_a_forked_private_daemon_s_script_functions_and_jobs_share_the_user_s_module(tmp_path: Path) -> None:
    """The worker, a fork of the script, kept the script's functions but imported its module afresh: two copies of
    ``mywork``, so a script function's ``mywork.Point`` did not pickle ("not the same object as mywork.Point")
    and ``isinstance`` said False.  A module unchanged since the script started is kept, as in a forked pool."""
    import time

    (tmp_path / "mywork.py").write_text("import dataclasses\n\n\n@dataclasses.dataclass\nclass Point:\n"
                                        "    a: int\n    b: list\n")
    before = time.time_ns() - 60_000_000_000  # written before the script started, as a project's files are
    os.utime(tmp_path / "mywork.py", ns=(before, before))
    assert _run_forked(tmp_path, _SCRIPT_OBJECTS).strip() == "Point(a=1, b=[]) True"


_CLASSIFY = '''
import sys
import alias, json, mine
from actors import _daemonfork

_daemonfork._forget_user_modules()
print(" ".join(sorted(n for n in ("actors", "alias", "json", "mine") if n in sys.modules)))
'''


def test_the_fork_drops_the_user_s_modules_and_keeps_what_a_link_points_into_the_system(tmp_path: Path) -> None:
    """A module is the user's by where its file really is: a link into the standard library is not user code."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    stdlib_file = Path(json.__file__).parent.parent / "colorsys.py"
    (tmp_path / "mine.py").write_text("VALUE = 1\n")
    (tmp_path / "alias.py").symlink_to(stdlib_file)
    (tmp_path / "main.py").write_text(_CLASSIFY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["actors", "alias", "json"]


def _kill_daemon_under(private: Any, tmp_path: Path, submit: Any) -> tuple[list[int], Any]:
    """Start jobs that wait on a gate (never opened), then kill -9 the private daemon (a pid this test started)."""
    import signal

    markers = tmp_path / "markers"
    markers.mkdir()
    pending = submit(str(markers), str(tmp_path / "gate"))
    wait_for(lambda: len(list(markers.iterdir())) >= 1, 60, what="a job to start")
    with Client(config=private.config, timeout=10) as c:
        workers = [a.pid for a in c.status().actors if a.role == "worker"]
    os.kill(private.proc.pid, signal.SIGKILL)
    return workers, pending


def _left_nothing(pid: int, workers: list[int], where: Path, shm_key: str) -> None:
    from actors.shm import segment_prefix

    wait_for(lambda: not pid_alive(pid), 30, what="the killed daemon to be reaped")
    wait_for(lambda: not any(pid_alive(w) for w in workers), 30, what="the dead daemon's workers to exit")
    assert not where.exists()
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(segment_prefix(shm_key))]


def test_an_executor_whose_private_daemon_dies_breaks_at_once_as_a_process_pool_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of a private daemon: running and queued futures, a map and later submits raise BrokenProcessPool
    at once (ProcessPoolExecutor's error when one of its processes dies), saying how the daemon died; no hang."""
    from concurrent.futures.process import BrokenProcessPool

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    ex = Executor(2)
    private = ex._private
    assert private is not None
    ex.conn  # started (a first submit would start it too)
    assert private.proc is not None
    pid, where, key = private.proc.pid, private.dir, private.config.shm_key
    try:
        def submit(markers: str, gate: str) -> Any:
            futures = [ex.submit(jobs.plain_gate, markers, gate) for _ in range(3)]  # two run, one waits
            return futures, ex.map(jobs.plain_gate, [markers] * 2, [gate] * 2)

        workers, (futures, mapped) = _kill_daemon_under(private, tmp_path, submit)
        for fut in futures:
            with pytest.raises(BrokenProcessPool, match=rf"private daemon \(pid {pid}\) was killed by SIGKILL"):
                fut.result(60)  # the deadline only guards the test: the error comes as soon as the daemon is gone
        with pytest.raises(BrokenProcessPool, match="was killed by SIGKILL"):
            list(mapped)
        with pytest.raises(BrokenProcessPool, match="was killed by SIGKILL"):
            ex.submit(jobs.square, 2)
    finally:
        ex.shutdown()
    _left_nothing(pid, workers, where, key)


def test_a_client_whose_private_daemon_dies_fails_its_jobs_and_calls_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import DaemonError, JobLost

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    monkeypatch.setenv("ENSEMBLE_RUN_DIR", str(tmp_path / "run"))
    c = Client(private=True, max_workers=1)
    private = c._private
    assert private is not None
    pid, where, key = private.proc.pid, private.dir, private.config.shm_key
    try:
        def submit(markers: str, gate: str) -> Any:
            return [c.submit("tests.jobs:plain_gate", markers, gate) for _ in range(2)]  # one runs, one waits

        workers, handles = _kill_daemon_under(private, tmp_path, submit)
        for handle in handles:
            with pytest.raises(JobLost, match=rf"private daemon \(pid {pid}\) was killed by SIGKILL"):
                handle.result(60)
        with pytest.raises(DaemonError, match="was killed by SIGKILL"):
            c.status()
    finally:
        c.close()
    _left_nothing(pid, workers, where, key)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_private_executor_s_jobs_print_to_its_owner_s_terminal(start: str, tmp_path: Path) -> None:
    """As under ProcessPoolExecutor: a job's print(), its stderr and its own warnings reach the program's stdout and
    stderr, also from a worker started after one died; the workers' own log records do not."""
    (tmp_path / "talk.py").write_text(
        "import logging, os, sys\n"
        "def say(x):\n"
        "    print('out', x, flush=True)\n"
        "    print('err', x, file=sys.stderr, flush=True)\n"
        "    logging.getLogger('mine').warning('warned %s', x)\n"
        "    return x\n"
        "def die():\n"
        "    os._exit(1)\n"
        "def shut():\n"
        "    sys.stdout.close()\n")
    (tmp_path / "main.py").write_text(
        "from concurrent.futures import Future\n"
        "from actors.client import Executor\n"
        "import talk\n"
        "with Executor(1) as ex:\n"
        "    assert ex.submit(talk.say, 1).result(60) == 1\n"
        "    try:\n"
        "        ex.submit(talk.die).result(60)\n"
        "    except Exception as exc:  # as ProcessPoolExecutor raises it, and ensemble's own JobLost\n"
        "        from concurrent.futures.process import BrokenProcessPool\n"
        "        from actors import JobLost\n"
        "        print('lost:', isinstance(exc, BrokenProcessPool) and isinstance(exc, JobLost), flush=True)\n"
        "    assert ex.submit(talk.say, 2).result(60) == 2\n"  # on the worker started in its place
        "    ex.submit(talk.shut).result(60)\n"  # a job that closes its stdout: its worker still ends quietly
        "print('done', flush=True)\n")
    proc = _run_script(tmp_path, start)
    assert proc.stdout.splitlines() == ["out 1", "lost: True", "out 2", "done"]
    err = proc.stderr.splitlines()
    assert [line for line in err if line.startswith(("err ", "warned "))] == ["err 1", "warned 1", "err 2", "warned 2"]
    assert not [line for line in err if "event=" in line]  # the workers' own records stay in the daemon's log
    assert "Traceback" not in proc.stderr


_SCRIPT = '''\
import os
from dataclasses import dataclass

import geometry

from actors.client import Executor


@dataclass
class Point:
    x: int
    y: int


def shift(p, d):  # a function of the script itself, taking and returning the script's own class
    return Point(p.x + d, p.y + d)


def die():
    os._exit(1)


def setup(tag):  # the initializer, a function of the script too
    global TAG
    TAG = tag


def tagged(x):
    return (TAG, x)


if __name__ == "__main__":
    with Executor(1, initializer=setup, initargs=("ready",)) as ex:
        print(ex.submit(shift, Point(1, 2), 10).result(60), flush=True)
        print(list(ex.map(shift, [Point(0, 0)], [1])), flush=True)
        try:
            ex.submit(die).result(60)
        except Exception as exc:
            print("lost:", type(exc).__name__, flush=True)
        # a worker started after the death: it loads the script for a module's function given the script's class
        print(ex.submit(geometry.grow, Point(1, 2)).result(60), flush=True)
        print(list(ex.map(geometry.grow, [Point(3, 4)])), flush=True)
        print(ex.submit(shift, Point(1, 1), 1).result(60), flush=True)
        print(ex.submit(tagged, 1).result(60), flush=True)
'''


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_script_s_own_functions_and_classes_run_as_under_a_process_pool(start: str, tmp_path: Path) -> None:
    """The common ProcessPoolExecutor script: its functions (the initializer too) and dataclass defined in the
    script, the work under ``if __name__ == "__main__":``. A worker forked from it has them; any other (a
    replacement, or every worker of a spawned daemon) loads the script as __mp_main__."""
    (tmp_path / "main.py").write_text(_SCRIPT)
    (tmp_path / "geometry.py").write_text("def grow(p):\n    return type(p)(p.x * 2, p.y * 2)\n")
    proc = _run_script(tmp_path, start)
    assert proc.stdout.splitlines() == ["Point(x=11, y=12)", "[Point(x=1, y=1)]", "lost: BrokenProcessPool",
                                        "Point(x=2, y=4)", "[Point(x=6, y=8)]", "Point(x=2, y=2)", "('ready', 1)"]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_map_finds_the_script_s_objects_inside_the_items(start: str, tmp_path: Path) -> None:
    """An item holding an object of the script's class (a list of them) reaches a worker that was not forked from
    the script (every worker of a spawned daemon, a replacement): it loads the script first."""
    (tmp_path / "geometry.py").write_text("def first_grown(ps):\n    p = ps[0]\n    return type(p)(p.x * 2, p.y * 2)\n")
    (tmp_path / "main.py").write_text(
        "import os\n"
        "from dataclasses import dataclass\n"
        "from actors.client import Executor\n"
        "import geometry\n"
        "@dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "    y: int\n"
        "def die():\n"
        "    os._exit(1)\n"
        "if __name__ == '__main__':\n"
        "    with Executor(1) as ex:\n"
        "        print(list(ex.map(geometry.first_grown, [[Point(1, 1)]])), flush=True)\n"
        "        try:\n"
        "            ex.submit(die).result(60)\n"
        "        except Exception:\n"
        "            pass\n"
        "        print(list(ex.map(geometry.first_grown, [[Point(5, 6)]])), flush=True)  # on the replacement\n")
    assert _run_script(tmp_path, start).stdout.splitlines() == ["[Point(x=2, y=2)]", "[Point(x=10, y=12)]"]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_map_sends_a_partial_of_the_script_s_function_or_object_in_chunks(start: str, tmp_path: Path) -> None:
    """A partial travels pickled with each chunk; one of the script's function, or binding an object of the script's
    class, reaches a worker not forked from the script (a spawned daemon's): it loads the script first."""
    (tmp_path / "main.py").write_text(
        "import functools\n"
        "from dataclasses import dataclass\n"
        "from actors.client import Executor\n"
        "@dataclass\n"
        "class Step:\n"
        "    by: int\n"
        "def scale(k, x):\n"
        "    return k * x\n"
        "def move(step, x):\n"
        "    return x + step.by\n"
        "if __name__ == '__main__':\n"
        "    with Executor(1) as ex:\n"
        "        print(list(ex.map(functools.partial(scale, 3), range(5), chunksize=2)), flush=True)\n"
        "        print(list(ex.map(functools.partial(move, Step(10)), range(3), chunksize=2)), flush=True)\n")
    assert _run_script(tmp_path, start).stdout.splitlines() == ["[0, 3, 6, 9, 12]", "[10, 11, 12]"]


def test_a_script_that_starts_an_executor_unguarded_is_told_the_fix(tmp_path: Path) -> None:
    """A worker that must load the script (not forked from it) would start an Executor in turn: refused, with the
    guard to add, as multiprocessing refuses it."""
    (tmp_path / "main.py").write_text(
        "from actors.client import Executor\n"
        "def f(x):\n"
        "    return x\n"
        "ex = Executor(1)\n"
        "try:\n"
        "    print(ex.submit(f, 1).result(60), flush=True)\n"
        "except RuntimeError as exc:\n"
        "    print('refused:', exc, flush=True)\n"
        "finally:\n"
        "    ex.shutdown()\n")
    proc = _run_script(tmp_path, "spawn")  # its workers are not forks of the script
    assert proc.stdout.startswith("refused: "), proc.stdout
    assert 'if __name__ == "__main__":' in proc.stdout


@pytest.mark.parametrize("start,ending", [("fork", ""), ("spawn", ""), ("fork", "    ex.shutdown(wait=False)\n")])
def test_a_script_that_ends_without_shutdown_still_gets_its_jobs_run(start: str, ending: str, tmp_path: Path) -> None:
    """As ProcessPoolExecutor's: submitted work finishes when the interpreter exits, the daemon stops after; so
    too after ``shutdown(wait=False)`` (which returns at once, the work going on)."""
    (tmp_path / "slow.py").write_text(
        "import os, time\n"
        "def write_later(i):\n"
        "    time.sleep(0.3)\n"
        "    with open(f'done-{i}', 'w') as f:\n"
        "        f.write(str(os.getpid()))\n")
    (tmp_path / "main.py").write_text(
        "from actors.client import Executor\n"
        "import slow\n"
        "if __name__ == '__main__':\n"
        "    ex = Executor(2)\n"
        "    for i in range(4):\n"
        "        ex.submit(slow.write_later, i)\n"
        "    print(ex._private.dir, flush=True)\n" + ending)  # and it ends: no shutdown (or one that does not wait)
    proc = _run_script(tmp_path, start)
    assert sorted(p.name for p in tmp_path.glob("done-*")) == [f"done-{i}" for i in range(4)]
    where = Path(proc.stdout.strip())
    wait_for(lambda: not where.exists(), 30, what="the private daemon to stop and remove its directory")


def test_a_function_defined_after_the_executor_runs_as_under_a_forking_process_pool(tmp_path: Path) -> None:
    """The private daemon forks at the first submit, as ProcessPoolExecutor (fork) starts its processes: what the
    script defined before that is in the workers' __main__.  An executor never used starts nothing."""
    (tmp_path / "main.py").write_text(
        "from actors.client import Executor\n"
        "if __name__ == '__main__':\n"
        "    with Executor(1) as unused:\n"
        "        pass\n"
        "    assert unused._private.proc is None and not unused._private.dir.exists()\n"
        "    ex = Executor(1)\n"
        "    def late(x):  # defined after the executor was created, before its first submit\n"
        "        return x + 1\n"
        "    print(ex.submit(late, 1).result(60), list(ex.map(late, [2, 3])), flush=True)\n"
        "    ex.shutdown()\n")
    assert _run_script(tmp_path, "fork").stdout.split() == ["2", "[3,", "4]"]


def _run_script(tmp_path: Path, start: str) -> Any:
    """``python main.py`` in ``tmp_path`` with no daemon running (a private one starts as ``start`` says); it must
    exit 0.  Returns the CompletedProcess, its output captured as text."""
    from tests.conftest import run_main

    return run_main(tmp_path, timeout=120, ENSEMBLE_PRIVATE_START=start)


def test_two_stops_at_once_stop_the_daemon_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """An executor's last future (its close thread) and the interpreter's exit may stop its daemon at the same
    time: the second waits for the first. A second stop used to remove the directories while the first still
    asked the daemon to stop, whose socket was then gone: the first gave up after 5 s and sent SIGTERM."""
    import threading

    from actors._private import PrivateDaemon

    monkeypatch.setenv("ENSEMBLE_NAME", "nobody-home")
    d = PrivateDaemon(1)
    proc = d.proc
    assert proc is not None
    terminated: list[int] = []
    real = proc.terminate
    proc.terminate = lambda: (terminated.append(1), real())[1]  # type: ignore[method-assign]
    go = threading.Barrier(2)
    seen: list[tuple[bool, bool]] = []  # as each stop returned: (the daemon had exited, its directory was gone)

    def stop() -> None:
        go.wait(30)
        d.stop()
        seen.append((proc.poll() is not None, not d.dir.exists()))

    both = [threading.Thread(target=stop) for _ in range(2)]
    for t in both:
        t.start()
    for t in both:
        t.join(60)
    assert seen == [(True, True), (True, True)], "a stop returned before the daemon had stopped and gone"
    assert not terminated, "a stop had to fall back to SIGTERM"


def test_a_private_daemon_s_directory_follows_tmpdir_unless_it_is_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors._private import PrivateDaemon, private_parent

    base = Path(tempfile.mkdtemp(prefix="ens-t"))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(base))
        assert private_parent() == str(base)
        d = PrivateDaemon(1, start=False)
        try:
            assert d.dir.parent == base and d.config.run_dir.is_relative_to(base)
        finally:
            d.stop()
        assert not d.dir.exists()
        long = base / ("x" * 80)
        monkeypatch.setattr(tempfile, "tempdir", str(long))
        assert private_parent() == "/tmp"  # run/internal would not fit a unix socket path under it
    finally:
        os.rmdir(base)

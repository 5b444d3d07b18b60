"""The daemon's log: what children print is marked as their output, and SIGHUP reopens the file (logrotate).

Real daemons; the jobs are this module's functions (a worker imports it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors._childoutput import MAX_LINE, ChildOutput
from actors._procs import stat
from tests.conftest import ROOT, Daemon, processes_mentioning, wait_for

# a record of the daemon's (timestamp, level, role, pid): what nothing a job prints may look like
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \w+ pid=\d+ ")


def shout(long: int = 0) -> int:
    """Prints what looks like a log record, to stdout and stderr and from a subprocess, then text with no newline."""
    print("ERROR supervisor: worker 3 died")
    print("CRITICAL supervisor: on stderr", file=sys.stderr)
    subprocess.run(["/bin/sh", "-c", "echo from a subprocess"], check=True)
    print("\x1b[31mred\rover")
    if long:
        print("x" * long + "THE END")
    print("half a line", end="")
    return os.getpid()


def say(text: str) -> int:
    """Prints ``text`` and logs it through the worker's logging (a record of the worker's own)."""
    print(f"printed {text}")
    logging.getLogger("job").warning("logged %s", text)
    return os.getpid()


def _log(d: Daemon, name: str = "daemon.log") -> str:
    path = d.base / "state" / name
    return path.read_text(errors="replace") if path.exists() else ""


def _output_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@pytest.mark.parametrize("prefork", ["1", "0"], ids=["forked-worker", "spawned-worker"])
def test_what_a_job_prints_is_logged_as_its_output(make_daemon: Any, prefork: str) -> None:
    d = make_daemon(jobs_only=True, workers=1, extra_env={"ENSEMBLE_PREFORK": prefork})
    d.up()
    with d.client() as c:
        pid = c.submit(f"{__name__}:shout", MAX_LINE + 100).result(30)
    marked = f"event=job-output pid={pid} text="
    wait_for(lambda: f"{marked}half a line [no newline]" in _log(d), 30, what="the text with no newline")
    text = _log(d)
    for said in ("ERROR supervisor: worker 3 died", "CRITICAL supervisor: on stderr", "from a subprocess"):
        (line,) = _output_lines(text, said)
        assert RECORD.match(line) and line.split(" INFO supervisor pid=")[1].endswith(f" {marked}{said}"), line
    assert f"{marked}\\x1b[31mred\\x0dover\n" in text  # control characters escaped
    (cut,) = _output_lines(text, "xxxx")
    assert cut.endswith("x [cut: longer than 8192 bytes]") and "THE END" not in text
    assert all(RECORD.match(line) for line in text.splitlines()), "a line of the log is no record"


def _worker_pid(d: Daemon, not_pid: int) -> int:
    (a,) = [a for a in d.status().actors if a.role == "worker"]
    return a.pid if a.state == "running" and a.pid not in (0, not_pid) else 0


def _standby(d: Daemon) -> int:
    """The daemon's child waiting as a standby worker (``--standby`` on its command line), or 0."""
    for pid in processes_mentioning(str(d.base)):
        st = stat(pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"--standby" in f.read() and st is not None and int(st[1]) == d.pid:
                return pid
    return 0


@pytest.mark.slow  # two worker replacements: run by .ci/run's slow pass
def test_a_standby_that_becomes_the_worker_prints_into_the_log_through_the_daemon(make_daemon: Any) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    first = wait_for(lambda: _worker_pid(d, 0), 30, what="the worker")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: _worker_pid(d, first), 30, what="the worker replaced")
    standby = wait_for(lambda: _standby(d), 30, what="a standby")
    os.kill(second, signal.SIGKILL)
    assert wait_for(lambda: _worker_pid(d, second), 30, what="the standby to take its place") == standby
    with d.client() as c:
        assert c.submit(f"{__name__}:shout").result(30) == standby
    wait_for(lambda: f"event=job-output pid={standby} text=half a line [no newline]" in _log(d), 30,
             what="the standby's output")
    assert f"event=job-output pid={standby} text=ERROR supervisor: worker 3 died" in _log(d)
    assert all(RECORD.match(line) for line in _log(d).splitlines())


def test_sighup_reopens_the_log_for_the_daemon_its_children_and_their_output(make_daemon: Any) -> None:
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    state = d.base / "state"
    with d.client() as c:
        before = c.submit(f"{__name__}:say", "before").result(30)
        wait_for(lambda: "printed before" in _log(d), 30, what="the job's output")
        os.rename(state / "daemon.log", state / "daemon.log.1")  # as logrotate does
        os.kill(d.pid, signal.SIGHUP)
        wait_for(lambda: "event=log-reopened signal=SIGHUP" in _log(d), 30, what="a new daemon.log")
        assert (state / "daemon.log").stat().st_mode & 0o777 == 0o600
        after = c.submit(f"{__name__}:say", "after").result(30)  # the daemon stays up and serves
    assert after == before
    wait_for(lambda: f"event=job-output pid={after} text=printed after" in _log(d), 30, what="output in the new log")
    wait_for(lambda: f"WARNING worker pid={after} job: logged after" in _log(d), 30,
             what="the worker's own record in the new log")
    old = _log(d, "daemon.log.1")
    assert "printed before" in old and "logged before" in old and "log-reopened" not in old
    assert "printed after" not in old and "logged after" not in old
    assert "printed before" not in _log(d) and "logged before" not in _log(d)
    assert all(RECORD.match(line) for line in _log(d).splitlines())
    d.down()
    assert "event=stopped" in _log(d)


LOGROTATE = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)


@pytest.mark.skipif(LOGROTATE is None, reason="logrotate is not installed (Debian: apt-get install logrotate)")
def test_the_shipped_logrotate_rule_rotates_a_running_daemon_s_log(make_daemon: Any, tmp_path: Path) -> None:
    """deploy/logrotate/ensemble, its paths pointed at a test daemon's, run by logrotate itself (-f: now)."""
    d = make_daemon(jobs_only=True, workers=1)
    d.up()
    state = d.base / "state"
    rule = (ROOT / "deploy" / "logrotate" / "ensemble").read_text()
    for shipped, ours in (("/var/lib/ensemble/default", str(state)), ("/run/ensemble/default", str(d.base / "run")),
                          ("create 0600 ensemble ensemble", "create 0600")):
        assert shipped in rule
        rule = rule.replace(shipped, ours)
    (tmp_path / "rule").write_text(rule)
    rotated = subprocess.run([str(LOGROTATE), "-f", "-s", str(tmp_path / "status"), str(tmp_path / "rule")],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert "event=start" in (state / "daemon.log.1").read_text()
    wait_for(lambda: "event=log-reopened" in _log(d), 30, what="the daemon to reopen its log")
    with d.client() as c:
        pid = c.submit(f"{__name__}:say", "after").result(30)
    wait_for(lambda: f"event=job-output pid={pid} text=printed after" in _log(d), 30, what="output in the new log")
    assert "event=start" not in _log(d) and "printed after" not in (state / "daemon.log.1").read_text()


@pytest.mark.slow  # a whole daemon (processor and controller): run by .ci/run's slow pass
def test_the_controller_and_processor_print_into_the_log_through_the_daemon(make_daemon: Any, tmp_path: Path) -> None:
    d = make_daemon(workers=1)
    d.up()
    script = tmp_path / "printing.py"
    script.write_text('print("ERROR supervisor: from a script")\n')
    os.rename(d.base / "state" / "daemon.log", d.base / "state" / "daemon.log.1")
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: "event=log-reopened" in _log(d), 30, what="a new daemon.log")
    with d.client() as c:
        c.load_script(str(script), wait=30)
    pids = {a.role: a.pid for a in d.status().actors}
    for role, module in (("controller", "controller.actor"), ("processor", "audio.processor")):
        marked = f"event=child-output module={module} pid={pids[role]} text=ERROR supervisor: from a script"
        wait_for(lambda: marked in _log(d), 30, what=f"the {role}'s output in the new log")
    assert all(RECORD.match(line) for line in _log(d).splitlines())


# -- the reader alone, on real pipes ------------------------------------------------------------------------------


class _Records(logging.Handler):
    """The lines of the records' messages it handles (one record holds the lines of one read of a pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # (Handler.handle holds self.lock)
        self.lines.extend(record.getMessage().split("\n"))

    def taken(self) -> list[str]:
        with self.lock:  # type: ignore[union-attr]
            return list(self.lines)


@pytest.fixture
def records() -> Any:
    handler = _Records()
    logger = logging.getLogger("ensemble.output")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _child(code: str) -> tuple[subprocess.Popen[bytes], int]:
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=write_end, stderr=write_end)
    finally:
        os.close(write_end)
    return proc, read_end


def test_a_flood_with_no_newline_is_read_as_it_comes_and_logged_cut(records: Any) -> None:
    """32 MiB in one line: the child is never left blocked on its pipe, and one cut record is all that is kept."""
    output = ChildOutput()
    try:
        proc, fd = _child("import os\nfor _ in range(512): os.write(1, b'y' * 65536)\nos.write(1, b'!\\nnext\\n')")
        output.attach(fd, proc.pid, "actors.worker")
        assert proc.wait(60) == 0
        wait_for(lambda: f"event=job-output pid={proc.pid} text=next" in records.taken(), 30, what="the line after")
    finally:
        output.close()
    assert records.taken() == [f"event=job-output pid={proc.pid} text={'y' * MAX_LINE} [cut: longer than 8192 bytes]",
                               f"event=job-output pid={proc.pid} text=next"]


def test_what_is_left_in_the_pipe_is_logged_at_the_close(records: Any) -> None:
    proc, fd = _child("import os\nos.write(1, b'last words\\nno end')")
    assert proc.wait(60) == 0
    output = ChildOutput()
    output.attach(fd, proc.pid, "controller.actor")
    output.close()
    assert records.taken() == [f"event=child-output module=controller.actor pid={proc.pid} text=last words",
                               f"event=child-output module=controller.actor pid={proc.pid} text=no end [no newline]"]

"""Children: spawn, reap, restart (OTP intensity), heartbeats, remote workers, scaling."""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import subprocess
import time
from typing import Any

from actors._freshness import RETIRE_CODE
from actors._jobs import BINDING_ABORTS, aborted_error
from actors._resources import check as check_resources, host_resources
from actors._rundir import RESULTS_SUFFIX, StartedLog
from actors._spawn import ForkedProc, kill_group, spawn
from actors._subreaper import kill_below, kill_marked
import msgspec
import zmq

from actors.messages import Heartbeat, Hello, JobDone, JobsDone, Stop, decode, decode_result, encode
from actors._errors import POOL_BROKEN, EnsembleError, ProtocolError
from actors.shm import process_prefix, unlink_left_by
from actors.supervisor import _prefork
from actors.supervisor._state import State

log = logging.getLogger("ensemble.supervisor")


class Slot(msgspec.Struct):
    """One supervised child position (``worker-3``), across its incarnations."""

    name: str
    role: str
    module: str
    proc: subprocess.Popen[bytes] | ForkedProc | None = None
    pidfd: int = -1
    incarnation: int = 0
    identity: bytes = b""
    state: str = "starting"  # pending (a scale-up's, not started yet) | starting | running | failed | stopping
    started: float = 0.0
    last_heard: float = 0.0
    ready: bool = False
    restarts: int = 0
    restart_times: collections.deque[float] = msgspec.field(default_factory=collections.deque)
    stats: dict[str, Any] = msgspec.field(default_factory=dict)
    detail: str = ""
    expected_exit: bool = False  # we killed it on purpose (job kill, retire): no intensity count
    retire: bool = False
    outstanding: collections.deque[int] = msgspec.field(default_factory=collections.deque)
    remote: bool = False  # a worker that joined over tcp (no process of ours; liveness by heartbeat)
    sock: Any = None  # the ROUTER it talks through (internal ipc, or the tcp one)
    key: bytes = b""  # a remote worker's CURVE public key: its frames must carry it
    key_name: str = ""  # the name that key was issued under (Ray-placed workers: their actor's)
    path_sent: Any = None  # the import path last sent to this incarnation (sent again only when it changes)
    resources: dict[str, float] = msgspec.field(default_factory=dict)  # what it offers jobs (actors._resources)
    results_closed: bool = False  # this incarnation said all its results were sent (ResultsClosed)
    last_exit: int | None = None  # how the previous incarnation ended (its exit code, -N: signal N; None: first)
    gone_pid: int = 0  # the pid of the incarnation being reaped (its held results' segments carry it)
    # the job ids of each Recall sent to this incarnation and not answered yet, oldest first (a worker answers in
    # order): what a Recalled reply did not give back had started (see WorkMixin._recalled)
    recalls: Any = msgspec.field(default_factory=collections.deque)
    # a Stop this incarnation was sent before it connected: ZeroMQ's ROUTER refuses a frame for a peer it does not
    # know yet (ROUTER_MANDATORY), so the reason is kept here and the Stop sent when its Hello comes (see stop_child)
    stop_owed: str = ""
    # a silent local worker's CPU time (s) and when it was read: one whose job holds the GIL in a long C call
    # cannot heartbeat but keeps using the CPU, and is not taken for dead (see ChildrenMixin._busy_in_c)
    cpu_seen: float = -1.0
    cpu_at: float = 0.0
    cpu_busy: bool = False  # the verdict of the last window that ended in this silence


_RETIRE_FIRST = {"pending": 0, "failed": 1, "starting": 2}  # scale-down order among equally idle workers, then the rest
STARTING_MAX = max(2, os.cpu_count() or 2)  # scale-up workers starting at once (see ChildrenMixin.start_pending)


class Standby(msgspec.Struct):
    """A fresh interpreter waiting to become the next worker started after start-up (see :mod:`actors._blank`)."""

    proc: subprocess.Popen[bytes]
    fd: int  # the write end of its stdin: its orders go there


# the error type of a job that failed because no worker is left to run it: ProcessPoolExecutor's for a pool
# whose processes died (a client raises it, a RemoteError too)
NO_WORKERS_ERROR = POOL_BROKEN
_LAST_RESULTS_WAIT = 2.0  # seconds a reaped worker's last results are waited for (see _read_last_results)
_UNASKED_EXIT_WAIT = 0.1  # the same for a worker that exited 0 unasked (a job's os._exit(0)): the loop waits
REMOTE_WORKERS = 1024  # workers on other hosts joined at once, in all
REMOTE_WORKERS_PER_KEY = 256  # of them with one key (a host's: one key must not take every place)
_STANDBY_LOSSES = 3  # standbys that died before their orders, after which the daemon keeps none


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NOT_STARTED = "could not start its process"  # a slot's detail while its process cannot be started
BUSY_SHARE = 0.1  # a silent worker using at least this share of one CPU since the last look is busy, not hung


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), from /proc; None when unreadable, or
    when the process is stopped (SIGSTOP), traced or a zombie: such a process does not run, whatever it used."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return None
    if fields[0] in (b"T", b"t", b"Z", b"X"):
        return None
    try:
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of proc(5)
    except (ValueError, IndexError):
        return None



class ChildrenMixin(State):
    """Child lifecycle of the :class:`~actors.supervisor.Supervisor` (mixed in)."""

    def start_children(self) -> None:
        """Start the extensions' children (controller, processor) and the workers."""
        for ext in self.extensions:
            for spec in ext.children:
                self._add_slot(spec.name, spec.role, spec.module)
        for _ in range(self.workers_wanted):
            self._add_worker()
        self.children_started = True
        self._cluster_open()

    def _add_worker(self, start: bool = True) -> Slot:
        self._worker_seq += 1
        return self._add_slot(f"worker-{self._worker_seq}", "worker", "actors.worker", host_resources(), start)

    def stop_child(self, slot: Slot, reason: str) -> None:
        """Ask a child to stop; if it has not connected yet, when it does (its Hello).

        A Stop for a process whose socket has not finished connecting is
        refused by the ROUTER (an unknown peer): a worker still starting when
        the daemon stopped missed it, said Hello, and waited out the stop
        grace for SIGTERM (2 s at the end of a short ``with Executor()``).
        """
        if not self._send_child(slot, Stop(reason)) and not slot.ready:
            slot.stop_owed = reason

    def _add_slot(self, name: str, role: str, module: str, resources: dict[str, float] | None = None,
                  start: bool = True) -> Slot:
        slot = Slot(name, role, module, resources=resources or {})
        self.slots[name] = slot
        if start:
            self._spawn(slot)
        else:
            slot.state = "pending"  # started by start_pending
        return slot

    def start_pending(self) -> None:
        """Start the scale-up's workers that wait (state ``pending``), at most :data:`STARTING_MAX` starting at once.

        ``ensemble scale 70`` started all 70 in the request's handler: each
        start is a fork and exec (60-100 ms on 2 cores once the earlier ones
        compete for the CPU), the loop sent no heartbeat for 6 s, and the
        processor, the controller and the running workers took the
        supervisor for dead and exited.  Now ``scale`` answers at once and
        the rest start as the first say Hello (and on each heartbeat tick).
        """
        if self.stopping_since:
            return
        pending = [s for s in self.slots.values() if s.state == "pending"]
        if not pending:
            return
        starting = sum(1 for s in self.slots.values()
                       if s.role == "worker" and s.proc is not None and not s.ready and not s.remote)
        for slot in pending[:max(0, STARTING_MAX - starting)]:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        slot.incarnation += 1
        slot.path_sent = None  # a new process knows no import path yet
        slot.results_closed = False
        slot.recalls.clear()  # a new process owes no answers
        slot.stop_owed = ""
        ident = f"{slot.name}.{slot.incarnation}"
        nice = self.cfg.supervision.worker_nice if slot.role == "worker" else 0
        # the extensions' own children may submit internal jobs (TaskSubmit); workers run jobs, they never submit
        env = {"ENSEMBLE_INTERNAL_TOKEN": self.internal_token} if slot.role != "worker" else {}
        slot.proc = None
        if slot.module == "actors.worker" and self.blanks:  # a worker forked at start-up takes it (see _prefork)
            blank = self.blanks.pop()
            try:
                slot.proc = _prefork.assign(blank, [self.cfg.to_json(), ident], nice, self.log_file, env)
            except OSError as exc:  # that blank died: reap it, spawn instead (slower, so say it)
                _prefork.release([blank])
                log.warning("event=blank-lost name=%s pid=%d reason=%s detail=the worker forked at start-up died "
                            "before its orders; spawning a fresh one", slot.name, blank.pid, exc)
        if slot.module == "actors.worker" and self.children_started:  # a restart or a scale-up: from now on keep
            self.standby_wanted = True  # a standby, so that the next one does not wait for a new interpreter
            if slot.proc is None and self.standby is not None:
                slot.proc = self._use_standby(slot, [self.cfg.to_json(), ident], nice, env)
        try:
            if slot.proc is None:
                slot.proc = spawn(slot.module, [self.cfg.to_json(), ident], nice=nice, log_path=self.log_file,
                                  env=env)
            pidfd = os.pidfd_open(slot.proc.pid)
        except (OSError, subprocess.SubprocessError) as exc:
            self._not_started(slot, exc)
            return
        if slot.detail.startswith(_NOT_STARTED):
            slot.detail = ""
        slot.identity = ident.encode()
        slot.pidfd = pidfd
        slot.state = "starting"
        slot.ready = False
        slot.started = time.time()
        slot.last_heard = time.monotonic()
        slot.expected_exit = False
        slot.stats = {}
        self.by_identity[slot.identity] = slot
        if slot.role == "worker":  # its job thread sends results on a socket of its own (see actors.worker)
            self.by_identity[slot.identity + RESULTS_SUFFIX] = slot
        self.by_pidfd[slot.pidfd] = slot
        self.poller.register(slot.pidfd, zmq.POLLIN)
        log.info("event=spawn name=%s pid=%d incarnation=%d", slot.name, slot.proc.pid, slot.incarnation)

    def _not_started(self, slot: Slot, exc: BaseException) -> None:
        """A child's process could not be started (no descriptor, no process left for this user, no memory):
        the slot waits as ``pending``, started again at each heartbeat; the daemon goes on (it stopped here)."""
        if slot.proc is not None:  # started, but it cannot be watched: it goes (by its own pid), and is tried again
            kill_group(slot.proc.pid)
            slot.proc.wait()
            slot.proc = None
        self.counters["spawn_failed"] += 1
        first = not slot.detail.startswith(_NOT_STARTED)
        slot.state = "pending"
        slot.detail = f"{_NOT_STARTED}: {exc}; tried again at each heartbeat"
        if first:
            log.error("event=spawn-failed name=%s reason=%s detail=tried again at each heartbeat", slot.name, exc)

    def _use_standby(self, slot: Slot, argv: list[str], nice: int, env: dict[str, str]) -> Any:
        """Give the standby ``slot``'s orders; its process, or None if it died (then a fresh one is spawned)."""
        standby, self.standby = self.standby, None
        assert standby is not None
        if standby.proc.poll() is None:
            try:
                _prefork.give_orders(standby.fd, argv, nice, self.log_file, env)
                self.standby_losses = 0
                self.counters["standby_used"] += 1
                log.info("event=standby-used name=%s pid=%d", slot.name, standby.proc.pid)
                return standby.proc
            except OSError:  # it died meanwhile (the pipe is closed by give_orders)
                pass
        else:
            os.close(standby.fd)
        self._standby_lost(standby)
        return None

    def _standby_lost(self, standby: Standby) -> None:
        kill_group(standby.proc.pid)
        code = standby.proc.wait()
        self.standby_losses += 1
        log.warning("event=standby-lost pid=%d code=%s detail=the standby worker exited before its orders%s",
                    standby.proc.pid, code, "; no more standbys" if self.standby_losses >= _STANDBY_LOSSES else "")

    def _keep_standby(self) -> None:
        """Keep one standby worker waiting, once a worker had to be started after start-up.

        It is spawned when no worker is starting (never beside one: on 2
        cores they would share the CPU and the replacement would come later),
        at the workers' niceness.  One that dies while it waits is reaped
        here; after :data:`_STANDBY_LOSSES` such deaths in a row the daemon
        keeps none (what kills them would kill every one).  ``ENSEMBLE_PREFORK=0``:
        none at all.
        """
        standby = self.standby
        if standby is not None:
            if standby.proc.poll() is not None:
                self.standby = None
                os.close(standby.fd)
                self._standby_lost(standby)
            return
        if (not self.standby_wanted or self.stopping_since or self.standby_losses >= _STANDBY_LOSSES
                or not _prefork.enabled()):
            return
        if any(s.role == "worker" and s.proc is not None and not s.ready for s in self.slots.values()):
            return
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:  # no descriptor left: the next heartbeat tries again
            log.warning("event=standby-failed reason=%s", exc)
            return
        try:
            # the run directory only names it (in ps, and for whoever looks for the daemon's processes)
            proc = spawn("actors.worker", ["--standby", str(self.rundir.path)], nice=self.cfg.supervision.worker_nice,
                         log_path=self.log_file, env={}, stdin=read_end)
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(write_end)
            self.standby_losses += 1
            log.warning("event=standby-failed reason=%s", exc)
            return
        finally:
            os.close(read_end)
        self.standby = Standby(proc, write_end)
        log.info("event=standby pid=%d", proc.pid)

    def _release_standby(self) -> None:
        """Let the standby go (end of file on its orders) and reap it."""
        standby, self.standby = self.standby, None
        if standby is not None:
            os.close(standby.fd)
            kill_group(standby.proc.pid)  # it holds nothing: no need to wait for it to read the end of file
            standby.proc.wait()

    def _kill(self, slot: Slot, reason: str, expected: bool = True) -> None:
        if slot.remote:
            log.warning("event=kill name=%s remote=1 reason=%s", slot.name, reason)
            self._send_child(slot, Stop("kill"))  # the remote worker exits; its keeper kills what its jobs started
            self._remote_gone(slot, reason)
            return
        if slot.proc is not None and slot.proc.poll() is None:
            slot.ready = False  # dying: no more jobs go to it before the reap
            slot.state = "restarting"
            slot.expected_exit = slot.expected_exit or expected
            log.warning("event=kill name=%s pid=%d reason=%s", slot.name, slot.proc.pid, reason)
            # what its (running) job started in sessions of their own, read before the group's kill
            outside = kill_below(slot.proc.pid, self._job_start(slot) if slot.role == "worker" else None)
            kill_group(slot.proc.pid)
            if outside:
                log.warning("event=kill-outside-group name=%s pids=%s", slot.name, ",".join(map(str, outside)))

    def _reap(self, slot: Slot) -> None:
        proc = slot.proc
        assert proc is not None
        code = proc.wait()
        kill_group(proc.pid)  # whatever it started goes with it
        # a worker that died under a job (killed, or crashed): when that job started, by the worker's own record (0:
        # it was between jobs); what the job left outside the group is looked for below, once its fate is settled
        since = (self._job_start(slot)
                 if slot.role == "worker" and code not in (0, RETIRE_CODE) and not self.stopping_since else 0)
        if code == RETIRE_CODE and slot.role == "worker":  # it left on purpose (its code changed): no failure
            slot.expected_exit = True
        if slot.role == "worker" and code in (0, RETIRE_CODE) and slot.outstanding:
            if self._asked_to_leave(slot):
                self._read_last_results(slot, _LAST_RESULTS_WAIT)
            else:  # nobody asked it to leave (a job called os._exit(0)): what is on its way, but no long stall
                log.warning("event=worker-exit-unasked name=%s code=%s outstanding=%d detail=it exited while running "
                            "a job without being asked to (did the job call os._exit or exit the process?)",
                            slot.name, code, len(slot.outstanding))
                self._read_last_results(slot, _UNASKED_EXIT_WAIT)
        self.poller.unregister(slot.pidfd)
        del self.by_pidfd[slot.pidfd]
        os.close(slot.pidfd)
        slot.pidfd = -1
        self.by_identity.pop(slot.identity, None)
        self.by_identity.pop(slot.identity + RESULTS_SUFFIX, None)
        slot.proc = None
        slot.gone_pid = proc.pid
        slot.ready = False
        slot.last_exit = code  # an extension reads it when the next incarnation says hello (child_ready)
        log_fn = log.info if self._asked_to_leave(slot) else log.error  # (a Retiring read just now counts)
        log_fn("event=exit name=%s pid=%d code=%s", slot.name, proc.pid, code)
        under_a_job = self._jobs_lost(slot)
        if slot.role == "worker" and not self.stopping_since:  # (`down` sweeps every segment anyway)
            self._unlink_left(slot, proc.pid)
        if since:
            left = kill_marked(proc.pid, since)
            if left:
                log.warning("event=kill-left-by-job name=%s pids=%s detail=what the job it died under started in "
                            "sessions of their own", slot.name, ",".join(map(str, left)))
        self._tell_exited(slot)
        if self.stopping_since or slot.retire:
            del self.slots[slot.name]
            return
        # A worker that died under a job it had begun is restarted without counting toward giving up: that
        # job's own retries bound those deaths (each one spends an attempt), so one job that kills its worker
        # (os._exit, a crash in C) cannot make the daemon give up on its workers and fail everyone's queued jobs.
        if not slot.expected_exit and not (under_a_job and slot.role == "worker"):
            now = time.monotonic()
            times = slot.restart_times
            while times and now - times[0] > self.cfg.supervision.restart_period:
                times.popleft()
            if len(times) >= self.cfg.supervision.max_restarts:
                slot.state = "failed"
                notice = slot.stats.get("notice")  # a child's own last word on why (the processor's backend)
                slot.detail = (f"gave up: {len(times)} restarts within {self.cfg.supervision.restart_period:g}s "
                               f"(last exit code {code})" + (f"; {notice}" if isinstance(notice, str) else ""))
                log.critical("event=child-failed name=%s detail=%s; siblings keep running", slot.name, slot.detail)
                if slot.role == "worker":
                    self._check_workers_left()
                return
            times.append(now)
        slot.restarts += 1
        self._spawn(slot)

    def _job_start(self, slot: Slot) -> int:
        """When the job a local worker runs started, by its record (``CLOCK_BOOTTIME`` ns; 0: it runs none)."""
        return StartedLog.last_start(self.rundir.started_file(slot.identity.decode()))

    def _unlink_left(self, slot: Slot, pid: int) -> None:
        """Unlink what a reaped local worker (process ``pid``) left in shared memory that no result names.

        Its results are all in by now (read up to its end, and the held ones
        from its file; a frame of it that comes later is ignored), so a
        segment it made that no result's record names has no owner: what a
        killed job had made (``task.empty()``, a result being copied out).
        They stayed until ``ensemble down``: a job killed at its deadline
        each minute filled ``/dev/shm`` with what it held.  A journal that
        cannot be read leaves them all (logged): the sweep at ``down`` does it.
        """
        assert self.book is not None
        maker = process_prefix(self.shm_prefix, pid)
        try:  # (a DaemonError of the commit it waits for is the journal's failure: raised, as on any read)
            keep = self.book.journal.segments_named(maker)
        except sqlite3.Error as exc:
            log.warning("event=segments-left name=%s pid=%d reason=%s detail=the journal could not say which "
                        "segments results name; they stay until `ensemble down`", slot.name, pid, exc)
            return
        removed = unlink_left_by(self.shm_prefix, pid, keep, time.time())
        if removed:
            self.counters["dead_worker_segments_unlinked"] += removed
            log.info("event=segments-left name=%s pid=%d unlinked=%d detail=shared memory its jobs made that no "
                     "result names", slot.name, pid, removed)

    def _tell_exited(self, slot: Slot) -> None:
        """Tell each extension that ``slot``'s process exited (``Extension.child_exited``), before any restart.

        A child that is not started again (given up on, the daemon stopping)
        leaves to its extension what only it could have ended (the panel's
        held notes).  An extension's exception is logged, never raised: the
        reap and the restart go on.
        """
        for ext in self.extensions:
            try:
                ext.child_exited(slot)
            except Exception:  # noqa: BLE001 - one extension's bug must not take the daemon down
                log.exception("event=extension-hook-failed extension=%s hook=child_exited name=%s",
                              ext.name, slot.name)

    def _asked_to_leave(self, slot: Slot) -> bool:
        """Whether a child's exit was asked for: the daemon stopping, a scale-down, a retire, a kill on purpose."""
        return bool(slot.expected_exit or slot.retire or self.stopping_since)

    def no_workers_left(self) -> str:
        """Why no job can ever run here ("" while one can): every worker gave up restarting.

        Only then: a daemon configured with no workers, or whose workers are
        starting, restarting or retiring, or that has a cluster to place
        workers on, keeps its queue (a worker may still come).
        """
        if self.cluster is not None:
            return ""
        workers = []
        for s in self.slots.values():  # returns at the first worker that can still run a job: mostly the first
            if s.role == "worker" and not s.retire:
                if s.state != "failed":
                    return ""
                workers.append(s)
        if not workers:
            return ""
        which = "; ".join(f"{s.name}: {s.detail}" for s in workers[:3]) + ("; ..." if len(workers) > 3 else "")
        return (f"no worker can run jobs: every worker of this daemon gave up restarting ({which}); the daemon's "
                "log says why they exit (`ensemble status` prints its path); fix that, then `ensemble scale N` "
                "starts them again")

    def no_worker_yet(self) -> str:
        """Why a job accepted now waits for a worker to be started ("" while one is, or may come of itself).

        The daemon has no worker at all and none is wanted (scaled to 0, or
        started with none): its queue waits for ``ensemble scale N`` or a
        remote worker, and a submitter would wait in silence.  Workers that
        are starting or restarting (or failed: ``no_workers_left`` refuses
        those submits), and a cluster that places them, count; one that is
        retiring does not.  One pass over the slots.
        """
        if self.workers_wanted or self.cluster is not None:
            return ""
        if any(s.role == "worker" and not s.retire for s in self.slots.values()):
            return ""
        return ("this daemon has no worker (scaled to 0, or started with none): its jobs wait in the queue until "
                "`ensemble scale N` starts some or a remote worker joins")

    def _check_workers_left(self) -> None:
        """A worker gave up: if it was the last one, every queued job fails now, saying why, instead of
        waiting for a worker that will not come (as ``ProcessPoolExecutor`` breaks when its processes die)."""
        why = self.no_workers_left()
        if not why or self.book is None:
            return
        now = time.time()
        queued = [job for job in self.book.jobs.values() if job.state == "queued"]
        for job in queued:
            self._finish(job, "failed", now, error_type=NO_WORKERS_ERROR, error_message=why)
        log.critical("event=no-workers failed_jobs=%d detail=%s", len(queued), why)

    def _read_last_results(self, slot: Slot, wait: float) -> None:
        """A worker that left in order may be reaped before its last results were read: read up to its
        ``ResultsClosed`` (at most ``wait`` s, should it never come; the daemon's loop waits meanwhile), so
        that a job it finished is not counted lost (its process's exit and its results' socket race to the
        daemon)."""
        deadline = time.monotonic() + wait
        while not slot.results_closed and slot.outstanding:
            left = deadline - time.monotonic()
            if left <= 0:
                if wait >= _LAST_RESULTS_WAIT:
                    log.warning("event=last-results-missing name=%s outstanding=%d", slot.name, len(slot.outstanding))
                return
            if self.internal.poll(int(left * 1000) + 1, zmq.POLLIN):
                self._drain_internal(self.internal)

    def _remote_hello(self, sock: Any, ident: bytes, key: bytes, name: str, frame: bytes) -> Slot | None:
        """A worker joining over tcp: a slot of its own, bound to its socket, routing id and key.

        Its name comes from its key (``remote:KEYNAME#N``), never from the peer.
        """
        try:
            _, msg = decode(frame, self.limits, handles=None)
        except ProtocolError:
            self.counters["bad_frames"] += 1
            return None
        if not isinstance(msg, Hello) or msg.role != "worker":
            self.counters["stray_frames"] += 1
            return None
        why = ""
        if len(self.remote_slots) >= REMOTE_WORKERS:
            why = f"the daemon has {REMOTE_WORKERS} remote workers already"
        elif sum(1 for s in self.remote_slots.values() if s.key == key) >= REMOTE_WORKERS_PER_KEY:
            why = (f"key {name} has {REMOTE_WORKERS_PER_KEY} workers joined already (at most that many a key: give "
                   "another host a key of its own, `ensemble keys add-worker`)")
        if why:  # (said to the worker too: it stops, saying why, instead of waiting for jobs that never come)
            log.warning("event=remote-worker-refused key=%s reason=%s", name, why)
            self.counters["remote_workers_refused"] += 1
            try:
                sock.send_multipart([ident, encode(Stop(f"refused: {why}"))], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            return None
        try:
            resources = check_resources(msg.resources, f"remote worker {name}")
        except EnsembleError as exc:
            log.warning("event=remote-worker-resources-ignored key=%s reason=%s", name, exc)
            resources = {}
        self._remote_seq += 1
        slot_name = f"remote:{name}#{self._remote_seq}"
        slot = Slot(slot_name, "worker", "", remote=True, sock=sock, identity=ident, started=time.time(),
                    last_heard=time.monotonic(), key=key, key_name=name, resources=resources)
        # what it calls itself (`ensemble worker --worker-name`, else its host name): its own word, so only shown
        slot.detail = f"calls itself {msg.name[:64]!r}, pid {msg.pid} on its host"
        self.slots[slot_name] = slot
        self.remote_slots[ident] = slot
        log.info("event=remote-worker-joined name=%s pid=%d calls_itself=%r", slot_name, msg.pid, msg.name[:64])
        return slot

    def _remote_gone(self, slot: Slot, reason: str) -> None:
        log.warning("event=remote-worker-gone name=%s reason=%s", slot.name, reason)
        if self.remote_slots.get(slot.identity) is slot:
            del self.remote_slots[slot.identity]
        self._jobs_lost(slot)
        self.slots.pop(slot.name, None)

    def _jobs_lost(self, slot: Slot) -> int:
        """Settle the jobs a gone worker held: those whose results it held back end with them, those it had
        begun are retried or lost, the rest queued again.  Returns how many it had begun."""
        book = self.book
        assert book is not None
        if not slot.remote:
            self._held_results(slot)
        now = time.time()
        ids = list(slot.outstanding)
        if slot.remote:  # no record of what it started: its head counts as begun
            head = book.jobs.get(ids[0]) if ids else None
            begun = 1 if head is not None and head.state == "running" else 0
        else:  # the jobs up to the one it last started had begun (prefetched ones too)
            last = self.rundir.take_started(slot.identity.decode())
            begun = ids.index(last) + 1 if last in ids else 0
        for i, jid in enumerate(ids):
            job = book.jobs.get(jid)
            if job is None:
                continue
            job.recalling = False  # a Recall on its way to the gone worker will never be answered
            if job.killed:
                self._finish_killed(job, now)
            elif job.abort_reason in BINDING_ABORTS:  # cancelled or past its deadline: never run (again)
                etype, text = aborted_error(job.abort_reason, job.spec)
                how = f"worker {slot.name} died before the job returned" if i < begun else "it had not started"
                self._finish(job, "cancelled", now, error_type=etype, error_message=f"{text}; {how}")
            elif i < begun and job.state in ("running", "dispatched"):
                if job.state == "dispatched":
                    book.start(job, slot.name, now, time.monotonic())
                if job.attempts <= job.spec.retries and not self.stopping_since:
                    book.requeue(job, f"worker {slot.name} died (attempt {job.attempts} of {job.spec.retries + 1})")
                    if job.unstarted_cancels:  # it had started: a Cancel(if_queued) leaves it to run again
                        self._answer_unstarted(job, "running")
                elif i < begun - 1:  # one job thread takes them in order: this one had returned
                    self._finish(job, "worker-lost", now, error_type="JobLost",
                                 error_message=f"the job returned, but worker {slot.name} died (under the job after "
                                               f"it, {ids[begun - 1]}) before its result left the process, and no "
                                               "retry was left: a job without retries runs at most once")
                else:
                    self._finish(job, "worker-lost", now, error_type="JobLost",
                                 error_message=f"worker {slot.name} died while running the job and no retry was left")
            else:  # it never began: no attempt spent
                if job.state == "running":
                    job.attempts -= 1
                    job.started = 0.0
                book.requeue(job, "")
                if job.unstarted_cancels:  # a Cancel(if_queued) waited for its Recall: it never started, cancel it
                    self._finish(job, "cancelled", now, error_type="JobCancelled",
                                 error_message="cancelled before it started")
        slot.outstanding.clear()
        slot.recalls.clear()  # their answers died with the worker
        return begun

    def _held_results(self, slot: Slot) -> None:
        """End the jobs whose results a dead local worker held back, with those results, read from its
        held-results file (:class:`~actors._rundir.HeldResults`, which a ``kill -9`` does not reach), and remove it.

        They end as if their frame had come (:meth:`WorkMixin._jobs_done
        <actors.supervisor._work.WorkMixin._jobs_done>`: journal, pushes,
        arrays alike).  A record of a job no longer outstanding is ignored: its
        result came on the socket (a frame that comes after this one is
        ignored in turn), so no result is delivered twice.  A record that does
        not decode is said in the log and skipped: its job is settled as lost.
        """
        records = self.rundir.take_held(slot.identity.decode(), read=bool(slot.outstanding))
        line = {jid: i for i, jid in enumerate(slot.outstanding)}
        results: list[JobDone] = []
        for job_id, raw in records:
            if job_id not in line:  # (most records: results that came, or their job's end was settled)
                continue
            try:  # each as a frame of its own: checked as a live worker's, within the frame limit
                done = decode_result(raw, self.limits, self.shm_prefix)
            except ProtocolError as exc:
                log.error("event=bad-held-result name=%s job=%d reason=%s", slot.name, job_id, exc)
                continue
            if done.job_id == job_id:
                results.append(done)
        results.sort(key=lambda done: line[done.job_id])  # in the order they ran (the file's halves may not be)
        if results:
            log.info("event=held-results name=%s jobs=%d detail=results its worker held back when it died",
                     slot.name, len(results))
            self._jobs_done(slot, JobsDone(results))

    def _heartbeats(self, mono: float) -> None:
        self.start_pending()
        self._keep_standby()
        timeout = self.cfg.supervision.heartbeat_timeout
        interval = self.cfg.supervision.heartbeat_interval
        missed = 1.5 * interval  # a heartbeat is late: the silent worker's CPU time is read from here on, and
        window = max(interval, timeout - missed - interval)  # judged over windows this long (the first ends a
        # tick before the timeout): long enough that a busy worker's CPU time moves even on a loaded machine
        beat = encode(Heartbeat())
        gap, self._beat_at = (mono - self._beat_at if self._beat_at else 0.0), mono
        if gap > timeout:  # this loop did not run (one long request, SIGSTOP, the host's scheduler): what each
            # child sent meanwhile may still sit in the sockets' queues, so silences are measured from now, not judged
            log.warning("event=daemon-stalled seconds=%.1f detail=the daemon's own loop did not run; the stall does "
                        "not count in any child's silence", gap)
            for slot in self.slots.values():  # (not "from now": a child silent before each of repeated stalls would
                slot.last_heard = min(mono, slot.last_heard + gap)  # never have been judged, a probe saw)
        for slot in list(self.slots.values()):
            if slot.proc is None and not slot.remote:
                continue
            try:
                (slot.sock or self.internal).send_multipart([slot.identity, beat], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            silent = mono - slot.last_heard
            if silent <= missed:
                if slot.detail.startswith("busy"):  # it answers again
                    slot.detail = ""
                continue
            if not self.stopping_since and self._busy_in_c(slot, mono, window) and silent > timeout:
                if not slot.detail.startswith("busy"):
                    log.warning("event=busy-silent name=%s seconds=%.1f detail=its job holds the GIL in a C call: "
                                "no heartbeat, but it uses the CPU; not replaced", slot.name, silent)
                slot.detail = (f"busy: silent for {silent:.1f}s while its job runs a C call holding the GIL "
                               "(it still uses the CPU)")
                continue
            if silent > timeout and not self.stopping_since:
                if not slot.detail.startswith("silent"):
                    log.error("event=silent name=%s seconds=%.1f", slot.name, mono - slot.last_heard)
                slot.detail = f"silent for {mono - slot.last_heard:.1f}s; replaced"
                self._kill(slot, "heartbeat timeout", expected=False)

    def _busy_in_c(self, slot: Slot, mono: float, window: float) -> bool:
        """Whether a silent local worker running a job used the CPU in the last ``window`` s of its silence (read
        each tick once a heartbeat is late): a job in one long C call that holds the GIL (a big-number
        ``pow``, a regular expression backtracking, an extension that never releases it) stops the
        worker's heartbeats but not its work; it ends, or its job's timeout or a cancel kills it, as a
        job that checks ``should_abort()`` rarely.  A worker stopped, hung on a lock or blocked in a call
        uses no CPU and is replaced at the timeout as before.  Linux (/proc) only; elsewhere never busy."""
        if slot.remote or slot.role != "worker" or not slot.outstanding or slot.proc is None:
            return False
        if slot.cpu_at > slot.last_heard and mono - slot.cpu_at < window:
            return slot.cpu_busy  # the window runs: the last verdict stands
        now = cpu_seconds(slot.proc.pid)
        if slot.cpu_at > slot.last_heard:  # a window of this silence ended: judge it
            slot.cpu_busy = (now is not None and slot.cpu_seen >= 0
                             and now - slot.cpu_seen >= BUSY_SHARE * (mono - slot.cpu_at))
        else:  # the first look in this silence
            slot.cpu_busy = False
        slot.cpu_seen, slot.cpu_at = (-1.0 if now is None else now), mono
        return slot.cpu_busy

    def scale(self, n: int) -> None:
        """Change the number of local workers: start new ones, or retire idle ones first (remote ones are not ours)."""
        self.workers_wanted = n
        workers = [s for s in self.slots.values() if s.role == "worker" and not s.retire and not s.remote]
        for slot in workers[:n]:  # workers that gave up restarting start again, with a fresh restart intensity
            if slot.state == "failed" and slot.proc is None:
                slot.restart_times.clear()
                slot.detail = ""
                slot.state = "pending"
        for _ in range(n - len(workers)):
            self._add_worker(start=False)
        excess = len(workers) - n
        if excess > 0:
            # the idlest go first and, among those, one not started yet, a failed one, then one still starting
            workers.sort(key=lambda s: (len(s.outstanding), _RETIRE_FIRST.get(s.state, len(_RETIRE_FIRST))))
            for slot in workers[:excess]:
                slot.retire = True
                if slot.state in ("failed", "pending"):  # no process to stop
                    del self.slots[slot.name]
                elif not slot.outstanding:
                    self.stop_child(slot, "scaled down")
        self.start_pending()
        log.info("event=scale workers=%d", n)

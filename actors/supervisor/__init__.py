"""The supervisor daemon: starts, watches and restarts every child; owns the job queue.

One poll loop, one thread.  Each iteration: read client requests (control
ROUTER) and child messages (internal ROUTER), reap children whose pidfd became
readable, run timers (heartbeats, aborts, kills, deadlines), hand queued jobs
to workers with free credit, commit the journal in one transaction (group
commit), and only then send the acknowledgements and results of the iteration.

The parts, one file each:

* :mod:`._transport` — sockets, CURVE roles, who a frame is from;
* :mod:`._children` — spawn, reap, restarts, heartbeats, remote workers, scaling;
* :mod:`._cluster` — workers placed on a Ray cluster (``[cluster] ray``), when configured;
* :mod:`._requests` — who may ask for what; the runtime's request handlers;
* :mod:`._work` — jobs on workers: dispatch, results, aborts, kills;
* :mod:`._dispatch` — the dispatch policy as pure functions;
* this module — start-up and the recovery of a dead daemon's jobs, the loop, status and stopping.

Packages built on the runtime (audio, scripts) add children, requests and
routing through :mod:`actors.extensions`.

Run it with ``ensemble up`` (background) or ``ensemble up --foreground``.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any, Callable

import zmq

from actors import __version__
from actors import _childoutput, _sdnotify as sdnotify
from actors._errors import DaemonError, EnsembleError, ProtocolError
from actors._jobfn import compile_allow
from actors._jobs import JobBook
from actors._journal import Journal
from actors._logging import setup as one_line_logging
from actors._rundir import RunDir
from actors._spawn import kill_group, raise_open_files
from actors._subreaper import become_subreaper, kill_left_by_daemon, reap_adopted, sweep
from actors.shm import unlink_listed
from actors.supervisor._handed import HandedSegments, referring
from actors.config import Config
from actors.extensions import ChildSpec, Extension, load_extensions, pass_down
from actors.messages import (ActorInfo, DaemonInfo, JobDone, JobInfo, JobInfos, Limits, Message, StatusReply,
                             decode_result, keep_exact_values)
from actors.supervisor import _dispatch as plan, _prefork
from actors.supervisor._children import ChildrenMixin, Slot, _rss
from actors.supervisor._cluster import ClusterMixin
from actors.supervisor._outbox import RETRY_S, Outbox
from actors.supervisor._tcpcap import ConnectionCap
from actors.supervisor._requests import ADMIN_REQUESTS, CLIENT_REQUESTS, RequestsMixin
from actors.supervisor._transport import LOCAL, KeyRoles, Peer, TransportMixin
from actors.supervisor._work import WorkMixin

# a commit of at least this many rows goes to the journal's writer thread (see Supervisor._flush)
_ASYNC_ROWS = 8
PRUNE_FIRST_S = 5.0  # the first slice of pruning comes this long after the start (a slice is short: see Journal.prune)
PRUNE_EVERY_S = 600.0  # then one pruning every this long ...
PRUNE_AGAIN_S = 0.05  # ... whose slices follow one another at least this far apart while one leaves more to delete

log = logging.getLogger("ensemble.supervisor")


def _drop_ident(handler: Callable[[int, Message], Message | None]) -> Callable[[bytes, int, Message], Message | None]:
    """An extension's request handler ``(corr, msg)`` as the supervisor calls it ``(ident, corr, msg)``."""
    def call(ident: bytes, corr: int, msg: Message) -> Message | None:
        return handler(corr, msg)

    return call


class Supervisor(TransportMixin, ChildrenMixin, ClusterMixin, RequestsMixin, WorkMixin):
    """The daemon.  ``run()`` blocks until an orderly stop; returns the exit code."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rundir = RunDir(cfg.run_dir)
        self.state_dir = cfg.state_dir
        self.log_file = self.state_dir / "daemon.log"
        self.limits = Limits(max_frame=cfg.daemon.max_frame)
        self.slots: dict[str, Slot] = {}
        self.by_identity: dict[bytes, Slot] = {}
        self.by_pidfd: dict[int, Slot] = {}
        self.workers_wanted = cfg.worker_count
        self.blanks: list[_prefork.Blank] = []  # forked at start-up, waiting to become workers (serve() sets them)
        self.standby: Any = None  # a spawned interpreter waiting to become a worker (_children.Standby)
        self.standby_wanted = False  # set once a worker had to start after start-up
        self.standby_losses = 0  # standbys that died in a row before their orders
        self.children_started = False
        self._worker_seq = 0
        self.started = time.time()
        self.running = True
        self._wake_at = 0.0  # monotonic instant of the next deadline, kill or heartbeat (see _poll_timeout_ms)
        self._prune_at = 0.0  # monotonic instant of the next slice of pruning (see _prune_slice)
        self._beat_at = 0.0  # monotonic instant of the last heartbeat tick (a longer gap: this loop stalled)
        self.pruned = 0  # jobs pruned by the slices of this round so far (logged once the round ends)
        self.stopping_since = 0.0
        self.term_sent = False
        self.kill_sent = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.replies: list[tuple[bytes, bytes]] = []  # sent after the journal commit
        # replies and pushes waiting for a commit in the journal's writer thread: (its number, frames), in order
        self.held: collections.deque[tuple[int, list[tuple[bytes, bytes]]]] = collections.deque()
        # acknowledgements of submits whose jobs are not written yet: (first and last job id, client, corr, the
        # ack's frame); should their commit fail, they are refused instead (RequestsMixin._check_unacked)
        self.unacked: collections.deque[tuple[int, int, bytes, int, bytes]] = collections.deque()
        self.control_tcp: Any = None
        self.internal_tcp: Any = None
        self.remote_slots: dict[bytes, Slot] = {}  # routing id on the tcp worker endpoint -> its slot
        self._remote_seq = 0
        self.auth: Any = None
        self.roles = KeyRoles()
        self._allowed_mtime = 0.0
        self.allow = compile_allow(cfg.jobs.allow)
        self.shm_prefix = f"ensemble.{cfg.shm_key}."
        self.handed = HandedSegments(self.shm_prefix)  # gone clients' segments that jobs held still refer to
        self.internal_token = os.urandom(16).hex()  # the controller's proof for TaskSubmit (given at spawn)
        self._peer = LOCAL  # who sent the request being handled
        self.pushes: dict[bytes, list[JobInfo]] = {}
        # tcp client connections -> the public key each spoke with (to forget those of keys revoked since), and those
        # forgotten (nothing more is sent to them: see _forget_revoked_clients)
        self.tcp_peers: dict[bytes, bytes] = {}
        self.revoked_addrs: set[bytes] = set()
        self.outbox = Outbox(cfg.daemon.max_frame)  # what clients have not read yet, and pushes owed to them
        self.tcp_cap = ConnectionCap(self.counters)  # the tcp endpoints' connections, capped (see _tcpcap)
        self._owed_at = 0.0  # when the pushes owed are next tried
        self.progress_pushes: dict[bytes, dict[int, JobInfo]] = {}
        self._module_ok: dict[str, str] = {}  # job name -> "" (fine) or why it is refused; bounded
        self._module_ok_remote: dict[str, str] = {}
        self.journal: Journal | None = None
        self.book: JobBook | None = None
        self.metrics: Any = None
        self.cluster: Any = None  # actors._ray.RayWorkers when [cluster] ray is set
        self.job_seconds = 0.0  # moving average of a job's run time (sizes the dispatch window)
        self._frame_len = 0  # bytes of the request being handled (counted against jobs.queue_bytes)
        wanted = cfg.daemon.extensions
        if wanted:  # one scan of the installed entry points, for this process and the children it spawns
            pass_down()
        self.extensions: list[Extension] = [cls(self) for cls in load_extensions(wanted)
                                            if "*" in wanted or cls.name in wanted]
        # request type -> handler(ident, corr, msg): the runtime's own, then each extension's
        self.handlers: dict[type, Callable[[bytes, int, Message], Message | None]] = {
            t: fn.__get__(self) for t, fn in RequestsMixin._handlers.items()}
        self.child_handlers: dict[type, Callable[[Slot, Message], None]] = {}
        admin: set[type] = set(ADMIN_REQUESTS)
        for ext in self.extensions:
            for t, h in ext.requests().items():
                self.handlers[t] = _drop_ident(h)
            self.child_handlers.update(ext.child_messages())
            admin |= ext.admin_requests
        self.role_requests: dict[str, frozenset[type]] = {"client": CLIENT_REQUESTS, "admin": frozenset(admin)}

    # ------------------------------------------------------------------ what extensions see (actors.extensions.Host)
    @property
    def peer(self) -> Peer:
        """Who sent the request being handled."""
        return self._peer

    def child(self, name: str) -> Slot | None:
        """The slot ``name`` if its child is running and said hello."""
        slot = self.slots.get(name)
        return slot if slot is not None and slot.ready else None

    def send_child(self, slot: Slot, msg: Message) -> bool:
        """Send to a child without blocking; False if it could not go."""
        return self._send_child(slot, msg)

    def start_child(self, spec: ChildSpec) -> bool:
        """Start an extension's child on demand; False if its slot already has a live process."""
        slot = self.slots.get(spec.name)
        if slot is not None and (slot.proc is not None or slot.state != "failed"):
            return False
        if slot is not None:  # it had failed: a fresh start, with a fresh restart intensity
            slot.restart_times.clear()
            self._spawn(slot)
            return True
        self._add_slot(spec.name, spec.role, spec.module)
        return True

    def open(self) -> None:
        """Take the lock, sweep what a killed daemon left, bind sockets, open the journal."""
        self.rundir.acquire(self.cfg.name)
        self.cfg.make_state_dir()
        from actors.shm import sweep_segments

        self.journal = Journal(self.state_dir / "jobs.sqlite3")
        self.book = JobBook(self.journal)
        returned = _HeldAtCrash(self.rundir.take_all_held(), self.limits, self.shm_prefix)
        q, rq, lost = self.book.recover(time.time(), self.rundir.take_all_started(), returned.take)
        self.journal.commit()
        if q or rq or lost or returned.ended:
            log.info("event=recover queued=%d requeued=%d worker_lost=%d held_results=%d", q, rq, lost,
                     returned.ended)
        # what a killed daemon left, but a live client's (its pool outlives the daemon, as its connection does),
        # what recovered jobs' arguments refer to (kept until they end: see _handed) and the result arrays that
        # the journal records for their takers (unlinked when their jobs are pruned, as without a restart)
        live = self.rundir.live_client_segments()
        results = self.journal.segments_named(self.shm_prefix)
        needed = {name: ids for name, ids in referring(self.book.jobs.values(), self.shm_prefix).items()
                  if name not in live and name not in results}  # (those stay their owners')
        self.handed.adopt(needed, time.time())
        swept = sweep_segments(self.cfg.shm_key, keep=live | needed.keys() | results)
        if swept:
            log.warning("event=sweep segments=%d detail=shared-memory segments of a dead daemon removed", swept)
        left = kill_left_by_daemon(self.cfg.shm_key)  # (a stop in order ends them: one killed could not)
        if left:
            log.warning("event=jobs-left-killed count=%d pids=%s detail=processes the jobs of a daemon that was "
                        "killed had left running (in a session or process group of their own)", len(left),
                        ",".join(map(str, left[:50])))
        self.ctx = zmq.Context()
        self.control = self._bind(self.rundir.control, hwm=100_000)
        self.internal = self._bind(self.rundir.internal, hwm=0)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.internal, zmq.POLLIN)
        self.poller.register(self.journal.wake_fd, zmq.POLLIN)
        self._watch_owner()
        if self.cfg.daemon.tcp or self.cfg.daemon.client_tcp:
            self._bind_tcp()
        if self.cfg.daemon.metrics_port:
            from actors._metrics import Metrics

            self.metrics = Metrics()
            port = self.metrics.start(self.cfg.daemon.metrics_port, self.cfg.daemon.metrics_host)
            log.info("event=metrics url=http://%s:%d/metrics", self.cfg.daemon.metrics_host, port)

    def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        _collect_rarely()
        signal.signal(signal.SIGTERM, lambda *_: self.begin_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.begin_stop("SIGINT"))
        sup = self.cfg.supervision
        next_beat = 0.0
        self._prune_at = time.monotonic() + PRUNE_FIRST_S
        dog = sdnotify.watchdog_interval()
        next_dog = 0.0
        announced = False
        try:
            quiet = False
            while self.running:
                events = self.poller.poll(self._poll_timeout_ms(quiet))
                quiet = True  # until something other than a read-only request arrives
                for sock, _ in events:
                    if sock is self.control or sock is self.control_tcp:
                        if self._drain_control(sock):
                            quiet = False
                        continue
                    quiet = False
                    if sock is self.internal or sock is self.internal_tcp:
                        self._drain_internal(sock)
                    elif self.journal is not None and sock == self.journal.wake_fd:
                        self._journal_written()
                    elif self.owner_fd is not None and sock == self.owner_fd:
                        self._owner_gone()
                    elif sock in self.tcp_cap.monitors:
                        self.tcp_cap.events(sock)
                    else:
                        slot = self.by_pidfd.get(sock)
                        if slot is not None:
                            self._reap(slot)
                mono = time.monotonic()
                if mono >= self._wake_at or mono >= self._prune_at or self.stopping_since:
                    quiet = False
                if not announced and self.slots and all(s.ready or s.state == "failed" for s in self.slots.values()):
                    announced = True
                    sdnotify.ready()
                    sdnotify.status(f"{len(self.slots)} actors running")
                if dog is not None and mono >= next_dog:
                    next_dog = mono + dog
                    sdnotify.watchdog()
                if mono >= next_beat:
                    next_beat = mono + sup.heartbeat_interval
                    self._heartbeats(mono)
                    try:
                        reap_adopted()  # what a job left in a session of its own and has ended since (_subreaper)
                    except OSError as exc:  # (it handles what it can meet; the loop never ends for it)
                        log.error("event=reap-adopted-failed reason=%s", exc)
                    self._unlink_gone_clients()
                    if self.journal is not None and not self.journal.lost_file and self.journal.check_file():
                        log.critical("event=journal-lost detail=%s", self.journal.lost_file)
                    if self.auth is not None:
                        self._refresh_allowed()
                    self._cluster_tick()
                    self.outbox.sweep(mono)
                    if len(self.tcp_peers) > 4096:  # connections gone quietly: those the outbox forgot too
                        self.tcp_peers = {a: k for a, k in self.tcp_peers.items() if a in self.outbox.conns}
                    if self.metrics is not None:
                        self.metrics.update(self.status())
                    quiet = False
                if self.outbox.owed and mono >= self._owed_at:
                    self._owed_at = mono + RETRY_S
                    self._owed_pushes()
                if quiet:  # only read-only requests, and no deadline due: the job book is as it was
                    self._flush()
                    continue
                self._timers(mono)
                if not self.stopping_since:
                    self._commit()  # jobs are dispatched once their rows are written (JobBook.pop)
                    self._dispatch(mono)
                    if mono >= self._prune_at:
                        self._prune_at = self._prune_slice(mono)
                else:
                    self._stop_step(mono)
                self._flush()
        finally:
            self.close()
        return 0

    def _unlink_gone_clients(self) -> None:
        """Unlink the shared memory of local clients that were killed (each heartbeat tick).

        A client lists the segments it makes in the run directory, locked
        while it lives (:class:`actors._rundir.OwnedSegments`); a list whose
        lock is free has no client left, which could not unlink its own
        ``empty()`` arrays and argument pool as a client that exits does:
        they stayed until ``ensemble down``.  Those that jobs it submitted
        still refer to stay until those jobs end (:mod:`actors.supervisor._handed`).
        """
        jobs = self.book.jobs if self.book is not None else {}
        for pid, names, grew in self.rundir.take_gone_clients():
            kept = self.handed.take(pid, names, grew, jobs)  # what jobs it submitted still read (see _handed)
            removed = unlink_listed(self.shm_prefix, pid, [n for n in names if n not in kept], grew)
            if removed:
                self.counters["gone_client_segments_unlinked"] += removed
            if removed or kept:
                log.info("event=client-gone pid=%d unlinked=%d kept_for_jobs=%d detail=the shared memory of a "
                         "client that ended with jobs it submitted unfinished, or did not exit normally", pid,
                         removed, len(kept))
        if self.handed.names:
            self.counters["gone_client_segments_unlinked"] += self.handed.release(jobs)

    def _prune_slice(self, mono: float) -> float:
        """Prune one slice of the journal (:meth:`Journal.prune`); when to prune next.

        Every :data:`PRUNE_EVERY_S`; but while a slice leaves more to delete
        (``prune_behind``), again after four times as long as it took (at least
        :data:`PRUNE_AGAIN_S`): a backlog of millions of jobs goes in minutes,
        faster than jobs can end, and the loop spends at most a fifth of its
        time on it, serving requests between slices.
        """
        began = time.monotonic()
        self._prune()
        assert self.journal is not None
        if not self.journal.prune_behind or self.journal.write_error:
            return mono + PRUNE_EVERY_S
        now = time.monotonic()
        return max(mono + PRUNE_AGAIN_S, now + 4 * (now - began))

    def _watch_owner(self) -> None:
        """A private daemon (``ENSEMBLE_OWNER_PID``) watches the process that owns it through a pidfd."""
        self.owner_fd: int | None = None
        self.owner_gone = False
        owner = os.environ.get("ENSEMBLE_OWNER_PID")
        if not owner:
            return
        try:
            self.owner_fd = os.pidfd_open(int(owner))
        except (OSError, ValueError):  # it is gone already
            self.owner_gone = True
            return
        self.poller.register(self.owner_fd, zmq.POLLIN)

    def _owner_gone(self) -> None:
        """The owner of this private daemon exited without stopping it (killed, or it crashed): stop in order."""
        if self.owner_fd is not None:
            self.poller.unregister(self.owner_fd)
            os.close(self.owner_fd)
            self.owner_fd = None
        self.owner_gone = True
        log.warning("event=owner-gone detail=the process that owns this private daemon exited; stopping")
        self.begin_stop("owner exited")

    def _poll_timeout_ms(self, quiet: bool = False) -> int:
        """Milliseconds the poll may sleep: until the next deadline, kill or heartbeat (``_wake_at``), or slice of
        pruning (``_prune_at``).

        After a quiet iteration (read-only requests only) nothing moved, so the
        instant computed before still holds and is reused.
        """
        mono = time.monotonic()
        if not quiet:
            longest = 0.05 if self.stopping_since else self.cfg.supervision.heartbeat_interval
            assert self.book is not None
            self._wake_at = mono + plan.next_wakeup(self.book, list(self.slots.values()), mono, longest)
        wake_at = min(self._wake_at, self._owed_at) if self.outbox.owed else self._wake_at
        wake_at = min(wake_at, self._prune_at)
        return max(0, min(int((wake_at - mono) * 1000 + 0.999), 3_600_000))  # (at most an hour: the poll's int)

    def _flush(self) -> None:
        """Commit what this iteration staged, then send its replies and pushes (never before their commit).

        A small commit (one job's worth, as when jobs come one at a time) is
        written here; a larger one goes to the journal's writer thread
        (:meth:`Journal.commit_async`) and the loop serves the next messages
        while SQLite writes on the other core.  Replies and pushes wait in
        ``held``, in order, until the commit they depend on is written; what
        is staged while one commit is in flight is the next one.
        """
        journal = self.journal
        assert journal is not None
        if self.stopping_since or not self.running:
            journal.commit()  # waits for the one in flight too: nothing is held past the last iteration
        else:
            self._commit()
        self._tell_aborts()  # the cancels and deadlines now written go to their workers
        self._check_unacked()
        out = self.replies
        self.replies = []
        for ident, by_id in self.progress_pushes.items():  # before the ends: a job may start and end in one iteration
            out += self._push_frames(ident, list(by_id.values()))
        self.progress_pushes.clear()
        for ident, infos in self.pushes.items():
            out += self._push_frames(ident, infos)
        self.pushes.clear()
        if out:
            # the commit these depend on: the one staged now if the writer was busy, else the last one begun
            need = journal.started_seq + (1 if journal.dirty else 0)
            if not self.held and need <= journal.done_seq:
                for ident, frame in out:
                    self._send_client(ident, frame)
                return
            self.held.append((need, out))
        self._release_held()

    def _push_frames(self, ident: bytes, infos: list[JobInfo]) -> list[tuple[bytes, bytes]]:
        """``infos`` pushed to one client in frames that fit ``daemon.max_frame``, in order.

        The jobs that end in one iteration can hold more than a frame between
        them (four workers' batches of big results): a client refuses a frame
        over the limit, and its jobs' results would never arrive.  Halved
        until each part fits (one job's record fits: its worker sent it in a
        frame).
        """
        frame = self._encode_for(ident, JobInfos(infos))
        if len(frame) <= self.cfg.daemon.max_frame or len(infos) == 1:
            return [(ident, frame)]
        half = len(infos) // 2
        return self._push_frames(ident, infos[:half]) + self._push_frames(ident, infos[half:])

    def _commit(self) -> None:
        """Begin committing what is staged, unless a commit is in flight: written here if small, else handed
        to the writer thread (see :meth:`_flush`)."""
        journal = self.journal
        assert journal is not None
        if journal.busy:
            journal.collect()
        if (journal.dirty or journal.write_error) and not journal.busy:  # a failed commit is retried (Journal.commit)
            if journal.staged_rows() >= _ASYNC_ROWS:
                journal.commit_async()
            else:
                journal.commit()

    def _release_held(self) -> None:
        """Send the held replies and pushes whose commit is written, oldest first."""
        journal = self.journal
        assert journal is not None
        held = self.held
        while held and held[0][0] <= journal.done_seq:
            for ident, frame in held.popleft()[1]:
                self._send_client(ident, frame)

    def _journal_written(self) -> None:
        """The writer thread finished a commit: record it and send what waited for it."""
        assert self.journal is not None
        self.journal.collect()
        self._tell_aborts()  # the cancels and deadlines now written go to their workers
        self._check_unacked()
        self._release_held()

    def status(self) -> StatusReply:
        """Snapshot of the daemon and every actor."""
        book = self.book
        assert book is not None
        now, mono = time.time(), time.monotonic()
        actors = []
        for slot in self.slots.values():
            pid = slot.proc.pid if slot.proc is not None else 0
            live = pid or slot.remote  # (a remote worker's pid is on its host: no local RSS is read for it)
            actors.append(ActorInfo(
                slot.name, slot.role, pid, ("retiring" if slot.retire else slot.state) if live else slot.state,
                now - slot.started if live else 0.0, slot.restarts, mono - slot.last_heard if live else 0.0,
                _rss(pid) if pid else 0, slot.detail, slot.stats, slot.resources,
            ))
        running = sum(len(s.outstanding) > 0 for s in self.slots.values())
        counters: dict[str, Any] = dict(self.counters)
        counters["standby"] = int(self.standby is not None)
        if self.journal is not None and (self.journal.write_error or self.journal.lost_file):
            counters["journal_error"] = self.journal.lost_file or self.journal.write_error
        for ext in self.extensions:
            ext.status(counters)
        counters.update({f"jobs_{k}": v for k, v in book.counters.items()})
        if self.cluster is not None:
            counters["ray_workers"] = len(self.cluster.members)
            counters.update(self.cluster.counters)
        daemon = DaemonInfo(
            self.cfg.name, os.getpid(), __version__, now - self.started, str(self.rundir.path),
            str(self.state_dir), str(self.log_file), self.workers_wanted, book.queued, running,
            _rss(os.getpid()), counters,
        )
        return StatusReply(daemon, actors)

    def begin_stop(self, reason: str) -> None:
        """Start an orderly stop: abort jobs, stop message, SIGTERM, SIGKILL."""
        if self.stopping_since:
            return
        log.info("event=stopping reason=%s", reason)
        sdnotify.stopping()
        self.stopping_since = time.monotonic()
        assert self.book is not None
        for job in list(self.book.jobs.values()):
            if job.state == "running":
                self._abort(job, "shutdown")
        for slot in self.slots.values():
            if slot.proc is not None or slot.remote:
                slot.state = "stopping"
                self.stop_child(slot, reason)

    def _stop_step(self, mono: float) -> None:
        alive = [s for s in self.slots.values() if s.proc is not None]
        if not alive:
            self.running = False
            return
        elapsed = mono - self.stopping_since
        sup = self.cfg.supervision
        if elapsed > sup.stop_grace and not self.term_sent:
            self.term_sent = True
            for s in alive:
                log.warning("event=sigterm name=%s", s.name)
                assert s.proc is not None
                s.proc.send_signal(signal.SIGTERM)
        if elapsed > sup.stop_grace + sup.term_grace and not self.kill_sent:
            self.kill_sent = True
            for s in alive:
                self._kill(s, "did not stop after SIGTERM")

    def close(self) -> None:
        """Kill what is left, write the journal, remove sockets, segments and the lock.

        Each step runs even if an earlier one fails (a state directory removed
        under a running daemon makes the journal's last commit fail): nothing
        is left behind because of another step's error.
        """
        from actors.shm import sweep_segments

        steps: list[tuple[str, Callable[[], None]]] = [
            ("children", self._kill_children), ("ray", self._cluster_close),
            ("orphans", lambda: sweep("orphans")),  # what jobs left below the daemon, once its own children are gone
            ("journal", self._close_journal),
            ("auth", lambda: self.auth.stop() if self.auth is not None else None),
            ("metrics", lambda: self.metrics.stop() if self.metrics is not None else None),
            ("sockets", lambda: self.ctx.destroy(linger=0) if hasattr(self, "ctx") else None),
            ("segments", lambda: log.info("event=swept segments=%d", sweep_segments(
                self.cfg.shm_key, keep=self.rundir.live_client_segments()))),  # (a live client's are its own)
            ("run dir", self.rundir.release),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the next steps must run all the same
                log.error("event=close-step-failed step=%s reason=%s", what, exc)
        log.info("event=stopped")

    def _kill_children(self) -> None:
        _prefork.release(self.blanks)
        self._release_standby()
        for slot in list(self.slots.values()):
            if slot.proc is not None:
                kill_group(slot.proc.pid)
                slot.proc.wait()
                os.close(slot.pidfd)

    def _close_journal(self) -> None:
        if self.book is not None:
            now = time.time()
            for job in list(self.book.jobs.values()):
                if job.killed:
                    self._finish(job, "killed", now, error_type="JobCancelled", error_message="killed: the daemon stopped")
            self.book.mark_horizon()
        if self.journal is not None:
            self.journal.close()


class _HeldAtCrash:
    """The results a dead daemon's workers held back (:meth:`RunDir.take_all_held`), for its recovery to end
    their jobs with (:meth:`JobBook.recover <actors._jobs.JobBook.recover>`).

    Each record is decoded only when recovery asks for its job (one the
    journal holds as unfinished), as a live worker's frame of one result is,
    within the frame limit.  A result that names a shared-memory segment (an
    array, in its value or its properties) is not given: the segments of the
    dead daemon's run were swept at start-up (:meth:`Supervisor.open`), and a
    handle to a removed segment is never handed out.  That job, and one whose
    record does not decode, is left to the rest of recovery (retried, or
    ``worker-lost`` as begun), and the log says why.
    """

    def __init__(self, records: dict[int, tuple[str, bytes]], limits: Limits, prefix: str) -> None:
        self.records = records
        self.limits = limits
        self.prefix = prefix  # this daemon's segment names, the dead one's too (same name, same run directory)
        self.ended = 0  # results given

    def take(self, job_id: int) -> tuple[str, JobDone] | None:
        """``(the worker's name, its result)`` for a job, or None; each record is given once."""
        found = self.records.pop(job_id, None)
        if found is None:
            return None
        identity, raw = found
        try:
            done = decode_result(raw, self.limits, self.prefix)
        except ProtocolError as exc:
            log.error("event=bad-held-result job=%d worker=%s reason=%s detail=recovered as begun",
                      job_id, identity, exc)
            return None
        try:
            decode_result(raw, self.limits, None)  # the same, refusing array handles (and nothing else)
        except ProtocolError:
            log.warning("event=held-result-unrecoverable job=%d worker=%s detail=its result refers to shared "
                        "memory of the dead daemon, removed at start-up; recovered as begun (retried, or "
                        "worker-lost)", job_id, identity)
            return None
        if done.job_id != job_id:
            log.error("event=bad-held-result job=%d worker=%s reason=the record holds job %d's result "
                      "detail=recovered as begun", job_id, identity, done.job_id)
            return None
        self.ended += 1
        return identity.rpartition(".")[0] or identity, done


def setup_logging(cfg: Config, foreground: bool) -> None:
    """Log to ``<state dir>/daemon.log`` (and stderr in the foreground), one grep-able line per event, the
    children's output included (:mod:`actors._childoutput`); SIGHUP reopens the file (after logrotate moved it)."""
    cfg.make_state_dir()
    one_line_logging("supervisor", sys.stderr if foreground else None, str(cfg.state_dir / "daemon.log"),
                     getattr(logging, cfg.daemon.log_level.upper(), logging.INFO))
    output = _childoutput.start()
    signal.signal(signal.SIGHUP, lambda *_: output.reopen())


def serve(cfg: Config, foreground: bool = False, ready_fd: int | None = None) -> int:
    """Run a daemon in this process until it is stopped; returns the exit code.

    ``ready_fd``: the write end of a readiness pipe (``--ready-fd``, or a
    private daemon's fork): :data:`actors._launch.READY` is written to it, and
    it is closed, once the sockets are bound and the workers started, so that
    whoever started this daemon learns at once that requests will be answered
    (:func:`actors._launch.wait_signal`).  An exit before that closes it unwritten.
    """
    os.umask(0o077)  # journal, log, keys: this user's only (children get the user's own umask back)
    try:
        become_subreaper()  # what a job starts in a session of its own comes back here, not to init (_subreaper)
    except OSError as exc:  # (a kernel before 3.4): such processes outlive the daemon, as they did before
        sys.stderr.write(f"ensemble: warning: {exc}: processes a job starts with setsid may outlive the daemon\n")
    keep_exact_values()  # a job's tuples, sets, datetimes... pass through as they came (actors._values)
    # the first workers are forked now, while nothing is open yet (see _prefork); they wait for their orders
    keep_out = () if ready_fd is None else (ready_fd,)
    blanks = _prefork.prefork(cfg.worker_count, keep_out) if _prefork.enabled() else []
    open_files = raise_open_files()  # the daemon's own: one descriptor per client connection (its children: not)
    sup: Supervisor | None = None
    try:
        setup_logging(cfg, foreground)
        sup = Supervisor(cfg)
        sup.blanks = blanks
        sup.open()
    except BaseException as exc:
        _prefork.release(blanks)
        if sup is not None and sup.rundir.holds_lock():  # this name's daemon: what it opened goes, and why
            log.critical("event=start-failed reason=%s", exc)  # (daemon.err, where the traceback goes, is
            sup.close()  # truncated by the next start, and cannot be written on a full disk)
        raise
    log.info("event=start name=%s pid=%d version=%s workers=%d run_dir=%s open_files=%d", cfg.name, os.getpid(),
             __version__, sup.workers_wanted, sup.rundir.path, open_files)
    try:
        sup.start_children()  # joins the Ray cluster too, when configured
    except BaseException:
        sup.close()
        raise
    if sup.owner_gone:  # a private daemon whose owner died while it started
        sup.begin_stop("owner exited")
    if ready_fd is not None:
        _say_ready(ready_fd)
    code = sup.run()
    private = os.environ.get("ENSEMBLE_PRIVATE_DIR")
    if sup.owner_gone and private:  # nobody is left to remove a private daemon's directory: do it here
        shutil.rmtree(private, ignore_errors=True)
    return code


_FULL_COLLECTION_AFTER = 1000  # collections of the middle generation before a full one is considered (Python: 10)


def _collect_rarely() -> None:
    """The daemon's own policy for Python's cyclic collector (its children start with the default).

    Every queued job is a few tracked objects (its ``Job``, spec and argument
    list), and a full collection walks them all: 100,000 queued jobs made 17
    full passes of 80-100 ms in 7 s of submits, each a stall of the loop.
    What start-up built is frozen out of every pass, and a full pass is
    considered a hundred times less often; the loop makes little cyclic
    garbage (young collections still run as usual and catch most of it).
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _FULL_COLLECTION_AFTER)


def _say_ready(fd: int) -> None:
    """Write the ready byte to the readiness pipe and close it (its reader may be gone: then nobody waits)."""
    from actors._launch import READY

    try:
        os.write(fd, READY)
    except OSError:  # EPIPE: the starter stopped waiting
        pass
    finally:
        os.close(fd)


def main() -> None:
    """``python -m actors.supervisor CONFIG_JSON [--foreground] [--ready-fd=N]`` (used by ``ensemble up``)."""
    cfg = Config.from_json(sys.argv[1])
    ready = [a.removeprefix("--ready-fd=") for a in sys.argv[2:] if a.startswith("--ready-fd=")]
    try:
        code = serve(cfg, foreground="--foreground" in sys.argv[2:], ready_fd=int(ready[-1]) if ready else None)
    except EnsembleError as exc:
        sys.stderr.write(f"ensemble: error: {exc}\n")
        sys.exit(1)
    sys.exit(code)

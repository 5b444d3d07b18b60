"""The supervisor daemon: starts, watches and restarts every child; owns the job queue.

One poll loop, one thread.  Each iteration: read client requests (control
ROUTER) and child messages (internal ROUTER), reap children whose pidfd became
readable, run timers (heartbeats, aborts, kills, deadlines), hand queued jobs
to workers with free credit, commit the journal in one transaction (group
commit), and only then send the acknowledgements and results of the iteration.

Run it with ``ensemble up`` (background) or ``ensemble up --foreground``.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import zmq

from actors import __version__
from actors._errors import (
    DaemonError, EnsembleError, JobNotFound, JobRefused, PermissionDenied, ProtocolError, QueueFull, code_of,
)
from actors._jobfn import check_allowed, check_name, compile_allow
from actors._jobs import Job, JobBook
from actors._journal import Journal
from actors._rundir import RunDir
from actors import _sdnotify as sdnotify
from actors._spawn import kill_group, spawn
from actors.config import Config
from actors.messages import (
    AbortJob, Ack, ActorInfo, Cancel, DaemonInfo, Dispatch, Error, JobSpec, GetJobs, Heartbeat, Hello, JobInfo,
    JobInfos, JobsDone, JobUpdate, Limits, ListJobs, Message, Ping, Pong, RunJobs, Scale, Shutdown,
    Status, StatusReply, Stop, Submit, Submitted, Unwatch, Watch, decode, encode, peek_corr,
    AudioEvent, SampleDrop, SampleInfo, SampleInfos, SampleList, SampleLoad, VoicesDone, VoicesOp,
    ParamInfo, ParamInfos, ParamList, ParamSet, ParamValues, RunAsync, RunAsyncResult, RunSync, ScriptError,
    ScriptLoad, ScriptReady, Recall, Recalled, TaskSubmit,
)

log = logging.getLogger("ensemble.supervisor")
_DRAIN = 2000  # messages read per socket per iteration
_BUFFERED_WORK = 0.02  # seconds of work the dispatch window aims to keep queued at each worker


# What each remote role may ask for (a local client, the daemon's own user, may ask for anything).
_CLIENT_REQUESTS = frozenset({Ping, Submit, Cancel, GetJobs, ListJobs, Watch, Unwatch})
_ROLE_REQUESTS: dict[str, frozenset[type]] = {
    "client": _CLIENT_REQUESTS,
    "admin": _CLIENT_REQUESTS | {Status, Scale, Shutdown, AudioEvent, SampleLoad, SampleDrop, SampleList,
                                 ScriptLoad, ParamSet, ParamList},
}
_ROLE_HINT = {
    "client": "a client key submits jobs and reads or cancels its own; ask the operator for an admin key "
              "(`ensemble keys add-admin NAME`) to manage the daemon",
    "admin": "only the daemon's own user may send it, through the local socket",
}
_CONTROL = str.maketrans({c: f"\\x{c:02x}" for c in range(32)} | {127: "\\x7f"})


def _esc(text: str) -> str:
    """A peer-supplied value made safe for a one-line log record (control characters escaped, length capped)."""
    text = text.translate(_CONTROL)
    return text if len(text) <= 300 else text[:300] + "..."


# What a remote worker may send (scripts, voices and samples are the local children's business).
_REMOTE_WORKER_SENDS = (Heartbeat, JobsDone, JobUpdate, Recalled, Hello)
_TCP = b"\x00\xfeTCP:"  # address prefix of tcp clients: ZeroMQ's own ids are 5 bytes, so none collides
_REFUSED_CACHE = 4096  # job names whose check result is remembered


@dataclass(frozen=True)
class Peer:
    """Who sent a request: ``local`` (the daemon's own user, over the 0700 run dir) or a remote key's role."""

    role: str  # local | client | admin
    name: str = ""  # the key's name (remote)
    addr: bytes = b""  # where replies and pushes go

    @property
    def owner(self) -> str:
        """What jobs it submits are recorded under ("" for local)."""
        return "" if self.role == "local" else f"{self.role}:{self.name}"


LOCAL = Peer("local")


class _KeyRoles:
    """ZAP policy: which roles each tcp endpoint admits (the worker endpoint: workers; the client one: the rest)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[str, str]] = {}  # z85 public key -> (role, name); replaced, never mutated

    def callback(self, domain: str, key: bytes) -> bool:
        found = self.keys.get(key)
        if found is None:
            return False
        return (found[0] == "worker") == (domain == "ensemble-worker")


@dataclass
class Slot:
    """One supervised child position (``worker-3``), across its incarnations."""

    name: str
    role: str
    module: str
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    incarnation: int = 0
    identity: bytes = b""
    state: str = "starting"  # starting | running | failed | stopping
    started: float = 0.0
    last_heard: float = 0.0
    ready: bool = False
    restarts: int = 0
    restart_times: collections.deque[float] = field(default_factory=collections.deque)
    stats: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    expected_exit: bool = False  # we killed it on purpose (job kill, retire): no intensity count
    retire: bool = False
    outstanding: collections.deque[int] = field(default_factory=collections.deque)
    remote: bool = False  # a worker that joined over tcp (no process of ours; liveness by heartbeat)
    sock: Any = None  # the ROUTER it talks through (internal ipc, or the tcp one)
    key: bytes = b""  # a remote worker's CURVE public key: its frames must carry it


def _with(idents: tuple[bytes, ...] | None, ident: bytes) -> tuple[bytes, ...]:
    """A watcher tuple with ``ident`` in it."""
    if not idents:
        return (ident,)
    return idents if ident in idents else (*idents, ident)


def _inline(value: Any, prefix: str) -> Any:
    """Shared-memory arrays (this daemon's, named with ``prefix``) as bytes, for a worker on another host."""
    from actors.messages import ArrayHandle
    from actors.shm import SharedArray, walk

    def leaf(v: Any) -> Any:
        if type(v) is not ArrayHandle:
            return v
        seg = SharedArray.attach(v, readonly=True, prefix=prefix)
        try:
            return seg.array.copy()
        finally:
            seg.close()

    return walk(value, leaf)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Supervisor:
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
        self._worker_seq = 0
        self.started = time.time()
        self.running = True
        self.stopping_since = 0.0
        self.term_sent = False
        self.kill_sent = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.replies: list[tuple[bytes, bytes]] = []  # sent after the journal commit
        self.control_tcp: Any = None
        self.internal_tcp: Any = None
        self.remote_slots: dict[bytes, Slot] = {}  # routing id on the tcp worker endpoint -> its slot
        self._remote_seq = 0
        self.auth: Any = None
        self.roles = _KeyRoles()
        self._allowed_mtime = 0.0
        self.allow = compile_allow(cfg.jobs.allow)
        self.shm_prefix = f"ensemble.{cfg.shm_key}."
        self.internal_token = secrets.token_hex(16)  # the controller's proof for TaskSubmit (given at spawn)
        self._peer = LOCAL  # who sent the request being handled
        self.pushes: dict[bytes, list[JobInfo]] = {}
        self.progress_pushes: dict[bytes, dict[int, JobInfo]] = {}
        self._module_ok: dict[str, str] = {}  # job name -> "" (fine) or why it is refused; bounded
        self._module_ok_remote: dict[str, str] = {}
        self.journal: Journal | None = None
        self.book: JobBook | None = None
        self.metrics: Any = None
        self.job_seconds = 0.0  # moving average of a job's run time (sizes the dispatch window)
        self.samples: dict[str, SampleInfo] = {}  # the shared-memory sample registry
        self.voice_ops: dict[int, bytes] = {}  # kill_voices_and_call token -> worker identity
        self.script_path = str(Path(cfg.audio.script).resolve()) if cfg.audio.script else ""
        self.script_ready = False  # the controller ran module code, parameters and on_load
        self.params: dict[str, ParamInfo] = {}
        self.script_errors: collections.deque[str] = collections.deque(maxlen=20)

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        """Take the lock, sweep what a killed daemon left, bind sockets, open the journal."""
        self.rundir.acquire()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        from actors.shm import sweep_segments

        swept = sweep_segments(self.cfg.shm_key)
        if swept:
            log.warning("event=sweep segments=%d detail=shared-memory segments of a dead daemon removed", swept)
        self.journal = Journal(self.state_dir / "jobs.sqlite3")
        self.book = JobBook(self.journal)
        q, rq, lost = self.book.recover(time.time())
        self.journal.commit()
        if q or rq or lost:
            log.info("event=recover queued=%d requeued=%d worker_lost=%d", q, rq, lost)
        self.ctx = zmq.Context()
        self.control = self._bind(self.rundir.control, hwm=100_000)
        self.internal = self._bind(self.rundir.internal, hwm=0)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.internal, zmq.POLLIN)
        if self.cfg.daemon.tcp or self.cfg.daemon.client_tcp:
            self._bind_tcp()
        if self.cfg.daemon.metrics_port:
            from actors._metrics import Metrics

            self.metrics = Metrics()
            port = self.metrics.start(self.cfg.daemon.metrics_port, self.cfg.daemon.metrics_host)
            log.info("event=metrics url=http://%s:%d/metrics", self.cfg.daemon.metrics_host, port)

    def _bind_tcp(self) -> None:
        """CURVE-secured tcp endpoints, each admitting only its roles' keys (refused without keys).

        The worker endpoint (``daemon.tcp``) admits ``worker`` keys, the client
        endpoint (``daemon.client_tcp``) ``client`` and ``admin`` keys: separate
        ZAP domains decided by :class:`_KeyRoles`.  Handover is off, so a
        connection can never take over the routing id of one that is alive.
        """
        from zmq.auth.thread import ThreadAuthenticator

        from actors._keys import keys_dir, server_keys, unassigned_keys

        kdir = keys_dir(self.cfg)
        public, secret = server_keys(kdir)  # ConfigError without keys: nothing is bound
        self.keys_dir = kdir
        self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("ensemble.zap"))
        self.auth.start()
        for domain in ("ensemble-worker", "ensemble-client"):
            self.auth.configure_curve_callback(domain, credentials_provider=self.roles)
        self._refresh_allowed(force=True)
        for name in unassigned_keys(kdir):
            log.warning("event=key-without-role name=%s detail=grants nothing; re-issue it with "
                        "`ensemble keys add-worker|add-client|add-admin`", _esc(name))
        for field_name in ("client_tcp", "tcp"):
            endpoint = getattr(self.cfg.daemon, field_name)
            if not endpoint:
                continue
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.daemon.max_frame + 4096)
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.zap_domain = b"ensemble-worker" if field_name == "tcp" else b"ensemble-client"
            sock.bind(endpoint)
            self.poller.register(sock, zmq.POLLIN)
            if field_name == "tcp":
                self.internal_tcp = sock
            else:
                self.control_tcp = sock
            log.info("event=bind endpoint=%s mechanism=CURVE allowed_keys=%d", endpoint, len(self.roles.keys))

    def _allowed_stamp(self) -> float:
        try:
            d = self.keys_dir / "allowed"
            dirs = [d] + [p for p in d.iterdir() if p.is_dir()]
            return max([p.stat().st_mtime for p in dirs] + [f.stat().st_mtime for p in dirs for f in p.iterdir()])
        except (OSError, ValueError, AttributeError):
            return 0.0

    def _refresh_allowed(self, force: bool = False) -> None:
        """Re-read the allow-lists when they changed (revocation without a restart)."""
        from actors._keys import allowed_keys

        stamp = self._allowed_stamp()
        if force or stamp != self._allowed_mtime:
            self._allowed_mtime = stamp
            self.roles.keys = allowed_keys(self.keys_dir)
            if not force:
                log.info("event=allow-list-reloaded keys=%d", len(self.roles.keys))
            for slot in [s for s in self.slots.values() if s.remote and s.key not in self.roles.keys]:
                self._remote_gone(slot, "its key was revoked")

    def _recv_tcp(self, sock: Any) -> tuple[list[bytes], bytes, str, str] | None:
        """One message from a CURVE socket as ``(frames, key, role, name)``; None for a key revoked since."""
        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        user = frames[-1].get("User-Id")
        key = user.encode() if user else b""
        found = self.roles.keys.get(key)
        if found is None:
            self.counters["revoked_frames"] += 1
            return None
        return [f.bytes for f in frames], key, found[0], found[1]

    def _bind(self, path: Path, hwm: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.daemon.max_frame + 4096)
        old = os.umask(0o177)
        try:
            sock.bind(f"ipc://{path}")
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return sock

    # ------------------------------------------------------------------ children
    def start_children(self) -> None:
        """Start the controller, the processor and the workers."""
        self._add_slot("controller", "controller", "controller.actor")
        self._add_slot("processor", "processor", "audio.processor")
        for _ in range(self.workers_wanted):
            self._add_worker()

    def _add_worker(self) -> Slot:
        self._worker_seq += 1
        return self._add_slot(f"worker-{self._worker_seq}", "worker", "actors.worker")

    def _add_slot(self, name: str, role: str, module: str) -> Slot:
        slot = Slot(name, role, module)
        self.slots[name] = slot
        self._spawn(slot)
        return slot

    def _spawn(self, slot: Slot) -> None:
        slot.incarnation += 1
        ident = f"{slot.name}.{slot.incarnation}"
        nice = self.cfg.supervision.worker_nice if slot.role == "worker" else 0
        env = {"ENSEMBLE_INTERNAL_TOKEN": self.internal_token} if slot.role == "controller" else {}
        slot.proc = spawn(slot.module, [self.cfg.to_json(), ident], nice=nice, log_path=self.log_file, env=env)
        slot.identity = ident.encode()
        slot.pidfd = os.pidfd_open(slot.proc.pid)
        slot.state = "starting"
        slot.ready = False
        slot.started = time.time()
        slot.last_heard = time.monotonic()
        slot.expected_exit = False
        slot.stats = {}
        self.by_identity[slot.identity] = slot
        self.by_pidfd[slot.pidfd] = slot
        self.poller.register(slot.pidfd, zmq.POLLIN)
        log.info("event=spawn name=%s pid=%d incarnation=%d", slot.name, slot.proc.pid, slot.incarnation)

    def _kill(self, slot: Slot, reason: str, expected: bool = True) -> None:
        if slot.remote:
            log.warning("event=kill name=%s remote=1 reason=%s", slot.name, reason)
            self._send_child(slot, Stop("kill"))  # the remote worker kills its own process group
            self._remote_gone(slot, reason)
            return
        if slot.proc is not None and slot.proc.poll() is None:
            slot.ready = False  # dying: no more jobs go to it before the reap
            slot.state = "restarting"
            slot.expected_exit = slot.expected_exit or expected
            log.warning("event=kill name=%s pid=%d reason=%s", slot.name, slot.proc.pid, reason)
            kill_group(slot.proc.pid)

    def _reap(self, slot: Slot) -> None:
        proc = slot.proc
        assert proc is not None
        code = proc.wait()
        kill_group(proc.pid)  # whatever it started goes with it
        self.poller.unregister(slot.pidfd)
        del self.by_pidfd[slot.pidfd]
        os.close(slot.pidfd)
        slot.pidfd = -1
        self.by_identity.pop(slot.identity, None)
        slot.proc = None
        slot.ready = False
        log_fn = log.info if slot.expected_exit or slot.retire or self.stopping_since else log.error
        log_fn("event=exit name=%s pid=%d code=%s", slot.name, proc.pid, code)
        self._jobs_lost(slot)
        if self.stopping_since or slot.retire:
            del self.slots[slot.name]
            return
        if not slot.expected_exit:
            now = time.monotonic()
            times = slot.restart_times
            while times and now - times[0] > self.cfg.supervision.restart_period:
                times.popleft()
            if len(times) >= self.cfg.supervision.max_restarts:
                slot.state = "failed"
                slot.detail = (f"gave up: {len(times)} restarts within {self.cfg.supervision.restart_period:g}s "
                               f"(last exit code {code})")
                log.critical("event=child-failed name=%s detail=%s; siblings keep running", slot.name, slot.detail)
                return
            times.append(now)
        slot.restarts += 1
        self._spawn(slot)

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
        if len(self.remote_slots) >= 1024:
            log.warning("event=remote-worker-refused key=%s reason=1024 remote workers already", _esc(name))
            return None
        self._remote_seq += 1
        slot_name = f"remote:{name}#{self._remote_seq}"
        slot = Slot(slot_name, "worker", "", remote=True, sock=sock, identity=ident, started=time.time(),
                    last_heard=time.monotonic(), key=key)
        self.slots[slot_name] = slot
        self.remote_slots[ident] = slot
        log.info("event=remote-worker-joined name=%s pid=%d", _esc(slot_name), msg.pid)
        return slot

    def _remote_gone(self, slot: Slot, reason: str) -> None:
        log.warning("event=remote-worker-gone name=%s reason=%s", _esc(slot.name), reason)
        if self.remote_slots.get(slot.identity) is slot:
            del self.remote_slots[slot.identity]
        self._jobs_lost(slot)
        self.slots.pop(slot.name, None)

    def _jobs_lost(self, slot: Slot) -> None:
        book = self.book
        assert book is not None
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
            if job.killed:
                self._finish_killed(job, now)
            elif i < begun and job.state in ("running", "dispatched"):
                if job.state == "dispatched":
                    book.start(job, slot.name, now, time.monotonic())
                if job.attempts <= job.spec.retries and not self.stopping_since:
                    book.requeue(job, f"worker {slot.name} died (attempt {job.attempts} of {job.spec.retries + 1})")
                else:
                    self._finish(job, "worker-lost", now, error_type="JobLost",
                                 error_message=f"worker {slot.name} died while running the job and no retry was left")
            else:  # it never began: no attempt spent
                if job.state == "running":
                    job.attempts -= 1
                book.requeue(job, "")
        slot.outstanding.clear()

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        signal.signal(signal.SIGTERM, lambda *_: self.begin_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.begin_stop("SIGINT"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        sup = self.cfg.supervision
        next_beat = 0.0
        next_prune = time.monotonic() + 60
        dog = sdnotify.watchdog_interval()
        next_dog = 0.0
        announced = False
        try:
            while self.running:
                events = self.poller.poll(self._poll_timeout_ms())
                for sock, _ in events:
                    if sock is self.control or sock is self.control_tcp:
                        self._drain_control(sock)
                    elif sock is self.internal or sock is self.internal_tcp:
                        self._drain_internal(sock)
                    else:
                        slot = self.by_pidfd.get(sock)
                        if slot is not None:
                            self._reap(slot)
                mono = time.monotonic()
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
                    if self.auth is not None:
                        self._refresh_allowed()
                    if self.metrics is not None:
                        self.metrics.update(self.status())
                self._timers(mono)
                if not self.stopping_since:
                    self._dispatch(mono)
                    if mono >= next_prune:
                        next_prune = mono + 600
                        self._prune()
                else:
                    self._stop_step(mono)
                self._flush()
        finally:
            self.close()
        return 0

    def _poll_timeout_ms(self) -> int:
        timeout = self.cfg.supervision.heartbeat_interval
        if self.stopping_since:
            timeout = min(timeout, 0.05)
        book = self.book
        assert book is not None
        mono = time.monotonic()
        for slot in self.slots.values():
            if slot.outstanding:
                job = book.jobs.get(slot.outstanding[0])
                if job is not None:
                    for t in (job.kill_at, job.deadline_at):
                        if t:
                            timeout = min(timeout, max(0.0, t - mono))
        return max(0, math.ceil(timeout * 1000))

    def _flush(self) -> None:
        assert self.journal is not None
        self.journal.commit()
        for ident, frame in self.replies:
            self._send_client(ident, frame)
        self.replies.clear()
        for ident, infos in self.pushes.items():
            self._send_client(ident, self._encode_for(ident, JobInfos(infos)))
        self.pushes.clear()
        for ident, by_id in self.progress_pushes.items():
            self._send_client(ident, self._encode_for(ident, JobInfos(list(by_id.values()))))
        self.progress_pushes.clear()

    def _encode_for(self, addr: bytes, msg: Message, corr: int = 0) -> bytes:
        """Encode a reply or push; for a client on another host, shared-memory results become bytes."""
        if addr.startswith(_TCP) and isinstance(msg, JobInfos):
            infos = []
            for info in msg.jobs:
                try:
                    infos.append(dataclasses.replace(info, result=_inline(info.result, self.shm_prefix)))
                except EnsembleError:
                    infos.append(info)  # its segment is gone: the handle goes as it is, and fails to map there
            msg = JobInfos(infos)
        return encode(msg, corr)

    def _send_client(self, addr: bytes, frame: bytes) -> None:
        if addr.startswith(_TCP):
            sock, addr = self.control_tcp, addr[len(_TCP):]
        else:
            sock = self.control
        try:
            sock.send_multipart([addr, frame], zmq.NOBLOCK)
        except zmq.Again:
            self.counters["push_dropped"] += 1
        except zmq.ZMQError:  # EHOSTUNREACH: the client is gone
            self.counters["client_gone"] += 1

    def _send_child(self, slot: Slot, msg: Message) -> bool:
        try:
            (slot.sock or self.internal).send_multipart([slot.identity, encode(msg)], zmq.NOBLOCK)
            return True
        except (zmq.ZMQError, ProtocolError):
            return False

    # ------------------------------------------------------------------ control socket
    def _frames(self, sock: Any) -> Iterator[tuple[list[bytes], bytes, str, str]]:
        """Messages waiting on ``sock`` (at most ``_DRAIN``) as ``(frames, key, role, name)``.

        Local sockets give role ``local``; tcp ones only frames from keys still allowed, with their role.
        """
        tcp = sock is self.control_tcp or sock is self.internal_tcp
        for _ in range(_DRAIN):
            try:
                if tcp:
                    got = self._recv_tcp(sock)
                    if got is None:
                        continue
                    self.counters["tcp_frames"] += 1  # only frames from allowed keys get this far
                    yield got
                else:
                    yield sock.recv_multipart(zmq.NOBLOCK), b"", "local", ""
            except zmq.Again:
                return

    def _drain_control(self, sock: Any) -> None:
        tcp = sock is self.control_tcp
        handles = None if tcp else self.shm_prefix
        for parts, _key, role, name in self._frames(sock):
            ident = parts[0]
            addr = _TCP + ident if tcp else ident
            if len(parts) == 3 and parts[1] == b"" and not tcp:  # a local REQ client: keep its delimiter
                frame = parts[2]
            elif len(parts) != 2:
                self.counters["bad_frames"] += 1
                self.replies.append((addr, encode(Error("protocol", f"expected one frame per message, got {len(parts) - 1}"))))
                continue
            else:
                frame = parts[1]
            try:
                corr, msg = decode(frame, self.limits, handles)
            except ProtocolError as exc:
                self.counters["bad_frames"] += 1
                log.warning("event=bad-frame bytes=%d reason=%s", len(frame), _esc(str(exc)))
                self.replies.append((addr, encode(Error("protocol", str(exc)), peek_corr(frame))))
                continue
            self._peer = Peer(role, name, addr)
            self._frame_len = len(frame)
            try:
                reply = self._request(addr, corr, msg)
            except EnsembleError as exc:
                reply = Error(code_of(exc), str(exc))
            except Exception as exc:  # a bug must not take the daemon down
                log.exception("event=request-failed kind=%s", type(msg).__name__)
                reply = Error("daemon", f"internal error handling {type(msg).__name__}: {exc}")
            finally:
                self._peer = LOCAL
            if reply is not None:
                try:
                    self.replies.append((addr, self._encode_for(addr, reply, corr)))
                except ProtocolError as exc:
                    self.replies.append((addr, encode(Error("protocol", f"the reply cannot be sent: {exc}"), corr)))

    def _request(self, ident: bytes, corr: int, msg: Message) -> Message | None:
        handler: Callable[..., Message | None] | None = self._handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"{type(msg).__name__} is not a request the daemon answers")
        role = self._peer.role
        if role != "local" and type(msg) not in _ROLE_REQUESTS[role]:
            self.counters["denied_requests"] += 1
            raise PermissionDenied(f"{type(msg).__name__} is not allowed for a remote {role} key "
                                   f"({self._peer.name!r}); {_ROLE_HINT[role]}")
        return handler(self, ident, corr, msg)

    def _mine(self, job_id: int) -> bool:
        """Whether the requesting peer may see and cancel this job (a client key: only its own)."""
        if self._peer.role != "client":
            return True
        assert self.book is not None
        return self.book.owner_of(job_id) == self._peer.owner

    def _on_ping(self, ident: bytes, corr: int, msg: Ping) -> Message:
        return Pong(__version__, os.getpid())

    def _on_submit(self, ident: bytes, corr: int, msg: Submit) -> Message | None:
        """Client jobs: name rules for everyone, the allow-list for remote keys, limits on every field."""
        remote = self._peer.role != "local"
        cache = self._module_ok_remote if remote else self._module_ok
        for spec in msg.jobs:
            known = cache.get(spec.fn)
            if known is None:
                try:
                    check_allowed(spec.fn, self.allow) if remote else check_name(spec.fn)
                    known = ""
                except EnsembleError as exc:
                    known = str(exc)
                if len(cache) >= _REFUSED_CACHE:
                    cache.clear()
                if len(spec.fn) <= 256:  # longer names are refused cheaply and never kept
                    cache[spec.fn] = known
            if known:
                raise JobRefused(known)
        return self._accept(ident, corr, msg.jobs, msg.watch, internal=False)

    def _on_task_submit(self, ident: bytes, corr: int, msg: TaskSubmit) -> Message | None:
        """The controller's jobs: internal and script functions, proven by the token given at its spawn."""
        if not hmac.compare_digest(msg.token.encode(), self.internal_token.encode()):
            self.counters["denied_requests"] += 1
            raise PermissionDenied("TaskSubmit is the controller's own message; clients submit with Submit")
        for spec in msg.jobs:
            if spec.fn.startswith("script:") and spec.fn.rpartition(":")[0] != f"script:{self.script_path}":
                raise JobRefused(f"job function {spec.fn!r}: only functions of the loaded script "
                                 f"({self.script_path or 'none'}) may run as script tasks")
        return self._accept(ident, corr, msg.jobs, msg.watch, internal=True)

    def _accept(self, ident: bytes, corr: int, jobs: list[JobSpec], watch: bool, internal: bool) -> Message | None:
        book = self.book
        assert book is not None
        if self.stopping_since:
            raise DaemonError("the daemon is stopping; submit again after the next `ensemble up`")
        for spec in jobs:
            if not (1 <= spec.timeout_ms <= 86_400_000 and 0 <= spec.deadline <= 1e9 and 0 <= spec.retries <= 1000
                    and len(spec.name) <= 1024):
                raise JobRefused(f"job {spec.fn}: timeout must be 1..86400000 ms, deadline 0..1e9 s, "
                                 "retries 0..1000 and the name at most 1024 characters")
        limit = self.cfg.jobs.queue_limit
        if len(book.jobs) + len(jobs) > limit:
            raise QueueFull(f"queue full: {len(book.jobs)} unfinished jobs, limit {limit} (jobs.queue_limit); "
                            "retry later or raise the limit")
        nbytes = self._frame_len
        budget = self.cfg.jobs.queue_bytes
        if book.queued_bytes + nbytes > budget:
            raise QueueFull(f"queue full: unfinished jobs hold {book.queued_bytes} bytes of arguments and this "
                            f"submit adds {nbytes}, budget {budget} (jobs.queue_bytes); retry later, pass big "
                            "arrays through shared memory (client.empty), or raise the budget")
        ids = book.accept(jobs, time.time(), self._peer.owner, nbytes, internal)
        self._recall_below(max(spec.priority for spec in jobs) if jobs else 0)
        if watch:
            for jid in ids:
                book.jobs[jid].watchers = (ident,)  # a tuple: 56 bytes a job, where a set costs 216
        self.replies.append((ident, encode(Submitted(ids), corr)))
        return None

    def _recall_below(self, priority: int) -> None:
        """Ask workers to give back prefetched jobs of lower priority than a newly queued one."""
        book = self.book
        assert book is not None
        for slot in self.slots.values():
            if len(slot.outstanding) < 2:
                continue
            ids = []
            for jid in list(slot.outstanding)[1:]:
                job = book.jobs.get(jid)
                if job is not None and job.state == "dispatched" and job.spec.priority < priority and not job.recalling:
                    job.recalling = True
                    ids.append(jid)
            if ids:
                self._send_child(slot, Recall(ids))

    def _recalled(self, slot: Slot, msg: Recalled) -> None:
        book = self.book
        assert book is not None
        for jid in msg.job_ids:
            job = book.jobs.get(jid)
            if job is None or jid not in slot.outstanding:
                continue
            slot.outstanding.remove(jid)
            job.recalling = False
            book.requeue(job, "")
        for jid in slot.outstanding:  # those that had started meanwhile stay where they are
            job = book.jobs.get(jid)
            if job is not None:
                job.recalling = False

    def _on_cancel(self, ident: bytes, corr: int, msg: Cancel) -> Message | None:
        book = self.book
        assert book is not None
        if not self._mine(msg.job_id):
            raise JobNotFound(f"job {msg.job_id} is unknown to this daemon (never submitted, or pruned)")
        job = book.jobs.get(msg.job_id)
        if job is None:
            infos = book.infos([msg.job_id])
            if msg.job_id not in infos:
                raise JobNotFound(f"job {msg.job_id} is unknown to this daemon (never submitted, or pruned)")
            return Ack(f"job {msg.job_id} had already ended ({infos[msg.job_id].state})")
        if job.state == "queued":
            self._finish(job, "cancelled", time.time(), error_type="JobCancelled", error_message="cancelled before it started")
            return Ack("cancelled")
        self._abort(job, "cancel")
        if msg.block:
            if job.blockers is None:
                job.blockers = []
            job.blockers.append((ident, corr))
            return None
        return Ack("abort requested")

    def _on_get(self, ident: bytes, corr: int, msg: GetJobs) -> Message:
        assert self.book is not None
        if len(msg.job_ids) > 100_000:
            raise ProtocolError(f"GetJobs asks for {len(msg.job_ids)} jobs; at most 100000 at once")
        ids = [j for j in msg.job_ids if self._mine(j)]
        infos = self.book.infos(ids)
        missing = [j for j in msg.job_ids if j not in infos]
        if missing:
            raise JobNotFound(f"job(s) {', '.join(map(str, missing))} unknown to this daemon (never submitted, or pruned)")
        return JobInfos([infos[j] for j in msg.job_ids])

    def _on_list(self, ident: bytes, corr: int, msg: ListJobs) -> Message:
        assert self.book is not None
        owner = self._peer.owner if self._peer.role == "client" else None
        return JobInfos(self.book.recent(list(msg.states), max(1, min(msg.limit, 10_000)), owner))

    def _on_watch(self, ident: bytes, corr: int, msg: Watch) -> Message:
        assert self.book is not None
        for jid in msg.job_ids[:100_000]:
            job = self.book.jobs.get(jid)
            if job is not None and self._mine(jid):
                job.watchers = _with(job.watchers, ident)
                if msg.progress:
                    job.progress_watchers = _with(job.progress_watchers, ident)
        return self._on_get(ident, corr, GetJobs(msg.job_ids))

    def _on_unwatch(self, ident: bytes, corr: int, msg: Unwatch) -> Message:
        assert self.book is not None
        for jid in msg.job_ids:
            job = self.book.jobs.get(jid)
            if job is not None:
                job.watchers = tuple(w for w in job.watchers or () if w != ident) or None
                job.progress_watchers = tuple(w for w in job.progress_watchers or () if w != ident) or None
        return Ack()

    def _on_status(self, ident: bytes, corr: int, msg: Status) -> Message:
        return self.status()

    def _on_scale(self, ident: bytes, corr: int, msg: Scale) -> Message:
        if not 0 <= msg.workers <= 1024:
            raise EnsembleError(f"cannot scale to {msg.workers} workers: give 0..1024")
        self.scale(msg.workers)
        return Ack(f"workers: {msg.workers}")

    def _on_shutdown(self, ident: bytes, corr: int, msg: Shutdown) -> Message:
        self.begin_stop("shutdown request")
        return Ack("stopping")

    def _processor(self) -> Slot:
        slot = self.slots.get("processor")
        if slot is None or not slot.ready:
            state = slot.state if slot is not None else "absent"
            raise DaemonError(f"the processor is not running (state: {state}); see `ensemble status`")
        return slot

    def _on_audio_event(self, ident: bytes, corr: int, msg: AudioEvent) -> Message:
        if msg.op not in ("note_on", "note_off", "cc", "kill_all"):
            raise ProtocolError(f"unknown audio event {msg.op!r}: note_on, note_off, cc or kill_all")
        if not (0 <= msg.note <= 127 and 0.0 <= msg.velocity <= 1.0 and 0.0 <= msg.delay <= 3600):
            raise ProtocolError("audio event out of range: note 0..127, velocity 0..1, delay 0..3600 s")
        if msg.sample and msg.sample not in self.samples:
            raise DaemonError(f"no sample named {msg.sample!r} is loaded (`ensemble sample list`)")
        if not self._send_child(self._processor(), msg):
            raise DaemonError("the processor is not reachable right now; try again")
        return Ack()

    def _on_sample_load(self, ident: bytes, corr: int, msg: SampleLoad) -> Message:
        from actors.shm import SharedArray, segment_prefix

        info = msg.sample
        if not info.name or len(info.name) > 128:
            raise ProtocolError("a sample needs a name of 1..128 characters")
        if not info.handle.name.startswith(segment_prefix(self.cfg.shm_key)):
            raise ProtocolError(f"segment {info.handle.name!r} does not belong to daemon {self.cfg.name!r}")
        if not (len(info.handle.shape) in (1, 2) and 1000 <= info.samplerate <= 768000):
            raise ProtocolError("a sample is [frames] or [frames, channels] at 1000..768000 Hz")
        SharedArray.attach(info.handle, readonly=True, prefix=self.shm_prefix).close()  # ours, exists, big enough
        old = self.samples.get(info.name)
        frames = info.handle.shape[0]
        channels = info.handle.shape[1] if len(info.handle.shape) == 2 else 1
        info = SampleInfo(info.name, info.handle, info.samplerate, info.root_key, frames, channels)
        self.samples[info.name] = info
        if old is not None and old.handle.name != info.handle.name:
            self._unlink(old)
        proc = self.slots.get("processor")
        if proc is not None and proc.ready:
            self._send_child(proc, SampleLoad(info))
        log.info("event=sample-load name=%s frames=%d segment=%s", _esc(info.name), frames, info.handle.name)
        return Ack(f"sample {info.name!r}: {frames} frames")

    def _unlink(self, info: SampleInfo) -> None:
        try:
            os.unlink(f"/dev/shm/{info.handle.name}")
        except FileNotFoundError:
            pass

    def _on_sample_drop(self, ident: bytes, corr: int, msg: SampleDrop) -> Message:
        info = self.samples.pop(msg.name, None)
        if info is None:
            raise DaemonError(f"no sample named {msg.name!r} is loaded")
        proc = self.slots.get("processor")
        if proc is not None and proc.ready:
            self._send_child(proc, msg)
        self._unlink(info)  # mappings stay valid until the processor lets go of them
        return Ack(f"sample {msg.name!r} dropped")

    def _on_sample_list(self, ident: bytes, corr: int, msg: SampleList) -> Message:
        return SampleInfos(list(self.samples.values()))

    def _on_script_load(self, ident: bytes, corr: int, msg: ScriptLoad) -> Message:
        path = Path(msg.path or self.script_path)
        if not msg.path and not self.script_path:
            raise DaemonError("no script is loaded; give a path: `ensemble load path/to/instrument.py`")
        if msg.path and self._peer.role != "local":  # a remote admin loads only from where the operator said
            real = path.resolve()
            dirs = [Path(d).resolve() for d in self.cfg.audio.script_dirs]
            if not any(real.is_relative_to(d) for d in dirs):
                raise PermissionDenied(f"script {_esc(msg.path)} is outside the script directories a remote admin "
                                       f"may load from ({', '.join(map(str, dirs)) or 'none configured'}; "
                                       "[audio] script_dirs)")
        if not path.is_file():
            raise DaemonError(f"script {_esc(str(path))} does not exist")
        controller = self.slots.get("controller")
        if controller is None or not controller.ready:
            raise DaemonError("the controller is not running; see `ensemble status`")
        self.script_path = str(path.resolve())
        self.script_ready = False
        self._send_child(controller, ScriptLoad(self.script_path, msg.reload))
        log.info("event=script-load path=%s reload=%s", self.script_path, msg.reload)
        return Ack(f"loading {self.script_path}")

    def _on_param_set(self, ident: bytes, corr: int, msg: ParamSet) -> Message:
        if msg.name not in self.params:
            raise DaemonError(f"no parameter named {msg.name!r}" + (
                f"; known: {', '.join(self.params)}" if self.params else "; no script with parameters is loaded"))
        p = self.params[msg.name]
        if p.kind != "choice":
            from controller._host import ParamDef

            try:
                value = ParamDef(p.name, p.long_name, p.default, p.min, p.max, p.kind).coerce(msg.value)
            except ValueError as exc:
                raise DaemonError(str(exc)) from None
            msg = ParamSet(msg.name, value)
        controller = self.slots.get("controller")
        if controller is None or not controller.ready or not self._send_child(controller, msg):
            raise DaemonError("the controller is not running; see `ensemble status`")
        return Ack(f"{msg.name} = {msg.value!r} queued")

    def _on_param_list(self, ident: bytes, corr: int, msg: ParamList) -> Message:
        return ParamInfos(list(self.params.values()), self.script_path)

    def _script_message(self, slot: Slot, msg: Message) -> None:
        """Route script traffic between controller and processor, and record script errors."""
        proc, ctl = self.slots.get("processor"), self.slots.get("controller")
        if isinstance(msg, ScriptReady):
            self.script_ready = True
            if proc is not None and proc.ready:
                self._send_child(proc, ScriptLoad(msg.path))
        elif isinstance(msg, (RunSync, RunAsyncResult)):
            if proc is not None and proc.ready:
                self._send_child(proc, msg)
        elif isinstance(msg, RunAsync):
            if ctl is not None and ctl.ready:
                self._send_child(ctl, msg)
            elif proc is not None:
                self._send_child(proc, RunAsyncResult(msg.token, False, None, "the controller is not running"))
        elif isinstance(msg, ParamValues):
            self.params = {p.name: p for p in msg.params}
            if proc is not None and proc.ready:
                self._send_child(proc, msg)
        elif isinstance(msg, ParamSet):
            if ctl is not None and ctl.ready:
                self._send_child(ctl, msg)
        elif isinstance(msg, ScriptError):
            text = f"{msg.context} {msg.kind}: {msg.message}" + (f" ({msg.location})" if msg.location else "")
            self.script_errors.append(text)
            self.counters["script_errors"] += 1
            slot.detail = text[:600]
            log.error("event=script-%s context=%s detail=%s location=%s", msg.kind, msg.context, msg.message, msg.location)

    _handlers: dict[type, Callable[..., Message | None]] = {
        Ping: _on_ping, Submit: _on_submit, TaskSubmit: _on_task_submit, Cancel: _on_cancel, GetJobs: _on_get, ListJobs: _on_list,
        Watch: _on_watch, Unwatch: _on_unwatch, Status: _on_status, Scale: _on_scale, Shutdown: _on_shutdown,
        AudioEvent: _on_audio_event, SampleLoad: _on_sample_load, SampleDrop: _on_sample_drop,
        SampleList: _on_sample_list, ScriptLoad: _on_script_load, ParamSet: _on_param_set, ParamList: _on_param_list,
    }

    # ------------------------------------------------------------------ internal socket
    def _drain_internal(self, sock: Any) -> None:
        """Child messages: local children on the ipc socket, remote workers on the tcp one, never mixed.

        A frame counts for a slot only when it comes in on that slot's socket,
        with its routing id, and (tcp) under the key the slot joined with.
        """
        tcp = sock is self.internal_tcp
        table = self.remote_slots if tcp else self.by_identity
        handles = None if tcp else self.shm_prefix
        for parts, key, _role, name in self._frames(sock):
            slot = table.get(parts[0])
            if tcp:
                if slot is None and len(parts) == 2:
                    slot = self._remote_hello(sock, parts[0], key, name, parts[1])
                elif slot is not None and not hmac.compare_digest(slot.key, key):
                    self.counters["forged_frames"] += 1
                    continue
            if slot is None or len(parts) != 2:
                self.counters["stray_frames"] += 1
                continue
            try:
                _, msg = decode(parts[1], self.limits, handles)
            except ProtocolError as exc:
                self.counters["bad_frames"] += 1
                log.error("event=bad-child-frame name=%s reason=%s", _esc(slot.name), _esc(str(exc)))
                continue
            if slot.remote and not isinstance(msg, _REMOTE_WORKER_SENDS):
                self.counters["stray_frames"] += 1
                continue
            slot.last_heard = time.monotonic()
            if isinstance(msg, Heartbeat):
                slot.stats = msg.stats
            elif isinstance(msg, JobsDone):
                self._jobs_done(slot, msg)
            elif isinstance(msg, JobUpdate):
                self._job_update(slot, msg)
            elif isinstance(msg, Recalled):
                self._recalled(slot, msg)
            elif isinstance(msg, Hello):
                slot.ready = True
                slot.state = "running"
                log.info("event=ready name=%s pid=%d", slot.name, msg.pid)
                if slot.role == "processor":
                    for info in self.samples.values():  # a restarted processor maps them again
                        self._send_child(slot, SampleLoad(info))
                    if self.script_ready:
                        self._send_child(slot, ScriptLoad(self.script_path))
                        self._send_child(slot, ParamValues(list(self.params.values())))
                elif slot.role == "controller" and self.script_path:
                    self.script_ready = False
                    self._send_child(slot, ScriptLoad(self.script_path))
            elif isinstance(msg, VoicesOp):
                self._voices_op(slot, msg)
            elif isinstance(msg, (ScriptReady, RunSync, RunAsync, RunAsyncResult, ParamValues, ParamSet, ScriptError)):
                self._script_message(slot, msg)
            elif isinstance(msg, VoicesDone):
                worker = self.voice_ops.pop(msg.token, None)
                target = self.by_identity.get(worker) if worker else None
                if target is not None:
                    self._send_child(target, msg)
            else:
                self.counters["stray_frames"] += 1

    def _voices_op(self, worker: Slot, msg: VoicesOp) -> None:
        proc = self.slots.get("processor")
        if proc is None or not proc.ready or not self._send_child(proc, msg):
            self._send_child(worker, VoicesDone(msg.token, False, "no processor is running"))
            return
        if msg.op == "suspend":
            self.voice_ops[msg.token] = worker.identity

    def _window(self) -> int:
        """Jobs to hand one worker at once: about ``_BUFFERED_WORK`` seconds of work, at most ``jobs.window``.

        Short jobs travel in big batches (throughput); long ones one or two at a
        time, so an idle worker never waits while another holds a backlog.
        """
        per_job = self.job_seconds
        if per_job <= 0:
            return min(2, self.cfg.jobs.window)
        return max(1, min(self.cfg.jobs.window, int(_BUFFERED_WORK / per_job)))

    def _jobs_done(self, slot: Slot, msg: JobsDone) -> None:
        book = self.book
        assert book is not None
        now = time.time()
        if msg.results:
            first = msg.results[0]
            if first.started:
                took = max(1e-6, (now - first.started) / len(msg.results))
                self.job_seconds = took if self.job_seconds <= 0 else 0.8 * self.job_seconds + 0.2 * took
        for done in msg.results:
            job = book.jobs.get(done.job_id)
            if job is None or done.job_id not in slot.outstanding:
                self.counters["stale_results"] += 1
                continue
            if slot.outstanding[0] == done.job_id:
                slot.outstanding.popleft()
            else:
                slot.outstanding.remove(done.job_id)
            if job.state == "dispatched" and not job.abort_reason:  # ran and ended in a batch behind the head
                book.start(job, slot.name, done.started or now, time.monotonic())
            job.progress, job.status, job.properties = done.progress, done.status, done.properties
            if done.started and job.state == "running":
                job.started = done.started
            if job.abort_reason:
                etype = "JobTimeout" if job.abort_reason == "deadline" else "JobCancelled"
                state = "cancelled"
                msg_text = {"deadline": f"deadline of {job.spec.deadline:g}s passed",
                            "cancel": "cancelled", "shutdown": "the daemon stopped"}.get(job.abort_reason, job.abort_reason)
                if not done.ok and done.error_type not in ("JobCancelled", "JobTimeout"):
                    msg_text += f"; the job then raised {done.error_type}: {done.error_message}"
                self._finish(job, state, now, done.value, etype, msg_text, done.traceback)
            elif done.ok:
                self._finish(job, "done", now, done.value)
            else:
                self._finish(job, "failed", now, None, done.error_type, done.error_message, done.traceback)
        self._advance(slot, now, time.monotonic())
        if slot.retire and not slot.outstanding:
            self._send_child(slot, Stop("scaled down"))

    def _advance(self, slot: Slot, now: float, mono: float) -> None:
        """Mark the job now at the head of a worker's line as running."""
        assert self.book is not None
        if slot.outstanding and not self.stopping_since:  # stopping workers start nothing new
            job = self.book.jobs.get(slot.outstanding[0])
            if job is not None and job.state == "dispatched":
                self.book.start(job, slot.name, now, mono)
                if job.abort_reason and not job.kill_at:  # aborted while it waited in the worker's line
                    job.kill_at = mono + job.timeout_ms / 1000

    def _job_update(self, slot: Slot, msg: JobUpdate) -> None:
        book = self.book
        assert book is not None
        job = book.jobs.get(msg.job_id)
        if job is None or msg.job_id not in slot.outstanding:
            return
        job.progress, job.status = msg.progress, msg.status
        msg.timeout_ms = max(1, min(msg.timeout_ms, 86_400_000))
        if msg.properties or not msg.event:
            job.properties = msg.properties
        if msg.timeout_ms != job.timeout_ms:
            job.timeout_ms = msg.timeout_ms
            if job.kill_at:
                job.kill_at = time.monotonic() + msg.timeout_ms / 1000
        if msg.event:
            book.event(job, msg.event, msg.detail)
            log.warning("event=job-%s job=%d detail=%s", msg.event, job.id, msg.detail)
        else:
            book.journal.stage_progress(job.id, job.progress, job.status, job.properties)
        if job.progress_watchers:
            info = job.info()
            for ident in job.progress_watchers:
                self.progress_pushes.setdefault(ident, {})[job.id] = info

    # ------------------------------------------------------------------ jobs
    def _finish(self, job: Job, state: str, now: float, value: Any = None, error_type: str = "",
                error_message: str = "", traceback: str = "") -> None:
        assert self.book is not None
        info = self.book.finish(job, state, now, value, error_type, error_message, traceback)
        if self.metrics is not None and job.started:
            self.metrics.job_finished(now - job.started)
        if job.watchers:
            for ident in job.watchers:
                self.pushes.setdefault(ident, []).append(info)
        if job.blockers:
            for ident, corr in job.blockers:
                self.replies.append((ident, self._encode_for(ident, JobInfos([info]), corr)))

    def _finish_killed(self, job: Job, now: float) -> None:
        self._finish(job, "killed", now, error_type="JobTimeout" if job.killed == "deadline" else "JobCancelled",
                     error_message=f"killed: {job.killed} (no return within {job.timeout_ms} ms of the abort)")

    def _abort(self, job: Job, reason: str) -> None:
        if job.abort_reason:
            return
        job.abort_reason = reason
        assert self.book is not None
        self.book.event(job, "abort", reason)
        slot = self.slots.get(job.worker) if job.worker else self._slot_of(job.id)
        if slot is not None:
            self._send_child(slot, AbortJob(job.id, reason))
            if job.state == "running":
                job.kill_at = time.monotonic() + job.timeout_ms / 1000

    def _slot_of(self, job_id: int) -> Slot | None:
        for slot in self.slots.values():
            if job_id in slot.outstanding:
                return slot
        return None

    def _timers(self, mono: float) -> None:
        assert self.book is not None
        jobs = self.book.jobs
        for slot in list(self.slots.values()):
            if not slot.outstanding:
                continue
            job = jobs.get(slot.outstanding[0])
            if job is None:
                continue
            if job.deadline_at and mono >= job.deadline_at and not job.abort_reason:
                self._abort(job, "deadline")
            if job.kill_at and mono >= job.kill_at and not job.killed:
                job.killed = job.abort_reason or "abort"
                self.book.event(job, "killed", f"no return within {job.timeout_ms} ms of the abort; process group SIGKILLed")
                self._kill(slot, f"job {job.id} ignored its abort for {job.timeout_ms} ms")
                if job.id in self.book.jobs:  # SIGKILL cannot fail: record the end now, not at the reap
                    slot.outstanding.remove(job.id)
                    self._finish_killed(job, time.time())

    def _heartbeats(self, mono: float) -> None:
        timeout = self.cfg.supervision.heartbeat_timeout
        beat = encode(Heartbeat())
        for slot in list(self.slots.values()):
            if slot.proc is None and not slot.remote:
                continue
            try:
                (slot.sock or self.internal).send_multipart([slot.identity, beat], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            if mono - slot.last_heard > timeout and not self.stopping_since:
                if not slot.detail.startswith("silent"):
                    log.error("event=silent name=%s seconds=%.1f", slot.name, mono - slot.last_heard)
                slot.detail = f"silent for {mono - slot.last_heard:.1f}s; replaced"
                self._kill(slot, "heartbeat timeout", expected=False)

    def _dispatch(self, mono: float) -> None:
        book = self.book
        assert book is not None
        if not book.queued:
            return
        window = self._window()
        ready = [s for s in self.slots.values()
                 if s.role == "worker" and s.ready and not s.retire and len(s.outstanding) < window]
        if not ready:
            return
        ready.sort(key=lambda s: len(s.outstanding))
        now = time.time()
        for i, slot in enumerate(ready):
            share = math.ceil(book.queued / (len(ready) - i))
            jobs = book.pop(min(window - len(slot.outstanding), max(1, share)))
            if not jobs:
                break
            was_idle = not slot.outstanding
            batch, sent = [], []
            for job in jobs:
                s = job.spec
                try:
                    args, kwargs = (s.args, s.kwargs) if not slot.remote else (_inline(s.args, self.shm_prefix), _inline(s.kwargs, self.shm_prefix))
                except EnsembleError as exc:  # a segment gone since submit: this job fails, nothing else
                    self._finish(job, "failed", now, error_type="ProtocolError",
                                 error_message=f"the job cannot be dispatched: {exc}")
                    continue
                slot.outstanding.append(job.id)
                job.worker = slot.name
                sent.append(job)
                batch.append(Dispatch(job.id, s.fn, args, kwargs, job.timeout_ms, job.attempts + 1, s.with_task,
                                      job.internal))
            if not batch:
                continue
            if not self._send_batch(slot, batch, sent, now):
                continue
            if was_idle:
                self._advance(slot, now, mono)

    def _send_batch(self, slot: Slot, batch: list[Dispatch], jobs: list[Job], now: float) -> bool:
        """Send jobs to a worker; a job that cannot be encoded or fit a frame fails alone, the rest go."""
        try:
            frame = encode(RunJobs(batch))
            fits = len(frame) <= self.cfg.daemon.max_frame
        except ProtocolError:
            fits = False
        if fits:
            try:
                (slot.sock or self.internal).send_multipart([slot.identity, frame], zmq.NOBLOCK)
                return True
            except zmq.ZMQError:
                for job in jobs:
                    slot.outstanding.remove(job.id)
                    self.book.requeue(job, "")  # type: ignore[union-attr]
                return False
        sent_any = False
        for d, job in zip(batch, jobs):  # one at a time, to find the ones that cannot go
            try:
                one = encode(RunJobs([d]))
                if len(one) > self.cfg.daemon.max_frame:
                    raise ProtocolError(f"it is {len(one)} bytes, over the frame limit of {self.cfg.daemon.max_frame}")
            except ProtocolError as exc:
                slot.outstanding.remove(job.id)
                self._finish(job, "failed", now, error_type="ProtocolError",
                             error_message=f"the job cannot be sent to worker {slot.name}: {exc}")
                continue
            try:
                (slot.sock or self.internal).send_multipart([slot.identity, one], zmq.NOBLOCK)
                sent_any = True
            except zmq.ZMQError:
                slot.outstanding.remove(job.id)
                self.book.requeue(job, "")  # type: ignore[union-attr]
        return sent_any

    def scale(self, n: int) -> None:
        """Change the number of workers: start new ones, or retire idle ones first."""
        self.workers_wanted = n
        workers = [s for s in self.slots.values() if s.role == "worker" and not s.retire]
        for _ in range(n - len(workers)):
            self._add_worker()
        excess = len(workers) - n
        if excess > 0:
            workers.sort(key=lambda s: (len(s.outstanding), s.state != "failed"))
            for slot in workers[:excess]:
                slot.retire = True
                if slot.state == "failed":
                    del self.slots[slot.name]
                elif not slot.outstanding:
                    self._send_child(slot, Stop("scaled down"))
        log.info("event=scale workers=%d", n)

    def _prune(self) -> None:
        assert self.journal is not None
        n = self.journal.prune(time.time() - self.cfg.jobs.retention)
        if n:
            log.info("event=prune jobs=%d", n)

    # ------------------------------------------------------------------ status
    def status(self) -> StatusReply:
        """Snapshot of the daemon and every actor."""
        book = self.book
        assert book is not None
        now, mono = time.time(), time.monotonic()
        actors = []
        for slot in self.slots.values():
            pid = slot.proc.pid if slot.proc is not None else 0
            actors.append(ActorInfo(
                slot.name, slot.role, pid, ("retiring" if slot.retire else slot.state) if pid else slot.state,
                now - slot.started if pid else 0.0, slot.restarts, mono - slot.last_heard if pid else 0.0,
                _rss(pid) if pid else 0, slot.detail, slot.stats,
            ))
        running = sum(len(s.outstanding) > 0 for s in self.slots.values())
        counters: dict[str, Any] = dict(self.counters)
        if self.script_path:
            counters["script"] = self.script_path
        if self.script_errors:
            counters["script_errors_recent"] = list(self.script_errors)
        counters.update({f"jobs_{k}": v for k, v in book.counters.items()})
        daemon = DaemonInfo(
            self.cfg.name, os.getpid(), __version__, now - self.started, str(self.rundir.path),
            str(self.state_dir), str(self.log_file), self.workers_wanted, book.queued, running,
            _rss(os.getpid()), counters,
        )
        return StatusReply(daemon, actors)

    # ------------------------------------------------------------------ stopping
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
                self._send_child(slot, Stop(reason))

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
        """Kill what is left, write the journal, remove sockets and the lock."""
        for slot in list(self.slots.values()):
            if slot.proc is not None:
                kill_group(slot.proc.pid)
                slot.proc.wait()
                os.close(slot.pidfd)
        if self.book is not None:
            now = time.time()
            for job in list(self.book.jobs.values()):
                if job.killed:
                    self._finish(job, "killed", now, error_type="JobCancelled", error_message="killed: the daemon stopped")
        if self.journal is not None:
            self.journal.close()
        if self.auth is not None:
            self.auth.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if hasattr(self, "ctx"):
            self.ctx.destroy(linger=0)
        from actors.shm import sweep_segments

        sweep_segments(self.cfg.shm_key)
        self.rundir.release()
        log.info("event=stopped")


class _OneLineFormatter(logging.Formatter):
    """Every record one line: control characters in the message escaped (a peer's value cannot forge a line)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_CONTROL)
        return super().formatMessage(record)


def setup_logging(cfg: Config, foreground: bool) -> None:
    """Log to ``<state dir>/daemon.log`` (and stderr in the foreground), one grep-able line per event."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fmt = _OneLineFormatter("%(asctime)s %(levelname)s supervisor pid=%(process)d %(message)s")
    root = logging.getLogger()
    root.handlers.clear()
    fh = logging.FileHandler(cfg.state_dir / "daemon.log")
    fh.setFormatter(fmt)
    root.addHandler(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    root.setLevel(getattr(logging, cfg.daemon.log_level.upper(), logging.INFO))


def serve(cfg: Config, foreground: bool = False) -> int:
    """Run a daemon in this process until it is stopped; returns the exit code."""
    os.umask(0o077)  # journal, log, keys: this user's only (children get the user's own umask back)
    setup_logging(cfg, foreground)
    sup = Supervisor(cfg)
    try:
        sup.open()
    except DaemonError:
        raise
    log.info("event=start name=%s pid=%d version=%s workers=%d run_dir=%s", cfg.name, os.getpid(), __version__,
             sup.workers_wanted, sup.rundir.path)
    sup.start_children()
    return sup.run()


def main() -> None:
    """``python -m actors.supervisor CONFIG_JSON [--foreground]`` (used by ``ensemble up``)."""
    cfg = Config.from_json(sys.argv[1])
    try:
        code = serve(cfg, foreground="--foreground" in sys.argv[2:])
    except EnsembleError as exc:
        sys.stderr.write(f"ensemble: error: {exc}\n")
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()

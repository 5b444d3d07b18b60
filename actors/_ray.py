"""Workers placed on a Ray cluster: each Ray actor hosts one ensemble worker that connects back over CURVE tcp.

Ray does what it is good at: cluster membership, resource-aware placement
(CPUs, GPUs, memory, custom resources), node autoscaling and node-failure
detection.  Ensemble keeps its own job semantics: the daemon dispatches to
these workers exactly as to any remote worker (progress, abort then kill,
the journal, priorities), and a job's resources decide which one runs it.

The shape, daemon side (:class:`RayWorkers`, owned by the supervisor when
``[cluster] ray`` is set):

* the Ray driver is a child process of the daemon
  (:mod:`actors._ray_driver`), never the daemon itself: Ray's core worker ends its
  driver's process when the cluster goes away, and that ends only the child
  (its workers are then lost, ``status`` says why, a new driver joins once
  the cluster is back); the daemon sends it commands and reads its reports
  over a socketpair (msgpack headers and raw array bytes, as the link below);
* for each worker it issues a ``worker`` key (``ray-<token>-<n>``, see
  :mod:`actors._keys`) and starts a Ray actor (:class:`~actors._ray_host.WorkerHost`) with the
  resources Ray must reserve for it, the key and the daemon's public key;
* the actor runs ``ensemble worker --connect`` as a subprocess in its own
  process group (restarted if a job kill takes it down) and reports its exit;
* when an actor's run fails (its process or node died) the daemon is told at
  once (Ray's detection, beside ensemble's heartbeats) and Ray restarts the
  actor, on another node if the node is gone;
* an actor removed for good (scale down, ``ensemble down``) is killed and its
  key revoked, so it no longer authenticates.

Big arrays (at least ``[cluster] object_store_min_bytes``) travel through
Ray's object store instead of the frame, and never as ``/dev/shm`` handles:

* arguments: at dispatch the daemon hands its driver the array: a
  shared-memory segment as a read-only descriptor (passed over the
  socketpair: the driver maps it, and ``ray.put`` reads it from there), an
  inline array a remote client sent as its raw bytes; the driver puts it in
  the store (``ray.put``) once per job, keeps the
  ObjectRef until the job ends, and stages it on the
  worker's actor with an actor call that carries the ref nested in a list (so Ray
  counts the actor as a borrower); the frame carries only a
  :class:`~actors.messages.StoredArray` key.  The worker asks its actor for
  the key over the node-local link (:mod:`actors._storelink`); the actor
  resolves the ref on its node and writes the raw bytes.  A retried job is
  staged again from the same ref; when the job ends the driver drops its ref
  and tells the actor to drop its own, so Ray frees the object;
* results: the worker writes a big result's raw bytes to its actor over the
  link and sends the key in its ``JobsDone``; the daemon has its driver take
  the array from the actor (``take``, a Ray call whose return value the
  driver owns and drops once it sent the raw bytes) and reads the bytes
  straight into a segment it made for a local client's job (no copy of its
  own on the way), or into an array for the journal and the reply of a
  remote client's.

Where Ray deserialises (pickle): in the actor (arguments, on the worker's
node) and in the daemon's driver process (``ray.get`` of a ``take``, and of
``run()``'s exit code); the daemon itself reads only raw bytes from it.  Nothing that crossed ensemble's tcp is ever unpickled:
the frame holds a key, dtype and shape, read by msgspec; the link carries
msgpack headers and raw bytes.  The driver's ``ray.get`` reads objects that
only processes of the Ray cluster could write, a cluster it joined: whoever
can write there can already run code on every node, this host included
(Ray's token authentication keeps out who lacks the token, not a member).  The cluster is inside
the trust boundary, as the cluster guide says; a cluster that is not must
set ``object_store_min_bytes = 0`` (every array then travels in the frame)
-- and should not be given workers at all.

Ray is imported only when configured (:func:`import_ray`: the daemon imports
it to check it is installed; only its driver process joins), by this module,
:mod:`actors._ray_driver` (the driver process) and :mod:`actors._ray_host`
(the actor, in Ray's worker processes).
Nothing here touches the daemon's sockets or jobs: the supervisor's
:mod:`actors.supervisor._cluster` applies what this reports.  Runtime layer:
no audio or controller imports.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors._errors import ConfigError, ProtocolError
from actors._keys import add_peer, list_keys, revoke
from actors._resources import describe, fits
from actors._spawn import child_env, set_parent_death_signal
from actors._storelink import recv_exact, recv_header, send_msg
from actors._subreaper import started
from actors.config import Config
from actors.messages import ArrayHandle, StoredArray

log = logging.getLogger("ensemble.ray")
KEY_PREFIX = "ray-"  # names of the keys issued to Ray-placed workers (revoked at start if a dead daemon left any)
_TAKE_WAIT = 5.0  # seconds the daemon waits for result arrays from an actor, plus a second per _TAKE_RATE bytes
_TAKE_RATE = 50_000_000  # (the daemon's loop waits meanwhile: bounded, as a node that died could make it wait long)
_JOIN_WAIT = 45.0  # seconds a driver may take to join the cluster before the daemon ends it and reports why
_RETRY_FIRST, _RETRY_MAX = 2.0, 30.0  # seconds between attempts to (re)join the cluster: doubling, at most this
_SEND_WAIT = 5  # seconds a write to the driver may block (its reading thread makes no Ray call: one that does not
# read for this long is stopped or hung, and taken for broken)
_PING_EVERY = 1.0  # seconds between the daemon's pings of a joined driver (answered by its reading thread)
_PING_WAIT = 10.0  # seconds a joined driver has to answer a ping before it is taken for stopped or hung
_STUCK_WAIT = 300.0  # seconds one Ray call of the driver may last before it is taken for hung (a take aside: it has
# a timeout of its own)
_END_WAIT = 10.0  # seconds the driver has to end after its link closed or it was told to stop
_DEMAND_IDLE = 30.0  # seconds a connected worker placed for queued jobs stays once no queued job needs it


def import_ray() -> Any:
    """The ``ray`` module; ConfigError naming the fix when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("[cluster] ray is set but Ray is not installed here: pip install 'ensemble-rt[ray]' "
                          "(on every node of the cluster too), or remove [cluster] ray") from exc
    return ray


RAY_RESERVED = ("object_store_memory", "bundle")  # resource names Ray keeps for itself (an actor asking for one
# is refused by Ray when it is placed)


def unplaceable(resources: dict[str, float]) -> str:
    """Why Ray can place no worker for ``resources`` whatever the cluster ('' when it may)."""
    taken = [name for name in resources if name in RAY_RESERVED or "_group_" in name]
    if taken:
        return (f"the resource name {taken[0]!r} is one Ray keeps for itself (object store memory, placement "
                "groups): name the resource otherwise (a node's custom resources: `ray start --resources`)")
    return ""


@dataclass
class Member:
    """One Ray-placed worker as the daemon sees it: its key name, what Ray reserved, and where it runs once known."""

    name: str
    resources: dict[str, float]
    demand: bool = False  # started for a queued job's resources, beyond ``[cluster] workers``
    retiring: bool = False  # picked by a scale-down: when its worker stops, the actor goes
    need: dict[str, float] = field(default_factory=dict)  # (demand members) the queued jobs' need it was placed for
    started: float = field(default_factory=time.monotonic)
    unneeded_since: float = 0.0  # (demand members) monotonic time since when no queued job needs it, 0 while one does
    where_for: str = ""  # the slot the driver was last asked to locate (a new slot of the member: asked again)
    pid: int = 0  # its worker process's pid on its node, its node's id and address (``where``), once known
    node: str = ""
    host: str = ""
    failures: int = 0  # runs of its actor that failed before its worker connected (its actor cannot start?)
    failure: str = ""  # what the last of them said
    unstartable: bool = False  # Ray could not create its actor (its constructor failed): it is replaced
    connected: bool = False  # a worker of it has joined (once is enough)
    died: bool = False  # Ray reported its actor dead since the supervisor last looked (failed_unconnected)
    overdue: bool = False  # not joined within [cluster] join_wait: where its actor runs was asked (said once)


class RayWorkers:
    """The daemon's Ray-placed workers: start, scale, notice deaths, remove (keys revoked); Ray itself in a child.

    The Ray driver runs in a child process of the daemon
    (:func:`actors._ray_driver.driver_main`), never in the daemon: when
    Ray's GCS or the local raylet goes away, Ray's
    core worker ends its driver's process after a while (a minute for the
    GCS), and a daemon that was the driver ended with it.  Now only the
    child ends: its workers are reported lost (their jobs retried or ended as
    for any lost worker), ``status`` says the cluster is unreachable and why,
    and the daemon starts a new driver (after 2 s, doubling to 30 s) that
    joins again once the cluster is back.  Joining is bounded the same way: a
    driver that has not joined within :data:`_JOIN_WAIT` is ended.

    The two talk over a socketpair in :mod:`actors._storelink`'s framing
    (msgpack headers, raw array bytes; nothing pickled).  Every method runs
    on the supervisor's loop thread and returns at once (writes to the
    driver, at most :data:`_SEND_WAIT` s if it stopped reading), except
    :meth:`take` (waits for the driver's answer, bounded) and :meth:`close`.
    A thread reads the driver's reports into a queue that :meth:`poll` drains.

    Liveness: the driver reads its link on a thread that makes no Ray call,
    so a driver waiting on Ray (a ``ray.put`` of a big array, a cluster slow
    to answer) still reads the daemon's writes and answers its pings (one a
    second), saying what it waits on and for how long (``status``:
    ``ray_driver_busy``, ``ray_driver_busy_s``, from a second on).  A driver
    that answers no ping within :data:`_PING_WAIT` s, stops reading for
    :data:`_SEND_WAIT` s (stopped, hung, or its link gone), or has spent
    :data:`_STUCK_WAIT` s in one Ray call is ended and taken for lost, as one
    that ended.
    """

    def __init__(self, cfg: Config, keys_dir: Path, bound: str) -> None:
        self.cfg = cfg
        self.keys_dir = keys_dir
        self.bound = bound  # the worker endpoint the daemon bound (tcp://HOST:PORT)
        self.address = cfg.cluster.ray
        self.members: dict[str, Member] = {}
        self.wanted = cfg.cluster.workers  # what scale() asked for: applied again after each (re)join
        self.token = secrets.token_hex(3)
        self.seq = 0
        self.endpoint = ""
        self.min_bytes = cfg.cluster.object_store_min_bytes
        self.staged: dict[int, set[str]] = {}  # job id -> keys of its arguments in Ray's store, until it ends
        self.staged_on: dict[int, set[str]] = {}  # job id -> members it was staged on
        self.counters: dict[str, Any] = {"ray_store_args": 0, "ray_store_results": 0, "ray_store_bytes": 0}
        self.log_path = keys_dir.parent / "ray-driver.log"  # the driver's stdout and stderr (Ray's own messages)
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.reader: threading.Thread | None = None
        self.inbox: queue.Queue[list[Any]] = queue.Queue()
        self.pending: list[list[Any]] = []  # reports :meth:`take` read past, for the next poll
        self.joined = False
        self.attempt_at = 0.0  # monotonic time the current driver started
        self.retry_at = 0.0  # monotonic time to start a new driver (no driver runs meanwhile)
        self.pause = _RETRY_FIRST
        self.broken = ""  # why the driver is taken for broken (it is ended at the next poll)
        self.ping_at = 0.0  # monotonic time of the ping the driver has not answered yet (0: none out)
        self.pong_at = 0.0  # monotonic time of its last answer (or of its join)
        self.refused: list[tuple[dict[str, float], str]] = []  # needs Ray refused to place (reported by the driver)
        self.capped: list[dict[str, float]] = []  # needs the last placement left without a worker (max_workers)
        self.take_seq = 0
        # actors Ray could not create (ensemble missing on a node, say) are replaced, with a pause between: no
        # member is added before hold_until; the pause doubles with each such failure until a worker connects
        self.unstartable = 0  # such failures since the last worker connected
        self.hold_until = 0.0
        self.replace = 0  # members removed that way and not added again yet (placement-made ones are placed again)
        self.landing: dict[int, list[Any]] = {}  # take number -> where its arrays go (read by the reports' thread)
        self._state("joining", "")

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Check that Ray is installed, revoke keys a dead daemon left, start the driver (which joins meanwhile).

        Returns at once: the cluster may be unreachable, and the daemon runs
        its local workers all the same (``status`` says how joining goes).
        Raises ConfigError when Ray is not installed.
        """
        import_ray()
        stale = [n for n, role in list_keys(self.keys_dir) if role == "worker" and n.startswith(KEY_PREFIX)]
        for name in stale:
            self._forget_key(name)
        if stale:
            log.info("event=ray-stale-keys-revoked count=%d", len(stale))
        self._launch()

    def _state(self, state: str, error: str) -> None:
        self.counters["ray_cluster"] = state  # joining | joined | unreachable
        if error:
            self.counters["ray_error"] = error
        else:
            self.counters.pop("ray_error", None)

    def _launch(self) -> None:
        """Start a driver process; it joins the cluster and reports ``joined`` (or ``failed``)."""
        mine, theirs = socket.socketpair()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", _SEND_WAIT, 0))
        argv = [sys.executable, "-P", "-c", _DRIVER_MAIN, str(theirs.fileno()), self.address,
                f"ensemble-{self.cfg.name}", self.cfg.cluster.connect or self.bound]
        try:
            with open(self.log_path, "wb") as out:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=child_env(),
                                             cwd="/", pass_fds=[theirs.fileno()], start_new_session=True,
                                             preexec_fn=set_parent_death_signal)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        started(self.proc.pid)  # the daemon's child, waited on here (see actors._subreaper)
        self.sock, self.inbox, self.broken = mine, queue.Queue(), ""
        self.ping_at = 0.0
        self.reader = threading.Thread(target=_read_reports, args=(mine, self.inbox, self.landing),
                                       name="ray-driver-reports", daemon=True)
        self.reader.start()
        self.attempt_at = time.monotonic()  # (``ray_cluster`` stays "unreachable" with its error until it joins)
        log.info("event=ray-driver-started pid=%d address=%s", self.proc.pid, self.address)

    def _end_driver(self) -> int | None:
        """Stop the driver process (ours: by its pid), close the link; its exit code (None if it had to be killed)."""
        proc, sock, reader = self.proc, self.sock, self.reader
        self.proc = self.sock = self.reader = None
        code = None
        if proc is not None:
            try:
                code = proc.wait(_END_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if reader is not None:
            reader.join(_END_WAIT)
        return code

    def close(self) -> None:
        """Kill every actor (no restart), revoke their keys, end the driver (which leaves the cluster)."""
        if self.proc is not None and self.joined:
            self._send(["stop"])
        elif self.proc is not None:
            self.proc.kill()  # still joining: nothing of ours on the cluster yet
        self._end_driver()
        for name in list(self.members):
            self._forget_key(name)
        self.members.clear()
        self.joined = False

    def _lost(self, why: str, out: list[tuple[str, str]]) -> None:
        """The driver failed or ended: its members are lost, the cluster unreachable; try again after a pause."""
        was = self.joined
        self.joined = False
        self.broken = ""
        pid = self.proc.pid if self.proc is not None else 0
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        code = self._end_driver()
        auth = _auth_failure(why + "\n" + _tail(self.log_path))
        if auth:
            error = (f"authentication failed: the Ray cluster at {self.address!r} refused this daemon's token "
                     f"({auth}); give the daemon the cluster's token (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, "
                     "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token in its environment)")
        elif was:
            error = (f"the Ray cluster at {self.address!r} is unreachable: {why} (its Ray driver, pid {pid}, "
                     f"exited with {code}); its workers were taken for lost and their jobs retried or ended")
        else:
            error = (f"cannot join the Ray cluster at {self.address!r} ([cluster] ray): {why}; start one "
                     "(`ray start --head`) or fix the address")
        error += (f"; jobs run on this daemon's own workers meanwhile, and it tries to join again every "
                  f"{self.pause:g}s (Ray's messages: {self.log_path})")
        self._state("unreachable", error)
        log.error("event=ray-cluster-unreachable address=%s reason=%s", self.address, error)
        for name in list(self.members):
            self._forget_key(name)
            out.append((name, f"the Ray cluster is unreachable ({why})"))
        self.members.clear()
        self.replace = 0  # (scale() places [cluster] workers again once joined)
        self.staged.clear()
        self.staged_on.clear()
        self.pending.clear()
        self.counters.pop("ray_driver_busy", None)
        self.counters.pop("ray_driver_busy_s", None)
        self.retry_at = time.monotonic() + self.pause
        self.pause = min(self.pause * 2, _RETRY_MAX)

    def _send(self, header: list[Any], payload: Any = None, fd: int = -1) -> None:
        """A command to the driver (with descriptor ``fd`` when given); a failed write marks it broken (ended at
        the next poll), never raises."""
        if self.sock is None or self.broken:
            return
        try:
            send_msg(self.sock, header, payload, fd)
        except OSError as exc:
            self.broken = f"its Ray driver stopped reading its commands for {_SEND_WAIT}s ({exc})"

    # -- placing -------------------------------------------------------------------------
    def add(self, resources: dict[str, float], need: dict[str, float] | None = None) -> Member:
        """Issue a key and have the driver start an actor that reserves ``resources``; Ray places it when a node fits."""
        self.seq += 1
        name = f"{KEY_PREFIX}{self.token}-{self.seq}"
        secret_file = add_peer(self.keys_dir, name, "worker")
        env = {
            "ENSEMBLE_CONFIG": "", "ENSEMBLE_DAEMON_NAME": self.cfg.name,
            "ENSEMBLE_DAEMON_MAX_FRAME": str(self.cfg.daemon.max_frame),
            "ENSEMBLE_SUPERVISION_HEARTBEAT_INTERVAL": str(self.cfg.supervision.heartbeat_interval),
            "ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT": str(self.cfg.supervision.heartbeat_timeout),
            "ENSEMBLE_SUPERVISION_STOP_GRACE": str(self.cfg.supervision.stop_grace),
            "ENSEMBLE_CLUSTER_RAY": "", "ENSEMBLE_CLUSTER_WORKERS": "0", "ENSEMBLE_DAEMON_TCP": "",
            "ENSEMBLE_CLUSTER_OBJECT_STORE_MIN_BYTES": str(self.min_bytes),
        }
        self._send(["add", name, resources, secret_file.read_text(), (self.keys_dir / "server.key").read_text(), env])
        member = Member(name, resources, need is not None, need=need or {})
        self.members[name] = member
        log.info("event=ray-worker-added name=%s resources=%s demand=%d", name, describe(resources), int(member.demand))
        return member

    def remove(self, name: str, reason: str) -> None:
        """Kill a member's actor for good and revoke its key (it no longer authenticates)."""
        if self.members.pop(name, None) is None:
            return
        self._send(["kill", name])
        self._forget_key(name)
        log.info("event=ray-worker-removed name=%s reason=%s", name, reason)

    def failed_unconnected(self, name: str, why: str) -> None:
        """Ray says member ``name``'s actor died before its worker ever connected: say why (the first time, when the
        cause changes, then at the 10th, 100th, ... time: the driver asks it to run again, later each time).

        An actor that cannot start on its node fails this way, over and over,
        and no worker ever joins: ensemble not installed on the node (its
        class cannot be imported there), or a different version.  ``status``
        says it too (``ray_worker_error``) until a worker joins.
        """
        member = self.members.get(name)
        if member is None or not member.died:  # (gone, or a worker that stopped: not a failure)
            return
        member.died = False
        member.failures += 1
        if member.unstartable:
            self.unstartable += 1
            pause = min(_RETRY_MAX, _RETRY_FIRST * 2 ** (self.unstartable - 1))
            self.hold_until = time.monotonic() + pause
            self.remove(name, f"Ray could not start its actor; a new one in {pause:g}s")
            if not member.demand and not member.retiring:
                self.replace += 1  # (one placed for jobs' resources is placed again by place() once the pause ends)
            count = self.unstartable
        elif member.failure == why and member.failures not in (10, 100, 1000) and member.failures % 10_000:
            return
        else:
            count = member.failures
        member.failure = why
        fix = ("install ensemble on every node of the cluster, the daemon's version (pip install 'ensemble-rt[ray]')"
               if "No module named" in why or "ImportError" in why or "ModuleNotFoundError" in why else
               "its output is in Ray's logs on its node (worker-*.err in the Ray session's logs directory)")
        self.counters["ray_worker_error"] = f"{name}: {why}; {fix}"
        log.error("event=ray-worker-failed name=%s count=%d reason=no worker of it has connected yet, and Ray "
                  "says: %s fix=%s", name, count, why, fix)

    def connected(self, name: str) -> None:
        """Member ``name``'s worker joined: a failure said of it before is over."""
        member = self.members.get(name)
        if member is None or member.connected:
            return
        member.connected = True
        member.failures, member.failure, self.unstartable = 0, "", 0
        self.counters.pop("ray_worker_error", None)

    def overdue(self) -> None:
        """Ask where the actor of each member not joined within ``[cluster] join_wait`` runs (once per member).

        Ray answers once the actor runs (an actor still pending, for want of a
        node with its resources, is not answered: that wait is normal, and
        ``status`` shows the jobs queued); the answer for a member still not
        joined is logged as ``event=ray-worker-not-joined`` (:meth:`_apply`).
        """
        if not self.joined:
            return
        now = time.monotonic()
        for m in self.members.values():
            if not (m.connected or m.overdue or m.retiring) and now - m.started >= self.cfg.cluster.join_wait:
                m.overdue = True
                self._send(["where", m.name])

    def _forget_key(self, name: str) -> None:
        try:
            revoke(self.keys_dir, name)
        except ConfigError:
            pass
        for suffix in (".key", ".key_secret"):
            (self.keys_dir / "issued" / f"{name}{suffix}").unlink(missing_ok=True)

    def place(self, needs: list[dict[str, float]]) -> list[tuple[dict[str, float], str]]:
        """Start a worker for each resource need no member offers yet (within ``[cluster] max_workers``); the needs
        Ray refused to place, with why (their jobs can never run: the supervisor fails them).

        Nothing is placed while the cluster is unreachable (the needs are
        placed once it is joined again).  Needs left without a worker by the
        cap are warned about once, by name, until the set changes.
        """
        refused, self.refused = self.refused, []
        if not self.joined or time.monotonic() < self.hold_until:  # (a pause after an actor Ray could not start)
            return refused
        capped = []
        for need in needs:
            if any(fits(need, m.resources) for m in self.members.values()):
                continue  # a member offers it (joined, or pending in Ray until a node fits)
            if len(self.members) >= self.cfg.cluster.max_workers:
                capped.append(need)
                continue
            self.add({**self.cfg.cluster.worker_resources, **need}, need)
        if capped and capped != self.capped:
            log.warning("event=ray-placement-capped needs=%s max_workers=%d",
                        ";".join(describe(n) for n in capped), self.cfg.cluster.max_workers)
        self.capped = capped
        return refused

    def unneeded(self, needs: list[dict[str, float]], busy: "set[str]", joined: "set[str]") -> list[str]:
        """Members placed for queued jobs' resources that no queued job needs now (their jobs were cancelled, ran
        elsewhere or ended): to remove, so that Ray (and its autoscaler) no longer holds their demand.

        ``busy``: members whose workers run jobs (kept); ``joined``: members
        whose workers connected: those go after :data:`_DEMAND_IDLE` s without
        a need (a job for them may follow soon), the others at once.
        """
        now = time.monotonic()
        out = []
        for m in self.members.values():
            if not m.demand or m.retiring or m.name in busy or any(fits(n, m.resources) for n in needs):
                m.unneeded_since = 0.0
                continue
            m.unneeded_since = m.unneeded_since or now
            if m.name not in joined or now - m.unneeded_since >= _DEMAND_IDLE:
                out.append(m.name)
        return out

    def scale(self, n: int, busy: "set[str] | frozenset[str]" = frozenset()) -> list[str]:
        """Aim for ``n`` members; returns the names to retire (the supervisor stops their workers, then :meth:`reap`).

        Growing starts actors at once (once joined: until then, and while the
        cluster is unreachable, ``n`` is kept for when it joins).  Shrinking
        picks idle members first (``busy``: the names whose workers run jobs;
        a busy one retires once its jobs end), placement-made ones first among
        them, then the newest; those not yet connected are removed at once.
        """
        self.wanted = n
        self.replace = 0  # (members removed as unstartable count as missing here)
        if not self.joined:
            return []
        have = sorted((m for m in self.members.values() if not m.retiring),
                      key=lambda m: (m.name in busy, not m.demand, -m.started))
        for _ in range(n - len(have)):
            self.add(dict(self.cfg.cluster.worker_resources))
        going = have[:max(0, len(have) - n)]
        for member in going:
            self.retire(member.name)
        return [m.name for m in going]

    def retire(self, name: str) -> None:
        """Mark a member retiring: when its worker stops (asked by the supervisor), its actor goes for good."""
        member = self.members.get(name)
        if member is not None:
            member.retiring = True
            self._send(["retiring", name])

    def locate(self, name: str, slot: str) -> None:
        """Ask where member ``name``'s worker runs (its pid, node), once per slot it joined as; see :meth:`poll`."""
        member = self.members.get(name)
        if member is not None and member.where_for != slot and self.joined:
            member.where_for = slot
            self._send(["where", name])

    # -- watching ------------------------------------------------------------------------
    def poll(self) -> list[tuple[str, str]]:
        """Members gone since the last call, as ``(name, why)``: apply the driver's reports; (re)start the driver.

        A run that returned (its worker stopped) removes a retiring member and
        starts the worker again for any other; one that failed (actor or node
        died) waits for Ray's restart of the actor.  A driver that ended (Ray
        went away), failed to join, or took longer than :data:`_JOIN_WAIT` to,
        or is taken for stopped or hung (see the class's liveness): every
        member is lost and a new driver starts after a pause.
        """
        out: list[tuple[str, str]] = []
        reports, self.pending = self.pending, []
        while True:
            try:
                reports.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        for report in reports:
            if self.proc is not None:
                self._apply(report, out)
        mono = time.monotonic()
        if self.proc is not None and self.broken:
            self._lost(self.broken, out)
        elif self.proc is not None and not self.joined and mono - self.attempt_at > _JOIN_WAIT:
            self._lost(f"no answer within {_JOIN_WAIT:g}s", out)
        elif self.proc is not None and self.joined and self.ping_at and mono - self.ping_at > _PING_WAIT:
            self._lost(f"its Ray driver (pid {self.proc.pid}) answered no ping for {_PING_WAIT:g}s: it is stopped "
                       "or hung", out)
        elif self.proc is not None and self.joined and not self.ping_at and mono - self.pong_at >= _PING_EVERY:
            self.ping_at = mono
            self._send(["ping"])
        elif self.proc is None and mono >= self.retry_at:
            self._launch()
        if self.replace and self.joined and mono >= self.hold_until:
            for _ in range(self.replace):
                self.add(dict(self.cfg.cluster.worker_resources))
            self.replace = 0
        return out

    def _apply(self, report: list[Any], out: list[tuple[str, str]]) -> None:
        kind = report[0]
        if kind == "pong":
            self._pong(str(report[1]), float(report[2]))
        elif kind == "joined":
            self.joined, self.endpoint, self.pause = True, str(report[1]), _RETRY_FIRST
            self.pong_at = time.monotonic()
            self._state("joined", "")
            log.info("event=ray-joined address=%s connect=%s workers=%d", self.address, self.endpoint, self.wanted)
            self.scale(self.wanted)
        elif kind in ("failed", "eof"):
            self._lost(str(report[1]) if kind == "failed" else "its Ray driver ended", out)
        elif kind == "ended":
            _, name, ok, why, *rest = report
            member = self.members.get(name)
            if member is None:
                return
            member.pid, member.where_for, member.died = 0, "", not ok
            if not ok and rest and rest[0]:  # its constructor failed: Ray will not start it again
                member.unstartable = True
                out.append((name, f"Ray could not start its actor ({why})"))
            elif not ok:
                out.append((name, f"Ray reports its actor died ({why})"))
            elif member.retiring:
                self.remove(name, "its worker stopped")
                out.append((name, "its worker stopped"))
            else:
                out.append((name, "its worker stopped unasked; started again"))
        elif kind == "where":
            member = self.members.get(report[1])
            if member is not None:
                member.pid, member.node, member.host = int(report[2]), str(report[3]), str(report[4])
                if member.overdue and not member.connected:
                    why = (f"Ray runs its actor on {member.host} (pid {member.pid} there) but its worker has not "
                           f"joined: can that node reach {self.endpoint} ([cluster] connect, else [daemon] tcp)?")
                    self.counters["ray_worker_error"] = f"{member.name}: {why}"  # (until a worker joins)
                    log.warning("event=ray-worker-not-joined name=%s after=%.0fs node=%s host=%s reason=%s (what "
                                "the worker prints reaches %s through Ray)", member.name,
                                time.monotonic() - member.started, member.node[:12], member.host, why, self.log_path)
        elif kind == "refused":
            member = self.members.pop(report[1], None)
            if member is not None:
                self._forget_key(member.name)
                need = member.need or member.resources
                log.error("event=ray-placement-refused need=%s reason=%s", describe(member.resources), report[2])
                self.refused.append((need, f"Ray cannot place a worker with {describe(member.resources)}: "
                                           f"{report[2]}"))

    def _pong(self, what: str, seconds: float) -> None:
        """The driver answered a ping: it lives, and has spent ``seconds`` in Ray call ``what`` ('' idle)."""
        self.ping_at, self.pong_at = 0.0, time.monotonic()
        if what and seconds >= 1.0:
            self.counters["ray_driver_busy"], self.counters["ray_driver_busy_s"] = what, round(seconds, 1)
        else:
            self.counters.pop("ray_driver_busy", None)
            self.counters.pop("ray_driver_busy_s", None)
        if what not in ("", "take") and seconds > _STUCK_WAIT:
            self.broken = f"its Ray driver has been in one Ray call ({what}) for {seconds:.0f}s: it is hung"

    # -- the object store ----------------------------------------------------------------
    def stage(self, name: str, job_id: int, value: Any, prefix: str) -> Any:
        """``value`` for the frame to member ``name``: big arrays as :class:`StoredArray` keys, staged on its actor.

        Shared-memory handles (this daemon's, named with ``prefix``) and inline
        arrays of at least ``object_store_min_bytes`` go to the driver, which
        puts them in Ray's store once per job (a retry reuses the object);
        smaller ones cross inline, handles as bytes.  Raises EnsembleError
        when a segment is gone.  A segment goes to the driver as a read-only
        descriptor (its bytes are read only by ``ray.put``); an inline array
        costs a copy into the link.
        """
        from actors.shm import copy_of, is_ndarray, walk

        member = self.members.get(name) if self.joined else None
        keys = self.staged.get(job_id) or set()
        new: list[str] = []
        seq = 0

        def leaf(v: Any) -> Any:
            nonlocal seq
            handle = type(v) is ArrayHandle
            if not handle and not is_ndarray(v):
                return v
            if member is None or not self.min_bytes or v.nbytes < self.min_bytes or (
                    not handle and v.dtype.kind not in "biufc"):
                return copy_of(v, prefix) if handle else v
            seq += 1
            key = f"{self.token}.{job_id}.{seq}"
            if key not in keys:
                if handle:
                    self._put_segment(key, v, prefix)
                else:
                    self._put(key, v)
                keys.add(key)
                self.counters["ray_store_args"] += 1
                self.counters["ray_store_bytes"] += v.nbytes
            new.append(key)
            return StoredArray(key, v.dtype if handle else v.dtype.str, tuple(v.shape))

        out = walk(value, leaf)
        if keys:
            self.staged[job_id] = keys
        if new and member is not None:
            self._send(["stage", name, new])
            self.staged_on.setdefault(job_id, set()).add(name)
        return out

    def _put_segment(self, key: str, handle: ArrayHandle, prefix: str) -> None:
        """Have the driver put the array of segment ``handle`` in Ray's store from the segment itself: it gets a
        read-only descriptor of it (the memory stays while it holds that, unlinked or not), not its bytes."""
        fd = _open_segment(handle, prefix)
        try:
            self._send(["put_fd", key, handle.dtype, list(handle.shape), handle.offset], fd=fd)
        finally:
            os.close(fd)

    def _put(self, key: str, array: Any) -> None:
        import numpy as np

        flat = np.ascontiguousarray(array)
        self._send(["put", key, flat.dtype.str, list(flat.shape), flat.nbytes], flat.reshape(-1).view(np.uint8).data)

    def release(self, job_id: int) -> None:
        """A job ended: drop its argument objects (the driver's refs, and the actors' it was staged on)."""
        keys = self.staged.pop(job_id, None)
        names = self.staged_on.pop(job_id, set())
        if keys:
            self._send(["release", sorted(keys), sorted(names)])

    def discard(self, name: str, value: Any) -> None:
        """Result arrays of a report the daemon will not use (a stale or refused one): the actor drops them."""
        keys = stored_keys(value)
        if keys and name in self.members:
            self._send(["discard", name, [k.key for k in keys]])

    def take(self, name: str, value: Any, local: bool = False) -> Any:
        """A result ``value`` from member ``name`` with its :class:`StoredArray` keys replaced by the arrays.

        ``local`` (a local client's job): each array above ``[jobs]
        inline_array_limit`` lands in a new shared-memory segment of this
        daemon and is replaced by its handle, as a local worker's result
        would be; its bytes are read from the driver straight into the
        segment (no copy of its own on the way).  Waits for the driver (at
        most 5 s plus a second per 50 MB, and a little more for the link: the
        daemon's loop waits meanwhile); raises EnsembleError naming why when
        it cannot (the actor died, the key is unknown, the array does not
        match its key, the cluster went away), its segments unlinked.
        """
        from actors._errors import EnsembleError
        from actors.shm import SharedArray, walk

        keys = stored_keys(value)
        if not keys:
            return value
        if name not in self.members or not self.joined:
            raise EnsembleError(f"its result arrays were on Ray worker {name}, which is gone")
        limit = self.cfg.jobs.inline_array_limit
        segs = [SharedArray.create(self.cfg.shm_key, k.shape, k.dtype) if local and k.nbytes > limit else None
                for k in keys]
        try:
            got = self._take(name, keys, segs)
        except BaseException:
            for seg in segs:
                if seg is not None:
                    seg.unlink()
            raise
        finally:
            for seg in segs:
                if seg is not None:
                    seg.close()
        return walk(value, lambda v: got[v.key] if type(v) is StoredArray else v)

    def _take(self, name: str, keys: list[StoredArray], segs: list[Any]) -> dict[str, Any]:
        """The arrays under ``keys`` from member ``name``'s actor, by key: the handle of its segment where
        ``segs`` has one (read straight into it), else the array."""
        from actors._errors import EnsembleError

        self.take_seq += 1
        seq = self.take_seq
        timeout = _TAKE_WAIT + sum(k.nbytes for k in keys) / _TAKE_RATE
        self.landing[seq] = [seg.array if seg is not None else None for seg in segs]
        try:
            self._send(["take", seq, name, [k.key for k in keys], timeout])
            arrays = self._taken(seq, time.monotonic() + timeout + _END_WAIT, name)
        finally:
            self.landing.pop(seq, None)
        if len(arrays) != len(keys):
            raise EnsembleError(f"Ray worker {name} gave {len(arrays)} result arrays for {len(keys)} keys")
        got: dict[str, Any] = {}
        for k, arr, seg in zip(keys, arrays, segs):
            if arr.dtype.str != k.dtype or tuple(arr.shape) != k.shape or (seg is not None and arr is not seg.array):
                raise EnsembleError(f"result array {k.key} from Ray worker {name} does not match its key")
            got[k.key] = arr if seg is None else seg.handle
            self.counters["ray_store_results"] += 1
            self.counters["ray_store_bytes"] += arr.nbytes
        return got

    def _taken(self, seq: int, until: float, name: str) -> list[Any]:
        """The arrays of the driver's answer to take ``seq`` (other reports kept for :meth:`poll`)."""
        from actors._errors import EnsembleError

        while not self.broken:
            try:
                report = self.inbox.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if report[0] == "took" and report[1] == seq:
                if report[2]:
                    raise EnsembleError(f"its result arrays could not be taken from Ray worker {name}: {report[2]}")
                return list(report[3])
            if report[0] != "took":
                self.pending.append(report)
            if report[0] in ("eof", "failed"):
                break
        raise EnsembleError(f"its result arrays could not be taken from Ray worker {name}: no answer from the "
                            f"Ray driver ({self.broken or 'it ended or took too long'})")


_DRIVER_MAIN = "import sys; from actors._ray_driver import driver_main; sys.exit(driver_main(sys.argv[1:]))"


def _open_segment(handle: ArrayHandle, prefix: str) -> int:
    """A read-only descriptor of the segment ``handle`` names, checked as
    :meth:`~actors.shm.SharedArray.attach` checks it (one of this daemon's, ours, big enough); ProtocolError if not."""
    from actors.shm import SHM_DIR, SharedArray

    SharedArray.attach(handle, readonly=True, prefix=prefix).close()  # its name, owner and size (maps, reads nothing)
    try:
        fd = os.open(SHM_DIR / handle.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ProtocolError(f"shared-memory segment {handle.name} cannot be opened: {exc.strerror}") from exc
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_size < handle.offset + handle.nbytes:  # (made again since the check)
        os.close(fd)
        raise ProtocolError(f"shared-memory segment {handle.name} changed while it was opened; refused")
    return fd


def _read_reports(sock: socket.socket, inbox: "queue.Queue[list[Any]]", landing: dict[int, list[Any]]) -> None:
    """The daemon's thread reading the driver's reports (a ``took`` with its arrays) until the link closes.

    ``landing``: take number -> where each of its arrays goes (a segment's
    array, or None), set by :meth:`RayWorkers.take` before it asks.
    """
    try:
        while True:
            report = list(recv_header(sock))
            if report[0] == "took":
                report[3] = _read_arrays(sock, report[3], landing.pop(report[1], []))
            inbox.put(report)
    except Exception as exc:  # noqa: BLE001 - EOF, a reset link, a malformed report: the driver is done with
        inbox.put(["eof", f"{type(exc).__name__}: {exc}"])


def _read_arrays(sock: socket.socket, sizes: list[Any], into: list[Any]) -> list[Any]:
    """The arrays of a ``took`` (``sizes``: dtype, shape and bytes of each), each read straight into its place
    in ``into`` when one is there of that dtype and shape (a segment's array), else into an array of its own."""
    import numpy as np

    from actors.messages import _check_dtype

    arrays = []
    for i, (dtype, shape, nbytes) in enumerate(sizes):
        arr = into[i] if i < len(into) else None
        if arr is None or arr.dtype.str != dtype or arr.shape != tuple(shape):
            arr = np.empty(shape, _check_dtype(dtype))
        if arr.nbytes != nbytes:
            raise ValueError(f"a taken array of {nbytes} bytes for shape {shape} of {dtype}")
        recv_exact(sock, nbytes, arr.reshape(-1).view(np.uint8))
        arrays.append(arr)
    return arrays


def _tail(path: Path, size: int = 20_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _auth_failure(text: str) -> str:
    """Ray's words for a refused authentication token in ``text`` (the driver's error and log), '' if none.

    Ray's ``ray.init`` says only "Failed to connect to Ray cluster" when
    the GCS refuses the token; its core worker logs why (``Unauthenticated``).
    """
    for line in text.splitlines():
        if "Unauthenticated" in line or "InvalidAuthToken" in line or "AuthenticationError" in line:
            return line.split("] ", 1)[-1].strip()[:300]
    return ""



def stored_keys(value: Any) -> list[StoredArray]:
    """Every :class:`StoredArray` key in ``value`` (nested lists and maps), in order."""
    from actors.shm import walk

    keys: list[StoredArray] = []
    walk(value, lambda v: keys.append(v) if type(v) is StoredArray else None)
    return keys


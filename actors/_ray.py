"""Workers placed on a Ray cluster: each Ray actor hosts one ensemble worker that connects back over CURVE tcp.

Ray does what it is good at: cluster membership, resource-aware placement
(CPUs, GPUs, memory, custom resources), node autoscaling and node-failure
detection.  Ensemble keeps its own job semantics: the daemon dispatches to
these workers exactly as to any remote worker (progress, abort then kill,
the journal, priorities), and a job's resources decide which one runs it.

The shape, daemon side (:class:`RayWorkers`, owned by the supervisor when
``[cluster] ray`` is set):

* the Ray driver is a child process of the daemon (:func:`driver_main`,
  :class:`Driver`), never the daemon itself: Ray's core worker ends its
  driver's process when the cluster goes away, and that ends only the child
  (its workers are then lost, ``status`` says why, a new driver joins once
  the cluster is back); the daemon sends it commands and reads its reports
  over a socketpair (msgpack headers and raw array bytes, as the link below);
* for each worker it issues a ``worker`` key (``ray-<token>-<n>``, see
  :mod:`actors._keys`) and starts a Ray actor (:class:`WorkerHost`) with the
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

* arguments: at dispatch the daemon sends the array's raw bytes (from its
  shared-memory segment, or an inline array a remote client sent) to its
  driver, which puts it in the store (``ray.put``) once per job, keeps the
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
  driver owns and drops once it sent the raw bytes) and copies it out: into
  a segment for a local client's job, into the journal and the reply for a
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

Ray is imported only here and only when configured (:func:`import_ray`: the
daemon imports it to check it is installed; only its driver process joins).
Nothing here touches the daemon's sockets or jobs: the supervisor's
:mod:`actors.supervisor._cluster` applies what this reports.  Runtime layer:
no audio or controller imports.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors._errors import ConfigError, DaemonError
from actors._keys import add_peer, list_keys, revoke
from actors._resources import describe, fits
from actors._spawn import child_env, python_argv, set_parent_death_signal
from actors._storelink import recv_exact, recv_header, send_msg
from actors.config import Config
from actors.messages import ArrayHandle, StoredArray

log = logging.getLogger("ensemble.ray")
KEY_PREFIX = "ray-"  # names of the keys issued to Ray-placed workers (revoked at start if a dead daemon left any)
_RESTART_PAUSE = 0.5  # seconds an actor waits before restarting a worker process that died
_STAGE_WAIT = 60.0  # seconds the actor waits for the daemon's stage() of a key its worker asks for
_TAKE_WAIT = 5.0  # seconds the daemon waits for result arrays from an actor, plus a second per _TAKE_RATE bytes
_TAKE_RATE = 50_000_000  # (the daemon's loop waits meanwhile: bounded, as a node that died could make it wait long)
_JOIN_WAIT = 45.0  # seconds a driver may take to join the cluster before the daemon ends it and reports why
_RETRY_FIRST, _RETRY_MAX = 2.0, 30.0  # seconds between attempts to (re)join the cluster: doubling, at most this
_SEND_WAIT = 5  # seconds a write to the driver may block (one that stopped reading its link is taken for broken)
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


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray actor options reserving ``resources`` (``CPU``, ``GPU``, ``memory`` and custom names)."""
    opts: dict[str, Any] = {"num_cpus": resources.get("CPU", 0.0), "num_gpus": resources.get("GPU", 0.0)}
    if resources.get("memory"):
        opts["memory"] = resources["memory"]
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    if custom:
        opts["resources"] = custom
    return opts


class WorkerHost:
    """The Ray actor: runs one ensemble worker process and reports when it ends (runs on a cluster node).

    ``run()`` starts ``python -m actors worker --connect ...`` in its own
    process group and waits; a worker that exits non-zero (a job kill, a
    crash) is started again, one that exits 0 ends ``run()`` with 0.  The
    worker dies with this actor (parent-death signal).  Its keys reach it
    through pipes (``--key /dev/fd/N``): nothing secret is written to the
    node's disk, so an actor killed outright leaves nothing behind.

    The object store: a thread serves the worker's end of a socketpair
    (:mod:`actors._storelink`): ``get`` resolves an argument the daemon
    staged (:meth:`stage`), ``put`` keeps a result array for the daemon's
    :meth:`take`.  Results a worker process left untaken go with it.  Ray
    runs the methods on a thread pool (``max_concurrency``), so ``stage`` and
    ``take`` run while ``run()`` waits.
    """

    def __init__(self, endpoint: str, secret: str, server_public: str, name: str, env: dict[str, str],
                 resources: dict[str, float]) -> None:
        self.endpoint, self.secret, self.server_public = endpoint, secret, server_public
        self.name, self.env, self.resources = name, env, resources
        self._cond = threading.Condition()
        self._staged: dict[str, Any] = {}  # key -> ObjectRef of an argument the daemon staged (borrowed)
        self._results: dict[str, Any] = {}  # key -> result array a worker put, until the daemon takes it
        self._pid = 0  # the current worker process's

    def run(self) -> int:
        """Run the worker until it exits 0 (stopped by the daemon, or the daemon fell silent); restart it otherwise."""
        while True:
            code = self._run_once()
            if code == 0:
                return 0
            print(f"ensemble worker {self.name} exited with code {code}; starting it again", file=sys.stderr)
            time.sleep(_RESTART_PAUSE)

    def _run_once(self) -> int:
        fds: list[int] = []
        mine, theirs = socket.socketpair()
        try:
            for text in (self.secret, self.server_public):  # a key file is ~400 bytes: a pipe holds it whole
                r, w = os.pipe()
                fds.append(r)
                with os.fdopen(w, "w") as f:
                    f.write(text)
            fds.append(theirs.fileno())
            argv = python_argv("actors", "worker", "--connect", self.endpoint, "--key", f"/dev/fd/{fds[0]}",
                               "--server-key", f"/dev/fd/{fds[1]}", "--worker-name", self.name,
                               "--resources", describe(self.resources), "--object-store-fd", str(fds[2]))
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=child_env(self.env), cwd="/", pass_fds=fds,
                                    start_new_session=True, preexec_fn=set_parent_death_signal)
            self._pid = proc.pid
        finally:
            for fd in fds[:2]:
                os.close(fd)
            theirs.close()
        put: list[str] = []
        server = threading.Thread(target=self._serve, args=(mine, put), name="object-store-link", daemon=True)
        server.start()
        try:
            return proc.wait()
        finally:
            try:
                mine.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.join(10)
            mine.close()
            with self._cond:  # what this worker process put and the daemon did not take is nobody's now
                for key in put:
                    self._results.pop(key, None)

    def where(self) -> tuple[int, str, str]:
        """``(pid, node id, node address)`` of this actor's worker process (pid 0 before it started)."""
        ray = import_ray()
        return self._pid, ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    # -- the object store (Ray calls from the daemon, and the link to the worker) ---------------
    def stage(self, keys: list[str], refs: list[Any]) -> None:
        """Keep argument refs under their keys for the worker to fetch (``refs`` nested: Ray passes them as refs)."""
        with self._cond:
            self._staged.update(zip(keys, refs))
            self._cond.notify_all()

    def release(self, keys: list[str]) -> None:
        """Drop staged arguments (their job ended: this actor no longer borrows them) or results nobody will take."""
        with self._cond:
            for key in keys:
                self._staged.pop(key, None)
                self._results.pop(key, None)

    def take(self, keys: list[str]) -> list[Any]:
        """The result arrays put under ``keys`` (each given once); KeyError naming a key that is not here."""
        with self._cond:
            missing = [k for k in keys if k not in self._results]
            if missing:
                raise KeyError(f"no result array {missing[0]!r} on this worker (its process ended before the "
                               "daemon took it)")
            return [self._results.pop(k) for k in keys]

    def _serve(self, sock: socket.socket, put: list[str]) -> None:
        """Answer the worker's ``get`` and ``put`` until it closes its end (a thread of this actor)."""
        import numpy as np

        from actors.messages import _check_dtype

        try:
            while True:
                header = recv_header(sock)
                if header[0] == "get":
                    key = str(header[1])
                    with self._cond:
                        self._cond.wait_for(lambda: key in self._staged, _STAGE_WAIT)
                        ref = self._staged.pop(key, None)
                    if ref is None:
                        send_msg(sock, [False, 0, f"the daemon staged nothing under {key} within {_STAGE_WAIT:g}s"])
                        continue
                    try:
                        import ray  # in the actor: Ray's own deserialisation, on the worker's node

                        arr = np.ascontiguousarray(ray.get(ref))
                    except Exception as exc:  # noqa: BLE001 - ObjectLostError and kin: the worker's job fails with it
                        send_msg(sock, [False, 0, f"{type(exc).__name__}: {exc}"])
                        continue
                    send_msg(sock, [True, arr.nbytes, ""], arr.reshape(-1).view(np.uint8).data)
                    del arr, ref
                elif header[0] == "put":
                    _, key, dtype, shape, nbytes = header
                    arr = np.empty(shape, _check_dtype(dtype))
                    if arr.nbytes != nbytes:
                        raise ValueError(f"result array {key}: {nbytes} bytes for shape {shape} of {dtype}")
                    recv_exact(sock, nbytes, arr.reshape(-1).view(np.uint8))
                    with self._cond:
                        self._results[str(key)] = arr
                    put.append(str(key))
                    send_msg(sock, [True, 0, ""])
                else:
                    raise ValueError(f"unknown request {header[0]!r}")
        except (EOFError, OSError):
            return  # the worker process ended
        except Exception as exc:  # noqa: BLE001 - a malformed request: the link goes, the worker's job fails
            print(f"ensemble worker {self.name}: object-store link closed: {exc}", file=sys.stderr)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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


class RayWorkers:
    """The daemon's Ray-placed workers: start, scale, notice deaths, remove (keys revoked); Ray itself in a child.

    The Ray driver runs in a child process of the daemon (:func:`driver_main`),
    never in the daemon: when Ray's GCS or the local raylet goes away, Ray's
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
        self.broken = ""  # why a write to the driver failed (it is ended at the next poll)
        self.refused: list[tuple[dict[str, float], str]] = []  # needs Ray refused to place (reported by the driver)
        self.capped: list[dict[str, float]] = []  # needs the last placement left without a worker (max_workers)
        self.take_seq = 0
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
        self.sock, self.inbox, self.broken = mine, queue.Queue(), ""
        self.reader = threading.Thread(target=_read_reports, args=(mine, self.inbox), name="ray-driver-reports",
                                       daemon=True)
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
        self.staged.clear()
        self.staged_on.clear()
        self.pending.clear()
        self.retry_at = time.monotonic() + self.pause
        self.pause = min(self.pause * 2, _RETRY_MAX)

    def _send(self, header: list[Any], payload: Any = None) -> None:
        """A command to the driver; a failed write marks it broken (ended at the next poll), never raises."""
        if self.sock is None or self.broken:
            return
        try:
            send_msg(self.sock, header, payload)
        except OSError as exc:
            self.broken = f"the Ray driver stopped reading its commands ({exc})"

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
        if not self.joined:
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
        went away), failed to join, or took longer than :data:`_JOIN_WAIT` to:
        every member is lost and a new driver starts after a pause.
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
        elif self.proc is None and mono >= self.retry_at:
            self._launch()
        return out

    def _apply(self, report: list[Any], out: list[tuple[str, str]]) -> None:
        kind = report[0]
        if kind == "joined":
            self.joined, self.endpoint, self.pause = True, str(report[1]), _RETRY_FIRST
            self._state("joined", "")
            log.info("event=ray-joined address=%s connect=%s workers=%d", self.address, self.endpoint, self.wanted)
            self.scale(self.wanted)
        elif kind in ("failed", "eof"):
            self._lost(str(report[1]) if kind == "failed" else "its Ray driver ended", out)
        elif kind == "ended":
            _, name, ok, why = report
            member = self.members.get(name)
            if member is None:
                return
            member.pid, member.where_for = 0, ""
            if not ok:
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
        elif kind == "refused":
            member = self.members.pop(report[1], None)
            if member is not None:
                self._forget_key(member.name)
                need = member.need or member.resources
                log.error("event=ray-placement-refused need=%s reason=%s", describe(member.resources), report[2])
                self.refused.append((need, f"Ray cannot place a worker with {describe(member.resources)}: "
                                           f"{report[2]}"))

    # -- the object store ----------------------------------------------------------------
    def stage(self, name: str, job_id: int, value: Any, prefix: str) -> Any:
        """``value`` for the frame to member ``name``: big arrays as :class:`StoredArray` keys, staged on its actor.

        Shared-memory handles (this daemon's, named with ``prefix``) and inline
        arrays of at least ``object_store_min_bytes`` go to the driver, which
        puts them in Ray's store once per job (a retry reuses the object);
        smaller ones cross inline, handles as bytes.  Raises EnsembleError
        when a segment is gone.  Costs a copy of each big array into the link.
        """
        from actors.shm import SharedArray, copy_of, is_ndarray, walk

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
                    seg = SharedArray.attach(v, readonly=True, prefix=prefix)
                    try:
                        self._put(key, seg.array)
                    finally:
                        seg.close()
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

    def take(self, name: str, value: Any, land: Any = None) -> Any:
        """A result ``value`` from member ``name`` with its :class:`StoredArray` keys replaced by the arrays
        (or by what ``land(array)`` makes of each).

        Waits for the driver (at most 5 s plus a second per 50 MB, and a
        little more for the link: the daemon's loop waits meanwhile); raises
        EnsembleError naming why when it cannot (the actor died, the key is
        unknown, the array does not match its key, the cluster went away).
        """
        from actors._errors import EnsembleError
        from actors.shm import walk

        keys = stored_keys(value)
        if not keys:
            return value
        if name not in self.members or not self.joined:
            raise EnsembleError(f"its result arrays were on Ray worker {name}, which is gone")
        self.take_seq += 1
        timeout = _TAKE_WAIT + sum(k.nbytes for k in keys) / _TAKE_RATE
        self._send(["take", self.take_seq, name, [k.key for k in keys], timeout])
        arrays = self._taken(self.take_seq, time.monotonic() + timeout + _END_WAIT, name)
        got = {}
        for k, arr in zip(keys, arrays):
            if arr.dtype.str != k.dtype or tuple(arr.shape) != k.shape:
                raise EnsembleError(f"result array {k.key} from Ray worker {name} does not match its key")
            got[k.key] = arr if land is None else land(arr)
            self.counters["ray_store_results"] += 1
            self.counters["ray_store_bytes"] += arr.nbytes
        return walk(value, lambda v: got[v.key] if type(v) is StoredArray else v)

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


_DRIVER_MAIN = "import sys; from actors._ray import driver_main; sys.exit(driver_main(sys.argv[1:]))"


def _read_reports(sock: socket.socket, inbox: "queue.Queue[list[Any]]") -> None:
    """The daemon's thread reading the driver's reports (a ``took`` with its arrays) until the link closes."""
    import numpy as np

    from actors.messages import _check_dtype

    try:
        while True:
            report = list(recv_header(sock))
            if report[0] == "took":
                arrays = []
                for dtype, shape, nbytes in report[3]:
                    arr = np.empty(shape, _check_dtype(dtype))
                    if arr.nbytes != nbytes:
                        raise ValueError(f"a taken array of {nbytes} bytes for shape {shape} of {dtype}")
                    recv_exact(sock, nbytes, arr.reshape(-1).view(np.uint8))
                    arrays.append(arr)
                report[3] = arrays
            inbox.put(report)
    except Exception as exc:  # noqa: BLE001 - EOF, a reset link, a malformed report: the driver is done with
        inbox.put(["eof", f"{type(exc).__name__}: {exc}"])


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


# -- the driver process --------------------------------------------------------------------
def driver_main(argv: list[str]) -> int:
    """The Ray driver's process: join the cluster, then carry out the daemon's commands until it says ``stop``.

    ``argv``: the link's descriptor, the cluster address, the namespace and
    the daemon's worker endpoint.  Ray's core worker may end this process
    (the GCS or the raylet went away): the daemon notices the link close.
    Returns 0 after ``stop`` or when the daemon closed the link, 1 when
    joining failed (the reason sent as ``failed``).
    """
    fd, address, namespace, bound = argv
    sock = socket.socket(fileno=int(fd))
    ray = import_ray()
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        send_msg(sock, ["failed", f"{type(exc).__name__}: {exc}"])
        return 1
    try:
        driver = Driver(ray, sock, _connect_endpoint(ray, bound))
        send_msg(sock, ["joined", driver.endpoint])
        driver.serve()
    finally:
        ray.shutdown()
    return 0


def _connect_endpoint(ray: Any, bound: str) -> str:
    host, _, port = bound.removeprefix("tcp://").rpartition(":")
    if host in ("0.0.0.0", "*", "", "[::]", "::"):
        host = ray.util.get_node_ip_address()
    return f"tcp://{host}:{port}"


class Driver:
    """The driver process's side: the actors, their pending ``run()``s, and the argument objects it owns."""

    def __init__(self, ray: Any, sock: socket.socket, endpoint: str) -> None:
        self.ray, self.sock, self.endpoint = ray, sock, endpoint
        self.host_cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)(WorkerHost)
        self.actors: dict[str, Any] = {}
        self.runs: dict[Any, str] = {}  # pending run() ref -> member name
        self.wheres: dict[Any, str] = {}  # pending where() ref -> member name
        self.retiring: set[str] = set()
        self.refs: dict[str, Any] = {}  # key -> ObjectRef of a staged argument, until its job ends

    def serve(self) -> None:
        """Carry out commands and report ended runs until ``stop`` or the daemon closes the link."""
        try:
            while True:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
                if ready and not self.command(recv_header(self.sock)):
                    return
                self.watch()
        except EOFError:
            return
        finally:
            for actor in self.actors.values():
                try:
                    self.ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001,S110 - already gone
                    pass

    def command(self, cmd: list[Any]) -> bool:  # noqa: C901 - one branch per command
        """Carry out one command of the daemon's; False for ``stop``."""
        kind = cmd[0]
        if kind == "add":
            _, name, resources, secret, server_public, env = cmd
            try:
                actor = self.host_cls.options(name=name, **ray_options(resources)).remote(
                    self.endpoint, secret, server_public, name, env, resources)
            except Exception as exc:  # noqa: BLE001 - Ray's refusal of these options: this need's jobs fail
                send_msg(self.sock, ["refused", name, f"{type(exc).__name__}: {exc}"])
                return True
            self.actors[name] = actor
            self.runs[actor.run.remote()] = name
        elif kind == "kill":
            actor = self.actors.pop(cmd[1], None)
            self.retiring.discard(cmd[1])
            if actor is not None:
                try:
                    self.ray.kill(actor, no_restart=True)
                except Exception as exc:  # noqa: BLE001 - already gone
                    print(f"ensemble: kill of {cmd[1]} failed: {exc}", file=sys.stderr)
        elif kind == "retiring":
            self.retiring.add(cmd[1])
        elif kind == "where" and cmd[1] in self.actors:
            self.wheres[self.actors[cmd[1]].where.remote()] = cmd[1]
        elif kind == "put":
            import numpy as np

            from actors.messages import _check_dtype

            _, key, dtype, shape, nbytes = cmd
            arr = np.empty(shape, _check_dtype(dtype))
            recv_exact(self.sock, nbytes, arr.reshape(-1).view(np.uint8))
            self.refs[key] = self.ray.put(arr)
        elif kind == "stage" and cmd[1] in self.actors:
            keys = [k for k in cmd[2] if k in self.refs]  # nested in a list: passed as refs, borrowed by the actor
            self.actors[cmd[1]].stage.remote(keys, [self.refs[k] for k in keys])
        elif kind == "release":
            for key in cmd[1]:
                self.refs.pop(key, None)
            for name in cmd[2]:
                if name in self.actors:
                    self.actors[name].release.remote(cmd[1])
        elif kind == "discard" and cmd[1] in self.actors:
            self.actors[cmd[1]].release.remote(cmd[2])
        elif kind == "take":
            self.take(*cmd[1:])
        elif kind == "stop":
            return False
        return True

    def take(self, seq: int, name: str, keys: list[str], timeout: float) -> None:
        """Answer a ``take``: the arrays' dtypes, shapes and sizes, then their bytes (or why not)."""
        import numpy as np

        actor = self.actors.get(name)
        try:
            if actor is None:
                raise KeyError(f"no actor {name} here")
            # Ray unpickles the actor's return value here: inside the trust boundary (see the module docstring)
            arrays = [np.ascontiguousarray(a) for a in self.ray.get(actor.take.remote(keys), timeout=timeout)]
            if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biufc" for a in arrays):
                raise TypeError("the actor returned something other than numeric arrays")
        except Exception as exc:  # noqa: BLE001 - RayActorError, GetTimeoutError, the actor's KeyError
            send_msg(self.sock, ["took", seq, f"{type(exc).__name__}: {exc}", []])
            return
        send_msg(self.sock, ["took", seq, "", [[a.dtype.str, list(a.shape), a.nbytes] for a in arrays]])
        for a in arrays:
            self.sock.sendall(a.reshape(-1).view(np.uint8).data)

    def watch(self) -> None:
        """Report the runs that ended (submitting them again unless retiring) and the workers located."""
        if self.runs:
            ready, _ = self.ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0)
            for ref in ready:
                name = self.runs.pop(ref)
                if name not in self.actors:
                    continue
                try:
                    self.ray.get(ref, timeout=0)
                    ok, why = True, ""
                except Exception as exc:  # noqa: BLE001 - RayActorError and kin: it died; Ray restarts it
                    ok, why = False, type(exc).__name__
                if not ok or name not in self.retiring:
                    self.runs[self.actors[name].run.remote()] = name
                send_msg(self.sock, ["ended", name, ok, why])
        if self.wheres:
            ready, _ = self.ray.wait(list(self.wheres), num_returns=len(self.wheres), timeout=0)
            for ref in ready:
                name = self.wheres.pop(ref)
                try:
                    pid, node, host = self.ray.get(ref, timeout=0)
                except Exception:  # noqa: BLE001,S112 - it died meanwhile: asked again when it joins again
                    continue
                send_msg(self.sock, ["where", name, pid, node, host])


def stored_keys(value: Any) -> list[StoredArray]:
    """Every :class:`StoredArray` key in ``value`` (nested lists and maps), in order."""
    from actors.shm import walk

    keys: list[StoredArray] = []
    walk(value, lambda v: keys.append(v) if type(v) is StoredArray else None)
    return keys

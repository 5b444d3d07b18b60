"""Workers placed on a Ray cluster: each Ray actor hosts one ensemble worker that connects back over CURVE tcp.

Ray does what it is good at: cluster membership, resource-aware placement
(CPUs, GPUs, memory, custom resources), node autoscaling and node-failure
detection.  Ensemble keeps its own job semantics: the daemon dispatches to
these workers exactly as to any remote worker (progress, abort then kill,
the journal, priorities), and a job's resources decide which one runs it.

The shape, daemon side (:class:`RayWorkers`, owned by the supervisor when
``[cluster] ray`` is set):

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

* arguments: at dispatch the daemon puts the array in the store (``ray.put``,
  from the raw shared-memory bytes, or an inline array a remote client sent)
  once per job, keeps the ObjectRef until the job ends, and stages it on the
  worker's actor with an actor call that carries the ref nested in a list (so Ray
  counts the actor as a borrower); the frame carries only a
  :class:`~actors.messages.StoredArray` key.  The worker asks its actor for
  the key over the node-local link (:mod:`actors._storelink`); the actor
  resolves the ref on its node and writes the raw bytes.  A retried job is
  staged again from the same ref; when the job ends the daemon drops its ref
  and tells the actor to drop its own, so Ray frees the object;
* results: the worker writes a big result's raw bytes to its actor over the
  link and sends the key in its ``JobsDone``; the daemon takes the array from
  the actor (``take``, a Ray call whose return value the daemon owns and
  drops once the array is copied out: into a segment for a local client's
  job, into the journal and the reply for a remote client's).

Where Ray deserialises (pickle): in the actor (arguments, on the worker's
node) and in the daemon (``ray.get`` of a ``take``, and of ``run()``'s exit
code, as before).  Nothing that crossed ensemble's tcp is ever unpickled:
the frame holds a key, dtype and shape, read by msgspec; the link carries
msgpack headers and raw bytes.  The daemon's ``ray.get`` reads objects that
only processes of the Ray cluster could write, and the daemon joined that
cluster as a driver: whoever can write there can already run code on every
node, this host included (Ray has no authentication).  The cluster is inside
the trust boundary, as the cluster guide says; a cluster that is not must
set ``object_store_min_bytes = 0`` (every array then travels in the frame)
-- and should not be given workers at all.

Ray is imported only here and only when configured (:func:`import_ray`).
Nothing here touches the daemon's sockets or jobs: the supervisor's
:mod:`actors.supervisor._cluster` applies what this reports.  Runtime layer:
no audio or controller imports.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
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
    """One Ray-placed worker: its key name, actor handle, the pending ``run()`` and what Ray reserved."""

    name: str
    actor: Any
    run: Any
    resources: dict[str, float]
    demand: bool = False  # started for a queued job's resources, beyond ``[cluster] workers``
    retiring: bool = False  # picked by a scale-down: when its worker stops, the actor goes
    started: float = field(default_factory=time.monotonic)


class RayWorkers:
    """The daemon's Ray-placed workers: start, scale, notice deaths, remove (keys revoked).

    Every method runs on the supervisor's loop thread and returns at once
    (Ray's calls here are asynchronous), except :meth:`start` (connects to
    the cluster: seconds) and :meth:`close` (kills the actors, disconnects).
    """

    def __init__(self, cfg: Config, keys_dir: Path, bound: str) -> None:
        self.cfg = cfg
        self.keys_dir = keys_dir
        self.bound = bound  # the worker endpoint the daemon bound (tcp://HOST:PORT)
        self.ray: Any = None
        self.members: dict[str, Member] = {}
        self.token = secrets.token_hex(3)
        self.seq = 0
        self.endpoint = ""
        self._host_cls: Any = None
        self.min_bytes = cfg.cluster.object_store_min_bytes
        self.staged: dict[int, dict[str, Any]] = {}  # job id -> its arguments' ObjectRefs by key, until it ends
        self.staged_on: dict[int, set[str]] = {}  # job id -> members it was staged on
        self.counters = {"ray_store_args": 0, "ray_store_results": 0, "ray_store_bytes": 0}

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect to the cluster, revoke keys a dead daemon left, start ``[cluster] workers`` actors.

        Raises ConfigError (Ray missing) or DaemonError (no cluster at the address).
        """
        ray = self.ray = import_ray()
        stale = [n for n, role in list_keys(self.keys_dir) if role == "worker" and n.startswith(KEY_PREFIX)]
        for name in stale:
            self._forget_key(name)
        if stale:
            log.info("event=ray-stale-keys-revoked count=%d", len(stale))
        address = self.cfg.cluster.ray
        try:
            ray.init(address=address, namespace=f"ensemble-{self.cfg.name}", log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            raise DaemonError(f"cannot join the Ray cluster at {address!r} ([cluster] ray): {exc}; start one "
                              "(`ray start --head`) or fix the address") from exc
        self.endpoint = self.cfg.cluster.connect or self._connect_endpoint()
        self._host_cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)(WorkerHost)
        log.info("event=ray-joined address=%s connect=%s workers=%d", address, self.endpoint, self.cfg.cluster.workers)
        self.scale(self.cfg.cluster.workers)

    def _connect_endpoint(self) -> str:
        host, _, port = self.bound.removeprefix("tcp://").rpartition(":")
        if host in ("0.0.0.0", "*", "", "[::]", "::"):
            host = self.ray.util.get_node_ip_address()
        return f"tcp://{host}:{port}"

    def close(self) -> None:
        """Kill every actor (no restart), revoke their keys, leave the cluster."""
        for name in list(self.members):
            self.remove(name, "the daemon stopped")
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()

    # -- placing -------------------------------------------------------------------------
    def add(self, resources: dict[str, float], demand: bool = False) -> Member:
        """Issue a key and start an actor that reserves ``resources``; Ray places it when a node fits."""
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
        actor = self._host_cls.options(name=name, **ray_options(resources)).remote(
            self.endpoint, secret_file.read_text(), (self.keys_dir / "server.key").read_text(), name, env, resources)
        member = Member(name, actor, actor.run.remote(), resources, demand)
        self.members[name] = member
        log.info("event=ray-worker-added name=%s resources=%s demand=%d", name, describe(resources), int(demand))
        return member

    def remove(self, name: str, reason: str) -> None:
        """Kill a member's actor for good and revoke its key (it no longer authenticates)."""
        member = self.members.pop(name, None)
        if member is None:
            return
        try:
            self.ray.kill(member.actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone: the key goes all the same
            log.info("event=ray-kill-failed name=%s reason=%s", name, exc)
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

        A refusal of Ray's (a resource name it keeps, an option it does not
        take) raised out of the daemon's loop and ended the daemon, and the
        job, still queued in the journal, ended every later start too.
        """
        refused: list[tuple[dict[str, float], str]] = []
        for need in needs:
            if any(fits(need, m.resources) for m in self.members.values()):
                continue
            if len(self.members) >= self.cfg.cluster.max_workers:
                log.warning("event=ray-placement-capped need=%s max_workers=%d", describe(need),
                            self.cfg.cluster.max_workers)
                break
            try:
                self.add({**self.cfg.cluster.worker_resources, **need}, demand=True)
            except Exception as exc:  # noqa: BLE001 - Ray's refusal of this need is this need's jobs' failure
                log.error("event=ray-placement-refused need=%s reason=%s", describe(need), exc)
                refused.append((need, f"Ray cannot place a worker with {describe(need)}: {exc}"))
        return refused

    def scale(self, n: int, busy: "set[str] | frozenset[str]" = frozenset()) -> list[str]:
        """Aim for ``n`` members; returns the names to retire (the supervisor stops their workers, then :meth:`reap`).

        Growing starts actors at once.  Shrinking picks idle members first
        (``busy``: the names whose workers run jobs; a busy one retires once
        its jobs end), placement-made ones first among them, then the newest;
        those not yet connected are removed at once.
        """
        have = sorted((m for m in self.members.values() if not m.retiring),
                      key=lambda m: (m.name in busy, not m.demand, -m.started))
        for _ in range(n - len(have)):
            self.add(dict(self.cfg.cluster.worker_resources))
        going = have[:max(0, len(have) - n)]
        for member in going:
            member.retiring = True
        return [m.name for m in going]

    # -- watching ------------------------------------------------------------------------
    def poll(self) -> list[tuple[str, str]]:
        """Members whose ``run()`` ended since the last call, as ``(name, why)``; costs one ``ray.wait(timeout=0)``.

        A run that returned (its worker stopped) removes a retiring member and
        starts the worker again for any other (it left because the daemon
        fell silent); one that failed (actor or node died) is submitted again,
        so it waits for Ray's restart of the actor.
        """
        if not self.members:
            return []
        refs = {m.run: m for m in self.members.values()}
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            member = refs[ref]
            try:
                self.ray.get(ref, timeout=0)
            except Exception as exc:  # noqa: BLE001 - RayActorError and kin: it died; Ray restarts it
                why = f"Ray reports its actor died ({type(exc).__name__})"
                member.run = member.actor.run.remote()
                out.append((member.name, why))
                continue
            if member.retiring:
                self.remove(member.name, "its worker stopped")
                out.append((member.name, "its worker stopped"))
            else:
                member.run = member.actor.run.remote()
                out.append((member.name, "its worker stopped unasked; started again"))
        return out


    # -- the object store ----------------------------------------------------------------
    def stage(self, name: str, job_id: int, value: Any, prefix: str) -> Any:
        """``value`` for the frame to member ``name``: big arrays as :class:`StoredArray` keys, staged on its actor.

        Shared-memory handles (this daemon's, named with ``prefix``) and inline
        arrays of at least ``object_store_min_bytes`` are ``ray.put`` once per
        job (a retry reuses the object); smaller ones cross inline, handles as
        bytes.  Raises EnsembleError when a segment is gone.
        """
        from actors.shm import SharedArray, copy_of, is_ndarray, walk

        member = self.members.get(name)
        refs = self.staged.get(job_id) or {}
        new: dict[str, Any] = {}
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
            if key not in refs:
                if handle:
                    seg = SharedArray.attach(v, readonly=True, prefix=prefix)
                    try:  # ray.put copies the segment's bytes into the store (and pickles; nothing is unpickled)
                        refs[key] = self.ray.put(seg.array)
                    finally:
                        seg.close()
                else:
                    refs[key] = self.ray.put(v)
                self.counters["ray_store_args"] += 1
                self.counters["ray_store_bytes"] += v.nbytes
            new[key] = refs[key]
            return StoredArray(key, v.dtype if handle else v.dtype.str, tuple(v.shape))

        out = walk(value, leaf)
        if refs:
            self.staged[job_id] = refs
        if new and member is not None:
            member.actor.stage.remote(list(new), list(new.values()))  # nested in a list: passed as refs, borrowed
            self.staged_on.setdefault(job_id, set()).add(name)
        return out

    def release(self, job_id: int) -> None:
        """A job ended: drop its argument objects (the daemon's refs, and the actors' it was staged on)."""
        refs = self.staged.pop(job_id, None)
        names = self.staged_on.pop(job_id, ())
        if refs:
            keys = list(refs)
            for name in names:
                member = self.members.get(name)
                if member is not None:
                    member.actor.release.remote(keys)

    def discard(self, name: str, value: Any) -> None:
        """Result arrays of a report the daemon will not use (a stale or refused one): the actor drops them."""
        keys = stored_keys(value)
        member = self.members.get(name)
        if keys and member is not None:
            member.actor.release.remote([k.key for k in keys])

    def take(self, name: str, value: Any, land: Any = None) -> Any:
        """A result ``value`` from member ``name`` with its :class:`StoredArray` keys replaced by the arrays
        (or by what ``land(array)`` makes of each).

        Waits for the actor (at most 5 s plus a second per 50 MB: the
        daemon's loop waits meanwhile); raises EnsembleError
        naming why when it cannot (the actor died, the key is unknown, the
        array does not match its key).
        """
        from actors._errors import EnsembleError
        from actors.shm import walk

        keys = stored_keys(value)
        if not keys:
            return value
        member = self.members.get(name)
        if member is None:
            raise EnsembleError(f"its result arrays were on Ray worker {name}, which is gone")
        try:
            # Ray unpickles the actor's return value here: inside the trust boundary (see the module docstring)
            timeout = _TAKE_WAIT + sum(k.nbytes for k in keys) / _TAKE_RATE
            arrays = self.ray.get(member.actor.take.remote([k.key for k in keys]), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - RayActorError, GetTimeoutError, the actor's KeyError
            raise EnsembleError(f"its result arrays could not be taken from Ray worker {name}: "
                                f"{type(exc).__name__}: {exc}") from exc
        import numpy as np

        got = {}
        for k, arr in zip(keys, arrays):
            if not isinstance(arr, np.ndarray) or arr.dtype.str != k.dtype or tuple(arr.shape) != k.shape:
                raise EnsembleError(f"result array {k.key} from Ray worker {name} does not match its key")
            got[k.key] = arr if land is None else land(arr)
            self.counters["ray_store_results"] += 1
            self.counters["ray_store_bytes"] += arr.nbytes

        return walk(value, lambda v: got[v.key] if type(v) is StoredArray else v)


def stored_keys(value: Any) -> list[StoredArray]:
    """Every :class:`StoredArray` key in ``value`` (nested lists and maps), in order."""
    from actors.shm import walk

    keys: list[StoredArray] = []
    walk(value, lambda v: keys.append(v) if type(v) is StoredArray else None)
    return keys

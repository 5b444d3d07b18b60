"""The Ray actor that hosts one ensemble worker on a cluster node, and serves its end of the object-store link.

Ray places a :class:`WorkerHost` where the resources it reserves fit (the
daemon's driver, :mod:`actors._ray_driver`, creates it); the actor runs
``ensemble worker --connect`` as a subprocess that joins the daemon over
CURVE tcp like any remote worker, and keeps, for that worker, the argument
objects the daemon staged and the result arrays the worker put
(:mod:`actors._storelink`).  It runs in Ray's worker processes, never in the
daemon: Ray unpickles here what the daemon's driver passed (inside the
cluster's trust boundary, see :mod:`actors._ray`).  Runtime layer: no audio
or controller imports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from actors._ray import import_ray
from actors._resources import describe
from actors._spawn import child_env, python_argv, set_parent_death_signal
from actors._storelink import recv_exact, recv_header, send_msg

_RESTART_PAUSE = 0.5  # seconds an actor waits before restarting a worker process that died
_STAGE_WAIT = 60.0  # seconds the actor waits for the daemon's stage() of a key its worker asks for


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


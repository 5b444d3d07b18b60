"""The Ray driver: a child process of the daemon that joins the cluster and carries out the daemon's commands.

The daemon (:class:`actors._ray.RayWorkers`) starts ``driver_main`` in a
process of its own, never in itself: Ray's core worker ends its driver's
process when the cluster goes away, and that ends only this child.  The two
talk over a socketpair in :mod:`actors._storelink`'s framing (msgpack
headers, raw array bytes): the daemon sends commands (``add``, ``kill``,
``retiring``, ``where``, ``put`` with an array's bytes, ``put_fd`` with a
shared-memory segment's descriptor, ``stage``, ``release``, ``discard``,
``take``, ``stop``, and ``ping``) and this process reports (``joined``/``failed``, ``ended`` (with the
cause of a failed run, and whether Ray could not create the actor at all), ``where``, ``refused``, ``took``
with the arrays' bytes, ``pong``).  A thread that makes no Ray call reads
the commands and answers ``ping``, so a driver that waits on Ray is not
taken for a hung one (:class:`Driver`).  Here alone Ray is joined, and here
Ray deserialises (pickle) what the cluster's actors return.  Runtime layer:
no audio or controller imports.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from typing import Any

from actors._ray import import_ray
from actors._ray_host import WorkerHost
from actors._storelink import recv_exact, recv_header, send_msg

_RERUN_FIRST, _RERUN_MAX = 0.5, 30.0  # seconds before an actor whose run failed twice in a row is asked to run
# again: doubling while its runs keep failing (each fails at once while its actor is dead), at most this
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$")


def failure_cause(exc: BaseException, limit: int = 300) -> str:
    """What a failed run's exception says, short: its type and the last ``SomeError: ...`` line of its message.

    Ray's errors carry the actor's whole traceback (``ActorDiedError: ... error
    raised in its creation task ... ModuleNotFoundError: No module named
    'actors'``); the last error line is the cause to show.
    """
    text = _ANSI.sub("", str(exc))
    found = [m.group(1).strip() for m in map(_ERROR_LINE.match, text.splitlines()) if m]
    cause = found[-1] if found else (text.strip().splitlines() or [""])[0]
    why = cause if cause.startswith(type(exc).__name__) else f"{type(exc).__name__}: {cause}".rstrip(": ")
    return why if len(why) <= limit else why[:limit - 3] + "..."


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray actor options reserving ``resources`` (``CPU``, ``GPU``, ``memory`` and custom names)."""
    opts: dict[str, Any] = {"num_cpus": resources.get("CPU", 0.0), "num_gpus": resources.get("GPU", 0.0)}
    if resources.get("memory"):
        opts["memory"] = resources["memory"]
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    if custom:
        opts["resources"] = custom
    return opts


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


def _peek_fds(sock: socket.socket) -> list[int]:
    """The descriptors that came with the next command, peeked (its bytes stay for ``recv_header``); [] for most.

    Blocks until a command comes.  A plain read of those bytes drops the
    descriptors, so they are taken here first (a peek hands out copies).
    """
    import array

    fds = array.array("i")  # (not socket.recv_fds: Python 3.11's passes it no flags, MSG_PEEK included)
    _, ancillary, flags, _ = sock.recvmsg(1, socket.CMSG_LEN(fds.itemsize), socket.MSG_PEEK)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ValueError("a command came with more than one descriptor")
    return list(fds)


def _connect_endpoint(ray: Any, bound: str) -> str:
    host, _, port = bound.removeprefix("tcp://").rpartition(":")
    if host in ("0.0.0.0", "*", "", "[::]", "::"):
        host = ray.util.get_node_ip_address()
    return f"tcp://{host}:{port}"


class Driver:
    """The driver process's side: the actors, their pending ``run()``s, and the argument objects it owns.

    Two threads.  :meth:`read` (a thread of its own) reads the daemon's
    commands as they come, a ``put``'s bytes included, queues them, and
    answers ``ping`` at once with what the main thread is doing and for how
    long; it makes no Ray call, so the daemon can tell a driver that waits on
    Ray (a ``ray.put`` of a big array, a cluster slow to answer) from one
    that is stopped, hung or gone.  The main thread (:meth:`serve`) carries
    the commands out in order, in Ray calls that may block, and watches the
    actors.  Both write to the link, one whole message at a time.
    """

    def __init__(self, ray: Any, sock: socket.socket, endpoint: str) -> None:
        self.ray, self.sock, self.endpoint = ray, sock, endpoint
        self.host_cls = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)(WorkerHost)
        self.actors: dict[str, Any] = {}
        self.runs: dict[Any, str] = {}  # pending run() ref -> member name
        self.wheres: dict[Any, str] = {}  # pending where() ref -> member name
        self.retiring: set[str] = set()
        # member -> its runs that failed in a row, when to run it again (0: asked), when it was last asked to run
        self.failing: dict[str, tuple[int, float, float]] = {}
        self.refs: dict[str, Any] = {}  # key -> ObjectRef of a staged argument, until its job ends
        self.commands: queue.Queue[list[Any]] = queue.Queue()  # read, not yet carried out (``eof`` last)
        self.step: tuple[str, float] = ("", 0.0)  # what the main thread does (a command, "watch") and since when
        self._writing = threading.Lock()  # one message at a time on the link

    def send(self, header: list[Any], *payloads: Any) -> None:
        """One report to the daemon (``payloads``: buffers sent after the header); either thread."""
        with self._writing:
            send_msg(self.sock, header)
            for payload in payloads:
                self.sock.sendall(payload)

    def serve(self) -> None:
        """Carry out commands and report ended runs until ``stop`` or the daemon closes the link."""
        threading.Thread(target=self.read, name="daemon-commands", daemon=True).start()
        try:
            while True:
                try:
                    cmd = self.commands.get(timeout=0.2)
                except queue.Empty:
                    cmd = None
                if cmd is not None and (cmd[0] == "eof" or not self.timed(cmd[0], self.command, cmd)):
                    return
                self.timed("watch", self.watch)
        finally:
            for actor in self.actors.values():
                try:
                    self.ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001,S110 - already gone
                    pass

    def timed(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with ``what`` as the step a ``ping`` reports meanwhile (main thread)."""
        self.step = (what, time.monotonic())
        try:
            return fn(*args)
        finally:
            self.step = ("", 0.0)

    def read(self) -> None:
        """Read the daemon's commands into the queue, answering ``ping`` at once, until the link closes (a thread).

        A ``put``'s bytes are read here into an array of their own, so the
        daemon's write never waits for a Ray call; a ``put_fd`` comes with a
        segment's descriptor, queued with it.  ``eof`` is queued last (the
        link closed or broke, or a command was malformed).
        """
        import numpy as np

        from actors.messages import _check_dtype

        try:
            while True:
                fds = _peek_fds(self.sock)
                cmd = list(recv_header(self.sock))
                if cmd[0] == "put_fd" and len(fds) == 1:
                    self.commands.put(cmd + fds)
                    continue
                for fd in fds:  # (none comes with any other command)
                    os.close(fd)
                if cmd[0] == "put_fd":
                    raise ValueError(f"put_fd {cmd[1]} came without its descriptor")
                if cmd[0] == "ping":
                    what, since = self.step
                    self.send(["pong", what, time.monotonic() - since if what else 0.0])
                    continue
                if cmd[0] == "put":
                    _, key, dtype, shape, nbytes = cmd
                    arr = np.empty(shape, _check_dtype(dtype))
                    if arr.nbytes != nbytes:
                        raise ValueError(f"put {key}: {nbytes} bytes for shape {shape} of {dtype}")
                    recv_exact(self.sock, nbytes, arr.reshape(-1).view(np.uint8))
                    cmd = ["put", key, arr]
                self.commands.put(cmd)
        except Exception as exc:  # noqa: BLE001 - EOF, a reset link, a malformed command: the daemon is done with us
            if not isinstance(exc, EOFError):
                print(f"ensemble: the daemon's link: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.commands.put(["eof"])

    def command(self, cmd: list[Any]) -> bool:  # noqa: C901 - one branch per command
        """Carry out one command of the daemon's; False for ``stop`` (main thread)."""
        kind = cmd[0]
        if kind == "add":
            _, name, resources, secret, server_public, env = cmd
            try:
                actor = self.host_cls.options(name=name, **ray_options(resources)).remote(
                    self.endpoint, secret, server_public, name, env, resources)
            except Exception as exc:  # noqa: BLE001 - Ray's refusal of these options: this need's jobs fail
                self.send(["refused", name, f"{type(exc).__name__}: {exc}"])
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
            self.refs[cmd[1]] = self.ray.put(cmd[2])  # (the array read by :meth:`read`)
        elif kind == "put_fd":
            self.refs[cmd[1]] = self.put_segment(*cmd[2:])
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

    def put_segment(self, dtype: str, shape: list[int], offset: int, fd: int) -> Any:
        """``ray.put`` of the array in the segment ``fd`` opens (read-only; closed here), read from the segment
        itself: Ray's copy into its store is the only one (main thread)."""
        import mmap

        import numpy as np

        from actors.messages import _check_dtype

        try:
            mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        try:
            count = 1
            for n in shape:
                count *= n
            return self.ray.put(np.frombuffer(mm, _check_dtype(dtype), count, offset).reshape(shape))
        finally:
            try:
                mm.close()
            except BufferError:  # a view still held: unmapped when it goes
                pass

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
            self.send(["took", seq, f"{type(exc).__name__}: {exc}", []])
            return
        self.send(["took", seq, "", [[a.dtype.str, list(a.shape), a.nbytes] for a in arrays]],
                  *(a.reshape(-1).view(np.uint8).data for a in arrays))

    def watch(self) -> None:
        """Report the runs that ended (submitting them again unless retiring) and the workers located."""
        if self.runs:
            ready, _ = self.ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0)
            for ref in ready:
                name = self.runs.pop(ref)
                if name not in self.actors:
                    continue
                unstartable = False
                try:
                    self.ray.get(ref, timeout=0)
                    ok, why = True, ""
                except Exception as exc:  # noqa: BLE001 - RayActorError and kin: it died; Ray restarts it
                    ok, why = False, failure_cause(exc)
                    # its constructor failed (its class cannot be imported on the node, say): Ray never restarts
                    # it, and the daemon replaces it
                    unstartable = bool(getattr(exc, "actor_init_failed", False))
                if ok:
                    self.failing.pop(name, None)
                    if name not in self.retiring:
                        self.runs[self.actors[name].run.remote()] = name
                elif not unstartable:  # run again later, later each time it fails again
                    now = time.monotonic()
                    count, _, asked = self.failing.get(name, (0, 0.0, 0.0))
                    count = count + 1 if now - asked < _RERUN_MAX else 1  # (a run that lasted: a new failure)
                    pause = min(_RERUN_MAX, _RERUN_FIRST * 2 ** (count - 2)) if count > 1 else 0.0  # (a node
                    # that died: Ray restarts the actor elsewhere and holds the run until then)
                    self.failing[name] = (count, now + pause, asked)
                self.send(["ended", name, ok, why, unstartable])
        now = time.monotonic()
        for name, (count, when, _) in list(self.failing.items()):
            if name not in self.actors:
                del self.failing[name]
            elif when and now >= when:
                self.failing[name] = (count, 0.0, now)
                self.runs[self.actors[name].run.remote()] = name
        if self.wheres:
            ready, _ = self.ray.wait(list(self.wheres), num_returns=len(self.wheres), timeout=0)
            for ref in ready:
                name = self.wheres.pop(ref)
                try:
                    pid, node, host = self.ray.get(ref, timeout=0)
                except Exception:  # noqa: BLE001,S112 - it died meanwhile: asked again when it joins again
                    continue
                self.send(["where", name, pid, node, host])


"""Transport: the sockets, CURVE and its roles, and who a frame is from.

The local sockets (``control`` for clients, ``internal`` for children) are ipc
in the 0700 run directory: whoever reaches them is the daemon's own user.  The
tcp endpoints use CURVE, each with its own ZAP domain deciding by key role
(:class:`KeyRoles`); identities there are bound to socket, routing id and key.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import msgspec
import zmq

from actors._errors import ConfigError, EnsembleError, ProtocolError
from actors.messages import Error, JobInfo, JobInfos, Kind, Message, encode, peek_corr, peek_kind, pushed_ids
from actors.supervisor._outbox import SMALL
from actors.supervisor._tcpcap import limit_handshake
from actors.supervisor._state import State

if TYPE_CHECKING:
    from actors.supervisor._children import Slot

log = logging.getLogger("ensemble.supervisor")
_DRAIN = 2000  # messages read per socket per iteration
# seconds spent on one socket's messages per iteration: a flood of costly requests (or one peer's thousands) must
# leave the loop its turn at the children's heartbeats, which it judges after the drain (a 26 s drain of
# requests took every worker for dead, and their jobs with them)
_DRAIN_S = 0.05
_POLLIN = int(zmq.POLLIN)  # a plain int: `&` on the IntFlag costs a Python call
_REFUSABLE = frozenset({Kind.JOB_INFOS.value, Kind.STATUS_REPLY.value})  # replies a client may ask for again
TCP = b"\x00\xfeTCP:"  # address prefix of tcp clients: ZeroMQ's own ids are 5 bytes, so none collides


def _short(text: str) -> str:
    """A peer-supplied text cut to a length fit for one log record (the log formatter escapes what it holds)."""
    return text if len(text) <= 300 else text[:300] + "..."


class Peer(msgspec.Struct, frozen=True):
    """Who sent a request: ``local`` (the daemon's own user, over the 0700 run dir) or a remote key's role."""

    role: str  # local | client | admin
    name: str = ""  # the key's name (remote)
    addr: bytes = b""  # where replies and pushes go
    key: bytes = b""  # its public key (remote)

    @property
    def owner(self) -> str:
        """What jobs it submits are recorded under ("" for local): its role, its key's name and the key itself (a
        fingerprint of it), so a new key given a revoked one's name sees none of the old key's jobs."""
        if self.role == "local":
            return ""
        import hashlib

        return f"{self.role}:{self.name}#{hashlib.blake2b(self.key, digest_size=6).hexdigest()}"



LOCAL = Peer("local")


class KeyRoles:
    """ZAP policy: which roles each tcp endpoint admits (the worker endpoint: workers; the client one: the rest)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[str, str]] = {}  # z85 public key -> (role, name); replaced, never mutated

    def callback(self, domain: str, key: bytes) -> bool:
        found = self.keys.get(key)
        if found is None:
            return False
        return (found[0] == "worker") == (domain == "ensemble-worker")


def _inline(value: Any, prefix: str) -> Any:
    """Shared-memory arrays (this daemon's, named with ``prefix``) as bytes, for a worker on another host."""
    from actors.messages import ArrayHandle
    from actors.shm import copy_of, walk

    return walk(value, lambda v: copy_of(v, prefix) if type(v) is ArrayHandle else v)


def _fitting(info: JobInfo, limit: int) -> JobInfo:
    """``info``, or, if its result makes a frame over ``limit`` (an array copied out of shared memory for a client
    on another host), the job ``failed`` for that client, saying why: a frame over the limit would be dropped
    there, and the job would look unfinished for ever."""
    size = len(encode(JobInfos([info])))
    if size <= limit:
        return info
    return msgspec.structs.replace(
        info, state="failed", result=None, error_type="ProtocolError",
        error_message=f"job {info.id} ended {info.state}, but its result makes a message of {size} bytes, over the "
                      f"frame limit of {limit} (daemon.max_frame): a result this large reaches only a client on "
                      "the daemon's host (through shared memory); have the job write it to a file instead")


class TransportMixin(State):
    """Sockets of the :class:`~actors.supervisor.Supervisor` (mixed in; state lives on the supervisor)."""

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
                        "`ensemble keys add-worker|add-client|add-admin`", name)
        for field_name in ("client_tcp", "tcp"):
            endpoint = getattr(self.cfg.daemon, field_name)
            if not endpoint:
                continue
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.daemon.max_frame + 4096)
            if field_name == "client_tcp":
                # what a client has not read is bounded in bytes per key (see _outbox), not in messages: a count
                # would drop a slow client's replies and pushes, and bound nothing when each is big
                sock.setsockopt(zmq.SNDHWM, 0)
                sock.copy_threshold = 0  # every frame zero-copy, so that its tracker says when it has left
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.zap_domain = b"ensemble-worker" if field_name == "tcp" else b"ensemble-client"
            limit_handshake(sock)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:  # (the port in use, an address this host does not have)
                sock.close(0)
                why = zmq.strerror(exc.errno) if exc.errno is not None else str(exc)
                raise ConfigError(f"[daemon] {field_name} {endpoint} cannot be bound: {why}; choose another port, "
                                  "or an address of this host") from None
            self.poller.register(sock, zmq.POLLIN)
            self.poller.register(self.tcp_cap.watch(sock), zmq.POLLIN)  # no peer takes every descriptor
            if field_name == "tcp":
                self.internal_tcp = sock
            else:
                self.control_tcp = sock
            log.info("event=bind endpoint=%s mechanism=CURVE allowed_keys=%d", endpoint, len(self.roles.keys))

    def _allowed_stamp(self) -> float | None:
        """The newest change under the allow-lists; None when they cannot be read now (no descriptor left)."""
        d = self.keys_dir / "allowed"
        try:
            dirs = [d] + [p for p in d.iterdir() if p.is_dir()]
            return max([p.stat().st_mtime for p in dirs] + [f.stat().st_mtime for p in dirs for f in p.iterdir()])
        except FileNotFoundError:
            return 0.0
        except (OSError, ValueError, AttributeError):
            return None

    def _refresh_allowed(self, force: bool = False) -> None:
        """Re-read the allow-lists when they changed (revocation without a restart).

        When they cannot be read (every descriptor taken: a flood of tcp
        connections), the keys stay as they were and the next heartbeat tries
        again; at start (``force``) the error stops the daemon, saying why.
        """
        from actors._keys import allowed_keys

        stamp = self._allowed_stamp()
        if force or (stamp is not None and stamp != self._allowed_mtime):
            try:
                keys = allowed_keys(self.keys_dir)
            except OSError as exc:
                if force:
                    raise
                self.counters["allow_list_unreadable"] += 1
                log.warning("event=allow-list-unreadable reason=%s detail=the keys stay as they were; read again at "
                            "the next heartbeat", exc)
                return
            self._allowed_mtime = stamp if stamp is not None else 0.0
            self.roles.keys = keys
            if not force:
                log.info("event=allow-list-reloaded keys=%d", len(self.roles.keys))
            for slot in [s for s in self.slots.values() if s.remote and s.key not in self.roles.keys]:
                self._remote_gone(slot, "its key was revoked")
            self._forget_revoked_clients()

    def _forget_revoked_clients(self) -> None:
        """The connections of client and admin keys revoked since: nothing more is sent to them.

        Their watches, the pushes and answers pending for them and what the
        outbox owes them go; a reply or push that would still be sent to one
        is dropped (:meth:`_send_client`).  Their frames are dropped as they
        come (:meth:`_recv_tcp`).  ZeroMQ gives a server no way to close one
        peer's connection: it stays open, and unanswered, until the peer
        closes it.  Before, a revoked key watching a job went on receiving
        its progress and its result.
        """
        gone = {addr for addr, key in self.tcp_peers.items() if key not in self.roles.keys}
        if not gone:
            return
        for addr in gone:
            del self.tcp_peers[addr]
            self.outbox.gone(addr)
            self.pushes.pop(addr, None)
            self.progress_pushes.pop(addr, None)
        self.revoked_addrs |= gone
        if self.book is not None:
            for job in self.book.jobs.values():
                if job.watchers and not gone.isdisjoint(job.watchers):
                    job.watchers = tuple(w for w in job.watchers if w not in gone) or None
                if job.progress_watchers and not gone.isdisjoint(job.progress_watchers):
                    job.progress_watchers = tuple(w for w in job.progress_watchers if w not in gone) or None
                if job.blockers:
                    job.blockers = [b for b in job.blockers if b[0] not in gone] or None
        log.info("event=revoked-connections-forgotten connections=%d", len(gone))

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
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
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

    def _frames(self, sock: Any) -> Iterator[tuple[list[bytes], bytes, str, str]]:
        """Messages waiting on ``sock`` (at most ``_DRAIN``) as ``(frames, key, role, name)``.

        Local sockets give role ``local``; tcp ones only frames from keys still allowed, with their role.
        """
        tcp = sock is self.control_tcp or sock is self.internal_tcp
        until = time.monotonic() + _DRAIN_S
        for n in range(_DRAIN):
            # The poller saw the first message: read it without asking (ZMQ_EVENTS costs as much as the
            # read, ~5 us); before each further one ask, which is cheaper than a read raising Again.  The rest
            # waits for the next iteration once the time is spent (the poller sees them at once).
            if n and (time.monotonic() > until or not sock.getsockopt(zmq.EVENTS) & _POLLIN):
                return
            try:
                if tcp:
                    got = self._recv_tcp(sock)
                    if got is None:
                        continue
                    self.counters["tcp_frames"] += 1  # only frames from allowed keys get this far
                    if sock is self.control_tcp:
                        self.tcp_peers[TCP + got[0][0]] = got[1]
                        if self._refuse_over_budget(TCP + got[0][0], f"{got[2]}:{got[3]}", got[0][-1]):
                            continue
                    yield got
                else:
                    yield sock.recv_multipart(zmq.NOBLOCK), b"", "local", ""
            except zmq.Again:
                return

    def _encode_for(self, addr: bytes, msg: Message, corr: int = 0) -> bytes:
        """Encode a reply or push; for a client on another host, shared-memory results become bytes."""
        if addr.startswith(TCP) and isinstance(msg, JobInfos):
            infos = []
            for info in msg.jobs:
                try:
                    infos.append(msgspec.structs.replace(info, result=_inline(info.result, self.shm_prefix)))
                except EnsembleError:
                    infos.append(info)  # its segment is gone: the handle goes as it is, and fails to map there
            msg = JobInfos(infos, msg.journal)
            frame = encode(msg, corr)
            # a result copied out of shared memory may not fit: one job's push (pushes are split down to one
            # job, see Supervisor._push_frames) says so; a reply of several is refused as a whole
            if len(frame) <= self.cfg.daemon.max_frame or len(infos) != 1:
                return frame
            msg = JobInfos([_fitting(infos[0], self.cfg.daemon.max_frame)], msg.journal)
        return encode(msg, corr)

    def _send_client(self, addr: bytes, frame: bytes) -> None:
        """Send a reply or push; what a slow client cannot take yet is owed or refused (see :mod:`._outbox`)."""
        outbox = self.outbox
        if self.revoked_addrs and addr in self.revoked_addrs:  # a connection of a key revoked since
            self.counters["revoked_sends"] += 1
            return
        if outbox.owed and addr in outbox.owed and not peek_corr(frame):  # behind the pushes it is owed, in order
            outbox.owe(addr, pushed_ids(frame))
            return
        try:
            if addr.startswith(TCP):
                now = time.monotonic()
                if outbox.over(addr, now):
                    if not peek_corr(frame):
                        outbox.owe(addr, pushed_ids(frame))
                        self.counters["push_deferred"] += 1
                        return
                    if len(frame) > SMALL and peek_kind(frame) in _REFUSABLE:  # read-only: nothing is lost
                        self.counters["reply_refused"] += 1
                        frame = encode(Error("daemon", f"reply not sent: {outbox.describe(addr)}"), peek_corr(frame))
                parts = [addr[len(TCP):], frame]
                if outbox.tracks(addr, len(frame), now):
                    tracker = self.control_tcp.send_multipart(parts, zmq.NOBLOCK, copy=False, track=True)
                else:
                    tracker = self.control_tcp.send_multipart(parts, zmq.NOBLOCK)
                outbox.sent(addr, tracker, len(frame), now)
            else:
                self.control.send_multipart([addr, frame], zmq.NOBLOCK)
        except zmq.Again:  # its queue is full (ZeroMQ's high-water mark)
            if not peek_corr(frame):
                outbox.owe(addr, pushed_ids(frame))
                self.counters["push_deferred"] += 1
            else:
                self.counters["reply_dropped"] += 1
        except zmq.ZMQError:  # EHOSTUNREACH: the client is gone
            outbox.gone(addr)
            self.counters["client_gone"] += 1

    def _refuse_over_budget(self, addr: bytes, key: str, frame: bytes) -> bool:
        """Whether a request from a tcp client (a connection of ``key``) is refused, unread, because the key is over
        its budget of unread replies (the refusal is sent here: acting on it would queue yet more)."""
        outbox = self.outbox
        outbox.heard(addr, key, time.monotonic())
        if not outbox.over(addr):
            return False
        self.counters["requests_over_budget"] += 1
        if not outbox.over(addr, share=2.0):  # beyond twice its budget even refusals would pile up: unanswered
            self._send_client(addr, encode(Error("daemon", f"request not read: {outbox.describe(addr)}"),
                                           peek_corr(frame)))
        return True

    def _owed_pushes(self) -> None:
        """Queue again, as pushes of their current states, the jobs owed to clients that can take them now."""
        book = self.book
        assert book is not None
        for addr, ids in self.outbox.due():
            for start in range(0, len(ids), 10_000):
                infos = book.infos(ids[start:start + 10_000])
                if infos:
                    self.pushes[addr] = list(infos.values()) + self.pushes.get(addr, [])

    def _send_child(self, slot: Slot, msg: Message) -> bool:
        try:
            (slot.sock or self.internal).send_multipart([slot.identity, encode(msg)], zmq.NOBLOCK)
            return True
        except (zmq.ZMQError, ProtocolError):
            return False

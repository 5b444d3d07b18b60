"""What clients have not read yet: a byte budget per remote key, and pushes owed to slow clients.

ZeroMQ queues what the daemon sends a peer until the peer reads it, up to a
number of messages (the socket's high-water mark), whatever their size: a
remote key that asks for big replies and never reads them grew the daemon's
memory without bound (3,000 unread 330 KB replies: 352 MB), and when a queue
was full the daemon dropped that client's pushes, so a slow but honest
client's jobs looked unfinished for ever.

:class:`Outbox` keeps the accounts the supervisor's transport acts on:

- Frames to a tcp client are sent zero-copy with a ZeroMQ tracker; until the
  tracker is done (ZeroMQ has handed the frame to the connection, which
  takes it only as fast as the peer reads) its bytes count as *unread* for the
  key that connection authenticated with.  A tracker costs a wake-up of
  pyzmq's collector thread (a tcp ping took twice as long), so small frames
  go untracked, copied, and their bytes ride on the next tracked frame: one
  in every :data:`SMALL_BATCH` bytes is tracked, and a connection's frames
  leave in order, so when it is done those before it are too.  The small
  frames since the last tracked one (under 64 KiB a connection) are the only
  bytes a key may have unread beyond its count.  A key's connections share one
  budget (:attr:`Outbox.budget`, ``2 * daemon.max_frame``, at least 4 MiB).
- Over budget, a request from that key is refused before it is acted on (and
  over twice the budget not even answered: the refusals would pile up), a
  read-only reply over :data:`SMALL` bytes is replaced by an error saying why,
  and a push is *owed*: the daemon keeps the job ids (not the frames) and
  pushes those jobs' current states again once the key has read down to half
  its budget.  Acknowledgements (``Submitted``, ``Ack``, errors) always go: a
  request accepted is always answered.
- A push ZeroMQ refuses (a local client's queue is full) is owed the same way,
  and retried every :data:`RETRY_S`.  Pushes to a client with owed jobs wait
  behind them, so a job's states still arrive in order, the last one once.

A key is bound to its connections only as long as it uses them: a connection
with nothing unread or owed, not heard from for :data:`IDLE_S`, is forgotten.
"""

from __future__ import annotations

import collections
from typing import Any

SMALL = 4096  # bytes: replies up to this size always go (acknowledgements, errors, small snapshots)
SMALL_BATCH = 64 * 1024  # bytes of small frames sent untracked before the next one is tracked
RETRY_S = 0.05  # seconds between two attempts at the pushes owed
IDLE_S = 300.0  # seconds after which a connection with nothing unread or owed is forgotten
MIN_BUDGET = 4 * 1024 * 1024


class _Conn:
    """One tcp connection (by its address): its key, and the frames ZeroMQ has not handed to it yet."""

    __slots__ = ("key", "sent", "seen", "untracked", "bytes")

    def __init__(self, key: str, seen: float) -> None:
        self.key = key
        self.sent: collections.deque[tuple[Any, int]] = collections.deque()  # (zmq.MessageTracker, bytes)
        self.seen = seen
        self.untracked = 0  # bytes of small frames sent since the last tracked one (counted with the next one)
        self.bytes = 0  # the sum of the sizes in ``sent``


class Outbox:
    """Unread bytes per remote key, and the pushes owed per client (see the module's doc)."""

    def __init__(self, max_frame: int) -> None:
        self.budget = max(2 * max_frame, MIN_BUDGET)
        self.conns: dict[bytes, _Conn] = {}
        self.keys: dict[str, set[bytes]] = {}  # key -> addresses of its connections
        # key -> bytes not read: its connections' ``bytes``, less what a tracker done but not looked at yet says
        self.unread_bytes: collections.Counter[str] = collections.Counter()
        self.owed: dict[bytes, dict[int, None]] = {}  # address -> job ids whose state it is owed (in order)

    def heard(self, addr: bytes, key: str, now: float) -> None:
        """A request came from ``addr``, a connection of ``key``."""
        conn = self.conns.get(addr)
        if conn is None or conn.key != key:
            if conn is not None:
                self._forget(addr)
            conn = self.conns[addr] = _Conn(key, now)
            self.keys.setdefault(key, set()).add(addr)
        conn.seen = now

    def _conn(self, addr: bytes, now: float) -> _Conn:
        conn = self.conns.get(addr)
        if conn is None:  # forgotten while idle: a key of its own until it asks something again
            conn = self.conns[addr] = _Conn("?" + addr.hex(), now)
            self.keys.setdefault(conn.key, set()).add(addr)
        return conn

    def _prune(self, conn: _Conn) -> None:
        """Drop the frames of ``conn`` that ZeroMQ is done with from its count and its key's."""
        sent, freed = conn.sent, 0
        while sent and sent[0][0].done:
            freed += sent.popleft()[1]
        if freed:
            conn.bytes -= freed
            self.unread_bytes[conn.key] -= freed

    def unread(self, addr: bytes, now: float = 0.0, every: bool = False) -> int:
        """Bytes sent to ``addr``'s key that ZeroMQ still holds: that connection looked at now, and with ``every``
        all the key's (else those of its other connections as last looked at: at most too many)."""
        conn = self._conn(addr, now)
        self._prune(conn)
        if every:
            for a in self.keys.get(conn.key, ()):
                self._prune(self.conns[a])
        return self.unread_bytes[conn.key]

    def over(self, addr: bytes, now: float = 0.0, share: float = 1.0) -> bool:
        """Whether ``addr``'s key has more unread than ``share`` of its budget (its other connections are looked
        at only when this one's count says so: a key with many connections costs one look a request)."""
        limit = self.budget * share
        return self.unread(addr, now) > limit and self.unread(addr, now, every=True) > limit

    def tracks(self, addr: bytes, size: int, now: float) -> bool:
        """Whether the next frame to ``addr``, of ``size`` bytes, is to be sent with a tracker."""
        return size > SMALL or self._conn(addr, now).untracked + size >= SMALL_BATCH

    def sent(self, addr: bytes, tracker: Any, size: int, now: float) -> None:
        """A frame of ``size`` bytes went to ``addr``: with ``tracker`` (which says when ZeroMQ is done with it and
        with the untracked ones before it), or None (a small one, see :meth:`tracks`)."""
        conn = self._conn(addr, now)
        if tracker is None:
            conn.untracked += size
            return
        conn.sent.append((tracker, size + conn.untracked))
        conn.bytes += size + conn.untracked
        self.unread_bytes[conn.key] += size + conn.untracked
        conn.untracked = 0

    def describe(self, addr: bytes) -> str:
        """Why a key is over its budget, for the error its client gets."""
        key = self._conn(addr, 0.0).key
        name = key if not key.startswith("?") else "this connection"
        mib = 1024 * 1024
        return (f"the daemon holds {self.unread_bytes[key] / mib:.1f} MiB of replies to {name} that its clients have "
                f"not read yet, over the budget of {self.budget / mib:.1f} MiB a client key has (2 x daemon.max_frame)"
                "; read the replies (or use fewer connections at once with this key), then ask again")

    # -- pushes owed ----------------------------------------------------------------------------
    def owe(self, addr: bytes, job_ids: list[int]) -> None:
        owed = self.owed.setdefault(addr, {})
        for jid in job_ids:
            owed[jid] = None

    def due(self, budget_share: float = 0.5) -> list[tuple[bytes, list[int]]]:
        """Clients with pushes owed that may take them now (a tcp key read down to half its budget), with the
        ids; they are no longer owed (a push that fails again owes them again)."""
        out = []
        for addr in list(self.owed):
            if addr in self.conns and self.over(addr, share=budget_share):
                continue
            out.append((addr, list(self.owed.pop(addr))))
        return out

    def gone(self, addr: bytes) -> None:
        """The client at ``addr`` is gone: nothing is owed to it any more."""
        self.owed.pop(addr, None)
        if addr in self.conns:
            self._forget(addr)

    def _forget(self, addr: bytes) -> None:
        conn = self.conns.pop(addr)
        self.unread_bytes[conn.key] -= conn.bytes
        addrs = self.keys.get(conn.key)
        if addrs is not None:
            addrs.discard(addr)
            if not addrs:
                del self.keys[conn.key]
                self.unread_bytes.pop(conn.key, None)

    def sweep(self, now: float) -> None:
        """Forget connections with nothing unread or owed that have been quiet for :data:`IDLE_S`."""
        for addr, conn in list(self.conns.items()):
            self._prune(conn)
            if not conn.sent and addr not in self.owed and now - conn.seen > IDLE_S:
                self._forget(addr)

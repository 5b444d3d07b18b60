"""What every part of the supervisor shares: its state, and the methods one part calls on another.

The :class:`~actors.supervisor.Supervisor` is assembled from mixins, one file
each; they all derive from :class:`State`, which declares (for readers and for
mypy) the attributes the supervisor's ``__init__`` sets and the methods the
parts call across files.  The stubs here come last in the method resolution
order, so the real methods always win.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import re

    import zmq

    from actors._jobs import Job, JobBook
    from actors._journal import Journal
    from actors._rundir import RunDir
    from actors.config import Config
    from actors.extensions import Extension
    from actors.messages import (Dispatch, JobDone, JobInfo, JobSpec, JobsDone, JobUpdate, Limits, Message, Recalled,
                                 StatusReply)
    from actors.supervisor._children import Slot
    from actors.supervisor._handed import HandedSegments
    from actors.supervisor._outbox import Outbox
    from actors.supervisor._tcpcap import ConnectionCap
    from actors.supervisor._transport import KeyRoles, Peer


class State:
    """Declarations only: see :meth:`actors.supervisor.Supervisor.__init__` for what each holds."""

    cfg: "Config"
    rundir: "RunDir"
    state_dir: Path
    log_file: Path
    limits: "Limits"
    slots: "dict[str, Slot]"
    by_identity: "dict[bytes, Slot]"
    by_pidfd: "dict[int, Slot]"
    remote_slots: "dict[bytes, Slot]"
    workers_wanted: int
    blanks: list[Any]  # forked processes waiting to become workers (see _prefork)
    standby: Any  # a spawned interpreter waiting to become the next worker (see _children.Standby)
    standby_wanted: bool
    standby_losses: int
    children_started: bool
    _worker_seq: int
    _remote_seq: int
    started: float
    running: bool
    stopping_since: float
    _beat_at: float
    pruned: int  # jobs pruned by the slices of the round under way (logged once it ends)
    term_sent: bool
    kill_sent: bool
    counters: "collections.Counter[str]"
    replies: list[tuple[bytes, bytes]]
    held: "collections.deque[tuple[int, list[tuple[bytes, bytes]]]]"
    unacked: "collections.deque[tuple[int, int, bytes, int, bytes]]"
    pushes: "dict[bytes, list[JobInfo]]"
    tcp_peers: dict[bytes, bytes]
    revoked_addrs: set[bytes]
    outbox: "Outbox"
    tcp_cap: "ConnectionCap"
    progress_pushes: "dict[bytes, dict[int, JobInfo]]"
    ctx: "zmq.Context[Any]"
    control: Any
    internal: Any
    control_tcp: Any
    internal_tcp: Any
    poller: Any
    auth: Any
    roles: "KeyRoles"
    keys_dir: Path
    _allowed_mtime: float
    allow: "re.Pattern[str]"
    shm_prefix: str
    handed: "HandedSegments"  # gone clients' segments that jobs held still refer to (see _handed)
    internal_token: str
    _peer: "Peer"
    _frame_len: int
    _module_ok: dict[str, str]
    _module_ok_remote: dict[str, str]
    journal: "Journal | None"
    book: "JobBook | None"
    metrics: Any
    job_seconds: float
    extensions: "list[Extension]"
    handlers: "dict[type, Callable[[bytes, int, Message], Message | None]]"
    child_handlers: "dict[type, Callable[[Slot, Message], None]]"
    role_requests: dict[str, frozenset[type]]
    cluster: Any  # the Ray placement (actors._ray.RayWorkers) when [cluster] ray is set, else None

    def _abort(self, job: Job, reason: str) -> None:
        raise NotImplementedError

    def _bind(self, path: Path, hwm: int) -> zmq.Socket[bytes]:
        raise NotImplementedError

    def _bind_tcp(self) -> None:
        raise NotImplementedError

    def _tell_aborts(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def no_workers_left(self) -> str:
        raise NotImplementedError

    def no_worker_yet(self) -> str:
        raise NotImplementedError

    def _dispatch(self, mono: float) -> None:
        raise NotImplementedError

    def _feed_hungry(self) -> None:
        raise NotImplementedError

    def _drain_control(self, sock: Any) -> bool:
        raise NotImplementedError

    def _drain_internal(self, sock: Any) -> None:
        raise NotImplementedError

    def _encode_for(self, addr: bytes, msg: Message, corr: int = 0) -> bytes:
        raise NotImplementedError

    def _finish(self, job: Job, state: str, now: float, value: Any = None, error_type: str = "",
                error_message: str = "", traceback: str = "") -> None:
        raise NotImplementedError

    def _finish_killed(self, job: Job, now: float) -> None:
        raise NotImplementedError

    def _answer_unstarted(self, job: Job, detail: str) -> None:
        raise NotImplementedError

    def _frames(self, sock: Any) -> Iterator[tuple[list[bytes], bytes, str, str]]:
        raise NotImplementedError

    def _heartbeats(self, mono: float) -> None:
        raise NotImplementedError

    def _job_update(self, slot: Slot, msg: JobUpdate) -> None:
        raise NotImplementedError

    def _jobs_done(self, slot: Slot, msg: JobsDone) -> None:
        raise NotImplementedError

    def _kill(self, slot: Slot, reason: str, expected: bool = True) -> None:
        raise NotImplementedError

    def _prune(self) -> None:
        raise NotImplementedError

    def _reap(self, slot: Slot) -> None:
        raise NotImplementedError

    def _recall_below(self, priority: int) -> None:
        raise NotImplementedError

    def _recalled(self, slot: Slot, msg: Recalled) -> None:
        raise NotImplementedError

    def _refresh_allowed(self, force: bool = False) -> None:
        raise NotImplementedError

    def _remote_gone(self, slot: Slot, reason: str) -> None:
        raise NotImplementedError

    def _remote_hello(self, sock: Any, ident: bytes, key: bytes, name: str, frame: bytes) -> Slot | None:
        raise NotImplementedError

    def _send_child(self, slot: Slot, msg: Message) -> bool:
        raise NotImplementedError

    def _send_client(self, addr: bytes, frame: bytes) -> None:
        raise NotImplementedError

    def stop_child(self, slot: Slot, reason: str) -> None:
        raise NotImplementedError

    def start_pending(self) -> None:
        raise NotImplementedError

    def _timers(self, mono: float) -> None:
        raise NotImplementedError

    def begin_stop(self, reason: str) -> None:
        raise NotImplementedError

    def scale(self, n: int) -> None:
        raise NotImplementedError

    def scale_cluster(self, n: int) -> None:
        raise NotImplementedError

    def status(self) -> StatusReply:
        raise NotImplementedError

    def _jobs_lost(self, slot: Slot) -> int:
        raise NotImplementedError

    def _advance(self, slot: Slot, now: float, mono: float) -> None:
        raise NotImplementedError

    def _send_batch(self, slot: Slot, batch: list[Dispatch], jobs: list[Job], now: float) -> bool:
        raise NotImplementedError

    def _spawn(self, slot: Slot) -> None:
        raise NotImplementedError

    def _keep_standby(self) -> None:
        raise NotImplementedError

    def _cluster_open(self) -> None:
        raise NotImplementedError

    def _stored_results(self, slot: Slot, done: JobDone, local: bool) -> JobDone:
        raise NotImplementedError

    def _add_worker(self) -> Slot:
        raise NotImplementedError

    def _add_slot(self, name: str, role: str, module: str, resources: dict[str, float] | None = None) -> Slot:
        raise NotImplementedError

    def _mine(self, job_id: int) -> bool:
        raise NotImplementedError

    def _request(self, ident: bytes, corr: int, msg: Message) -> Message | None:
        raise NotImplementedError

    def _accept(self, ident: bytes, corr: int, jobs: list[JobSpec], watch: bool, internal: bool,
                context: tuple[str, list[str]] = ("", [])) -> Message | None:
        raise NotImplementedError

    def _slot_of(self, job_id: int) -> Slot | None:
        raise NotImplementedError

    def _ask_back(self, slot: Slot, ids: list[int]) -> None:
        raise NotImplementedError

    def _recv_tcp(self, sock: Any) -> tuple[list[bytes], bytes, str, str] | None:
        raise NotImplementedError

    def _allowed_stamp(self) -> float | None:
        raise NotImplementedError

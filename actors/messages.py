"""The wire protocol: one versioned MessagePack envelope, its codec, and the runtime's messages.

The schema is split by domain, one module each: the runtime's messages (jobs,
workers, the daemon) are here; the audio schema is :mod:`audio.messages` and
the script schema :mod:`controller.messages`.  Each calls :func:`register`
for its kinds, so the runtime never imports the layers above it and a
process decodes the kinds of the schemas it imported.

Every message is a frozen, array-like :class:`msgspec.Struct`: built
positionally like a tuple, compared by value, never changed after it is made
(use :func:`msgspec.structs.replace` for a changed copy).  Every frame on every
ensemble socket is ``msgpack([VERSION, kind, corr, [kind, *fields]])``:

* ``VERSION`` — protocol version; a frame with another version is refused.
* ``kind`` — small int naming the message class (:class:`Kind`).
* ``corr`` — correlation id chosen by the requester and echoed in the reply;
  ``0`` marks an unsolicited message (a push or a heartbeat).
* ``[kind, *fields]`` — the message: its kind again (the tag that lets msgspec
  decode the frame into the right class in one pass) and its fields in
  declaration order.  The header keeps version, kind and corr at fixed places
  so that :func:`peek_corr` and error reports can read them from a frame whose
  message does not decode; :func:`decode` refuses a frame whose two kinds differ.

Decoding checks the frame size first, then msgspec validates every field's type
in C while it unpacks (ints must fit a signed 64-bit int; maps typed
``dict[str, Any]`` need string keys; values typed ``Any`` may be any plain
data, maps with other keys included) and Python's recursion limit bounds
nesting.  Nothing but plain data ever reaches the code: nothing is unpickled or
evaluated while decoding.  Numpy arrays of numeric dtypes travel as MessagePack
ext types: small ones inline (ext 1), large ones as an :class:`ArrayHandle` to
shared memory (ext 2), Ray-stored ones as a key (ext 3, daemon and its workers
only).  Python values MessagePack has no type for are ext 4 (data, rebuilt
without an import: :mod:`actors._values`), and ones only pickle carries are
ext 5: opaque bytes, accepted only in frames of this host, unpickled by a
client or a worker when the value is asked for, never by the daemon.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta, field

from actors import _values
from actors._errors import ProtocolError, UnknownKind

VERSION: Final = 2
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
EXT_INLINE_ARRAY = 1
EXT_ARRAY_HANDLE = 2
EXT_STORED_ARRAY = 3
EXT_VALUE = 4  # a Python value MessagePack has no type for: a tuple, a set, a datetime... (actors._values)
EXT_PICKLED = 5  # a value only pickle carries, between a local client and this host's workers (actors._values)
_SAFE_DTYPE_KINDS = frozenset("biufc")  # bool, int, uint, float, complex: no objects

Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
"""Every int field: a signed 64-bit int, what SQLite, numpy and every peer can hold."""
_Size = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # correlation ids, array dimensions and offsets
# How many items a request's lists may hold, checked from the list's header as the frame is read (before its
# items are): a frame of 64 MiB holds millions of job ids or specs, and handling them held the daemon's loop
# for seconds (its workers, hearing nothing, left; the jobs they ran were lost).
MAX_IDS: Final = 100_000  # job ids one GetJobs, Watch, Unwatch, Recall or Recalled names
MAX_SUBMIT: Final = 16_384  # jobs one Submit or TaskSubmit carries (a client sends a bigger batch in frames of it)
_Ids = Annotated[list[Int64], Meta(max_length=MAX_IDS)]
_Specs = Annotated[list["JobSpec"], Meta(max_length=MAX_SUBMIT)]


class Kind(IntEnum):
    """Message kinds; the numbers are part of the wire protocol."""

    # replies and pushes
    ERROR = 1
    ACK = 2
    PONG = 3
    SUBMITTED = 4
    JOB_INFOS = 5
    STATUS_REPLY = 6
    # client requests
    PING = 20
    STATUS = 21
    SUBMIT = 22
    CANCEL = 23
    GET_JOBS = 24
    LIST_JOBS = 25
    WATCH = 26
    UNWATCH = 27
    SCALE = 28
    SHUTDOWN = 29
    TASK_SUBMIT = 30
    # child <-> supervisor
    HELLO = 40
    HEARTBEAT = 41
    STOP = 42
    RUN_JOBS = 43
    ABORT_JOB = 44
    JOB_UPDATE = 45
    JOBS_DONE = 46
    VOICES_OP = 47
    VOICES_DONE = 48
    RECALL = 49
    RECALLED = 50
    RETIRING = 51
    RESULTS_CLOSED = 52
    # 60..69: audio (audio/messages.py); 70..89: scripts (controller/messages.py)


class Limits(msgspec.Struct, frozen=True):
    """Bounds applied to every frame before it is unpacked.

    ``max_frame`` caps the frame size (``daemon.max_frame``), and so every
    string, list and map in it; nesting is bounded by Python's recursion limit.
    """

    max_frame: int = DEFAULT_MAX_FRAME


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of an array of ``dtype`` and ``shape``."""
    import numpy as np  # numpy only where arrays are: a child that handles none never imports it

    count = 1
    for dim in shape:
        count *= dim
    return count * np.dtype(dtype).itemsize


class ArrayHandle:
    """A numpy array living in a named shared-memory segment, as it crosses a socket.

    ``name`` is the POSIX shared-memory name (without ``/dev/shm``), ``offset``
    the byte offset of the first element, ``dtype`` a numpy dtype string
    (numeric kinds only), ``shape`` the array shape (C order).  The receiver maps
    it with :func:`actors.shm.attach`; nothing is copied through the socket.
    An immutable value; a plain class rather than a Struct or dataclass, since
    msgspec would pack those itself instead of as ext type 2.
    """

    __slots__ = ("dtype", "name", "offset", "shape")
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], offset: int = 0) -> None:
        for attr, value in (("name", name), ("dtype", dtype), ("shape", tuple(shape)), ("offset", offset)):
            object.__setattr__(self, attr, value)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"ArrayHandle is immutable (cannot set {attr!r})")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"ArrayHandle is immutable (cannot delete {attr!r})")

    def _key(self) -> tuple[str, str, tuple[int, ...], int]:
        return self.name, self.dtype, self.shape, self.offset

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if type(other) is ArrayHandle else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"ArrayHandle(name={self.name!r}, dtype={self.dtype!r}, shape={self.shape!r}, offset={self.offset!r})"

    def __reduce__(self) -> tuple[type, tuple[str, str, tuple[int, ...], int]]:
        return ArrayHandle, self._key()

    @property
    def nbytes(self) -> int:
        """Size of the array data in bytes."""
        return _nbytes(self.dtype, self.shape)


class StoredArray:
    """A numpy array waiting in a Ray cluster's object store, as it crosses the frame to or from a Ray-placed worker.

    ``key`` is an opaque name that only the worker's host actor can resolve
    (:mod:`actors._ray`): the daemon staged the object there under it
    (arguments), or the actor holds the worker's result under it for the
    daemon to take.  The frame carries no Ray object reference and nothing
    pickled; ``dtype`` (numeric kinds only) and ``shape`` say what arrives.
    Accepted only on the daemon<->worker link (``decode(..., stored=True)``),
    never from a client.  Immutable, as :class:`ArrayHandle`.
    """

    __slots__ = ("dtype", "key", "shape")
    key: str
    dtype: str
    shape: tuple[int, ...]

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...]) -> None:
        for attr, value in (("key", key), ("dtype", dtype), ("shape", tuple(shape))):
            object.__setattr__(self, attr, value)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"StoredArray is immutable (cannot set {attr!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not StoredArray:
            return NotImplemented
        return (self.key, self.dtype, self.shape) == (other.key, other.dtype, other.shape)

    def __hash__(self) -> int:
        return hash((self.key, self.dtype, self.shape))

    def __repr__(self) -> str:
        return f"StoredArray(key={self.key!r}, dtype={self.dtype!r}, shape={self.shape!r})"

    @property
    def nbytes(self) -> int:
        """Size of the array data in bytes."""
        return _nbytes(self.dtype, self.shape)


# --------------------------------------------------------------------------- messages
class Message(msgspec.Struct, array_like=True, frozen=True):
    """Base of every message class: a frozen array-like Struct tagged with its :class:`Kind`."""

    KIND: ClassVar[IntEnum]  # Kind, or the kind enum of the domain schema that registered it


class Record(msgspec.Struct, array_like=True, frozen=True):
    """Base of the values that travel inside messages (packed as a list of fields)."""


class WorkerSetup(Record, frozen=True):
    """What an :class:`~actors.client.Executor` asks of each worker its jobs run on (``ProcessPoolExecutor`` parity).

    ``key`` names the executor (a worker may serve several): ``initializer``
    (a job path, "" = none) runs with ``initargs`` before the first job of that
    key on a worker; after ``max_tasks`` jobs of that key (0 = no limit) the
    worker retires and is replaced.  ``pickled``: ``initargs`` is ``[pickle of
    the tuple]`` (a local client's exact values, as for :attr:`JobSpec.pickled`).
    """

    key: str
    initializer: str = ""
    initargs: list[Any] = field(default_factory=list)
    pickled: bool = False
    max_tasks: Int64 = 0


class JobSpec(Record, frozen=True):
    """One job as a client submits it."""

    fn: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    priority: Int64 = 0
    timeout_ms: Int64 = 500
    deadline: float = 0.0  # seconds after start; 0 = none
    retries: Int64 = 0
    with_task: bool = True  # internal jobs only (a script's task gets its handle first); client jobs: the signature decides
    pickled: bool = False  # args is [pickle of (args, kwargs)]: a local client's exact values (never from tcp)
    resources: dict[str, float] = field(default_factory=dict)  # what its worker's slot must offer ({"GPU": 1})
    setup: WorkerSetup | None = None  # an Executor's initializer and max_tasks_per_child
    # at most ``cap`` jobs of this client's ``cap_group`` are dispatched or running at once (0: no cap): an
    # Executor's max_workers on a shared daemon, held by the daemon (the rest wait queued, in their order)
    cap: Int64 = 0
    cap_group: str = ""


MAX_CAP = 1 << 20  # JobSpec.cap's bound (a client asks for no more: more than a queue's worth is no cap)


class JobInfo(Record, frozen=True):
    """What the daemon knows about one job (a snapshot)."""

    id: Int64
    fn: str
    name: str
    state: str
    progress: float = 0.0
    status: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    events: list[Any] = field(default_factory=list)
    submitted: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    attempts: Int64 = 0
    worker: str = ""
    priority: Int64 = 0

    def shown_progress(self) -> float:
        """The progress as ``top``, ``ensemble jobs`` and the panel show it: 1.0 once done, else as the job last set
        it (where a failed or cancelled job stopped).  A job that never set its progress read 0% once done.
        ``--json`` outputs keep :attr:`progress` as it was set."""
        return 1.0 if self.state == "done" else self.progress


class ActorInfo(Record, frozen=True):
    """One supervised child, as ``status`` shows it."""

    name: str
    role: str
    pid: Int64
    state: str
    uptime: float
    restarts: Int64
    heartbeat_age: float
    rss: Int64
    detail: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)  # what a worker offers jobs


class DaemonInfo(Record, frozen=True):
    """The daemon itself, as ``status`` shows it."""

    name: str
    pid: Int64
    version: str
    uptime: float
    run_dir: str
    state_dir: str
    log_file: str
    workers_wanted: Int64
    queued: Int64
    running: Int64
    rss: Int64
    counters: dict[str, Any] = field(default_factory=dict)


class Dispatch(Record, frozen=True):
    """A job handed to a worker."""

    job_id: Int64
    fn: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout_ms: Int64
    attempt: Int64
    with_task: bool = True
    internal: bool = False  # accepted from the controller (TaskSubmit): internal and script functions may run
    cwd: str = ""  # the local client's working directory ("" = the worker's own)
    path: list[str] = field(default_factory=list)  # the local client's import path, searched first
    pickled: bool = False  # see JobSpec.pickled: the result (or the exception) goes back pickled too
    setup: WorkerSetup | None = None  # see JobSpec.setup
    inline: bool = False  # its owner is on another host: result arrays cross in the frame, never shared memory


class JobDone(Record, frozen=True):
    """A worker's report that a job returned or raised."""

    job_id: Int64
    ok: bool
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    progress: float = 0.0
    status: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    aborted: bool = False
    started: float = 0.0


# replies ---------------------------------------------------------------------
class Error(Message, tag=Kind.ERROR.value, frozen=True):
    """A request failed: ``code`` names the error class, ``message`` says what and why."""

    code: str
    message: str


class Ack(Message, tag=Kind.ACK.value, frozen=True):
    """A request was carried out."""

    detail: str = ""


class Pong(Message, tag=Kind.PONG.value, frozen=True):
    """Reply to :class:`Ping`."""

    version: str
    pid: Int64


_Journal = Annotated[str, Meta(max_length=64)]
_Note = Annotated[str, Meta(max_length=1024)]  # a short explanation for the user, from the daemon


class Submitted(Message, tag=Kind.SUBMITTED.value, frozen=True):
    """The jobs of a :class:`Submit` are journaled; their ids in order.

    ``journal``: the identity of the journal that holds them (made with it):
    a daemon started on another journal (the old one removed or replaced)
    numbers its jobs anew, and the same id names another job there.
    ``waiting``: why these jobs wait for a worker that nobody started ("" when
    one runs or is coming; see ``no_worker_yet`` in the supervisor).
    """

    ids: list[Int64]
    journal: _Journal = ""
    waiting: _Note = ""


class JobInfos(Message, tag=Kind.JOB_INFOS.value, frozen=True):
    """Job snapshots: a reply, or a push (corr 0) to watchers; a reply says its ``journal`` (see :class:`Submitted`)."""

    jobs: list[JobInfo]
    journal: _Journal = ""


class StatusReply(Message, tag=Kind.STATUS_REPLY.value, frozen=True):
    """Reply to :class:`Status`."""

    daemon: DaemonInfo
    actors: list[ActorInfo]


# client requests ---------------------------------------------------------------
class Ping(Message, tag=Kind.PING.value, frozen=True):
    """Ask the daemon to answer (round-trip check)."""


class Status(Message, tag=Kind.STATUS.value, frozen=True):
    """Ask for the daemon's and every actor's state."""


class Submit(Message, tag=Kind.SUBMIT.value, frozen=True):
    """Submit jobs; the reply comes after they are journaled. ``watch``: push their results.

    ``cwd`` and ``path`` are the submitting process's working directory and
    import path: a local client's jobs run with them (as under
    ``ProcessPoolExecutor``); the daemon ignores them from a remote peer.
    ``progress``: push each job's start and progress too (as ``Watch`` with
    progress does; an ``Executor``'s futures turn ``running`` with it).
    """

    jobs: _Specs
    watch: bool = True
    cwd: str = ""
    path: list[str] = field(default_factory=list)
    progress: bool = False


class TaskSubmit(Message, tag=Kind.TASK_SUBMIT.value, frozen=True):
    """The controller's own jobs (a script's background tasks), proven by the token the daemon gave it.

    Accepted only on the local control socket and only with the token the
    supervisor handed the controller at spawn: a client cannot send one.  The
    jobs may name internal functions and the loaded script's own functions,
    which a ``Submit`` never may.
    """

    token: str
    jobs: _Specs
    watch: bool = True


class Cancel(Message, tag=Kind.CANCEL.value, frozen=True):
    """Ask a job to stop; with ``block`` the reply waits until it has stopped.

    ``if_queued``: only if it has not started (``concurrent.futures``' cancel, which never interrupts a
    running call). The reply's detail is then ``cancelled``, ``running`` (it started: it runs on) or says
    that it had already ended; a job handed to a worker but not started there is first taken back from it.
    """

    job_id: Int64
    block: bool = False
    if_queued: bool = False


class GetJobs(Message, tag=Kind.GET_JOBS.value, frozen=True):
    """Fetch snapshots of the given jobs."""

    job_ids: _Ids


class ListJobs(Message, tag=Kind.LIST_JOBS.value, frozen=True):
    """List recent jobs, optionally only those in the given states."""

    states: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=1024)] = field(default_factory=list)
    limit: Int64 = 100


class Watch(Message, tag=Kind.WATCH.value, frozen=True):
    """Subscribe to updates of jobs (progress, status, state, result)."""

    job_ids: _Ids
    progress: bool = True


class Unwatch(Message, tag=Kind.UNWATCH.value, frozen=True):
    """Stop receiving updates of jobs."""

    job_ids: _Ids


class Scale(Message, tag=Kind.SCALE.value, frozen=True):
    """Change the number of workers at runtime (``on="ray"``: the workers placed on the Ray cluster)."""

    workers: Int64
    on: str = ""


class Shutdown(Message, tag=Kind.SHUTDOWN.value, frozen=True):
    """Stop the daemon in order (stop message, SIGTERM, SIGKILL)."""


# child <-> supervisor ---------------------------------------------------------------
class Hello(Message, tag=Kind.HELLO.value, frozen=True):
    """First message of a child: who it is."""

    role: str
    name: str
    pid: Int64
    resources: dict[str, float] = field(default_factory=dict)  # what its slot offers (a remote worker's own word)


class Heartbeat(Message, tag=Kind.HEARTBEAT.value, frozen=True):
    """Liveness, both ways; children attach their stats."""

    stats: dict[str, Any] = field(default_factory=dict)


class Stop(Message, tag=Kind.STOP.value, frozen=True):
    """Ask a child to finish and exit."""

    reason: str = ""


class RunJobs(Message, tag=Kind.RUN_JOBS.value, frozen=True):
    """Jobs for a worker to run in order."""

    jobs: list[Dispatch]


class AbortJob(Message, tag=Kind.ABORT_JOB.value, frozen=True):
    """Make ``should_abort()`` true for a job (queued on the worker or running)."""

    job_id: Int64
    reason: str = ""


class JobUpdate(Message, tag=Kind.JOB_UPDATE.value, frozen=True):
    """Progress, status message, properties, timeout or an event of a running job."""

    job_id: Int64
    progress: float
    status: str
    properties: dict[str, Any]
    timeout_ms: Int64
    event: str = ""
    detail: str = ""


class JobsDone(Message, tag=Kind.JOBS_DONE.value, frozen=True):
    """Jobs a worker finished since its last report."""

    results: list[JobDone]


class Recall(Message, tag=Kind.RECALL.value, frozen=True):
    """Give back jobs handed over but not started (a higher-priority job arrived, an idle worker can run them, a
    cancel that must not interrupt a started job); answered in order, one :class:`Recalled` each."""

    job_ids: _Ids


class Recalled(Message, tag=Kind.RECALLED.value, frozen=True):
    """The jobs of a :class:`Recall` that had not started; the supervisor queues them again."""

    job_ids: _Ids


class Retiring(Message, tag=Kind.RETIRING.value, frozen=True):
    """A worker leaves on purpose (code it imported changed on disk); replace it, count no failure."""

    reason: str


class ResultsClosed(Message, tag=Kind.RESULTS_CLOSED.value, frozen=True):
    """A local worker's results socket closes: every result it will send was sent before this.

    A stopping worker's process may be seen to exit before the daemon has read
    its last results off that socket; the daemon reads on until this arrives
    before it counts the jobs still outstanding there as lost.
    """


class VoicesOp(Message, tag=Kind.VOICES_OP.value, frozen=True):
    """kill_voices_and_call: ``suspend`` (fade, kill, stay silent) or ``resume`` the processor's voices."""

    op: str
    token: Int64
    fade_ms: float = 10.0


class VoicesDone(Message, tag=Kind.VOICES_DONE.value, frozen=True):
    """The processor carried out a :class:`VoicesOp` (``ok`` False: it could not)."""

    token: Int64
    ok: bool
    detail: str = ""


# --------------------------------------------------------------------------- the registry of kinds
_REGISTRY: dict[int, type[Message]] = {}
_generation = 0  # bumped by every register(): the frame decoders are rebuilt for the new union


def register(kinds: type[IntEnum], *classes: type[Message]) -> None:
    """Add a domain's message classes to the wire protocol (each package's schema module calls it once).

    ``kinds`` is the domain's :class:`~enum.IntEnum` of kind numbers; every
    class's tag must be one of them and no other class's.  A process decodes
    the kinds of the schema modules it imported: the daemon without audio
    refuses a note as an unknown kind, with an error that says so.
    """
    global _generation
    for cls in classes:
        kind = kinds(cls.__struct_config__.tag)  # type: ignore[arg-type]  # every message has an int tag
        if _REGISTRY.get(kind.value, cls) is not cls:
            raise ValueError(f"message kind {kind.value} of {cls.__qualname__} is taken by "
                             f"{_REGISTRY[kind.value].__qualname__}")
        cls.KIND = kind
        _REGISTRY[kind.value] = cls
    _generation += 1


register(Kind, *Message.__subclasses__())  # the runtime's own kinds


# --------------------------------------------------------------------------- ext types
# Their payloads are msgpack too: [dtype, shape, data] (ext 1), [name, dtype, shape, offset] (ext 2),
# [key, dtype, shape] (ext 3).
_pack_plain = msgspec.msgpack.Encoder().encode
_DType = Annotated[str, Meta(max_length=64)]
_Shape = Annotated[list[_Size], Meta(max_length=64)]
_unpack_inline = msgspec.msgpack.Decoder(tuple[_DType, _Shape, bytes]).decode
_unpack_handle = msgspec.msgpack.Decoder(tuple[Annotated[str, Meta(max_length=256)], _DType, _Shape, _Size]).decode
_unpack_stored = msgspec.msgpack.Decoder(tuple[Annotated[str, Meta(max_length=128)], _DType, _Shape]).decode


def _enc_hook(obj: Any) -> Any:
    """What msgspec cannot pack itself: array handles (ext 2), numeric numpy arrays (ext 1) and scalars, exact
    values (ext 4: :func:`actors._values.to_wire` made them)."""
    cls = type(obj)
    if cls is _values.Exact:
        return msgspec.msgpack.Ext(EXT_VALUE, _encoder.encode((obj.tag, obj.data)))
    if cls is _values.Pickled:  # the pickle alone, or [pickle, array handle, ...] (a pickle never starts 0x9_/0xdc)
        return msgspec.msgpack.Ext(EXT_PICKLED, _encoder.encode([obj.blob, *obj.refs]) if obj.refs else obj.blob)
    if cls in _values.HOOKED:  # met outside a job's values too (a property): as exact as it can be
        return _enc_hook(_values.to_wire(obj))
    if cls is ArrayHandle:
        return msgspec.msgpack.Ext(EXT_ARRAY_HANDLE, _pack_plain((obj.name, obj.dtype, obj.shape, obj.offset)))
    if cls is StoredArray:
        return msgspec.msgpack.Ext(EXT_STORED_ARRAY, _pack_plain((obj.key, obj.dtype, obj.shape)))
    if cls.__module__ == "numpy":
        import numpy as np  # numpy only where arrays are: a child that sends none never imports it

        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in _SAFE_DTYPE_KINDS:
                raise TypeError(f"numpy arrays of dtype {obj.dtype} cannot be sent (numeric only)")
            # tobytes() is C order whatever the layout (ascontiguousarray would turn a 0-d array into 1-d)
            return msgspec.msgpack.Ext(EXT_INLINE_ARRAY, _pack_plain((obj.dtype.str, obj.shape, obj.tobytes())))
        if isinstance(obj, np.generic):
            return obj.item()
    raise TypeError(
        f"cannot send a value of type {cls.__module__}.{cls.__qualname__}: "
        "only None, bool, int, float, complex, str, bytes, bytearray, lists, tuples, sets, maps, datetime, date, "
        "time, timedelta, Decimal, UUID, Path and numeric numpy arrays cross the wire"
    )


# ext values (exact values, arrays...) a frame from another host may hold.  Each costs the daemon's loop a few
# microseconds to read and check (a call into Python, a small decode, the value rebuilt): a remote key's frame of
# millions of them (a 64 MiB frame holds ten million) would hold the loop for tens of seconds.  At this bound,
# about a second at worst on a slow machine; a local client has none (it is the daemon's own user).
REMOTE_EXT_VALUES = 1 << 18
_remote = threading.local()  # .left: ext values the frame from another host being read on this thread may still hold


def remote_ext_left() -> int:
    """How many more ext values the last frame from another host decoded on this thread could have held."""
    return int(getattr(_remote, "left", REMOTE_EXT_VALUES))


def _ext_hook(code: int, data: memoryview | bytes, handles: str | None = "ensemble.", stored: bool = False) -> Any:
    """Decode our ext types.  ``handles``: the segment-name prefix a handle must carry (None: refuse handles);
    ``stored``: whether object-store keys (ext 3) are accepted (the daemon<->worker link only).

    Whatever a payload makes numpy or the value rebuilders raise (a shape
    numpy cannot reshape to, a dtype text its parser chokes on with a
    ``SyntaxError``) comes out as :class:`ProtocolError`: a peer's frame is
    refused, it never ends the process reading it.
    """
    if handles is None:  # a frame from another host (see decode): it holds REMOTE_EXT_VALUES of them at most
        left = getattr(_remote, "left", REMOTE_EXT_VALUES) - 1
        if left < 0:
            raise ProtocolError(f"a frame from another host may hold at most {REMOTE_EXT_VALUES:,} ext values (tuples, "
                                "sets, big ints, datetimes, arrays...), and this one holds more: send plain lists, "
                                "or split the job's values over several jobs")
        _remote.left = left
    try:
        return _ext_value(code, data, handles, stored)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure on a peer's bytes is that peer's malformed frame
        raise ProtocolError(f"malformed ext {code} value: {type(exc).__name__}: {exc}") from exc


def _ext_value(code: int, data: memoryview | bytes, handles: str | None, stored: bool) -> Any:
    """What :func:`_ext_hook` reads, with its checks."""
    if code == EXT_INLINE_ARRAY:
        try:
            dtype, shape, raw = _unpack_inline(data)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"malformed inline array: {exc}") from exc
        return _inline_array(dtype, shape, raw)
    if code == EXT_ARRAY_HANDLE:
        try:
            name, dtype, shape, offset = _unpack_handle(data)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"malformed array handle: {exc}") from exc
        if handles is None:
            raise ProtocolError("array handles name shared memory on the daemon's host and are refused from a "
                                "remote peer; send the array itself (it travels inline)")
        if not name.startswith(handles) or "/" in name:
            raise ProtocolError(f"array handle {name[:80]!r} does not name a segment of this daemon")
        _check_dtype(dtype)
        return ArrayHandle(name, dtype, tuple(shape), offset)
    if code == EXT_STORED_ARRAY:
        if not stored:
            raise ProtocolError("object-store array keys pass only between the daemon and its Ray-placed workers; "
                                "send the array itself")
        try:
            key, dtype, shape = _unpack_stored(data)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"malformed object-store array key: {exc}") from exc
        _check_dtype(dtype)
        return StoredArray(key, dtype, tuple(shape))
    if code == EXT_VALUE:
        return _exact_value(data, handles, stored)
    if code == EXT_PICKLED:
        if handles is None:  # the daemon reading a peer on another host
            raise ProtocolError("pickled values (ext 5) are accepted only from a client on the daemon's host; "
                                "from another host send values MessagePack carries")
        _values.Pickled.made += 1
        if not data or data[0] == 0x80:  # pickle's PROTO opcode: the value holds no array
            return _values.Pickled(bytes(data))
        try:  # [pickle, array, ...], the arrays under the frame's policy
            blob, *refs = _refs_decoder(handles, stored).decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"malformed pickled value (ext {EXT_PICKLED}): {exc}") from exc
        if type(blob) is not bytes or any(type(r) not in (ArrayHandle, StoredArray) and type(r).__module__ != "numpy"
                                          for r in refs):
            raise ProtocolError(f"malformed pickled value (ext {EXT_PICKLED}): it is a pickle, or [pickle, array, "
                                "...]")
        return _values.Pickled(blob, refs)
    raise ProtocolError(f"unknown ext type {code}")


_KEEPS_EXACT = [0]  # the pid of the process that keeps exact values as they came: the daemon (keep_exact_values)


def keep_exact_values() -> None:
    """This process (the daemon) reads exact values (ext 4) as :class:`actors._values.Exact`, checked, and sends
    them on so; every other process, a fork of it too, rebuilds them (see :mod:`actors._values`)."""
    _KEEPS_EXACT[0] = os.getpid()


def _exact_value(data: memoryview | bytes, handles: str | None, stored: bool) -> Any:
    """An ext 4 payload ``[tag, data]`` (read with the same policy for the arrays inside): the value it stands
    for, or in the daemon its :class:`~actors._values.Exact` once that value rebuilt; ProtocolError if it does not."""
    try:
        tag, inner = _payload_decoder(handles, stored).decode(data)
        value = _values.rebuild(tag, inner)
    except ProtocolError:
        raise
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(f"malformed exact value (ext {EXT_VALUE}): {exc}") from exc
    if _KEEPS_EXACT[0] and _KEEPS_EXACT[0] == os.getpid():  # (a client never asks for its pid)
        return _values.Exact(tag, inner)
    return value


@functools.lru_cache(maxsize=16)
def _refs_decoder(handles: str | None, stored: bool) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of an ext 5 payload with arrays, ``[pickle, array, ...]``, under the frame's policy."""
    return msgspec.msgpack.Decoder(Annotated[list[Any], Meta(min_length=2, max_length=1 << 16)],
                                   ext_hook=functools.partial(_ext_hook, handles=handles, stored=stored))


@functools.lru_cache(maxsize=16)
def _payload_decoder(handles: str | None, stored: bool) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of an ext 4 payload, ``[tag, data]``, whose own ext types follow the frame's policy."""
    return msgspec.msgpack.Decoder(tuple[int, Any], ext_hook=functools.partial(_ext_hook, handles=handles,
                                                                               stored=stored))


def _check_dtype(text: str) -> Any:
    """The numpy dtype ``text`` names, if it is numeric; else :class:`ProtocolError`."""
    import numpy as np

    try:
        dtype = np.dtype(text)
    except Exception as exc:  # noqa: BLE001 - numpy's parser raises SyntaxError too ('f8,(')
        raise ProtocolError(f"unknown array dtype {text[:80]!r}") from exc
    if dtype.kind not in _SAFE_DTYPE_KINDS or dtype.hasobject:
        raise ProtocolError(f"array dtype {text!r} is not allowed (numeric only)")
    return dtype


def _inline_array(dtype_text: str, shape: list[int], raw: bytes) -> Any:
    """A read-only array over ``raw`` (ext 1), once dtype, shape and size agree."""
    import numpy as np

    dtype = _check_dtype(dtype_text)
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != len(raw):
        raise ProtocolError("inline array size does not match its shape and dtype")
    try:
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    except ValueError as exc:  # a shape numpy cannot make: [2**62, 2**62, 0] holds no item, and is too big anyway
        raise ProtocolError(f"inline array shape {shape[:8]} is not one numpy can make: {exc}") from exc


# --------------------------------------------------------------------------- codec
_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def encode(msg: Message, corr: int = 0) -> bytes:
    """Pack one message into a frame (thread-safe; one pass in C).

    Raises :class:`ProtocolError` for unsendable values: an object, a complex
    number, an array of objects, nesting deeper than the recursion limit.
    """
    try:
        return _encoder.encode((VERSION, msg.KIND, corr, msg))
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {_not_utf8(msg) or exc}") from exc
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def _not_utf8(value: Any, where: str = "", depth: int = 0) -> str:
    """Where in ``value`` a text holds bytes that are not UTF-8, said for an error ('' if nowhere).

    Python keeps such bytes of a command-line argument, a variable or a file
    name as lone surrogates ('\\udcff' for the byte 0xff); UTF-8 cannot carry them.
    """
    if depth > 50:
        return ""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            bad = value[exc.start:exc.end]
            raw = bad.encode("utf-8", "surrogateescape") if all("\udc80" <= ch <= "\udcff" for ch in bad) else b""
            held = f"the bytes {raw!r}" if raw else f"{bad!r}"
            return (f"{where or 'a text'} ({_clip(value)}) holds {held}, which are not UTF-8 (from a command-line "
                    "argument, a variable or a file name?); messages carry text as UTF-8: pass it as UTF-8 text")
        return ""
    if isinstance(value, msgspec.Struct):
        items: Any = ((f"{where}.{name}" if where else name, getattr(value, name)) for name in value.__struct_fields__)
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        items = ((f"{where}[{k!r}]", v) for k, v in value.items())
        keys = ((f"a key of {where or 'a dict'}", k) for k in value)
        items = (*keys, *items)
    else:
        return ""
    for name, v in items:
        found = _not_utf8(v, name, depth + 1)
        if found:
            return found
    return ""


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@functools.lru_cache(maxsize=16)
def _decoder(handles: str | None, generation: int, stored: bool = False) -> msgspec.msgpack.Decoder[Any]:
    """The frame decoder of one handle policy for the kinds registered so far (built on first use, kept)."""
    hook = _ext_hook if handles == "ensemble." and not stored else functools.partial(_ext_hook, handles=handles,
                                                                                     stored=stored)
    # One frame: [VERSION, kind, corr, [kind, *fields]].  A wrong version fails at once, at $[0].
    envelope = tuple[Literal[VERSION], int, _Size, Union[tuple(_REGISTRY.values())]]  # type: ignore[misc, valid-type]  # noqa: UP007
    return msgspec.msgpack.Decoder(envelope, ext_hook=hook)


def warm() -> None:
    """Build the decoders' type information for every kind registered so far now, not at the first frame.

    msgspec keeps what it learns of each message class on the class (2 ms of
    ``get_type_hints`` for the core kinds), so a process that then forks
    passes it on: :func:`actors._daemonfork.fork_daemon` calls this first, and
    neither the private daemon nor its workers (forks of it) spend that time on
    the way to their first message, when start-up keeps both cores busy.
    """
    _decoder("ensemble.", _generation)


_DEFAULT_LIMITS = Limits()


def decode(frame: bytes, limits: Limits = _DEFAULT_LIMITS, handles: str | None = "ensemble.",
           stored: bool = False) -> tuple[int, Message]:
    """Unpack and validate one frame; returns ``(corr, message)``.

    ``handles`` is the name prefix every :class:`ArrayHandle` in the frame must
    carry (a daemon passes its own segments' prefix); ``None`` refuses handles
    altogether (frames from another host).  ``stored`` accepts
    :class:`StoredArray` keys (ext 3): only frames between the daemon and its
    workers pass True, never a client's.  Every int field must fit a signed
    64-bit int.  Raises :class:`ProtocolError` saying what was wrong: oversize
    frame, undecodable bytes, wrong envelope, unknown version or kind, bad field
    (named by its path, as in ``Submit.jobs[0].priority``), nesting too deep.
    Thread-safe; one pass over the frame in C, with one decoder per ``handles``
    policy built on first use.
    """
    if len(frame) > limits.max_frame:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of {limits.max_frame}")
    if handles is None:
        _remote.left = REMOTE_EXT_VALUES
    try:
        _, kind, corr, msg = _decoder(handles, _generation, stored).decode(frame)
    except ProtocolError:
        raise  # an ext hook's verdict on an array or a handle
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _refusal(frame, exc) from exc
    except Exception as exc:  # noqa: BLE001 - a hostile frame must not end the process that reads it
        raise ProtocolError(f"frame could not be decoded: {type(exc).__name__}: {exc}") from exc
    if kind != msg.KIND:
        raise ProtocolError(f"the envelope says kind {kind} but the message is of kind {msg.KIND.value} "
                            f"({type(msg).__name__})")
    return corr, msg


def _refusal(frame: bytes, exc: Exception) -> ProtocolError:
    """The one place a failed decode becomes a :class:`ProtocolError` saying what was wrong."""
    if isinstance(exc, RecursionError):
        return ProtocolError("frame nests too deeply (deeper than the decoder's recursion limit)")
    header = _header(frame)
    if header is None:
        if isinstance(exc, msgspec.ValidationError):
            return ProtocolError(f"frame is not an ensemble envelope [version, kind, corr, [kind, *fields]]: {exc}")
        return ProtocolError(f"frame is not valid msgpack: {exc}")
    version, kind, corr, tag = header
    if version != VERSION:
        return ProtocolError(f"protocol version {version!r} is not supported (this side speaks {VERSION})")
    if not 0 <= corr < 2**63:
        return ProtocolError(f"correlation id {corr} is not a non-negative 64-bit int")
    cls = _REGISTRY.get(kind)
    if cls is None:
        return UnknownKind(kind)
    if tag is not None and tag != kind:
        return ProtocolError(f"the envelope says kind {kind} ({cls.__name__}) but the message is of kind {tag}")
    if not isinstance(exc, msgspec.ValidationError):
        return ProtocolError(f"frame is not valid msgpack: {exc}")
    found = _ERROR_AT.fullmatch(str(exc))
    what, key, path = found.groups() if found else (str(exc), None, None)
    if not path or not path.startswith("$[3]"):
        return ProtocolError(f"frame is not an ensemble envelope [version, kind, corr, [kind, *fields]]: {exc}")
    where = _field_path(cls, path[4:]) + (" (a map key)" if key else "")
    if path == "$[3]" and (short := re.match(r"Expected `array` of (?:at least )?length \d+, got (\d+)", what)):
        required = sum(f.required for f in msgspec.structs.fields(cls))
        what = f"needs at least {required} field{'s' * (required != 1)}, got {max(int(short[1]) - 1, 0)}"
    return ProtocolError(f"{where}: {_INT64_BOUND.sub('out of range (a signed 64-bit int)', what)}")


_ERROR_AT = re.compile(r"(.*?)(?: - at (`key` in )?`(\$.*)`)?", re.DOTALL)  # msgspec: "what - at `$[3][1]`"
_INT64_BOUND = re.compile(rf"Expected `int` (?:<= {2**63 - 1}|>= {-(2**63)})")


def _field_path(cls: type[Message], path: str) -> str:
    """msgspec's path inside a message (``[1][0][5]``) spelled with field names (``Submit.jobs[0].priority``)."""
    where, current = cls.__name__, cls
    for step in re.findall(r"\[(\d+)\]", path):
        index = int(step)
        while get_origin(current) is Annotated:
            current = get_args(current)[0]
        if isinstance(current, type) and issubclass(current, msgspec.Struct):
            if current.__struct_config__.tag is not None:  # a message: item 0 is its kind
                if index == 0:
                    return f"{where} (its kind)"
                index -= 1
            fields = msgspec.structs.fields(current)
            if index >= len(fields):
                return where
            where, current = f"{where}.{fields[index].name}", fields[index].type
        else:  # an item of a list[JobSpec], list[Int64], list[Any]
            item = get_args(current)
            where, current = f"{where}[{index}]", item[0] if item else Any
    return where


_INT_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_ARRAY_HEADERS = {0xDC: 3, 0xDD: 5}  # array16, array32: bytes before the first item


def _header(frame: bytes) -> tuple[int, int, int, int | None] | None:
    """``(version, kind, corr, tag)`` read by hand from the first bytes of a frame, or None.

    For frames that did not decode (truncated, malformed, wrong message): it
    reads the three header ints and the message's first item (its kind, the
    tag; None when that is not an int) and needs nothing else to be valid.
    """
    pos = _array_start(frame, 0)
    values: list[int] = []
    while pos is not None and len(values) < 3:
        pos = _read_int(frame, pos, values)
    if pos is None:
        return None
    version, kind, corr = values
    start = _array_start(frame, pos)
    tag = values[3] if start is not None and _read_int(frame, start, values) is not None else None
    return version, kind, corr, tag


def _array_start(frame: bytes, pos: int) -> int | None:
    """Where the first item of the array at ``pos`` starts (None: no array there)."""
    if pos >= len(frame):
        return None
    byte = frame[pos]
    return pos + 1 if 0x90 <= byte <= 0x9F else (pos + _ARRAY_HEADERS[byte] if byte in _ARRAY_HEADERS else None)


def _read_int(frame: bytes, pos: int, out: list[int]) -> int | None:
    """Append the int at ``pos`` to ``out``; where the next item starts (None: no whole int there)."""
    if pos >= len(frame):
        return None
    byte = frame[pos]
    if byte <= 0x7F or byte >= 0xE0:  # positive and negative fixint
        out.append(byte if byte <= 0x7F else byte - 0x100)
        return pos + 1
    size = _INT_SIZES.get(byte)
    if size is None or pos + 1 + size > len(frame):
        return None
    out.append(int.from_bytes(frame[pos + 1:pos + 1 + size], "big", signed=byte >= 0xD0))
    return pos + 1 + size


def decode_result(raw: bytes, limits: Limits, handles: str | None) -> JobDone:
    """One encoded :class:`JobDone` (a held result's record, see :class:`actors._rundir.HeldResults`), checked as a
    worker's frame of that one result is (within ``limits``, array handles as ``handles`` says); ProtocolError."""
    item: Any = msgspec.Raw(raw)  # encoded as it is
    _, msg = decode(encode(JobsDone([item])), limits, handles)
    assert isinstance(msg, JobsDone)
    return msg.results[0]


def salvage_run_jobs(frame: bytes, limits: Limits, stored: bool = True
                     ) -> tuple[list[Dispatch], list[tuple[int, str]]] | None:
    """A :class:`RunJobs` frame :func:`decode` refused, read job by job: the jobs that read, and ``(job id, why)``
    of each that does not (None if the frame is no RunJobs, or not even its jobs' list reads).

    The daemon checks what it dispatches, so this is a defence in depth: a value it let through and a worker
    cannot rebuild fails that one job, where a dropped frame would hold every job in it running for ever.
    """
    if len(frame) > limits.max_frame:
        return None
    try:
        _, kind, _, body = _run_jobs_raw.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return None
    if kind != Kind.RUN_JOBS or body[0] != Kind.RUN_JOBS:
        return None
    jobs: list[Dispatch] = []
    failed: list[tuple[int, str]] = []
    for raw in body[1]:
        try:
            jobs.append(_dispatch_decoder(stored).decode(raw))
        except Exception as exc:  # noqa: BLE001 - whatever this job's bytes raise is this job's failure
            try:
                head = msgspec.msgpack.decode(raw, ext_hook=lambda code, data: None)
            except Exception:  # noqa: BLE001
                head = None
            if type(head) is list and head and type(head[0]) is int:  # Dispatch is packed as [job_id, ...]
                failed.append((head[0], str(exc) if isinstance(exc, ProtocolError) else f"{type(exc).__name__}: {exc}"))
            # else no id to fail it by: the daemon's job timeout or a cancel ends it
    return jobs, failed


_run_jobs_raw = msgspec.msgpack.Decoder(tuple[int, int, int, tuple[int, list[msgspec.Raw]]])


@functools.lru_cache(maxsize=2)
def _dispatch_decoder(stored: bool) -> msgspec.msgpack.Decoder[Dispatch]:
    return msgspec.msgpack.Decoder(Dispatch, ext_hook=functools.partial(_ext_hook, stored=stored))


def peek_corr(frame: bytes) -> int:
    """Best-effort correlation id of a frame that failed to decode (0 if unknown)."""
    header = _header(frame)
    return header[2] if header is not None and 0 <= header[2] < 2**63 else 0


def peek_kind(frame: bytes) -> int:
    """The kind of a frame this process encoded (0 if unreadable), read from its header alone."""
    header = _header(frame)
    return header[1] if header is not None else 0


def pushed_ids(frame: bytes) -> list[int]:
    """The job ids in a :class:`JobInfos` frame this process encoded (a push it could not send yet)."""
    _, _, _, body = msgspec.msgpack.decode(frame, ext_hook=lambda code, data: None)
    return [job[0] for job in body[1]]  # body: [kind, jobs, journal]


# --------------------------------------------------------------------------- plain values
_plain_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def _encode_value(value: Any) -> bytes:
    """Pack a value as a message field carries it (the journal stores specs, results and properties so).

    Raises :class:`ProtocolError` for values that cannot cross the wire.
    """
    try:
        return _encoder.encode(value)
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"cannot encode a {type(value).__name__}: {_not_utf8(value) or exc}") from exc
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot encode a {type(value).__name__}: {exc}") from exc


def _decode_value(blob: bytes) -> Any:
    """Inverse of :func:`_encode_value` (rows written by older releases, with msgpack, read the same)."""
    return _plain_decoder.decode(blob)


__all__ = [
    "VERSION",
    "ArrayHandle",
    "Int64",
    "Kind",
    "Limits",
    "Message",
    "StoredArray",
    "decode",
    "encode",
    "peek_corr",
    "decode_result",
]
__all__ += ["Record", "register"]
__all__ += [c.__name__ for c in _REGISTRY.values()]
__all__ += [c.__name__ for c in Record.__subclasses__()]

"""The wire protocol: one versioned msgpack envelope and the typed messages in it.

Message classes are slotted dataclasses, not frozen ones: a frozen
dataclass's ``__init__`` costs five times as much, and decoding builds one per
message.  Treat messages as values all the same: never mutate one, use
``dataclasses.replace``.

Every frame on every ensemble socket is ``msgpack([VERSION, kind, corr, fields])``:

* ``VERSION`` — protocol version; a frame with another version is refused.
* ``kind`` — small int naming the message class (:class:`Kind`).
* ``corr`` — correlation id chosen by the requester and echoed in the reply;
  ``0`` marks an unsolicited message (a push or a heartbeat).
* ``fields`` — the message's fields as a list, in declaration order.

Decoding always sets explicit limits (frame size, str/bin/array/map/ext
lengths; msgpack's own stack limit bounds nesting at 1024) and validates every
field's type, so nothing but plain data ever reaches the code: nothing is
unpickled or evaluated.  Numpy arrays travel as msgpack ext types: small ones
inline (ext 1), large ones as an :class:`ArrayHandle` to shared memory (ext 2).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import typing
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, ClassVar

import msgpack

from actors._errors import ProtocolError

VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
EXT_INLINE_ARRAY = 1
EXT_ARRAY_HANDLE = 2
_SAFE_DTYPE_KINDS = frozenset("biufc")  # bool, int, uint, float, complex: no objects


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
    # audio: events and samples
    AUDIO_EVENT = 60
    SAMPLE_LOAD = 61
    SAMPLE_DROP = 62
    SAMPLE_LIST = 63
    SAMPLE_INFOS = 64
    # scripts
    SCRIPT_LOAD = 70
    SCRIPT_READY = 71
    SCRIPT_ERROR = 72
    RUN_SYNC = 73
    RUN_ASYNC = 74
    RUN_ASYNC_RESULT = 75
    PARAM_SET = 76
    PARAM_VALUES = 77
    PARAM_LIST = 78
    PARAM_INFOS = 79


@dataclass(frozen=True)
class Limits:
    """Explicit bounds applied to every frame before and while it is unpacked."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_str: int = 16 * 1024 * 1024
    max_array: int = 1_000_000
    max_map: int = 100_000

    def unpack_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``msgpack.unpackb`` enforcing these limits."""
        return {
            "max_str_len": min(self.max_str, self.max_frame),
            "max_bin_len": self.max_frame,
            "max_array_len": self.max_array,
            "max_map_len": self.max_map,
            "max_ext_len": self.max_frame,
        }


@dataclass(frozen=True)
class ArrayHandle:
    """A numpy array living in a named shared-memory segment, as it crosses a socket.

    ``name`` is the POSIX shared-memory name (without ``/dev/shm``), ``offset``
    the byte offset of the first element, ``dtype`` a numpy dtype string
    (numeric kinds only), ``shape`` the array shape (C order).  The receiver maps
    it with :func:`actors.shm.attach`; nothing is copied through the socket.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0

    @property
    def nbytes(self) -> int:
        """Size of the array data in bytes."""
        import numpy as np

        count = 1
        for dim in self.shape:
            count *= dim
        return count * np.dtype(self.dtype).itemsize


# --------------------------------------------------------------------------- messages
_REGISTRY: dict[int, type["Message"]] = {}
_NESTED: set[type] = set()


class Message:
    """Base of every message class; subclasses are slotted dataclasses with a KIND."""

    __slots__ = ()

    KIND: ClassVar[Kind]
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    _CHECKS: ClassVar[tuple[Callable[[Any, str], Any], ...]] = ()


M = typing.TypeVar("M", bound=type)


def _message(kind: Kind) -> Callable[[M], M]:
    def register(cls: M) -> M:
        cls.KIND = kind  # type: ignore[attr-defined]
        _REGISTRY[int(kind)] = cls
        return cls

    return register


def _nested(cls: M) -> M:
    """Mark a dataclass that travels inside messages (encoded as a field list)."""
    _NESTED.add(cls)
    return cls


@_nested
@dataclass(slots=True)
class JobSpec:
    """One job as a client submits it."""

    fn: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    priority: int = 0
    timeout_ms: int = 500
    deadline: float = 0.0  # seconds after start; 0 = none
    retries: int = 0
    with_task: bool = True  # pass the task handle as the first argument


@_nested
@dataclass(slots=True)
class JobInfo:
    """What the daemon knows about one job (a snapshot)."""

    id: int
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
    attempts: int = 0
    worker: str = ""
    priority: int = 0


@_nested
@dataclass(slots=True)
class ActorInfo:
    """One supervised child, as ``status`` shows it."""

    name: str
    role: str
    pid: int
    state: str
    uptime: float
    restarts: int
    heartbeat_age: float
    rss: int
    detail: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


@_nested
@dataclass(slots=True)
class DaemonInfo:
    """The daemon itself, as ``status`` shows it."""

    name: str
    pid: int
    version: str
    uptime: float
    run_dir: str
    state_dir: str
    log_file: str
    workers_wanted: int
    queued: int
    running: int
    rss: int
    counters: dict[str, Any] = field(default_factory=dict)


@_nested
@dataclass(slots=True)
class Dispatch:
    """A job handed to a worker."""

    job_id: int
    fn: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout_ms: int
    attempt: int
    with_task: bool = True
    internal: bool = False  # accepted from the controller (TaskSubmit): internal and script functions may run


@_nested
@dataclass(slots=True)
class JobDone:
    """A worker's report that a job returned or raised."""

    job_id: int
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
@_message(Kind.ERROR)
@dataclass(slots=True)
class Error(Message):
    """A request failed: ``code`` names the error class, ``message`` says what and why."""

    code: str
    message: str


@_message(Kind.ACK)
@dataclass(slots=True)
class Ack(Message):
    """A request was carried out."""

    detail: str = ""


@_message(Kind.PONG)
@dataclass(slots=True)
class Pong(Message):
    """Reply to :class:`Ping`."""

    version: str
    pid: int


@_message(Kind.SUBMITTED)
@dataclass(slots=True)
class Submitted(Message):
    """The jobs of a :class:`Submit` are journaled; their ids in order."""

    ids: list[int]


@_message(Kind.JOB_INFOS)
@dataclass(slots=True)
class JobInfos(Message):
    """Job snapshots: a reply, or a push (corr 0) to watchers."""

    jobs: list[JobInfo]


@_message(Kind.STATUS_REPLY)
@dataclass(slots=True)
class StatusReply(Message):
    """Reply to :class:`Status`."""

    daemon: DaemonInfo
    actors: list[ActorInfo]


# client requests ---------------------------------------------------------------
@_message(Kind.PING)
@dataclass(slots=True)
class Ping(Message):
    """Ask the daemon to answer (round-trip check)."""


@_message(Kind.STATUS)
@dataclass(slots=True)
class Status(Message):
    """Ask for the daemon's and every actor's state."""


@_message(Kind.SUBMIT)
@dataclass(slots=True)
class Submit(Message):
    """Submit jobs; the reply comes after they are journaled. ``watch``: push their results."""

    jobs: list[JobSpec]
    watch: bool = True


@_message(Kind.TASK_SUBMIT)
@dataclass(slots=True)
class TaskSubmit(Message):
    """The controller's own jobs (a script's background tasks), proven by the token the daemon gave it.

    Accepted only on the local control socket and only with the token the
    supervisor handed the controller at spawn: a client cannot send one.  The
    jobs may name internal functions and the loaded script's own functions,
    which a ``Submit`` never may.
    """

    token: str
    jobs: list[JobSpec]
    watch: bool = True


@_message(Kind.CANCEL)
@dataclass(slots=True)
class Cancel(Message):
    """Ask a job to stop; with ``block`` the reply waits until it has stopped."""

    job_id: int
    block: bool = False


@_message(Kind.GET_JOBS)
@dataclass(slots=True)
class GetJobs(Message):
    """Fetch snapshots of the given jobs."""

    job_ids: list[int]


@_message(Kind.LIST_JOBS)
@dataclass(slots=True)
class ListJobs(Message):
    """List recent jobs, optionally only those in the given states."""

    states: list[str] = field(default_factory=list)
    limit: int = 100


@_message(Kind.WATCH)
@dataclass(slots=True)
class Watch(Message):
    """Subscribe to updates of jobs (progress, status, state, result)."""

    job_ids: list[int]
    progress: bool = True


@_message(Kind.UNWATCH)
@dataclass(slots=True)
class Unwatch(Message):
    """Stop receiving updates of jobs."""

    job_ids: list[int]


@_message(Kind.SCALE)
@dataclass(slots=True)
class Scale(Message):
    """Change the number of workers at runtime."""

    workers: int


@_message(Kind.SHUTDOWN)
@dataclass(slots=True)
class Shutdown(Message):
    """Stop the daemon in order (stop message, SIGTERM, SIGKILL)."""


# child <-> supervisor ---------------------------------------------------------------
@_message(Kind.HELLO)
@dataclass(slots=True)
class Hello(Message):
    """First message of a child: who it is."""

    role: str
    name: str
    pid: int


@_message(Kind.HEARTBEAT)
@dataclass(slots=True)
class Heartbeat(Message):
    """Liveness, both ways; children attach their stats."""

    stats: dict[str, Any] = field(default_factory=dict)


@_message(Kind.STOP)
@dataclass(slots=True)
class Stop(Message):
    """Ask a child to finish and exit."""

    reason: str = ""


@_message(Kind.RUN_JOBS)
@dataclass(slots=True)
class RunJobs(Message):
    """Jobs for a worker to run in order."""

    jobs: list[Dispatch]


@_message(Kind.ABORT_JOB)
@dataclass(slots=True)
class AbortJob(Message):
    """Make ``should_abort()`` true for a job (queued on the worker or running)."""

    job_id: int
    reason: str = ""


@_message(Kind.JOB_UPDATE)
@dataclass(slots=True)
class JobUpdate(Message):
    """Progress, status message, properties, timeout or an event of a running job."""

    job_id: int
    progress: float
    status: str
    properties: dict[str, Any]
    timeout_ms: int
    event: str = ""
    detail: str = ""


@_message(Kind.JOBS_DONE)
@dataclass(slots=True)
class JobsDone(Message):
    """Jobs a worker finished since its last report."""

    results: list[JobDone]


@_message(Kind.RECALL)
@dataclass(slots=True)
class Recall(Message):
    """Give back jobs handed over but not started (a higher-priority job arrived)."""

    job_ids: list[int]


@_message(Kind.RECALLED)
@dataclass(slots=True)
class Recalled(Message):
    """The jobs of a :class:`Recall` that had not started; the supervisor queues them again."""

    job_ids: list[int]


@_message(Kind.VOICES_OP)
@dataclass(slots=True)
class VoicesOp(Message):
    """kill_voices_and_call: ``suspend`` (fade, kill, stay silent) or ``resume`` the processor's voices."""

    op: str
    token: int
    fade_ms: float = 10.0


@_message(Kind.VOICES_DONE)
@dataclass(slots=True)
class VoicesDone(Message):
    """The processor carried out a :class:`VoicesOp` (``ok`` False: it could not)."""

    token: int
    ok: bool
    detail: str = ""


# audio -----------------------------------------------------------------------------
@_message(Kind.AUDIO_EVENT)
@dataclass(slots=True)
class AudioEvent(Message):
    """A MIDI-like event for the processor: ``note_on``, ``note_off``, ``cc``, ``kill_all``.

    ``delay`` is seconds after the processor receives it (0: the next block);
    ``sample`` names the sample a note plays ("" = the default instrument's).
    """

    op: str
    note: int = 0
    velocity: float = 1.0
    value: float = 0.0
    delay: float = 0.0
    sample: str = ""
    fade_ms: float = 10.0


@_nested
@dataclass(slots=True)
class SampleInfo:
    """A sample buffer in the registry."""

    name: str
    handle: ArrayHandle
    samplerate: int
    root_key: int = 60
    frames: int = 0
    channels: int = 1


@_message(Kind.SAMPLE_LOAD)
@dataclass(slots=True)
class SampleLoad(Message):
    """Register (or replace) a sample buffer living in shared memory; the registry owns it from now on."""

    sample: SampleInfo


@_message(Kind.SAMPLE_DROP)
@dataclass(slots=True)
class SampleDrop(Message):
    """Remove a sample from the registry; its segment is unlinked once nobody uses it."""

    name: str


@_message(Kind.SAMPLE_LIST)
@dataclass(slots=True)
class SampleList(Message):
    """Ask for the registered samples."""


@_message(Kind.SAMPLE_INFOS)
@dataclass(slots=True)
class SampleInfos(Message):
    """The registered samples."""

    samples: list[SampleInfo]


# scripts -----------------------------------------------------------------------------
@_message(Kind.SCRIPT_LOAD)
@dataclass(slots=True)
class ScriptLoad(Message):
    """Load (or with ``reload`` re-load) an instrument script from a file path."""

    path: str
    reload: bool = False


@_message(Kind.SCRIPT_READY)
@dataclass(slots=True)
class ScriptReady(Message):
    """The controller ran a script's module code, parameters and on_load; the processor may run on_init."""

    path: str


@_message(Kind.SCRIPT_ERROR)
@dataclass(slots=True)
class ScriptError(Message):
    """A script raised, used a function in the wrong context, or overran its budget."""

    context: str
    kind: str  # error | wrong-context | overrun | stopped
    message: str
    location: str = ""


@_message(Kind.RUN_SYNC)
@dataclass(slots=True)
class RunSync(Message):
    """Run the script function ``fn`` in the processor at the start of the next block."""

    fn: str
    args: list[Any]
    id: str = ""


@_message(Kind.RUN_ASYNC)
@dataclass(slots=True)
class RunAsync(Message):
    """Run the script function ``fn`` in the controller; answer with :class:`RunAsyncResult`."""

    token: int
    fn: str
    args: list[Any]


@_message(Kind.RUN_ASYNC_RESULT)
@dataclass(slots=True)
class RunAsyncResult(Message):
    """What a ``run_async`` function returned (or raised)."""

    token: int
    ok: bool
    value: Any = None
    error: str = ""


@_message(Kind.PARAM_SET)
@dataclass(slots=True)
class ParamSet(Message):
    """Set a script parameter (enters the controller's queue as a control callback)."""

    name: str
    value: Any


@_nested
@dataclass(slots=True)
class ParamInfo:
    """A script parameter: definition and current value."""

    name: str
    long_name: str
    value: Any
    default: Any
    min: Any = None
    max: Any = None
    kind: str = "float"
    processor: bool = False


@_message(Kind.PARAM_VALUES)
@dataclass(slots=True)
class ParamValues(Message):
    """Parameter values after a change; ``call`` names parameters whose processor callback should run."""

    params: list[ParamInfo]
    call: list[str] = field(default_factory=list)


@_message(Kind.PARAM_LIST)
@dataclass(slots=True)
class ParamList(Message):
    """Ask for the script's parameters."""


@_message(Kind.PARAM_INFOS)
@dataclass(slots=True)
class ParamInfos(Message):
    """The script's parameters."""

    params: list[ParamInfo]
    script: str = ""


# --------------------------------------------------------------------------- validation
# Each message class gets a decoder generated from its type hints: one Python
# function that checks every field inline and builds the object positionally
# (one call per message instead of one per field).

def _bad(where: str, name: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{where}.{name}: expected {expected}, got {type(value).__name__}")


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _bad_int(where: str, name: str, value: Any) -> ProtocolError:
    if type(value) is int:
        return ProtocolError(f"{where}.{name}: {value} is out of range (a signed 64-bit int)")
    return _bad(where, name, "int", value)


def _bad_key(where: str, name: str, key: Any) -> ProtocolError:
    return ProtocolError(f"{where}.{name}: map keys must be strings, got {type(key).__name__}")


def _bad_shape(cls: type, where: str, n: int) -> ProtocolError:
    return ProtocolError(
        f"{where}: {cls.__name__} takes {cls._REQUIRED}..{len(cls._FIELDS)} fields, got {n}"  # type: ignore[attr-defined]
    )


def _check_code(i: int, name: str, hint: Any, env: dict[str, Any]) -> list[str]:
    """Source lines checking (and for nested types converting) the local ``a{i}``."""
    x = f"a{i}"
    origin = typing.get_origin(hint)
    if hint is Any:
        return []
    if hint is int:  # a signed 64-bit int: what SQLite, numpy and every peer can hold
        return [f"if type({x}) is not int or not {_I64_MIN} <= {x} <= {_I64_MAX}:",
                f"    raise _bad_int(where, {name!r}, {x})"]
    if hint in (bool, str, bytes):
        return [f"if type({x}) is not {hint.__name__}: raise _bad(where, {name!r}, {hint.__name__!r}, {x})"]
    if hint is float:
        return [f"if type({x}) is not float:",
                f"    if type({x}) is int: {x} = float({x})",
                f"    else: raise _bad(where, {name!r}, 'float', {x})"]
    if hint is ArrayHandle:
        return [f"if type({x}) is not ArrayHandle: raise _bad(where, {name!r}, 'an array handle', {x})"]
    if origin is tuple:
        return [f"if type({x}) is not list or not all(type(e) is int and 0 <= e <= {_I64_MAX} for e in {x}):",
                f"    raise _bad(where, {name!r}, 'a list of non-negative 64-bit ints', {x})",
                f"{x} = tuple({x})"]
    if origin is list:
        (inner,) = typing.get_args(hint)
        lines = [f"if type({x}) is not list: raise _bad(where, {name!r}, 'list', {x})"]
        if inner is int:
            lines += [f"for e in {x}:",
                      f"    if type(e) is not int or not {_I64_MIN} <= e <= {_I64_MAX}: raise _bad_int(where, {name!r}, e)"]
        elif inner is str:
            lines += [f"for e in {x}:",
                      f"    if type(e) is not str: raise _bad(where, {name!r}, 'a list of strs', e)"]
        elif isinstance(inner, type) and inner in _NESTED:
            env[f"_dec_{inner.__name__}"] = lambda v, w, _c=inner: _decoder(_c)(v, w)
            lines += [f"{x} = [_dec_{inner.__name__}(e, where + '.{name}') for e in {x}]"]
        elif inner is not Any:
            raise TypeError(f"unsupported list item type {inner!r}")
        return lines
    if origin is dict:
        return [f"if type({x}) is not dict: raise _bad(where, {name!r}, 'map', {x})",
                f"for k in {x}:",
                f"    if type(k) is not str: raise _bad_key(where, {name!r}, k)"]
    if isinstance(hint, type) and hint in _NESTED:
        env[f"_dec_{hint.__name__}"] = lambda v, w, _c=hint: _decoder(_c)(v, w)
        return [f"{x} = _dec_{hint.__name__}({x}, where + '.{name}')"]
    raise TypeError(f"unsupported field type {hint!r}")


_DECODERS: dict[type, Callable[[Any, str], Any]] = {}


def _prepare(cls: type) -> None:
    """What encoding needs, at import: field names and a C-level getter."""
    fields = dataclasses.fields(cls)
    cls._FIELDS = tuple(f.name for f in fields)  # type: ignore[attr-defined]
    cls._GET = operator.attrgetter(*cls._FIELDS) if len(fields) > 1 else (  # type: ignore[attr-defined]
        (lambda o, _n=fields[0].name: (getattr(o, _n),)) if fields else (lambda o: ()))
    required = sum(1 for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    cls._REQUIRED = required  # type: ignore[attr-defined]


def _decoder(cls: type) -> Callable[[Any, str], Any]:
    """The generated decoder of ``cls`` (built on first use: a process compiles only what it receives)."""
    dec = _DECODERS.get(cls)
    if dec is None:
        dec = _DECODERS[cls] = _generate(cls)
    return dec


def _generate(cls: type) -> Callable[[Any, str], Any]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = cls._REQUIRED  # type: ignore[attr-defined]
    env: dict[str, Any] = {"_bad": _bad, "_bad_int": _bad_int, "_bad_key": _bad_key, "_bad_shape": _bad_shape, "ProtocolError": ProtocolError,
                           "ArrayHandle": ArrayHandle, "_cls": cls}
    n = len(fields)
    lines = [f"def decode_{cls.__name__}(v, where):",
             f"    if type(v) is not list: raise ProtocolError(where + ': {cls.__name__} must be a list of fields')",
             "    n = len(v)",
             f"    if n == {n}:",
             f"        {', '.join(f'a{i}' for i in range(n))}{',' if n == 1 else ''} = v" if n else "        pass",
             f"    elif {required} <= n < {n}:"]
    for i, f in enumerate(fields):
        if i < required:
            lines.append(f"        a{i} = v[{i}]")
        else:
            env[f"_d{i}"] = f.default if f.default is not dataclasses.MISSING else None
            env[f"_f{i}"] = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            default = f"_d{i}" if f.default is not dataclasses.MISSING else f"_f{i}()"
            lines.append(f"        a{i} = v[{i}] if n > {i} else {default}")
    if not fields:
        lines.append("        pass")
    lines.append(f"    else: raise _bad_shape(_cls, where, n)")
    for i, f in enumerate(fields):
        lines += ["    " + line for line in _check_code(i, f.name, hints[f.name], env)]
    lines.append(f"    return _cls({', '.join(f'a{i}' for i in range(n))})")
    exec("\n".join(lines), env)  # noqa: S102 - our own generated source, from our own type hints
    return env[f"decode_{cls.__name__}"]  # type: ignore[no-any-return]




def _from_fields(cls: type, values: Any, where: str) -> Any:
    return _decoder(cls)(values, where)


for _cls in list(_NESTED) + list(_REGISTRY.values()):
    _prepare(_cls)


# --------------------------------------------------------------------------- codec
def _default(obj: Any) -> Any:
    cls = type(obj)
    if cls in _NESTED:
        return cls._GET(obj)
    if cls is ArrayHandle:
        return msgpack.ExtType(
            EXT_ARRAY_HANDLE, msgpack.packb([obj.name, obj.dtype, list(obj.shape), obj.offset])
        )
    if cls is tuple:
        return list(obj)
    if cls.__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in _SAFE_DTYPE_KINDS:
                raise TypeError(f"numpy arrays of dtype {obj.dtype} cannot be sent (numeric only)")
            data = np.ascontiguousarray(obj)
            return msgpack.ExtType(
                EXT_INLINE_ARRAY, msgpack.packb([data.dtype.str, list(data.shape), data.tobytes()])
            )
        if isinstance(obj, np.generic):
            return obj.item()
    raise TypeError(
        f"cannot send a value of type {cls.__module__}.{cls.__qualname__}: "
        "only None, bool, int, float, str, bytes, lists, maps with string keys "
        "and numeric numpy arrays cross the wire"
    )


def _ext_hook(code: int, data: bytes, handles: str | None = "ensemble.") -> Any:
    """Decode our ext types.  ``handles``: the segment-name prefix a handle must carry (None: refuse handles)."""
    try:
        fields = msgpack.unpackb(data, max_array_len=64, max_str_len=256, max_bin_len=len(data))
    except Exception as exc:
        raise ProtocolError(f"malformed ext type {code}: {exc}") from exc
    if code == EXT_INLINE_ARRAY:
        return _inline_array(fields)
    if code == EXT_ARRAY_HANDLE:
        if (
            type(fields) is not list
            or len(fields) != 4
            or type(fields[0]) is not str
            or type(fields[1]) is not str
            or type(fields[2]) is not list
            or not all(type(d) is int and d >= 0 for d in fields[2])
            or type(fields[3]) is not int
            or fields[3] < 0
        ):
            raise ProtocolError("malformed array handle")
        if handles is None:
            raise ProtocolError("array handles name shared memory on the daemon's host and are refused from a "
                                "remote peer; send the array itself (it travels inline)")
        if not fields[0].startswith(handles) or "/" in fields[0]:
            raise ProtocolError(f"array handle {fields[0][:80]!r} does not name a segment of this daemon")
        _check_dtype(fields[1])
        return ArrayHandle(fields[0], fields[1], tuple(fields[2]), fields[3])
    raise ProtocolError(f"unknown ext type {code}")


def _check_dtype(text: str) -> Any:
    import numpy as np

    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"unknown array dtype {text!r}") from exc
    if dtype.kind not in _SAFE_DTYPE_KINDS or dtype.hasobject:
        raise ProtocolError(f"array dtype {text!r} is not allowed (numeric only)")
    return dtype


def _inline_array(fields: Any) -> Any:
    import numpy as np

    if (
        type(fields) is not list
        or len(fields) != 3
        or type(fields[0]) is not str
        or type(fields[1]) is not list
        or type(fields[2]) is not bytes
        or not all(type(d) is int and d >= 0 for d in fields[1])
    ):
        raise ProtocolError("malformed inline array")
    dtype = _check_dtype(fields[0])
    count = 1
    for dim in fields[1]:
        count *= dim
    if count * dtype.itemsize != len(fields[2]):
        raise ProtocolError("inline array size does not match its shape and dtype")
    return np.frombuffer(fields[2], dtype=dtype).reshape(fields[1])


_pack = msgpack.Packer(default=_default).pack


def encode(msg: Message, corr: int = 0) -> bytes:
    """Pack one message into a frame.  Raises :class:`ProtocolError` for unsendable values."""
    cls = type(msg)
    try:
        frame: bytes = _pack([VERSION, cls.KIND, corr, cls._GET(msg)])  # type: ignore[attr-defined]
        return frame
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {cls.__name__}: {exc}") from exc


@functools.lru_cache(maxsize=16)
def _unpack_kwargs(limits: Limits) -> dict[str, int]:
    return limits.unpack_kwargs()


@functools.lru_cache(maxsize=16)
def _hook_for(handles: str | None) -> Callable[[int, bytes], Any]:
    if handles == "ensemble.":
        return _ext_hook
    return functools.partial(_ext_hook, handles=handles)


def peek_corr(frame: bytes) -> int:
    """Best-effort correlation id of a frame that failed to decode (0 if unknown)."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=64, max_array_len=4)
        unpacker.feed(frame[:64])
        unpacker.read_array_header()
        unpacker.skip()
        unpacker.skip()
        corr = unpacker.unpack()
        return corr if type(corr) is int and 0 <= corr < 2**63 else 0
    except Exception:
        return 0


def decode(frame: bytes, limits: Limits = Limits(), handles: str | None = "ensemble.") -> tuple[int, Message]:
    """Unpack and validate one frame; returns ``(corr, message)``.

    ``handles`` is the name prefix every :class:`ArrayHandle` in the frame must
    carry (a daemon passes its own segments' prefix); ``None`` refuses handles
    altogether (frames from another host).  Every int field must fit a signed
    64-bit int.  Raises :class:`ProtocolError` saying what was wrong: oversize
    frame, undecodable bytes, wrong envelope, unknown version or kind, bad field.
    """
    if len(frame) > limits.max_frame:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of {limits.max_frame}")
    try:
        env = msgpack.unpackb(frame, ext_hook=_hook_for(handles), **_unpack_kwargs(limits))
    except ProtocolError:
        raise
    except msgpack.exceptions.StackError as exc:
        raise ProtocolError("frame nests deeper than 1024 levels") from exc
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"frame is not valid msgpack: {exc}") from exc
    if type(env) is not list or len(env) != 4:
        raise ProtocolError("frame is not an ensemble envelope [version, kind, corr, fields]")
    version, kind, corr, fields = env
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (this side speaks {VERSION})")
    if type(corr) is not int or corr < 0:
        raise ProtocolError("correlation id must be a non-negative int")
    cls = _REGISTRY.get(kind) if type(kind) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return corr, _from_fields(cls, fields, cls.__name__)


__all__ = [
    "VERSION",
    "ArrayHandle",
    "Kind",
    "Limits",
    "Message",
    "decode",
    "encode",
    "peek_corr",
]
__all__ += [c.__name__ for c in _REGISTRY.values()] + [c.__name__ for c in _NESTED]

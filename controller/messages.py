"""The script schema: loading a script, its parameters, and the calls between the controller and the processor.

Part of the wire protocol (see :mod:`actors.messages` for the envelope, the
codec and the limits); its kinds are 70..89 (82..85: the script's UI elements
and the instrument panel; 86: unloading a script; 87: a script stopped in the controller; 88, 89: what became of a
``param set``).  Importing this module adds them to the decoder of
the process.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from msgspec import field

from actors import ProtocolError
from actors.messages import Int64, Message, Record, decode, encode, register


class ScriptKind(IntEnum):
    """Script message kinds; the numbers are part of the wire protocol."""

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
    PARAM_BIND = 80
    PARAM_CONTROL = 81
    UI_STATE = 82
    UI_LIST = 83
    UI_EVENT = 84
    PANEL_START = 85
    SCRIPT_UNLOAD = 86
    SCRIPT_STOP = 87
    PARAM_CHECK = 88
    PARAM_STATE = 89


class ScriptLoad(Message, tag=ScriptKind.SCRIPT_LOAD.value, frozen=True):
    """Load (or with ``reload`` re-load) an instrument script from a file path.

    ``load``: the daemon's number of the load it belongs to (0 from a
    client: the daemon numbers it), echoed in the side's :class:`ScriptReady`
    or ``load-failed`` :class:`ScriptError`, so that the answer to an earlier
    load of the same file never counts for a later one.
    """

    path: str
    reload: bool = False
    load: Int64 = 0


class ScriptReady(Message, tag=ScriptKind.SCRIPT_READY.value, frozen=True):
    """A side ran a script: the controller its module code, parameters and on_load (the processor loads it next),
    then the processor its module code (the load is done; on_init runs in its next block).  ``load``: as in the
    :class:`ScriptLoad` it answers.  ``digest``: of the source the side ran (``controller._host.load_module``);
    each side reads the file as it is then, and the daemon reloads the controller when the two differ."""

    path: str
    load: Int64 = 0
    digest: str = ""


class ScriptUnload(Message, tag=ScriptKind.SCRIPT_UNLOAD.value, frozen=True):
    """Daemon to controller or processor: run no script (the load failed on the other side); ``reason`` is logged."""

    reason: str = ""


class ScriptStop(Message, tag=ScriptKind.SCRIPT_STOP.value, frozen=True):
    """Controller -> daemon -> processor: the script stopped in the controller (a callback ran past its budget).

    The processor stops the script's callbacks too (notes play the default
    sampler) until the next load; the daemon shows ``reason`` in ``status``
    (``script_stopped``) and sends this again to a processor restarted
    meanwhile.  ``load``: the number of the load whose script stopped (as
    in :class:`ScriptLoad`).
    """

    reason: str
    load: Int64 = 0


class ScriptError(Message, tag=ScriptKind.SCRIPT_ERROR.value, frozen=True):
    """A script raised, used a function in the wrong context, or overran its budget."""

    context: str
    kind: str  # error | wrong-context | overrun | stopped | load-failed (module code raised: the script is not loaded)
    #            | wedged (blocked in C past budget and grace: the controller leaves to be restarted)
    message: str
    location: str = ""
    load: Int64 = 0  # kind load-failed: the number of the ScriptLoad that failed (as in ScriptReady)
    seq: Int64 = 0  # a client's param set (ParamSet.seq) this error says was not applied: the daemon tells its sender

    def where(self) -> str:
        """`` (file:line in function)``, or '' when the message says it already (a wrong-context error names
        where it was called) or nothing is known."""
        return f" ({self.location})" if self.location and self.location not in self.message else ""


class RunSync(Message, tag=ScriptKind.RUN_SYNC.value, frozen=True):
    """Run the script function ``fn`` in the processor at the start of the next block."""

    fn: str
    args: list[Any]
    id: str = ""


class RunAsync(Message, tag=ScriptKind.RUN_ASYNC.value, frozen=True):
    """Run the script function ``fn`` in the controller; answer with :class:`RunAsyncResult`."""

    token: Int64
    fn: str
    args: list[Any]


class RunAsyncResult(Message, tag=ScriptKind.RUN_ASYNC_RESULT.value, frozen=True):
    """What a ``run_async`` function returned (or raised)."""

    token: Int64
    ok: bool
    value: Any = None
    error: str = ""


class ParamSet(Message, tag=ScriptKind.PARAM_SET.value, frozen=True):
    """Set a script parameter (enters the controller's queue as a control callback)."""

    name: str
    value: Any
    seq: Int64 = 0  # the daemon's number for a client's change (0: a script's own), echoed in ParamValues.applied


class ParamCheck(Message, tag=ScriptKind.PARAM_CHECK.value, frozen=True):
    """Client -> daemon: what became of the ``param set`` the daemon numbered ``seq``; answer: :class:`ParamState`."""

    seq: Int64


class ParamState(Message, tag=ScriptKind.PARAM_STATE.value, frozen=True):
    """What became of a client's ``param set``: the reply to :class:`ParamSet` (``queued``) and to :class:`ParamCheck`.

    ``state``: ``queued`` (acknowledged, waiting in the controller's queue),
    ``applied`` (the controller took the value, and saved it; its
    ``on_change`` runs after), ``dropped`` (acknowledged but never applied:
    ``error`` says why, as ``status`` does), or ``unknown`` (a number the
    daemon did not give, or no longer remembers: it keeps the last 1,000 drops).
    """

    name: str
    seq: Int64
    state: str
    error: str = ""


class ParamInfo(Record, frozen=True):
    """A script parameter: definition and current value."""

    name: str
    long_name: str
    value: Any
    default: Any
    min: Any = None
    max: Any = None
    kind: str = "float"
    processor: bool = False
    cc: Int64 = -1  # the MIDI controller bound to it (``ensemble param bind``), -1 for none
    choices: list[Any] = field(default_factory=list)  # kind "choice": the values a menu offers


class ParamValues(Message, tag=ScriptKind.PARAM_VALUES.value, frozen=True):
    """Parameter values after a change; ``call`` names parameters whose processor callback should run.

    ``applied``: the ``seq`` of the client's change this message follows (0: none).  ``load``: the number of the
    load whose script declared these parameters (the controller's, as in :class:`ScriptLoad`; 0 from the daemon),
    so that the daemon can tell the parameters of a script it has had unloaded from those of the next one.
    """

    params: list[ParamInfo]
    call: list[str] = field(default_factory=list)
    applied: Int64 = 0
    load: Int64 = 0


class ParamList(Message, tag=ScriptKind.PARAM_LIST.value, frozen=True):
    """Ask for the script's parameters."""


class ParamInfos(Message, tag=ScriptKind.PARAM_INFOS.value, frozen=True):
    """The script's parameters."""

    params: list[ParamInfo]
    script: str = ""


class ParamBind(Message, tag=ScriptKind.PARAM_BIND.value, frozen=True):
    """Bind a parameter to MIDI controller ``controller`` (0..127), or unbind it with -1; persisted with it."""

    name: str
    controller: Int64


class ParamControl(Message, tag=ScriptKind.PARAM_CONTROL.value, frozen=True):
    """Processor to controller: bound controller ``controller`` moved to ``value`` (0..1)."""

    controller: Int64
    value: float


class UiElement(Record, frozen=True):
    """One widget a script added in the controller (``add_button``, ``add_label``, ``add_progress``)."""

    id: str
    kind: str  # button | label | progress
    text: str = ""
    visible: bool = True
    value: float = 0.0  # a progress bar's fraction (0..1)


class UiState(Message, tag=ScriptKind.UI_STATE.value, frozen=True):
    """The script's UI elements, in the order they were added (controller → supervisor, and the reply to UiList).

    ``version`` grows with every change, so a reader can skip an unchanged state.  ``load``: the number of the
    load whose script added the elements (as in :class:`ParamValues`), so that the daemon can ignore the elements
    of a script it has had unloaded; its reply to UiList says which load's elements it holds (0: none yet).
    """

    elements: list[UiElement]
    version: Int64 = 0
    script: str = ""
    load: Int64 = 0


class UiList(Message, tag=ScriptKind.UI_LIST.value, frozen=True):
    """Client → daemon: the script's UI elements (reply: UiState)."""


class UiEvent(Message, tag=ScriptKind.UI_EVENT.value, frozen=True):
    """A UI element was used (a button clicked): client → daemon → controller, a control callback there."""

    id: str
    value: Any = None


class PanelStart(Message, tag=ScriptKind.PANEL_START.value, frozen=True):
    """Local client → daemon: start the instrument panel's actor (if it is not running) on ``host:port``.

    ``port`` -1: the port it has (or the default, 8765); 0: any free port.
    """

    port: Int64 = -1
    host: str = "127.0.0.1"


register(ScriptKind, ScriptLoad, ScriptReady, ScriptError, RunSync, RunAsync, RunAsyncResult, ParamSet, ParamValues,
         ParamList, ParamInfos, ParamBind, ParamControl, UiState, UiList, UiEvent, PanelStart, ScriptUnload,
         ScriptStop, ParamCheck, ParamState)

__all__ = ["PanelStart", "ParamBind", "ParamCheck", "ParamControl", "ParamInfo", "ParamInfos", "ParamList", "ParamSet",
           "ParamState", "ParamValues",
           "RunAsync", "RunAsyncResult", "RunSync", "ScriptError", "ScriptKind", "ScriptLoad", "ScriptReady",
           "ScriptStop", "ScriptUnload", "UiElement", "UiEvent", "UiList", "UiState"]


def as_sent(msg: Message, bridge: str, values: list[Any]) -> Message:
    """``msg`` as the other process receives it (a tuple or a set arrives as a list), or raise TypeError.

    ``bridge`` names the call (``run_sync``, ``run_async``) and ``values``
    the script's values ``msg`` carries: the error names the first that
    cannot be sent.  Costs an encode and a decode of ``msg`` (microseconds
    for a few small values).  An offline render passes every message through
    here too, so that a script sees there what it sees live.
    """
    try:
        return decode(encode(msg))[1]
    except ProtocolError as exc:
        bad = next((v for v in values if not _sendable(v)), None)
        what = f"{_clip(repr(bad))} ({type(bad).__name__})" if bad is not None else "a value"
        raise TypeError(f"{bridge}: {what} cannot be sent to the other process ({exc}); the arguments and the "
                        "return value of run_sync/run_async functions must be msgpack-able: None, bool, int, "
                        "float, str, bytes, and lists, tuples and dicts of them (a tuple or a set arrives as a list)"
                        ) from exc


def _sendable(value: Any) -> bool:
    try:
        encode(RunSync("", [value]))
    except ProtocolError:
        return False
    return True


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."

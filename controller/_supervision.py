"""The script side of the daemon: the controller child, the loaded script, its parameters and its routing.

Registered with the runtime through the ``ensemble.extensions`` entry point
(see :mod:`actors.extensions`); runs in the supervisor's thread, never blocks.
Controller and processor each host the script; this routes ``run_sync`` /
``run_async`` and parameter traffic between them and records script errors.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any

from actors import DaemonError, JobRefused, OutOfRange, PermissionDenied
from actors.extensions import ChildSpec, Extension
from actors.messages import Ack, JobSpec, Message
from controller.messages import (
    ParamBind, ParamControl, ParamInfo, ParamInfos, ParamList, ParamSet, ParamValues, RunAsync, RunAsyncResult, RunSync,
    ScriptError, ScriptLoad, ScriptReady, UiEvent, UiList, UiState,
)
from controller._host import ParamDef

log = logging.getLogger("ensemble.supervisor")
INTERNAL_JOBS = frozenset({"controller._tasks:run_process_job", "controller._tasks:kill_voices_job"})


class ScriptExtension(Extension):
    """The controller, the script it runs and the parameters it defines."""

    name = "controller"
    children = (ChildSpec("controller", "controller", "controller.actor"),)
    admin_requests = frozenset({ScriptLoad, ParamSet, ParamList, ParamBind, UiList, UiEvent})

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        script = host.cfg.audio.script
        self.script_path = str(Path(script).resolve()) if script else ""
        self.script_ready = False  # the controller ran module code, parameters and on_load
        self.params: dict[str, ParamInfo] = {}
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        # the latest load: [its number, "loading" | "ready" | "failed", the error]; `ensemble load` waits on it
        self.load_state: list[Any] = [0, "", ""]
        self.ui = UiState([])  # the script's UI elements as the controller last sent them

    def requests(self) -> dict[type, Any]:
        return {ScriptLoad: self._load, ParamSet: self._param_set, ParamList: self._param_list, ParamBind: self._param_bind,
                UiList: self._ui_list, UiEvent: self._ui_event}

    def child_messages(self) -> dict[type, Any]:
        return {**{t: self._route for t in (ScriptReady, RunSync, RunAsync, RunAsyncResult, ParamValues, ParamSet,
                                            ParamControl, ScriptError)}, UiState: self._ui_state}

    def child_ready(self, slot: Any) -> None:
        if slot.role == "processor" and self.script_ready:
            self.host.send_child(slot, ScriptLoad(self.script_path))
            self.host.send_child(slot, ParamValues(list(self.params.values())))
        elif slot.role == "controller" and self.script_path:
            self.script_ready = False
            self._loading()
            self.ui = UiState([], self.ui.version + 1)  # a new controller: its elements come with the script
            self.host.send_child(slot, ScriptLoad(self.script_path))

    def _loading(self) -> None:
        self.load_state = [self.load_state[0] + 1, "loading", ""]

    def check_task(self, spec: JobSpec) -> bool:
        """Script tasks name the loaded script's functions; the two internal helpers are ours."""
        if spec.fn in INTERNAL_JOBS:
            return True
        if spec.fn.startswith("script:"):
            if not self.script_path or spec.fn.rpartition(":")[0] != f"script:{self.script_path}":
                raise JobRefused(f"job function {spec.fn!r}: only functions of the loaded script "
                                 f"({self.script_path or 'none'}) may run as script tasks")
            return True
        return False

    def status(self, counters: dict[str, Any]) -> None:
        if self.script_path:
            counters["script"] = self.script_path
        if self.errors:
            counters["script_errors_recent"] = list(self.errors)
        if self.load_state[0]:
            counters["script_load"] = list(self.load_state)

    # -- requests
    def _load(self, corr: int, msg: ScriptLoad) -> Message:
        path = Path(msg.path or self.script_path)
        if not msg.path and not self.script_path:
            raise DaemonError("no script is loaded; give a path: `ensemble load path/to/instrument.py`")
        if msg.path and self.host.peer.role != "local":  # a remote admin loads only from where the operator said
            dirs = [Path(d).resolve() for d in self.host.cfg.audio.script_dirs]
            if not any(path.resolve().is_relative_to(d) for d in dirs):
                raise PermissionDenied(f"script {msg.path[:200]!r} is outside the script directories a remote "
                                       f"admin may load from ({', '.join(map(str, dirs)) or 'none configured'}; "
                                       "[audio] script_dirs)")
        try:
            found = path.is_file()
        except OSError as exc:  # a name too long, a directory we may not search: said, not an internal error
            raise DaemonError(f"script {str(path)[:200]!r} cannot be read: {exc.strerror}") from None
        if not found:
            raise DaemonError(f"script {str(path)[:200]!r} does not exist")
        controller = self.host.child("controller")
        if controller is None:
            raise DaemonError("the controller is not running; see `ensemble status`")
        self.script_path = str(path.resolve())
        self.script_ready = False
        self._loading()
        self.host.send_child(controller, ScriptLoad(self.script_path, msg.reload))
        log.info("event=script-load path=%s reload=%s load=%d", self.script_path, msg.reload, self.load_state[0])
        return Ack(f"loading {self.script_path} (load {self.load_state[0]})")

    def _param_set(self, corr: int, msg: ParamSet) -> Message:
        """``param set``: checked here against the declared kind, range and choices, then applied by the controller.

        The controller's own check (``ParamDef.coerce``) runs here first, so a
        value it would refuse is refused to the caller rather than acknowledged.
        """
        if msg.name not in self.params:
            raise DaemonError(f"no parameter named {msg.name!r}" + (
                f"; known: {', '.join(self.params)}" if self.params else "; no script with parameters is loaded"))
        p = self.params[msg.name]
        try:
            value = ParamDef(p.name, p.long_name, p.default, p.min, p.max, p.kind, tuple(p.choices)).coerce(msg.value)
        except ValueError as exc:
            raise OutOfRange(str(exc)) from None
        msg = ParamSet(msg.name, value)
        controller = self.host.child("controller")
        if controller is None or not self.host.send_child(controller, msg):
            raise DaemonError("the controller is not running; see `ensemble status`")
        return Ack(f"{msg.name} = {msg.value!r} queued")

    def _param_bind(self, corr: int, msg: ParamBind) -> Message:
        """``param bind NAME ccN``: checked here (name, controller, a kind a controller can move), applied by the controller."""
        p = self.params.get(msg.name)
        if p is None:
            raise DaemonError(f"no parameter named {msg.name!r}" + (
                f"; known: {', '.join(self.params)}" if self.params else "; no script with parameters is loaded"))
        if not -1 <= msg.controller <= 127:
            raise DaemonError(f"MIDI controller {msg.controller} is out of range: 0..127 (or -1 to unbind)")
        if msg.controller >= 0:
            try:
                ParamDef(p.name, p.long_name, p.default, p.min, p.max, p.kind,
                         (p.value,) if p.kind == "choice" else ()).from_controller(0.0)
            except ValueError as exc:
                raise DaemonError(str(exc)) from None
        controller = self.host.child("controller")
        if controller is None or not self.host.send_child(controller, msg):
            raise DaemonError("the controller is not running; see `ensemble status`")
        what = f"bound to CC {msg.controller}" if msg.controller >= 0 else "unbound"
        return Ack(f"{msg.name} {what}")

    def _param_list(self, corr: int, msg: ParamList) -> Message:
        return ParamInfos(list(self.params.values()), self.script_path)

    def _ui_list(self, corr: int, msg: UiList) -> Message:
        return self.ui

    def _ui_event(self, corr: int, msg: UiEvent) -> Message:
        if not any(e.id == msg.id for e in self.ui.elements):
            known = ", ".join(e.id for e in self.ui.elements) or "none"
            raise DaemonError(f"the script has no UI element {msg.id[:64]!r} (known: {known[:300]})")
        controller = self.host.child("controller")
        if controller is None or not self.host.send_child(controller, msg):
            raise DaemonError("the controller is not running; see `ensemble status`")
        return Ack(f"{msg.id} queued")

    def _ui_state(self, slot: Any, msg: UiState) -> None:
        self.ui = UiState(msg.elements[:256], self.ui.version + 1, msg.script)

    # -- routing between controller and processor
    def _route(self, slot: Any, msg: Message) -> None:
        proc, ctl = self.host.child("processor"), self.host.child("controller")
        if isinstance(msg, ScriptReady):
            self.script_ready = True
            if self.load_state[1] == "loading":
                self.load_state[1] = "ready"
            if proc is not None:
                self.host.send_child(proc, ScriptLoad(msg.path))
        elif isinstance(msg, (RunSync, RunAsyncResult)):
            if proc is not None:
                self.host.send_child(proc, msg)
        elif isinstance(msg, RunAsync):
            if ctl is not None:
                self.host.send_child(ctl, msg)
            elif proc is not None:
                self.host.send_child(proc, RunAsyncResult(msg.token, False, None, "the controller is not running"))
        elif isinstance(msg, ParamValues):
            self.params = {p.name: p for p in msg.params}
            if proc is not None:
                self.host.send_child(proc, msg)
        elif isinstance(msg, (ParamSet, ParamControl)):
            if ctl is not None:
                self.host.send_child(ctl, msg)
        elif isinstance(msg, ScriptError):
            text = f"{msg.context} {msg.kind}: {msg.message}" + (f" ({msg.location})" if msg.location else "")
            if msg.kind == "load-failed" and self.load_state[1] == "loading":
                self.load_state[1:] = ["failed", f"{msg.message}" + (f" ({msg.location})" if msg.location else "")]
            self.errors.append(text)
            self.host.counters["script_errors"] += 1
            slot.detail = text[:600]
            log.error("event=script-%s context=%s detail=%s location=%s", msg.kind, msg.context, msg.message,
                      msg.location)

"""The script side of the daemon: the controller child, the loaded script, its parameters and its routing.

Registered with the runtime through the ``ensemble.extensions`` entry point
(see :mod:`actors.extensions`); runs in the supervisor's thread, never blocks.
Controller and processor each host the script; this routes ``run_sync`` /
``run_async`` and parameter traffic between them and records script errors.
A load is numbered, and each side's answer carries its number; a load whose
module code raises on either side fails as a whole, and the other side is
told to run no script either (:meth:`ScriptExtension._load_failed`).  So does
a processor that loads the controller's script again outside a load (it was
restarted, and reads the file as it is now) and fails: the controller drops
the script too.  Parameters and UI elements the controller sent before it
dropped a script carry that load's number and are not taken again
(``ParamValues.load``, ``UiState.load``; :meth:`ScriptExtension._dropped`).

Both sides run one version of the script's file.  Each reads the file as it
is when it loads it (the processor after the controller, and again when it
is restarted outside a load) and says in ``ScriptReady`` the digest of the
source it ran (:func:`controller._host.load_module`); when the processor's
differs from the controller's (the file was edited since the controller ran
it, in a way that still loads), the daemon reloads the controller to the
file as it is now, a numbered load of its own that ``status`` explains
(:meth:`ScriptExtension._processor_ran`).  Why not keep the source the
controller ran and send the processor that instead: the script has a third
reader, the workers that run its background-task functions, which import
the file as it is when the job starts (``controller._tasks.load_script``);
pinning the old source on two sides would leave the third on the new one
(and the processor's errors would name lines of a file that no longer
holds them).  A worker refuses a file edited since the controller ran it
(each task's job names the controller's digest): the task fails, saying to
load the edit.
And one rule covers both outcomes: a restarted processor reads the file as
it is now; if the edit fails there, no side runs the script
(:meth:`ScriptExtension._load_failed`); if it loads, both sides run it.
The cost is a controller reload the user did not ask for (its queued
callbacks and background tasks go, as in any reload; live parameter values
stay, and acknowledged changes not yet applied are sent again).  At most
:data:`FOLLOW_RELOADS` in a row: a file rewritten on every load (by its own
module code, an editor or a generator) would have the controller reloaded
forever, so the next mismatch drops the script on both sides as a load that
fails, ``status`` saying that the file kept changing and how to get out
(:meth:`ScriptExtension._kept_changing`).

A controller that went down (a crash, a heartbeat timeout, or its own exit
with ``WEDGED_EXIT`` when a script step stayed blocked in C past its budget
and grace: see :mod:`controller._watchdog`) is restarted by the supervisor
like any child; when it says hello again (:meth:`ScriptExtension.child_ready`,
which sees how the last one ended in ``slot.last_exit``):

* a load it was running fails, saying why, and the new controller runs the
  script that ran before it (loading the same file again would take it down
  again; see ``_load_lost``); otherwise it reloads the script, with its saved
  parameters;
* every ``param set`` acknowledged but not yet applied (the controller echoes
  each change's ``seq`` in ``ParamValues.applied``) is sent to it again, so an
  acknowledged value is never lost to a restart; while no controller runs,
  ``param set`` is refused.

The reply to ``param set`` numbers the change (``ParamState``, ``queued``), and
its sender may ask what became of it (``ParamCheck``): applied, or dropped
and why (a load came first and the script it loaded has no such parameter or
refuses the value, or the script was dropped), as ``status`` says it;
``ensemble param set`` waits for that and exits 1 with the reason.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

from actors import DaemonError, JobRefused, OutOfRange, PermissionDenied
from actors.config import not_regular_file
from actors.extensions import ChildSpec, Extension
from actors.messages import Ack, JobSpec, Message
from controller.messages import (
    ParamBind, ParamCheck, ParamControl, ParamInfo, ParamInfos, ParamList, ParamSet, ParamState, ParamValues, RunAsync,
    RunAsyncResult, RunSync, ScriptError, ScriptLoad, ScriptReady, ScriptStop, ScriptUnload, UiEvent, UiList, UiState,
)
from controller._host import ParamDef
from controller._watchdog import WEDGED_EXIT, wedged_text

log = logging.getLogger("ensemble.supervisor")
# a script whose callbacks wedge the controller again within this long of the restart that followed the last wedge is
# not run again: each wedge costs the budget, the grace and a restart (~9 s), slower than the restart intensity
# counts, so a timer that blocks in C would otherwise restart the controller forever
REWEDGE_S = 60.0
# how a load that failed on either side ends: the other side is told to run no script either (ScriptUnload)
NO_SCRIPT = "neither the controller nor the processor runs a script until the next load"
# reloads of the controller the daemon starts in a row, each because the processor ran another version of the file
# (_controller_follows), before it gives up and drops the script on both sides: a file rewritten on every load (by its
# own module code, an editor or a generator) would otherwise have the controller reloaded forever.  Two: an edit
# between the two sides of a load, and one more made while the first reload ran (an editor saving twice)
FOLLOW_RELOADS = 2
INTERNAL_JOBS = frozenset({"controller._tasks:run_process_job", "controller._tasks:kill_voices_job"})


class ScriptExtension(Extension):
    """The controller, the script it runs and the parameters it defines."""

    name = "controller"
    children = (ChildSpec("controller", "controller", "controller.actor"),)
    admin_requests = frozenset({ScriptLoad, ParamSet, ParamCheck, ParamList, ParamBind, UiList, UiEvent})

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        script = host.cfg.audio.script
        self.script_path = str(Path(script).resolve()) if script else ""
        self.script_ready = False  # the controller ran module code, parameters and on_load
        self.params: dict[str, ParamInfo] = {}
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        # actor slot name -> (its slot, the script error this set as its detail): cleared by the next load
        self.shown: dict[str, tuple[Any, str]] = {}
        # the latest load: [its number, "loading" | "ready" | "failed", the error (or, for a load the daemon started,
        # why: see _controller_follows)]; `ensemble load` waits on it.  It is "loading" until both sides ran the
        # script: the controller, then the processor (see _loading_in)
        self.load_state: list[Any] = [0, "", ""]
        self.processor_loading = False  # the controller ran the load in progress; the processor's answer is awaited
        self.ui = UiState([])  # the script's UI elements as the controller last sent them
        self.ready_path = ""  # the script the controller runs (its last ScriptReady; "" after a load that failed)
        self.ready_load = 0  # the number of the load whose script the controller runs (as its last ScriptReady)
        self.ready_digest = ""  # the digest of the source the controller ran (its last ScriptReady)
        self.dropped_load = 0  # the latest load whose script the controller was told to drop (see _params_from)
        self.processor_back = ""  # how the processor came back, while its answer to the script it was sent is due
        self.processor_reading = 0  # the load whose module code the processor was sent and has not answered (0: none)
        self.follows = 0  # controller reloads the daemon started in a row since both sides last agreed (FOLLOW_RELOADS)
        self.load_lost = False  # the latest load failed as the controller went down: its restart is no new load
        self.wedge_heard = False  # this controller said it is wedged (ScriptError kind "wedged") before it left
        self.wedged_at = 0.0  # when the running script's callback last wedged the controller (monotonic; 0: never)
        self.processor_wedged_at = 0.0  # the same for the processor (see _processor_rewedged)
        self.param_seq = 0
        self.unapplied: dict[str, ParamSet] = {}  # parameter -> its newest acknowledged change not yet applied
        self.applied_seq = 0  # every change numbered up to this one was applied or dropped (ParamValues.applied)
        self.set_drops: collections.OrderedDict[int, str] = collections.OrderedDict()  # seq -> why not applied
        self.unbound: dict[str, ParamBind] = {}  # parameter -> its acknowledged bind the controller has not shown yet
        self.stopped = ""  # why the running script is stopped (the controller's ScriptStop); "" while it runs
        self.stopped_load = 0  # the load whose script stopped (ScriptStop.load)

    def requests(self) -> dict[type, Any]:
        return {ScriptLoad: self._load, ParamSet: self._param_set, ParamCheck: self._param_check,
                ParamList: self._param_list, ParamBind: self._param_bind, UiList: self._ui_list,
                UiEvent: self._ui_event}

    def child_messages(self) -> dict[type, Any]:
        return {**{t: self._route for t in (ScriptReady, RunSync, RunAsync, RunAsyncResult, ParamValues, ParamSet,
                                            ParamControl, ScriptError)}, UiState: self._ui_state,
                ScriptStop: self._script_stopped}

    def child_ready(self, slot: Any) -> None:
        if slot.role == "processor":
            reading, self.processor_reading = self.processor_reading, 0
            if reading and slot.last_exit is not None:
                self._processor_died_reading(slot, reading)
        if slot.role == "processor" and self.script_ready:
            if slot.last_exit == WEDGED_EXIT and self._processor_rewedged(slot):
                return
            # it reads the file as it is now: should that fail, the script is dropped on both sides (_load_failed)
            code = slot.last_exit
            self.processor_back = f"was restarted ({_ended(code)})" if code is not None else "started"
            log.info("event=script-reload side=processor path=%s load=%d", self.script_path, self.load_state[0])
            self._send_processor_load(slot, self.script_path, self.load_state[0])
            self.host.send_child(slot, ParamValues(list(self.params.values())))
            if self.stopped and self.stopped_load == self.ready_load:  # stopped on this side too, after its init
                self.host.send_child(slot, ScriptStop(self.stopped, self.stopped_load))
        elif slot.role == "controller":
            self._controller_back(slot)
            self.ui = UiState([], self.ui.version + 1)  # a new controller: its elements come with the script
            self.stopped = ""  # and nothing of its script is stopped (it loads it now)
            if self.script_path:
                self.script_ready = False
                if not self.load_lost:
                    self._loading()
                self.host.send_child(slot, ScriptLoad(self.script_path, load=self.load_state[0]))
                self._resend_unapplied(slot)
            else:
                self._drop_unapplied("the controller was restarted, and runs no script")
                self.unbound.clear()
            self.load_lost = self.wedge_heard = False

    def _resend_unapplied(self, controller: Any) -> None:
        """Send ``controller``, after the load just sent it, the acknowledged changes and binds not shown applied.

        The load discards what it had queued (a restarted controller never
        had them); sent again, they are queued after it.
        """
        for change in sorted(self.unapplied.values(), key=lambda m: m.seq):
            self.host.send_child(controller, change)
        if self.unapplied:
            log.info("event=params-resent count=%d", len(self.unapplied))
        for bind in self.unbound.values():  # binds the controller acknowledged but never applied
            self.host.send_child(controller, bind)
        if self.unbound:
            log.info("event=binds-resent count=%d", len(self.unbound))

    def _controller_back(self, slot: Any) -> None:
        """A controller said hello after its previous one ended: a load it ran fails; a wedge it hid is said."""
        code = slot.last_exit
        if code is None or self.load_lost:  # its first start; or the load failed already (its wedge report)
            return
        if self._loading_in("controller"):
            how = _ended(code)
            silent = code == -9 and slot.detail.startswith("silent")  # the supervisor killed it: no heartbeat came
            if silent:
                how += f": {slot.detail}"
            if code == WEDGED_EXIT:
                why = f"{wedged_text('the script')}; the controller was restarted"
            elif code == -9 and not silent:  # killed from outside (a user, the OOM killer): not the script's doing
                why = ("the controller was killed (signal 9, not by the daemon: a user, or the OOM killer) after the "
                       "load was sent and before it reported the script loaded (nothing says the script caused it: "
                       "load it again), and was restarted")
            else:
                why = f"the controller ended ({how}) while it loaded the script, and was restarted"
            self._load_lost(why, stuck=silent or code == WEDGED_EXIT)
        elif code == WEDGED_EXIT:
            if not self.wedge_heard:  # its report was lost with it
                self._script_error(slot, f"Controller wedged: {wedged_text('a callback')}; the controller was restarted")
            self._callback_wedged(slot)

    def _callback_wedged(self, slot: Any) -> None:
        """A callback of the running script wedged the controller: run the script again, unless it did so before.

        Once is run again (a parameter change that blocked need not come back:
        its value is saved and its ``on_change`` not run again).  Twice within
        :data:`REWEDGE_S` (a timer or ``on_load`` work that blocks each time):
        the next controller runs no script, and ``status`` says why.
        """
        now = time.monotonic()
        if not (self.wedged_at and now - self.wedged_at < REWEDGE_S) or not self.script_path:
            self.wedged_at = now
            return
        path, self.wedged_at = self.script_path, 0.0
        self.script_path = self.ready_path = ""
        self.script_ready = False  # a processor that starts now is sent no script (it was sent an empty path)
        self._forget_script()
        proc = self.host.child("processor")
        if proc is not None:  # neither side runs it, as after a load that fails (the processor went on running it)
            self.host.send_child(proc, ScriptUnload(f"script {path} is not run again: its callbacks wedged the "
                                                    "controller twice"))
        log.warning("event=script-dropped path=%s detail=its callbacks wedged the controller twice within %.0f s",
                    path, REWEDGE_S)
        self._script_error(slot, f"script {path} is not run again: its callbacks wedged the controller twice within "
                                 f"{REWEDGE_S:.0f} s (see the error before: the callback and its line); fix it and "
                                 f"`ensemble load` it again")

    def _send_processor_load(self, proc: Any, path: str, load: int) -> bool:
        """Send the processor a script to load; its answer is awaited (see :meth:`_processor_died_reading`)."""
        sent: bool = self.host.send_child(proc, ScriptLoad(path, load=load))
        if sent:
            self.processor_reading = load
        return sent

    def _processor_died_reading(self, slot: Any, load: int) -> None:
        """The processor ended while it ran a script's module code (sent, not answered): the load fails as if that
        code had raised there (:meth:`_load_failed`), and the new processor runs no script.

        The processor runs module code in its main thread, which answers the
        daemon's heartbeats: module code that takes longer than the
        heartbeat timeout (a ``time.sleep``, a slow import, a loop) had the
        processor killed, and each processor started after it was sent the
        script again and killed again, with the audio down each time, for as
        long as the script stayed loaded (found by a probe: 34 restarts).
        """
        how = _ended(slot.last_exit)
        if slot.detail.startswith("silent"):  # the supervisor killed it: no heartbeat came
            how += f": {slot.detail}"
        why = (f"the processor ended ({how}) while it ran the script's module code, and was restarted without the "
               "script; the processor runs module code in its main thread, which must answer the daemon's heartbeats "
               "([supervision] heartbeat_timeout): keep slow work out of the processor's module code (under `if "
               "get_context() == \"Controller\":`, or in a background task)")
        log.warning("event=script-dropped side=processor load=%d detail=%s", load, why)
        self._load_failed(slot, ScriptError("Processor", "load-failed", why, load=load), "")
        self._script_error(slot, f"Processor load-failed: {why}")

    def _processor_rewedged(self, slot: Any) -> bool:
        """A processor that left wedged said hello: whether it must run without the script this time.

        As for the controller (:meth:`_callback_wedged`): once, the script is
        loaded again (a callback that blocked once, say on one note).  Twice
        within :data:`REWEDGE_S` (an ``on_note`` that blocks on every note
        would restart the processor on every note, until the restart
        intensity gave up on it and the audio stopped for good): the
        processor runs with no script, the audio goes on, and ``status`` says
        why, until the next ``ensemble load``.
        """
        now = time.monotonic()
        if not (self.processor_wedged_at and now - self.processor_wedged_at < REWEDGE_S):
            self.processor_wedged_at = now
            return False
        self.processor_wedged_at = 0.0
        if self._loading_in("processor"):  # the load it ran gets no answer from this processor: it fails now
            self.load_state[1:] = ["failed", f"the script wedged the processor twice within {REWEDGE_S:.0f} s "
                                             "(see `ensemble status`: the callback and its line); the processor "
                                             "runs without it"]
        log.warning("event=script-dropped side=processor path=%s detail=its callbacks wedged the processor twice "
                    "within %.0f s", self.script_path, REWEDGE_S)
        self._script_error(slot, f"the processor runs without script {self.script_path}: its callbacks wedged the "
                                 f"processor twice within {REWEDGE_S:.0f} s (see the error before: the callback and "
                                 f"its line); fix it and `ensemble load` it again")
        return True

    def _forget_script(self) -> None:
        """The controller runs no script: no parameters, no UI elements, no change or bind left to send again."""
        self.params = {}
        self.ui = UiState([], self.ui.version + 1)
        self._drop_unapplied("the script was dropped before the controller applied it (see `ensemble status`)")
        self.unbound.clear()
        self.stopped = ""

    def _drop_unapplied(self, why: str) -> None:
        """The acknowledged changes not applied yet will never be: each is a drop its sender is told of.

        The controller reports those it had queued itself, in more words,
        when it drops them (``ScriptError.seq``); its report replaces this one.
        """
        for msg in self.unapplied.values():
            self._set_dropped(msg.seq, f"param set {msg.name}={msg.value!r} was acknowledged but not applied: {why}")
        self.unapplied.clear()

    def _set_dropped(self, seq: int, text: str) -> None:
        """Remember why the change numbered ``seq`` was not applied, for its sender (``ParamCheck``); the last 1,000."""
        self.set_drops[seq] = text
        while len(self.set_drops) > 1000:
            self.set_drops.popitem(last=False)

    def _load_lost(self, reason: str, stuck: bool) -> None:
        """The load in progress fails as its controller goes down; the next controller runs the script before it.

        ``stuck``: the script held the controller past its budget or its
        heartbeat timeout.  Then not the same file again (a reload whose
        ``on_load`` blocks): each try would cost a restart, slower than the
        restart intensity counts, so the next controller runs no script.
        After a crash the file is loaded again: a crash loop is fast, and the intensity ends it.
        """
        before = "" if stuck and self.ready_path == self.script_path else self.ready_path
        self.script_path = self.ready_path = before
        if not before:
            self.params = {}
        self.load_lost = True
        self.load_state[1:] = ["failed", reason + (f", with the script it ran before ({before})"
                                                   if before else ", with no script")]

    def _loading(self) -> None:
        self.load_state = [self.load_state[0] + 1, "loading", ""]
        self.processor_loading = False

    def _loading_in(self, side: str, load: int | None = None) -> bool:
        """Whether a load is in progress in ``side`` ("controller", then "processor": it answers ScriptReady or
        ScriptError kind load-failed; a load fails if either side's module code raises).

        ``load``: the number an answer carries (``ScriptLoad.load`` echoed);
        only the latest load's answer counts.  Without it, two loads of one
        file close together were taken for one: the processor's answer to
        the first marked the second ready before the controller had run it
        (and the controller's error for it was then ignored).
        """
        return (self.load_state[1] == "loading" and self.processor_loading == (side == "processor")
                and (load is None or load == self.load_state[0]))

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
        if self.stopped:
            counters["script_stopped"] = (f"stopped in the controller: {self.stopped}; none of its callbacks runs, "
                                          "in the controller or the processor (notes play the default sampler), "
                                          f"until it is loaded again (`ensemble load {self.ready_path}`)")

    # -- requests
    def _load(self, corr: int, msg: ScriptLoad) -> Message:
        if "\0" in msg.path:  # no file has such a name (and Path.resolve raises ValueError on it)
            raise DaemonError(f"script path {msg.path[:200]!r} holds a NUL character; give the path of a file")
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
        if not found:  # a FIFO, a directory: said as the CLI says it (one stat; a FIFO is never opened)
            raise DaemonError(f"script {str(path)[:200]!r} {not_regular_file(path) or 'does not exist'}; "
                              "give the path of a Python file")
        controller = self.host.child("controller")
        if controller is None:
            raise DaemonError("the controller is not running; see `ensemble status`")
        self.script_path = str(path.resolve())
        self.script_ready = False
        self.wedged_at = self.processor_wedged_at = 0.0  # a load of the user's own: a new chance
        self.follows = 0
        self._loading()
        self.unapplied.clear()  # the controller applies each change queued before the load, or the load discards it
        self.unbound.clear()
        self._clear_shown()
        self.host.send_child(controller, ScriptLoad(self.script_path, msg.reload, self.load_state[0]))
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
        self.param_seq += 1
        msg = ParamSet(msg.name, value, self.param_seq)
        controller = self.host.child("controller")
        if controller is None or not self.host.send_child(controller, msg):
            raise DaemonError("the controller is not running (restarting, or failed: see `ensemble status`); "
                              f"{msg.name} was not set: set it again once the controller runs")
        self.unapplied.pop(msg.name, None)  # (kept in the order of their numbers)
        self.unapplied[msg.name] = msg  # sent again to a controller restarted before it applied it
        return ParamState(msg.name, msg.seq, "queued")

    def _param_check(self, corr: int, msg: ParamCheck) -> Message:
        """What became of the change numbered ``msg.seq``: queued, applied, dropped (and why), or unknown.

        The controller applies changes in their order, and says the last it
        applied (``ParamValues.applied``): a change up to that one not
        reported dropped (``ScriptError.seq``) was applied, or replaced by
        a later change of the same parameter that was.  Costs a dict lookup.
        """
        seq = msg.seq
        name = next((m.name for m in self.unapplied.values() if m.seq == seq), "")
        if seq in self.set_drops:
            return ParamState(name, seq, "dropped", self.set_drops[seq])
        if not 0 < seq <= self.param_seq:
            return ParamState(name, seq, "unknown", f"the daemon numbered no param set {seq} (it numbered "
                                                    f"{self.param_seq} since it started)")
        return ParamState(name, seq, "applied" if seq <= self.applied_seq else "queued")

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
        self.unbound[msg.name] = msg  # sent again to a new controller until one shows it applied (a wedged one may not)
        what = f"bound to CC {msg.controller}" if msg.controller >= 0 else "unbound"
        return Ack(f"{msg.name} {what}")

    def _param_list(self, corr: int, msg: ParamList) -> Message:
        return ParamInfos(list(self.params.values()), self.script_path)

    def _ui_list(self, corr: int, msg: UiList) -> Message:
        return self.ui

    def _ui_event(self, corr: int, msg: UiEvent) -> Message:
        """A click on a script's button, passed on to the controller; refused here what the script could not take.

        Only a button is clicked, and a click carries no value (``on_click()``
        takes no argument): anything else was acknowledged and then failed in
        the script (a TypeError) or was dropped in the controller.  Raises
        DaemonError naming the element and what it takes.
        """
        element = next((e for e in self.ui.elements if e.id == msg.id), None)
        if element is None:
            known = ", ".join(e.id for e in self.ui.elements) or "none"
            raise DaemonError(f"the script has no UI element {msg.id[:64]!r} (known: {known[:300]})")
        if element.kind != "button":
            buttons = ", ".join(e.id for e in self.ui.elements if e.kind == "button") or "none"
            raise DaemonError(f"UI element {msg.id[:64]!r} is a {element.kind}, which cannot be clicked; only a "
                              f"button can (buttons: {buttons[:300]})")
        if msg.value is not None:
            raise DaemonError(f"button {msg.id[:64]!r} takes no value (its on_click() takes no argument), got "
                              f"{_shown(msg.value)}; send the click without one")
        controller = self.host.child("controller")
        if controller is None or not self.host.send_child(controller, msg):
            raise DaemonError("the controller is not running; see `ensemble status`")
        return Ack(f"{msg.id} queued")

    def _ui_state(self, slot: Any, msg: UiState) -> None:
        if self._dropped(slot, msg.load, "ui", len(msg.elements)):
            return
        self.ui = UiState(msg.elements[:256], self.ui.version + 1, msg.script, msg.load)

    # -- routing between controller and processor
    def _route(self, slot: Any, msg: Message) -> None:
        proc, ctl = self.host.child("processor"), self.host.child("controller")
        if isinstance(msg, ScriptReady) and slot.role == "processor":
            self._processor_ran(slot, msg)
        elif isinstance(msg, ScriptReady):
            self.script_ready = True
            if self.stopped_load != msg.load:  # the controller runs the script loaded anew, and the processor will
                self.stopped = ""
            self.ready_path, self.ready_load, self.ready_digest = msg.path, msg.load, msg.digest
            sent = proc is not None and self._send_processor_load(proc, msg.path, msg.load)
            if sent and proc is not None and self.stopped:  # stopped as it loaded (on_load past the budget): after init
                self.host.send_child(proc, ScriptStop(self.stopped, msg.load))
            if self._loading_in("controller", msg.load):  # no processor now: the one that starts loads it (child_ready)
                self.processor_loading = sent
                self.load_state[1] = "loading" if sent else "ready"
        elif isinstance(msg, (RunSync, RunAsyncResult)):
            if proc is not None:
                self.host.send_child(proc, msg)
        elif isinstance(msg, RunAsync):
            if ctl is not None:
                self.host.send_child(ctl, msg)
            elif proc is not None:
                self.host.send_child(proc, RunAsyncResult(msg.token, False, None, "the controller is not running"))
        elif isinstance(msg, ParamValues):
            if self._dropped(slot, msg.load, "params", len(msg.params)):
                return
            self.params = {p.name: p for p in msg.params}
            if msg.applied:  # that change and every one before it are applied (control callbacks run in order)
                self.unapplied = {n: m for n, m in self.unapplied.items() if m.seq > msg.applied}
                self.applied_seq = max(self.applied_seq, msg.applied)
            if self.unbound:
                self.unbound = {n: m for n, m in self.unbound.items()
                                if n in self.params and self.params[n].cc != m.controller}
            if proc is not None:
                self.host.send_child(proc, msg)
        elif isinstance(msg, (ParamSet, ParamControl)):
            if ctl is not None:
                self.host.send_child(ctl, msg)
        elif isinstance(msg, ScriptError):
            where = msg.where()
            if msg.seq and slot.role == "controller":  # a client's change was not applied: its sender is told
                self._set_dropped(msg.seq, f"{msg.message}{where}")
                self.unapplied = {n: m for n, m in self.unapplied.items() if m.seq != msg.seq}  # not sent again
            if msg.kind == "load-failed":
                if slot.role == "processor" and msg.load == self.processor_reading:
                    self.processor_reading = 0
                self._load_failed(slot, msg, where)
            if msg.kind == "wedged" and slot.role == "controller":  # it leaves now, to be restarted
                self.wedge_heard = True
                where += "; the controller was restarted"
                if self._loading_in("controller"):
                    self._load_lost(f"{msg.message}{where}", stuck=True)
            log.error("event=script-%s context=%s detail=%s location=%s", msg.kind, msg.context, msg.message,
                      msg.location)
            self._script_error(slot, f"{msg.context} {msg.kind}: {msg.message}{where}")

    def _script_stopped(self, slot: Any, msg: ScriptStop) -> None:
        """The controller stopped its script (a callback past its budget): the processor stops it too.

        The script stops as a whole, as HALion's does: the processor's
        callbacks stop (notes play the default sampler), and ``status`` says
        so (``script_stopped``) until the next load runs it again.  A
        processor restarted meanwhile is told again after its load
        (:meth:`child_ready`).  A script that stopped as it loaded (its
        ``on_load`` ran past the budget, before its ``ScriptReady``) stops in
        the processor once it is loaded there (:meth:`_route`), not the one
        the processor still runs.  A stop of a script the controller was told
        to drop (it crossed the unload) stops nothing.
        """
        if slot.role != "controller" or self._dropped(slot, msg.load, "stop", 1):
            return
        self.stopped, self.stopped_load = msg.reason, msg.load
        log.warning("event=script-stopped side=both load=%d reason=%s", msg.load, msg.reason)
        proc = self.host.child("processor")
        if proc is not None and msg.load == self.ready_load:  # the script the processor runs, or was sent
            self.host.send_child(proc, msg)

    def _processor_ran(self, slot: Any, msg: ScriptReady) -> None:
        """The processor ran a script: the load is done, unless it ran another version of the file than the controller.

        Each side reads the file as it is when it loads it.  The processor
        loads after the controller, and again when it is restarted (a crash,
        kill -9): an edit since the controller ran the file (one that still
        loads; one that fails drops the script, :meth:`_load_failed`) gives
        the processor the new code beside the controller's old.  The digests
        in the two ``ScriptReady`` tell (:func:`controller._host.load_module`);
        then the controller is reloaded, as the next load
        (:meth:`_controller_follows`), at most :data:`FOLLOW_RELOADS` times
        in a row; once more, the file keeps changing under the loads and the
        script is dropped (:meth:`_kept_changing`).  Only an answer to the
        load the controller ran, while no newer one runs, counts.
        """
        back, self.processor_back = self.processor_back, ""
        if msg.load == self.processor_reading:
            self.processor_reading = 0
        current = msg.path == self.ready_path and msg.load == self.ready_load == self.load_state[0]
        if current and msg.digest != self.ready_digest:
            if self.follows < FOLLOW_RELOADS:
                self._controller_follows(back)
            else:
                self._kept_changing(slot, msg)
            return
        if current:
            self.follows = 0  # both sides run one version: a reload after a later edit is no loop
        if self._loading_in("processor", msg.load) and msg.path == self.script_path:
            self.load_state[1] = "ready"

    def _controller_follows(self, back: str) -> None:
        """The processor runs another version of the script's file than the controller: reload the controller to it.

        A new load, numbered and in ``status`` (``script_load``: why the
        daemon started it, kept once it is ready, and before the error
        should it fail), ``event=script-reload side=controller`` in the log;
        ``ensemble load`` waiting for a load of the edit waits for this one.
        The controller runs the file as it is now, then the processor again;
        should the file change once more meanwhile, once more, up to
        :data:`FOLLOW_RELOADS` reloads in a row (counted until both sides
        run one version, or the user loads a script).  Parameter
        changes and binds acknowledged and not yet applied are sent again
        after the load, which discards what it had queued: the user did not
        ask for this reload.  A controller that is not running now loads the
        file when it starts (:meth:`child_ready`), and the processor after it.
        """
        path, was = self.ready_path, self.ready_load
        came = f"the processor {back} and ran" if back else "the processor ran"
        self.follows += 1
        self._loading()
        self.load_state[2] = (f"started by the daemon: {came} {path} as it is now, another version than load {was}, "
                              "which the controller ran (the file was edited); so the controller was reloaded to "
                              "run it too")
        self.script_ready = False  # a processor that starts now waits for the controller, as in a load
        log.warning("event=script-reload side=controller path=%s load=%d was=%d detail=%s", path, self.load_state[0],
                    was, self.load_state[2])
        controller = self.host.child("controller")
        if controller is not None and self.host.send_child(controller, ScriptLoad(path, True, self.load_state[0])):
            self._resend_unapplied(controller)

    def _kept_changing(self, slot: Any, msg: ScriptReady) -> None:
        """The processor ran yet another version after :data:`FOLLOW_RELOADS` reloads in a row: drop the script.

        Each reload the daemon started ran a file that had changed again
        before the processor read it: something rewrites it on every load
        (the script's own module code, an editor saving in a loop, a
        generator), and one more reload would only go round again.  The load
        fails as a load that fails does (:meth:`_load_failed`): neither side
        runs the script (both are sent ``ScriptUnload``), the daemon lists no
        parameters, ``status`` (``script_load``, the recent errors) says why
        and how to get out, and ``ensemble load`` waiting on the load raises
        with that; ``event=script-dropped side=both`` in the log.  The next
        load of the user's own tries again.
        """
        path, number = self.ready_path, self.load_state[0]
        started = f"{self.load_state[2]}; " if self.load_state[2] else ""
        reason = (f"{path} kept changing under the load: {self.follows} times in a row the daemon reloaded the "
                  "controller to the file as it was, and each time the processor, which reads it after the "
                  "controller, ran yet another version; something rewrites the file whenever it is loaded (its own "
                  "module code writing it, or an editor or a generator saving it over and over): stop that, then "
                  f"load it again (`ensemble load {path}`)")
        self.load_state[1:] = ["failed", f"{started}{reason}; {NO_SCRIPT}"]
        log.warning("event=script-dropped side=both path=%s load=%d detail=the file kept changing under %d reloads "
                    "in a row", path, number, self.follows)
        self.ready_path = ""
        self.script_ready = False  # a processor that starts now is sent no script
        self.dropped_load = max(self.dropped_load, msg.load)
        self._forget_script()
        for role in ("controller", "processor"):
            child = self.host.child(role)
            if child is not None:
                self.host.send_child(child, ScriptUnload(f"load {number}: {reason}"))
        self._script_error(slot, reason)

    def _load_failed(self, slot: Any, msg: ScriptError, where: str) -> None:
        """A side's module code raised: the load fails as a whole, and neither side runs a script.

        The controller runs none after its own failure (whichever load it
        was), and the processor is told to run none either (it still ran the
        script before).  A processor that failed the latest load runs none
        (``ProcessorScript.handle``), and the controller, which ran the new
        script, is told to unload it.  So is a processor that failed the
        script the controller runs, sent to it outside a load (it was
        restarted and read the file as it is now, which an edit since the load
        broke): the rule of a load, where a restart had left the controller
        running the script alone.  The processor's answer to an earlier load
        changes nothing (the controller runs a newer one, or will).  The
        daemon then lists no parameters: a ``param set`` of the script's is
        refused, not acknowledged and then lost; those the controller sent
        before it heard of the unload stay unlisted (:meth:`_params_from`).
        ``status`` (``script_load``) and ``ensemble load`` say so.
        """
        if self._loading_in(slot.role, msg.load):
            started = f"{self.load_state[2]}; that failed: " if self.load_state[2] else ""  # _controller_follows
            self.load_state[1:] = ["failed", f"{started}{msg.message}{where}; {NO_SCRIPT}"]
        elif slot.role == "processor":
            if self.load_state[1] == "loading" or not self.ready_path or msg.load != self.ready_load:
                return
            came = f"the processor {self.processor_back} and loaded" if self.processor_back else "the processor loaded"
            self.load_state[1:] = ["failed", f"{came} {self.ready_path} again from its file as it is now, and "
                                             f"failed: {msg.message}{where}; {NO_SCRIPT}"]
            log.warning("event=script-reload-failed side=processor path=%s load=%d detail=%s", self.ready_path,
                        msg.load, self.load_state[2])
        self.processor_back = ""
        other = self.host.child("processor" if slot.role == "controller" else "controller")
        self.ready_path = ""
        self.script_ready = False  # a processor that starts now is sent no script
        self.dropped_load = max(self.dropped_load, msg.load)
        self._forget_script()
        if other is not None:
            self.host.send_child(other, ScriptUnload(f"load {msg.load} failed in the {slot.role}: {msg.message}"))
        log.warning("event=script-unloaded load=%d failed_in=%s", msg.load, slot.role)

    def _dropped(self, slot: Any, load: int, what: str, count: int) -> bool:
        """Whether a message of the controller's (``ParamValues``, ``UiState``) is of a script it was told to drop.

        It is when it carries the number of a load whose script the
        controller was told to drop, or an earlier one: the controller sent
        it before it read the unload (a change it applied, its script's
        ``set_parameter``, a UI element its script changed, its main thread's
        next ``UiState``), and it crossed the unload on the way.  Taken, it
        brought the dropped script's parameters back (and a ``param set`` of
        one was acknowledged and then lost), or its UI elements, until the
        controller's next state.  Messages of one process arrive in order, so
        nothing the controller sends after the unload carries that number
        but its own empty list and elements, also ignored (the daemon forgot
        them already).  ``what``, ``count``: for the log.
        """
        if slot.role != "controller" or not self.dropped_load or load > self.dropped_load:
            return False
        log.info("event=%s-ignored load=%d count=%d detail=the controller was told to drop that load's script",
                 what, load, count)
        return True

    def _script_error(self, slot: Any, text: str) -> None:
        """Keep a script error for ``status`` (recent errors, the actor's detail, until the next load)."""
        self.errors.append(text)
        self.host.counters["script_errors"] += 1
        slot.detail = text[:600]
        self.shown[slot.name] = (slot, slot.detail)

    def _clear_shown(self) -> None:
        """A load of the user's: the actors' details stop showing the script errors before it.

        A detail set here hides the actor's own figures in ``status`` (the
        processor's notice: JACK gone, the null clock; its xruns), so an error
        of a script since replaced must not stay there for ever.  The errors
        stay listed in ``script_errors_recent``.  A detail the supervisor set
        since (a restart, "gave up") is its own and stays.
        """
        for slot, text in self.shown.values():
            if slot.detail == text:
                slot.detail = ""
        self.shown.clear()


def _ended(code: int) -> str:
    """How a child ended, as ``Slot.last_exit`` says (``signal 9``, ``exit code 1``)."""
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _shown(value: object) -> str:
    """A value a client sent, for an error message: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

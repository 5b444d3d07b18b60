"""The controller process: hosts the control side of the instrument script.

The main thread runs the supervision loop and feeds the script thread's
priority queue (see ``controller._controller_side``); it also watches the
script thread's budget.  Parameter values and ``on_save()`` state persist in
the daemon's state directory.

The hard deadline: a script step still running ``GRACE_S`` after its budget's
interrupt is blocked where no exception reaches (in C).  The main thread then
reports it (``ScriptError`` kind ``wedged``: the step and the script line it
is blocked on) and, one heartbeat interval later (so that the report reaches
the supervisor before the exit does; should it not, the supervisor tells the
wedge from the exit code alone), writes the saved state and leaves with
``WEDGED_EXIT`` without waiting for the script thread.  The supervisor
restarts the controller as after any crash; the script extension
(``controller._supervision``) then fails the load it was running, or reloads
the script, and sends again the parameter changes it acknowledged that were
not applied.
"""

from __future__ import annotations

import time
from typing import Any

from actors import Child, child_main
from actors.messages import Message
from controller.messages import (
    ParamBind, ParamControl, ParamSet, RunAsync, ScriptLoad, ScriptReady, ScriptUnload, UiEvent,
)
from controller._context import CONTROLLER, set_context
from controller._controller_side import ControllerScript
from controller._host import install
from controller._watchdog import WEDGED_EXIT


class Controller(Child):
    """Supervised controller process."""

    role = "controller"

    def __init__(self, cfg: Any, name: str) -> None:
        super().__init__(cfg, name)
        set_context(CONTROLLER)

        def make_client() -> Any:
            from controller.client import Client

            return Client(config=cfg)

        self.script = ControllerScript(self.outbox, cfg.state_dir, client_factory=make_client)
        install(self.script)
        self.leave_at = 0.0  # when a controller whose script is wedged exits (0: not wedged)

    def handle(self, msg: Message) -> None:
        if isinstance(msg, ScriptLoad):
            self.script.load(msg.path, msg.reload, msg.load)
        elif isinstance(msg, ScriptUnload):
            self.script.unload(msg.reason)
        elif isinstance(msg, RunAsync):
            self.script.run_async_call(msg.token, msg.fn, msg.args)
        elif isinstance(msg, ParamSet):
            self.script.param_from_outside(msg.name, msg.value, msg.seq)
        elif isinstance(msg, ParamBind):
            self.script.bind_from_outside(msg.name, msg.controller)
        elif isinstance(msg, ParamControl):
            self.script.controller_moved(msg.controller, msg.value)
        elif isinstance(msg, UiEvent):
            self.script.ui_event(msg.id, msg.value)
        else:
            super().handle(msg)

    def send(self, msg: Message) -> None:
        """Send one message; a load's ``ScriptReady`` goes after its UI elements.

        The elements otherwise go at the next tick (:meth:`tick`), up to a
        poll timeout later: the daemon then called the load ready while it
        still had the elements of the load before, or none, and a click on
        one a page showed was refused.
        """
        if isinstance(msg, ScriptReady):
            ui = self.script.ui.message_if_changed(time.monotonic(), self.script.path, at_once=True)
            if ui is not None:
                super().send(ui)
        super().send(msg)

    def poll_timeout(self) -> float:
        return min(0.1, super().poll_timeout())

    def tick(self, now: float) -> None:
        if self.leave_at:
            if now >= self.leave_at:
                self._request_stop("script wedged")
            return
        wedged = self.script.check_budget()
        if wedged:
            self.script.wedged(wedged)
            self.exit_code = WEDGED_EXIT  # the supervisor restarts us: the one way to end a call blocked in C
            self.leave_at = now + self.cfg.supervision.heartbeat_interval
            return
        ui = self.script.ui.message_if_changed(now, self.script.path)
        if ui is not None:
            self.send(ui)

    def stats(self) -> dict[str, Any]:
        return self.script.stats()

    def on_stop(self) -> None:
        self.script.stop(wait=self.exit_code != WEDGED_EXIT)


if __name__ == "__main__":
    child_main(Controller)

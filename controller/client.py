"""The client of a daemon with a script: :class:`Client` adds loading scripts and their parameters.

``controller.Client`` is :class:`audio.Client` (jobs, notes, samples) plus the
calls the controller answers; it is the one ``ensemble.Client`` names.
"""

from __future__ import annotations

import os
import time
from typing import Any

import audio.client
from actors import EnsembleError, OutOfRange, WaitTimeout
from controller.messages import (
    ParamBind, ParamCheck, ParamInfo, ParamList, ParamSet, ParamState, ScriptLoad, UiEvent, UiList, UiState,
)


class ScriptLoadError(EnsembleError):
    """A script did not load: its module code raised (the message says what, with file and line)."""


class ParamNotApplied(EnsembleError):
    """A ``param set`` the daemon acknowledged was never applied (a load came first, or the script was dropped)."""


class Client(audio.client.Client):
    """An :class:`audio.Client` that also loads instrument scripts and reads and sets their parameters."""

    def load_script(self, path: str, reload: bool = False, wait: float | None = None) -> None:
        """Load an instrument script in the controller, then the processor (HALion's init order).

        Returns once the daemon accepted the request; with ``wait`` (seconds),
        only once the controller ran the script's module code, parameters and
        ``on_load``, and then the processor its module code.  Then raises
        :class:`ScriptLoadError` if the module code raised in either (a
        ``SyntaxError``: the message names file and line), and
        :class:`WaitTimeout` if ``wait`` seconds pass first.  Blocks the caller.
        """
        before = self._load_state()[0] if wait is not None else 0
        self._call(ScriptLoad(os.path.abspath(path) if path else "", reload))
        if wait is not None:
            self._wait_loaded(before, path, wait)

    def reload_script(self, wait: float | None = None) -> None:
        """Reload the current script: pending callbacks are discarded, its tasks aborted, parameters kept.

        ``wait`` as for :meth:`load_script`.
        """
        self.load_script("", True, wait)

    def _load_state(self) -> list[Any]:
        """``[number of the latest load, "loading" | "ready" | "failed", its error]`` as the daemon reports it."""
        return list(self.status().daemon.counters.get("script_load", [0, "", ""]))

    def _wait_loaded(self, before: int, path: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            number, state, error = self._load_state()
            if number > before and state == "ready":
                return
            if number > before and state == "failed":
                raise ScriptLoadError(f"script {path or '(reload)'} did not load: {error}")
            if time.monotonic() > deadline:
                raise WaitTimeout(f"script {path or '(reload)'} was not loaded within {wait:g}s (still {state or 'queued'}); "
                                  "see `ensemble status` and the daemon log")
            time.sleep(0.05)

    def params(self) -> list[ParamInfo]:
        """The loaded script's parameters with their current values."""
        return list(self._call(ParamList()).params)

    def get_param(self, name: str) -> Any:
        """One parameter's current value.  Raises KeyError if there is none of that name."""
        for p in self.params():
            if p.name == name:
                return p.value
        raise KeyError(f"no parameter named {name!r}")

    def set_param(self, name: str, value: Any, wait: float | None = None) -> None:
        """Set a parameter: it enters the controller's queue as a control callback.

        The daemon checks the value first and refuses one the parameter
        would refuse (OutOfRange, DaemonError for an unknown name), then
        acknowledges it: the change is queued.  Returns then; with ``wait``
        (seconds), only once the controller applied the value (and saved it;
        its ``on_change`` runs after).  An acknowledged change can still be
        dropped before it runs: a load came first and the script it loaded has
        no such parameter or refuses the value, or the script was dropped.
        With ``wait`` that raises :class:`ParamNotApplied` saying why (without,
        ``ensemble status`` and the log say it), and :class:`WaitTimeout` if
        ``wait`` seconds pass first (the change stays queued: a long callback
        holds the controller's queue).  Blocks the caller.
        """
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
            try:  # no wire int: as a float, which an int parameter refuses ("64 bits") and a float one takes
                value = float(value)
            except OverflowError:
                raise OutOfRange(f"parameter {name!r}: an integer of {value.bit_length()} bits is beyond any "
                                 "parameter's range (a float's, about 1.8e308)") from None
        queued = self._call(ParamSet(name, value))
        if wait is not None and isinstance(queued, ParamState):
            self._wait_applied(name, queued.seq, wait)

    def _wait_applied(self, name: str, seq: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            state = self._call(ParamCheck(seq))
            if state.state == "applied":
                return
            if state.state in ("dropped", "unknown"):
                raise ParamNotApplied(state.error or f"param set {name} was not applied")
            if time.monotonic() > deadline:
                raise WaitTimeout(f"param set {name} was not applied within {wait:g}s: it waits in the controller's "
                                  "queue behind a callback still running (see `ensemble status`)")
            time.sleep(0.02)

    def bind_param(self, name: str, controller: int | None) -> None:
        """Bind a parameter to MIDI controller ``controller`` (0..127; None unbinds); persisted with the parameter."""
        self._call(ParamBind(name, -1 if controller is None else int(controller)))

    def ui_elements(self) -> UiState:
        """The loaded script's UI elements (buttons, labels, progress bars) as the controller last sent them."""
        return self._call(UiList())  # type: ignore[no-any-return]

    def ui_event(self, element_id: str, value: Any = None) -> None:
        """Use a script's UI element (click a button): its callback runs in the controller's queue (control)."""
        self._call(UiEvent(element_id, value))

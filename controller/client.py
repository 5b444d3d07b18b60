"""The client of a daemon with a script: :class:`Client` adds loading scripts and their parameters.

``controller.Client`` is :class:`audio.Client` (jobs, notes, samples) plus the
calls the controller answers; it is the one ``ensemble.Client`` names.
"""

from __future__ import annotations

import os
from typing import Any

import audio.client
from controller.messages import ParamBind, ParamInfo, ParamList, ParamSet, ScriptLoad, UiEvent, UiList, UiState


class Client(audio.client.Client):
    """An :class:`audio.Client` that also loads instrument scripts and reads and sets their parameters."""

    def load_script(self, path: str, reload: bool = False) -> None:
        """Load an instrument script in the controller, then the processor (HALion's init order)."""
        self._call(ScriptLoad(os.path.abspath(path) if path else "", reload))

    def reload_script(self) -> None:
        """Reload the current script: pending callbacks are discarded, its tasks aborted, parameters kept."""
        self._call(ScriptLoad("", True))

    def params(self) -> list[ParamInfo]:
        """The loaded script's parameters with their current values."""
        return list(self._call(ParamList()).params)

    def get_param(self, name: str) -> Any:
        """One parameter's current value.  Raises KeyError if there is none of that name."""
        for p in self.params():
            if p.name == name:
                return p.value
        raise KeyError(f"no parameter named {name!r}")

    def set_param(self, name: str, value: Any) -> None:
        """Set a parameter: it enters the controller's queue as a control callback."""
        self._call(ParamSet(name, value))

    def bind_param(self, name: str, controller: int | None) -> None:
        """Bind a parameter to MIDI controller ``controller`` (0..127; None unbinds); persisted with the parameter."""
        self._call(ParamBind(name, -1 if controller is None else int(controller)))

    def ui_elements(self) -> UiState:
        """The loaded script's UI elements (buttons, labels, progress bars) as the controller last sent them."""
        return self._call(UiList())  # type: ignore[no-any-return]

    def ui_event(self, element_id: str, value: Any = None) -> None:
        """Use a script's UI element (click a button): its callback runs in the controller's queue (control)."""
        self._call(UiEvent(element_id, value))

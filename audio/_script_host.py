"""What the processor needs of an instrument script's host, and the host it uses when none is installed.

The processor renders audio; scripts are the controller package's business.
So the processor depends on this protocol only, and finds the real host
through the ``ensemble.script_hosts`` entry point (``controller`` provides
:class:`controller._processor_side.ProcessorScript`).  Without it, the
processor plays notes with the default sampler and refuses scripts.
"""

from __future__ import annotations

from typing import Any, Protocol

from actors.extensions import find_entry_point
from actors.messages import Message


class ScriptHost(Protocol):
    """A script hosted in the processor: callbacks run at block boundaries on the audio thread."""

    module: Any  # the loaded script, or None
    default_slot_index: int  # the sample a note plays when neither it nor the script names one
    bound_controllers: frozenset[int]  # MIDI controllers a parameter follows (``param bind``); read on the audio thread

    def block(self, start: int, frames: int) -> None:
        """Engine block hook (audio thread): run what is due in this block."""

    def event(self, kind: str, note: int, velocity: float, value: float, at: int | None,
              slot: int | None = None) -> None:
        """A note on/off or controller for the script (main or MIDI thread); ``slot``: the note's sample."""

    def handle(self, msg: Message) -> bool:
        """Main thread: carry out a message of the script schema (load the script, a ``run_sync``, a
        ``run_async`` answer, new parameter values) and return True; return False for any other message.

        The script schema is the host's business: the processor never imports it.
        """

    def controllers_moved(self, values: dict[int, float]) -> None:
        """Main thread: bound controllers moved to these values (0..1); tell the controller, which moves the parameters."""

    def tick(self, period_ns: float) -> int:
        """Main thread, every loop: follow the block period, stop a callback past its hard limit, flush prints.

        Returns 0, or the exit code the processor leaves with: a callback
        blocked the audio thread where nothing can stop it (the host has
        reported it), and only a new process brings the audio back.
        """

    def stats(self) -> dict[str, Any]:
        """Figures for ``ensemble status``."""


class NoScriptHost:
    """The host when no script package is installed: nothing to run, scripts refused with the reason."""

    module: Any = None
    default_slot_index = 0
    bound_controllers: frozenset[int] = frozenset()

    def block(self, start: int, frames: int) -> None:
        pass

    def event(self, kind: str, note: int, velocity: float, value: float, at: int | None,
              slot: int | None = None) -> None:
        pass

    def handle(self, msg: Message) -> bool:
        return False  # no script schema here: the daemon routes no script messages to this processor

    def controllers_moved(self, values: dict[int, float]) -> None:
        pass

    def tick(self, period_ns: float) -> int:
        return 0

    def stats(self) -> dict[str, Any]:
        return {}


def make_script_host(engine: Any, outbox: Any) -> ScriptHost:
    """The installed script host for the processor (``ensemble.script_hosts`` entry point), else :class:`NoScriptHost`."""
    factory = find_entry_point("ensemble.script_hosts", "processor")
    return factory(engine, outbox) if factory is not None else NoScriptHost()

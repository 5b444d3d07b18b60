"""The script's UI elements in the controller: buttons, labels and progress bars the panel shows.

A script adds elements in the controller context (``add_button``,
``add_label``, ``add_progress``) and changes them (``set_visible``,
``set_text``); the instrument panel draws them and sends clicks back, which
enter the controller's queue as control callbacks.  The script thread writes
the elements; the controller's main thread takes a snapshot (under a lock)
and sends it to the supervisor when it changed, at most every
``SEND_INTERVAL`` seconds, so a chatty script costs one message per interval.
A progress bar bound to a background task follows the task's progress.
Each state carries the number of the load whose script added the elements
(``UiState.load``, set with the elements under the lock when a load or an
unload clears them), so that the supervisor can ignore the elements of a
script it has had unloaded, sent before the controller read the unload.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from controller._host import check_arguments
from controller._tasks import ScriptTask
from controller.messages import UiElement, UiState

SEND_INTERVAL = 0.05  # seconds between two UiState messages at most
KINDS = ("button", "label", "progress")
MAX_ELEMENTS = 256


@dataclass
class _Element:
    id: str
    kind: str
    text: str
    on_click: Callable[..., Any] | None = None
    task: ScriptTask | None = None  # whose progress a bar follows
    visible: bool = True
    value: float = 0.0


@dataclass
class ScriptUi:
    """The elements of the loaded script, in the order they were added (one per controller)."""

    elements: dict[str, _Element] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0
    load: int = 0  # the number of the load whose script adds the elements (see clear)
    _sent: tuple[int, list[UiElement]] | None = None
    _sent_at: float = 0.0

    def add(self, kind: str, id: str, text: str, on_click: Callable[..., Any] | None = None, task: Any = None) -> None:
        """Add (or replace) an element; raises ValueError for an empty id, an unknown kind, too many elements,
        ``on_click`` that is no function taking no argument, or ``task`` that is no :class:`ScriptTask`."""
        if kind not in KINDS:
            raise ValueError(f"unknown UI element kind {kind!r}; one of {', '.join(KINDS)}")
        if not isinstance(id, str) or not id or len(id) > 64:
            raise ValueError(f"a UI element needs an id of 1..64 characters, got {id!r}")
        if on_click is not None and not callable(on_click):
            raise ValueError(f"add_button({id!r}): on_click must be callable, got {on_click!r}")
        if on_click is not None:  # a click carries no value (the daemon refuses one): on_click() takes none
            check_arguments(on_click, (), f"add_button({id!r}): on_click", ValueError)
        if task is not None and not isinstance(task, ScriptTask):
            raise ValueError(f"add_progress({id!r}): task must be a background task (what create_background_task "
                             f"returns) or None, got {task!r} ({type(task).__name__})")
        with self.lock:
            if id not in self.elements and len(self.elements) >= MAX_ELEMENTS:
                raise ValueError(f"a script may add at most {MAX_ELEMENTS} UI elements")
            self.elements[id] = _Element(id, kind, str(text), on_click, task)

    def change(self, id: str, **values: Any) -> None:
        """Set ``visible`` or ``text`` of an element; raises KeyError naming the known ids if there is none."""
        with self.lock:
            el = self.elements.get(id)
            if el is None:
                known = ", ".join(self.elements) or "none yet"
                raise KeyError(f"no UI element with id {id!r} (known: {known}); add it first")
            for key, value in values.items():
                setattr(el, key, value)

    def clear(self, load: int) -> None:
        """Forget every element (a reload: the new module code adds its own); those added next belong to ``load``."""
        with self.lock:
            self.elements.clear()
            self.load = load

    def click_handler(self, id: str) -> Callable[..., Any] | None:
        """The callback a click on ``id`` runs, if it is a button with one."""
        with self.lock:
            el = self.elements.get(id)
            return el.on_click if el is not None and el.kind == "button" else None

    def snapshot(self) -> list[UiElement]:
        """The elements as they would be sent now (a bound bar reads its task's progress)."""
        return self._taken()[1]

    def _taken(self) -> tuple[int, list[UiElement]]:
        """The load the elements belong to, and the elements, read together under the lock."""
        with self.lock:
            load, els = self.load, list(self.elements.values())
        out = []
        for el in els:
            value = el.value
            if el.task is not None:
                value = float(el.task.get_progress()) if el.task.running else 0.0
            out.append(UiElement(el.id, el.kind, el.text, el.visible, max(0.0, min(1.0, value))))
        return load, out

    def message_if_changed(self, now: float, script: str, at_once: bool = False) -> UiState | None:
        """A UiState to send if the elements or their load changed since the last one and the interval passed
        (``at_once``: whether it passed or not).

        Main thread.  A new load with the same elements is sent too: the
        supervisor may have dropped the elements of the load before.
        """
        if now - self._sent_at < SEND_INTERVAL and not at_once:
            return None
        taken = self._taken()
        if taken == self._sent:
            return None
        self._sent, self._sent_at = taken, now
        self.version += 1
        return UiState(taken[1], self.version, script, taken[0])

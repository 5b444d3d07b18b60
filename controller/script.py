"""The instrument-script API: ``from controller.script import *``.

A script is a Python module loaded in both the controller and the processor
(HALion's two threads, as two processes).  Every function below says where it
is **available**; calling it elsewhere raises :class:`WrongContextError`, and
``run_sync`` / ``run_async`` are the bridges.  The callbacks a script may define:

* Processor: ``on_init()``, ``on_note(event)``, ``on_release(event)``,
  ``on_controller(event)`` — plain functions or ``async def`` coroutines that
  may ``await wait(ms)``, ``await wait_for_release()`` and ``await run_async(fn, ...)``.
  Live MIDI arrives here too, at its frame: ``on_controller`` sees MIDI
  controllers 0..127 (value 0..1), channel pressure as controller 128 and
  pitch bend as 129 (value -1..1), HALion's numbers.
* Controller: ``on_load(state)``, ``on_save() -> state``, parameter
  ``on_change(value)`` callbacks, timers (``start_timer``), ``on_status()``.

Processor callbacks run on the audio thread at block boundaries, within a
per-block budget; controller callbacks run one at a time on the controller's
script thread, by priority (control, task notifications, timers, status).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from actors import WrongContextError
from controller._context import CONTROLLER, PROCESSOR, available_in, get_context
from controller._host import ParamDef, check_arguments, check_interval, runtime

__all__ = [
    "Event",
    "WrongContextError",
    "add_button",
    "add_label",
    "add_progress",
    "control_change",
    "create_background_task",
    "define_parameter",
    "fade",
    "get_cc",
    "get_context",
    "get_parameter",
    "get_sample_rate",
    "get_time",
    "is_note_held",
    "kill_all_voices",
    "play_note",
    "post_event",
    "print_",
    "release_voice",
    "run_async",
    "run_sync",
    "set_parameter",
    "set_text",
    "set_visible",
    "start_timer",
    "wait",
    "wait_for_release",
]

log = logging.getLogger("ensemble.script")
MIN_TIMER_MS = 10.0  # the shortest start_timer interval: 100 callbacks a second, each a turn of the controller's queue
MAX_TIMER_MS = 86_400_000.0  # the longest: a day


class Event:
    """An incoming event as processor callbacks see it (``type``: note-on, note-off, controller)."""

    __slots__ = ("type", "note", "velocity", "controller", "value", "id")

    def __init__(self, type: str, note: int = 0, velocity: float = 0.0, controller: int = 0,
                 value: float = 0.0, id: int = 0) -> None:
        self.type = type
        self.note = note
        self.velocity = velocity
        self.controller = controller
        self.value = value
        self.id = id

    def __repr__(self) -> str:
        return f"Event({self.type!r}, note={self.note}, velocity={self.velocity:.3f}, id={self.id})"


# ------------------------------------------------------------------ controller (and every side's module code)
@available_in(CONTROLLER, during_load=True, load_only=True,
              fix="define parameters in the script's module code (its top level), which runs when the script "
                  "loads; a callback cannot add one")
def define_parameter(name: str, long_name: str = "", default: Any = 0.0, min: Any = None, max: Any = None,
                     on_change: Callable[[Any], Any] | None = None, *, kind: str = "", choices: list[Any] | None = None,
                     processor: bool = False) -> None:
    """Define a parameter; its value persists across restarts and reloads.

    ``kind`` is inferred from ``default`` (bool, int, float, str) or ``"choice"``
    with ``choices``.  ``on_change(value)`` runs in the controller's queue as a
    control callback, or with ``processor=True`` in the processor at the start
    of the next block.  Call it in the script's module code: that runs in
    every context (the processor records the definitions it needs too).  As
    in HALion, parameters are defined when the script loads: a callback
    calling it, a controller one too (``on_load``, ``on_change``, a timer, a
    click), raises WrongContextError saying so.

    Raises ValueError, and the script does not load, for a parameter that
    could never be set: ``min`` above ``max``, a default outside them (or not
    among ``choices``), bounds on a kind without any, or a name defined before;
    and for an argument of the wrong kind: ``name`` not a str of 1..64
    characters, ``long_name`` not a str (at most 256), ``min``/``max`` not a
    number (NaN included; an infinite bound is taken, but no MIDI controller
    can be bound to it), ``choices`` not a list of bool, int, float or str
    (without NaN), ``on_change`` neither None nor a function taking one
    argument.
    """
    if choices is not None and not isinstance(choices, (list, tuple)):
        raise ValueError(f"define_parameter({name!r}): choices must be a list, got {type(choices).__name__}")
    if not kind:
        kind = "choice" if choices else ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                                         else "str" if isinstance(default, str) else "float")
    runtime().define(ParamDef(name, long_name or name, default, min, max, kind, tuple(choices or ()), on_change,
                              processor).checked())


# ------------------------------------------------------------------ both contexts
@available_in(CONTROLLER, PROCESSOR, during_load=True)
def get_parameter(name: str) -> Any:
    """The current value of a parameter (in the processor: as of the current block).  Raises KeyError if undefined.

    In module code (every context's copy, a background task's worker's
    too) a parameter the module code defined reads its default: the saved
    value is restored after module code, before ``on_load``.
    """
    return runtime().get_parameter(name)


@available_in(CONTROLLER, PROCESSOR, during_load=True)
def set_parameter(name: str, value: Any) -> None:
    """Set a parameter; the change enters the controller's queue as a control callback.

    The value is checked here, as ``ensemble param set`` checks it: KeyError
    for an undefined name, ValueError for a value the parameter refuses
    (NaN, out of ``min..max``, the wrong type, not among ``choices``).  In
    module code, only the controller's copy sets it, after the module code
    (the processor's and a worker's copies check the value, nothing more).
    """
    runtime().set_parameter(name, value)


@available_in(CONTROLLER, PROCESSOR)
def wait(ms: float) -> Any:
    """Suspend the calling callback for ``ms`` milliseconds: ``await wait(ms)``.

    In the processor the callback resumes at the exact sample frame; in the
    controller the resolution is coarser (the event loop's).
    """
    return runtime().wait(ms)


@available_in(CONTROLLER, PROCESSOR)
def print_(*values: Any) -> None:
    """Print to the daemon log (outside the audio thread: the processor defers it)."""
    runtime().print(" ".join(str(v) for v in values))


# ------------------------------------------------------------------ processor
@available_in(PROCESSOR)
def play_note(note: int, velocity: float = 1.0, duration: float = -1, sample: str = "") -> int:
    """Start a note now (at the callback's current frame); returns its note id.

    ``note`` an int 0..127 (a whole float such as 60.0 is taken; 60.7 is
    refused, not cut to 60).  ``duration`` in ms, 0..3600000 (-1 or 0: until
    released).  ``velocity`` 0..1.  Raises ValueError for a value out of its
    range: a NaN, infinite or negative duration would hold the voice for ever.
    """
    return int(runtime().play_note(note, velocity, duration, sample))


@available_in(PROCESSOR)
def post_event(event: Event) -> int:
    """Play an incoming event as it is (a note-on starts a voice); returns the note id."""
    return int(runtime().post_event(event))


@available_in(PROCESSOR)
def release_voice(note_id: int) -> None:
    """Release a voice by note id (release envelope, no click)."""
    runtime().release_voice(note_id)


@available_in(PROCESSOR)
def fade(note_id: int, start: float | None, end: float, duration_ms: float, kill: bool = False) -> None:
    """Fade a voice's gain from ``start`` (None: current) to ``end`` over ``duration_ms``; ``kill`` frees it at the end."""
    runtime().fade(note_id, start, end, duration_ms, kill)


@available_in(PROCESSOR)
def control_change(controller: int, value: float) -> None:
    """Send a controller value (0..1) into the engine now (129: pitch bend, -1..1; 128, pressure, is ignored).

    ``controller`` an int 0..127, 128 or 129; a fraction (74.5) is refused with ValueError, not cut.
    """
    runtime().control_change(controller, value)


@available_in(PROCESSOR)
def get_cc(controller: int) -> float:
    """The last value (0..1) of a controller 0..127; ValueError for any other (-1 is no alias of 127)."""
    return float(runtime().get_cc(controller))


@available_in(PROCESSOR)
def kill_all_voices(fade_ms: float = 10.0) -> None:
    """Fade out and free every voice."""
    runtime().kill_all_voices(fade_ms)


@available_in(PROCESSOR)
def get_time() -> float:
    """Milliseconds since the script's on_init (restarts at 0 on reload), at the callback's current frame."""
    return float(runtime().get_time())


@available_in(PROCESSOR)
def get_sample_rate() -> int:
    """The engine's sample rate."""
    return int(runtime().engine.samplerate)


@available_in(PROCESSOR)
def is_note_held(event: Event) -> bool:
    """Whether the note of an incoming note-on event is still held (no note-off yet)."""
    return bool(runtime().is_note_held(event))


@available_in(PROCESSOR)
def wait_for_release() -> Any:
    """Suspend the on_note callback until its note is released: ``await wait_for_release()``."""
    return runtime().wait_for_release()


@available_in(PROCESSOR)
def run_async(fn: Callable[..., Any] | str, *args: Any) -> Any:
    """Run the script function ``fn(*args)`` in the controller: ``value = await run_async(fn, ...)``.

    The calling callback is suspended (never the audio callback) and resumes
    with ``fn``'s return value at least one block later; an exception in
    ``fn`` is raised at the ``await``.  ``fn`` must be a top-level function of
    the script; args and the return value must be msgpack-able (a tuple or
    a set arrives as a list): TypeError is raised here for an argument, at
    the ``await`` for a return value.
    """
    return runtime().run_async(fn, args)


# ------------------------------------------------------------------ controller
@available_in(CONTROLLER, during_load=True)
def run_sync(fn: Callable[..., Any] | str, *args: Any, id: Any = None) -> None:
    """Run the script function ``fn(*args)`` in the processor at the start of the next block; returns at once.

    A later call with the same ``id`` replaces one that has not run yet, so
    only the last runs.  ``fn`` must be a top-level function of the script
    (or its name); args must be msgpack-able (a tuple or a set arrives as a
    list), else TypeError is raised here, naming the value.  In module code,
    ``fn`` is a function of the script being loaded, defined above the call;
    the call is held until the script has loaded in the processor and runs
    there after its ``on_init`` starts (not at all if the load fails).
    Module code runs in every context; the processor's copy of the call does
    nothing (the controller's sends it).  TypeError here for ``fn`` that is
    not a function, or args it cannot take.
    Nothing runs while the processor has the script stopped (a callback past
    its hard limit); each refused call is reported as a script error.
    """
    if get_context() != CONTROLLER:  # another context's copy of the module code: the controller's sends the call
        _callable_or_name(fn, "run_sync")
        return
    runtime().run_sync(fn, args, id)


def _callable_or_name(fn: Any, what: str) -> None:
    """TypeError naming ``what`` unless ``fn`` is a function or a name (what a bridge resolves in the other copy)."""
    if not isinstance(fn, str) and not callable(fn):
        raise TypeError(f"{what}: fn must be a top-level function of the script (or its name as a str), got "
                        f"{fn!r} ({type(fn).__name__}), which is not a function")


@available_in(CONTROLLER, during_load=True)
def start_timer(interval_ms: float, fn: Callable[[], Any]) -> None:
    """Call ``fn()`` every ``interval_ms`` in the controller's queue (timer priority).

    ``interval_ms`` a number of milliseconds 10..86400000 (a day): ValueError
    for NaN, 0, a negative, an infinite or a shorter one.  ``fn`` a function
    taking no argument, else TypeError.  A callback that raises is reported
    with its script line; after 5 failures in a row the timer is stopped and
    a report says so once (start it again once it is fixed).  In module code,
    which runs in every context, only the controller's copy starts the
    timer (the processor's checks the arguments and does nothing more).
    """
    check_interval(interval_ms, MIN_TIMER_MS, MAX_TIMER_MS, "start_timer")
    if not callable(fn):
        raise TypeError(f"start_timer: fn must be a function taking no argument, got {fn!r} ({type(fn).__name__})")
    check_arguments(fn, (), "start_timer: fn")
    if get_context() != CONTROLLER:  # another context's copy of the module code: the controller's starts it
        return
    runtime().start_timer(float(interval_ms), fn)


@available_in(CONTROLLER, during_load=True)
def create_background_task(name: str) -> Any:
    """A HISE-style BackgroundTask: run a top-level script function as a job on a worker.

    See :class:`controller._tasks.ScriptTask` for its methods
    (``call_on_background_thread``, ``set_finish_callback``, ``send_abort_signal``, ...).
    May be called in module code: the processor's copy of the module gets a
    handle whose every method raises WrongContextError.
    """
    return runtime().create_background_task(name)


# ------------------------------------------------------------------ controller: UI elements (the panel draws them)
def _ui() -> Any:
    """The controller's runtime, or None in another context's module code (elements mean nothing there)."""
    rt = runtime()
    return rt if get_context() == CONTROLLER else None


@available_in(CONTROLLER, during_load=True)
def add_button(id: str, text: str, on_click: Callable[[], Any] | None = None) -> None:
    """Add a button to the instrument panel (``ensemble panel``); ``on_click()`` runs when it is clicked.

    The click enters the controller's queue as a control callback (before task
    notifications, timers and status).  Adding an id again replaces the
    element.  Elements are dropped on reload; the module code adds them again.
    Raises ValueError for an id that is not a str of 1..64 characters, or
    ``on_click`` that is not a function taking no argument.  Call it in
    module code or a controller callback.
    """
    rt = _ui()
    if rt is not None:
        rt.ui_add("button", id, text, on_click)


@available_in(CONTROLLER, during_load=True)
def add_label(id: str, text: str = "") -> None:
    """Add a line of text to the instrument panel (change it with :func:`set_text`)."""
    rt = _ui()
    if rt is not None:
        rt.ui_add("label", id, text)


@available_in(CONTROLLER, during_load=True)
def add_progress(id: str, text: str = "", task: Any = None) -> None:
    """Add a progress bar to the instrument panel; with ``task`` (a background task) it follows its progress.

    The bar shows the task's progress while the task runs and is empty
    otherwise; the panel sees changes at most every 50 ms.  Raises
    ValueError for ``task`` that is not what :func:`create_background_task`
    returned (nor None).
    """
    rt = _ui()
    if rt is not None:
        rt.ui_add("progress", id, text, None, task)


@available_in(CONTROLLER, during_load=True)
def set_visible(id: str, visible: bool) -> None:
    """Show or hide a UI element.  Raises KeyError if no element has that id."""
    rt = _ui()
    if rt is not None:
        rt.ui_set(id, visible=bool(visible))


@available_in(CONTROLLER, during_load=True)
def set_text(id: str, text: str) -> None:
    """Change a UI element's text (a button's caption, a label, a bar's caption).  Raises KeyError if there is none."""
    rt = _ui()
    if rt is not None:
        rt.ui_set(id, text=str(text))

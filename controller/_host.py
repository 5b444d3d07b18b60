"""The script runtime that code calling the script API belongs to, and loading a script's file.

Which runtime a call reaches, first found: the one bound to the calling
thread (:func:`bind_thread`: a controller runtime's script thread, an offline
render's thread), the one installed for the calling context
(:func:`install` with ``context``), the process's (:func:`install`).  The
controller and processor processes install theirs for the process; a
runtime hosted inside another program (an offline render, a test) binds its
threads and is forgotten when it stops (:func:`uninstall`), so that a second
one in the same process starts clean.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import numbers
import re
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from actors import EnsembleError
from actors.config import not_regular_file

_current: dict[str, Any] = {"runtime": None}
_by_context: dict[str, Any] = {}
_thread = threading.local()  # .runtime: the runtime the calling thread belongs to (see bind_thread)
SCRIPT_MODULE = "ensemble_instrument"
KINDS = ("float", "int", "bool", "str", "choice")  # what a parameter can be (ParamDef.kind)
TRUE_WORDS = ("true", "1", "yes", "on")  # a bool parameter's value as text (any case; ParamDef.coerce)
FALSE_WORDS = ("false", "0", "no", "off")
MAX_NAME = 64  # characters of a parameter's name (as of a UI element's id: the panel and `param list` show it)
MAX_LONG_NAME = 256  # characters of a parameter's long name
_OWN_DIR = str(Path(__file__).resolve().parent) + "/"  # controller/: frames and functions of the runtime, not the script


def runtime() -> Any:
    """The hosting runtime, or raise EnsembleError when no script runtime runs here."""
    from controller._context import get_context

    rt = getattr(_thread, "runtime", None)
    if rt is None:
        rt = _by_context.get(get_context())
    if rt is None:
        rt = _current["runtime"]
    if rt is None:
        raise EnsembleError("no ensemble script runtime in this process; load the script with `ensemble load PATH`")
    return rt


def install(rt: Any, context: str = "") -> None:
    """Make ``rt`` this process's runtime (or, with ``context``, the runtime of that context only).

    Until :func:`uninstall` (a controller runtime's ``stop`` calls it) or
    another install; a runtime bound to the calling thread comes first.
    """
    if context:
        _by_context[context] = rt
    else:
        _current["runtime"] = rt


def uninstall(rt: Any) -> None:
    """``rt`` stops: it is no longer the process's runtime nor any context's (another installed since stays).

    Any thread; costs a dict scan.  A runtime left installed after it
    stopped took the calls of the next one hosted in the process: module
    code run by a new controller runtime defined its parameters in the old.
    """
    if _current["runtime"] is rt:
        _current["runtime"] = None
    for context, installed in list(_by_context.items()):
        if installed is rt:
            del _by_context[context]


def bind_thread(rt: Any) -> Any:
    """Make ``rt`` the runtime of every script API call on the calling thread (None: unbind); returns the one before.

    Ahead of any installed runtime.  A controller runtime binds its script
    thread, so the module code it runs reaches it whatever else the process
    hosts; an offline render binds the thread it renders on, and binds the
    one before again when it closes (the binding lives as long as the thread).
    """
    previous = getattr(_thread, "runtime", None)
    _thread.runtime = rt
    return previous


@dataclass
class ParamDef:
    """A parameter as ``define_parameter`` declared it."""

    name: str
    long_name: str
    default: Any
    min: Any = None
    max: Any = None
    kind: str = "float"  # float | int | bool | str | choice
    choices: tuple[Any, ...] = ()
    on_change: Callable[[Any], Any] | None = None
    processor: bool = False

    def coerce(self, value: Any) -> Any:
        """Convert and range-check a new value; raises ValueError saying why.

        The one check of a value, wherever it comes from: the daemon runs it
        before it acknowledges ``param set``, the controller again when it
        applies the value, and a saved value that fails it is replaced by the
        default.  A bool takes true/false, 0/1 and the words of :data:`TRUE_WORDS`
        and :data:`FALSE_WORDS` (what ``ensemble param set`` passes on as text);
        a float must be finite; an int whole and within 64 bits; neither
        number takes a bool.
        """
        try:
            if self.kind == "bool":
                return _truth(value)
            if self.kind in ("int", "float") and isinstance(value, bool):
                raise ValueError(f"{self.kind} parameters take a number, not true or false")
            if self.kind == "int":
                value = _whole(value)
            elif self.kind == "float":
                value = float(_number_text(value))
                if not math.isfinite(value):
                    raise ValueError("a parameter value must be a finite number")
            elif self.kind == "str":  # str(None) would store "None": a value that is no text is refused
                if not isinstance(value, str):
                    raise ValueError(f"a str parameter takes text (a string), not {type(value).__name__}; "
                                     "send the text quoted")
                return value
            elif self.kind == "choice":  # true is no 1 here (Python's True == 1): a bool matches only a bool
                for choice in self.choices:
                    if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                        return choice
                raise ValueError(f"{value!r} is not one of {list(self.choices)}")
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"parameter {self.name!r}: {value!r} is not a valid {self.kind}: {exc}") from None
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ValueError(f"parameter {self.name!r}: {value!r} is outside {self.min}..{self.max}")
        return value

    def checked(self) -> ParamDef:
        """This definition with its default converted by :meth:`coerce`, once ``define_parameter`` made it.

        Raises ValueError naming the parameter when it could never hold a
        value: an unknown kind, bounds on a kind that has none, a bound that
        is no number, ``min`` above ``max``, or a default the parameter itself
        would refuse.  Pure (no process, no socket).
        """
        self._check_arguments()
        where = f"parameter {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} is none of {', '.join(KINDS)}")
        for label, bound in (("min", self.min), ("max", self.max)):
            if bound is None:
                continue
            if self.kind not in ("int", "float"):
                raise ValueError(f"{where}: a {self.kind} parameter has no {label}; leave it out")
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
                raise ValueError(f"{where}: {label} {bound!r} is not a number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{where}: min {self.min!r} is greater than max {self.max!r}; give min <= max")
        try:
            default = self.coerce(self.default)
        except ValueError as exc:
            reason = str(exc).removeprefix(f"{where}: ")
            raise ValueError(f"{where}: the default is refused: {reason}; give a default the parameter accepts") from None
        return replace(self, default=default)

    def _check_arguments(self) -> None:
        """Raise ValueError naming ``define_parameter``, the argument and what it takes, for one of the wrong type.

        The name is checked first, and shown cut, so that no message carries
        a name of a megabyte.
        """
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_NAME:
            raise ValueError(f"define_parameter: name must be a str of 1..{MAX_NAME} characters, got "
                             f"{_shown(self.name)}")
        where = f"define_parameter({self.name!r})"
        if not isinstance(self.long_name, str) or len(self.long_name) > MAX_LONG_NAME:
            raise ValueError(f"{where}: long_name must be a str of at most {MAX_LONG_NAME} characters, got "
                             f"{_shown(self.long_name)}")
        if not isinstance(self.kind, str):
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)} (a str), got {_shown(self.kind)}")
        if not isinstance(self.processor, bool):
            raise ValueError(f"{where}: processor must be True or False, got {_shown(self.processor)}")
        if self.on_change is not None:
            if not callable(self.on_change):
                raise ValueError(f"{where}: on_change must be a function taking the new value, or None, got "
                                 f"{_shown(self.on_change)}")
            check_arguments(self.on_change, (self.default,), f"{where}: on_change", ValueError)
        for choice in self.choices:
            if isinstance(choice, float) and math.isnan(choice):
                raise ValueError(f"{where}: choices must not hold NaN (it equals no value, so it could never be "
                                 "chosen)")
            if not isinstance(choice, (bool, int, float, str)):
                raise ValueError(f"{where}: each of choices must be a bool, int, float or str, got "
                                 f"{_shown(choice)}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"{where}: a choice parameter needs choices (a non-empty list)")

    def from_controller(self, value: float) -> Any:
        """The value a MIDI controller at ``value`` (0..1) gives this parameter.

        Across ``min..max`` (float: linear; int: rounded), a bool is on from
        0.5, a choice picks by position.  ``min * (1 - x) + max * x``: no
        ``max - min``, which overflows to infinity for bounds as wide as
        -1e308..1e308.  Raises ValueError for a kind no controller can move
        (str), a number without both bounds, or a bound that is infinite (no
        position of a controller is a point of an infinite range).
        """
        value = min(1.0, max(0.0, float(value)))
        if self.kind == "bool":
            return value >= 0.5
        if self.kind == "choice" and self.choices:
            return self.choices[min(len(self.choices) - 1, int(value * len(self.choices)))]
        if self.kind in ("int", "float") and self.min is not None and self.max is not None:
            low, high = float(self.min), float(self.max)
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"parameter {self.name!r} ({self.kind}, {self.min}..{self.max}) cannot follow a "
                                 "MIDI controller: its range is infinite; give it a finite min and max")
            scaled = low * (1.0 - value) + high * value
            if self.kind == "float":
                return min(high, max(low, scaled))
            return min(self.max, max(self.min, int(round(scaled))))  # float rounding may step past a 64-bit bound
        raise ValueError(f"parameter {self.name!r} ({self.kind}"
                         + (", no min and max" if self.kind in ("int", "float") else "")
                         + ") cannot follow a MIDI controller: it needs a bool, a choice, or a number with min and max")


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, with its type: what an error message shows of a bad argument."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return f"{text} ({type(value).__name__})"


def check_arguments(fn: Callable[..., Any], args: tuple[Any, ...], what: str,
                    error: type[Exception] = TypeError) -> None:
    """Raise ``error`` (naming ``what``) if ``fn(*args)`` would fail for its arguments alone, before it is ever called.

    A function whose signature cannot be read (some builtins) is taken as
    it is.  Costs a signature read; call it where the script passes ``fn``,
    so that the error names the script's line, not the later call's.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args)
    except TypeError as exc:
        name = getattr(fn, "__name__", repr(fn))
        took = f"{len(args)} argument" + ("" if len(args) == 1 else "s")
        raise error(f"{what}: {name}{sig} cannot be called with {took} ({exc}); give it a function that "
                    f"takes {took}") from None


def defined_at(fn: Any) -> str:
    """Where a script function is defined (``file:line in name``), "" for one of the runtime's own or no function.

    The location an error report gives when the traceback holds no frame of
    the script (a call that failed before entering the function).
    """
    fn = inspect.unwrap(fn) if callable(fn) else fn
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
    if code is None or code.co_filename.startswith(_OWN_DIR):
        return ""
    return f"{code.co_filename}:{code.co_firstlineno} in {code.co_name}"


def check_interval(interval_ms: Any, least: float, most: float, what: str) -> float:
    """``interval_ms`` as a float, or ValueError naming ``what`` unless it is a number of ``least..most`` ms."""
    if isinstance(interval_ms, bool) or not isinstance(interval_ms, numbers.Real) \
            or not least <= float(interval_ms) <= most:
        raise ValueError(f"{what}: interval_ms must be a number of milliseconds {least:g}..{most:g}, got "
                         f"{_shown(interval_ms)}")
    return float(interval_ms)


def _truth(value: Any) -> bool:
    """``value`` as a bool parameter's: True/False, 1/0, or a word of TRUE_WORDS/FALSE_WORDS, else ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError("a bool parameter takes true or false (or 1/0, yes/no, on/off)")


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _number_text(value: Any) -> Any:
    """``value``, refused (ValueError) if it is text that is no number as JSON writes it, in ASCII digits.

    Python's ``int()`` and ``float()`` take ``"1_0"``, ``"٣"`` and ``" 5 "``: a typo set a value.
    """
    if isinstance(value, str) and not _JSON_NUMBER.fullmatch(value):
        raise ValueError("a number parameter takes a number as JSON writes it, in ASCII digits (e.g. 3, -0.5, 1e3)")
    return value


def _whole(value: Any) -> int:
    """``value`` as an int parameter's: a whole number (``3``, ``3.0``, ``"3"``) within 64 bits, else ValueError."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("an int parameter takes a whole number" if math.isfinite(value)
                         else "a parameter value must be a finite number")
    number = int(_number_text(value))
    if not -2**63 <= number < 2**63:
        raise ValueError("an int parameter must fit in 64 bits (-2**63..2**63-1)")
    return number


def load_module(path: str) -> tuple[ModuleType, str]:
    """Execute a script file as the module ``ensemble_instrument`` (replacing an earlier one).

    Returns the module and the digest of the source it ran (SHA-256, hex):
    the file is read once, and those bytes are compiled and run, never a
    cached bytecode file, so the digest names the code that ran even if the
    file changes meanwhile.  The controller and the processor each run the
    file as it is when they load it; the daemon compares their digests
    (``ScriptReady.digest``).  Raises EnsembleError if there is no such
    file, OSError if it cannot be read, and whatever the module code raises
    (``SyntaxError`` naming the file and line); EnsembleError too, saying
    so, if it is a FIFO, a directory or a device (never opened).  Blocks for
    the module code.
    """
    p = Path(path).resolve()
    if not p.is_file():  # a FIFO is never opened (reading it would block): one stat says what it is
        raise EnsembleError(f"script {path} {not_regular_file(p) or 'does not exist'}")
    spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, p)
    if spec is None or spec.loader is None:
        raise EnsembleError(f"script {path} cannot be loaded as a Python module")
    source = p.read_bytes()
    module = importlib.util.module_from_spec(spec)
    sys.modules[SCRIPT_MODULE] = module
    try:
        exec(compile(source, str(p), "exec", dont_inherit=True), module.__dict__)
    except BaseException:
        sys.modules.pop(SCRIPT_MODULE, None)
        raise
    return module, hashlib.sha256(source).hexdigest()


def add_param(params: dict[str, ParamDef], p: ParamDef) -> None:
    """``define_parameter``'s entry in a runtime's ``params``; ValueError for a name defined before."""
    if p.name in params:
        raise ValueError(f"parameter {p.name!r} is defined twice; give each define_parameter a name of its own")
    params[p.name] = p


def defined_param(params: dict[str, ParamDef], name: str) -> ParamDef:
    """The definition of parameter ``name`` among ``params``, or KeyError naming those there are (every side's
    ``get_parameter`` and ``set_parameter``)."""
    p = params.get(name) if isinstance(name, str) else None
    if p is None:
        known = ", ".join(params)[:300] or "none"
        raise KeyError(f"no parameter named {name!r} (defined: {known}); define it with define_parameter first")
    return p


def function_name(module: ModuleType | None, fn: Callable[..., Any] | str, bridge: str) -> str:
    """The name by which ``fn`` crosses to the other process, or raise EnsembleError saying why not."""
    if isinstance(fn, str):
        name = fn
    elif not callable(fn):
        raise TypeError(f"{bridge}: fn must be a top-level function of the script (or its name as a str), got "
                        f"{_shown(fn)}, which is not a function")
    else:
        name = getattr(fn, "__name__", "")
        qual = getattr(fn, "__qualname__", "")
        if not name or "<lambda>" in qual or "<locals>" in qual:
            raise EnsembleError(
                f"{bridge}: {qual or fn!r} is a lambda or a closure, which the other process cannot resolve; "
                "define it at the top level of the script and pass it by name"
            )
    if module is None or not callable(getattr(module, name, None)):
        raise EnsembleError(f"{bridge}: the script has no top-level function named {name!r}")
    if not isinstance(fn, str) and getattr(module, name) is not fn:
        raise EnsembleError(f"{bridge}: {name!r} is not the script's top-level function of that name")
    return name


class OffsideTask:
    """A background task as seen outside the controller (processor, worker): every use is a context error.

    ``context``: where this copy of the script runs (``Processor``, ``Background task``), as the error names it.
    """

    def __init__(self, name: str, context: str) -> None:
        self.name = name
        self.context = context

    def __getattr__(self, attr: str) -> Any:
        def refuse(*_: Any, **__: Any) -> Any:
            from actors import WrongContextError
            from controller import _context

            if _context.loading_here() and attr.startswith("set_"):
                return None  # configuration in module code: it matters in the controller's copy only

            raise WrongContextError(
                f"background task {self.name!r}: {attr}() is available in: Controller; it was called in: "
                f"{self.context}; {_context.way_out((_context.CONTROLLER,), self.context)}"
            )

        return refuse

"""The actor-role interface: how packages built on the runtime add children, requests and commands.

``actors`` is the runtime and knows nothing of audio or scripts.  A package
built on it (``audio``, ``controller``) contributes through entry points of
the distribution, so the runtime never imports it by name:

* ``ensemble.extensions`` — an :class:`Extension` subclass: children the
  supervisor starts and watches (told when one says hello and when one
  exits), requests it answers for clients, messages from children it
  routes, what it adds to ``status``;
* ``ensemble.cli`` — a function ``register(group)`` adding click commands to
  the ``ensemble`` command line;
* ``ensemble.internal_jobs`` — ``resolve(path) -> function`` for the
  controller's own jobs whose path starts with ``<entry point name>:``
  (a script's background task: ``script:FILE:function``);
* ``ensemble.script_hosts`` — ``processor``: the factory of the script host
  the audio processor runs (see ``audio/_script_host.py``).

Without the packages installed the daemon runs jobs only.  Every extension
runs in the supervisor's one thread and must never block.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

import msgspec

from actors.config import Config
from actors.messages import JobSpec, Message

if TYPE_CHECKING:
    import collections

    from actors.supervisor._children import Slot
    from actors.supervisor._transport import Peer

log = logging.getLogger("ensemble.extensions")

RequestHandler = Callable[[int, Message], "Message | None"]
ChildHandler = Callable[["Slot", Message], None]


class ChildSpec(msgspec.Struct, frozen=True):
    """A supervised child an extension asks for: its slot name, role and ``python -m`` module."""

    name: str
    role: str
    module: str


class Host(Protocol):
    """What an extension may use of the supervisor (and nothing else)."""

    cfg: Config
    shm_prefix: str
    counters: "collections.Counter[str]"

    @property
    def peer(self) -> "Peer":
        """Who sent the request being handled (role ``local``, ``client`` or ``admin``)."""

    def child(self, name: str) -> "Slot | None":
        """The slot named ``name`` if its process is running and said hello, else None."""

    def send_child(self, slot: "Slot", msg: Message) -> bool:
        """Send a message to a child without blocking; False if it could not go."""

    def start_child(self, spec: ChildSpec) -> bool:
        """Start a child on demand (supervised from then on like the others); False if it already runs.

        A child that was marked ``failed`` is given a fresh start.
        """


class Extension:
    """Base of a package's part of the daemon; override what you need.

    An instance lives as long as the daemon; its state (loaded samples, the
    script, parameters) is its own.
    """

    name = ""
    children: tuple[ChildSpec, ...] = ()
    admin_requests: frozenset[type] = frozenset()  # which of its requests a remote admin key may send

    def __init__(self, host: Host) -> None:
        self.host = host

    def requests(self) -> dict[type, RequestHandler]:
        """Client request types this extension answers, with their handlers ``(corr, msg) -> reply``."""
        return {}

    def child_messages(self) -> dict[type, ChildHandler]:
        """Message types from children this extension routes, with their handlers ``(slot, msg)``."""
        return {}

    def child_ready(self, slot: "Slot") -> None:
        """A child (of any role) said hello: send it what it needs (samples, the script, ...)."""

    def child_exited(self, slot: "Slot") -> None:
        """A child's process (of any role) exited and was reaped: settle what it leaves behind.

        Called before the supervisor decides whether to start it again (it
        may not: past its restart intensity, while the daemon stops, on a
        scale-down), so what only the child could have ended is ended here.
        ``slot.last_exit`` holds its exit code (-N: signal N); the slot is no
        longer ready (``host.child(slot.name)`` is None).  Runs in the
        supervisor's thread: must not block (a small file read at most); an
        exception is logged and the daemon goes on.
        """

    def check_task(self, spec: JobSpec) -> bool:
        """Whether this extension vouches for a controller job (``TaskSubmit``); raise JobRefused to refuse it."""
        return False

    def status(self, counters: dict[str, Any]) -> None:
        """Add what ``ensemble status`` should show to ``counters``."""


GROUPS = ("ensemble.extensions", "ensemble.cli", "ensemble.internal_jobs", "ensemble.script_hosts")
PASSED_ENV = "_ENSEMBLE_ENTRY_POINTS"  # the supervisor's scan of GROUPS, inherited by the children it spawns


class EntryPoint(NamedTuple):
    """One installed entry point: ``name`` and ``value`` (``module:attribute``)."""

    name: str
    value: str

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        found: Any = importlib.import_module(module.strip())
        for part in attr.split("[")[0].strip().split(".") if attr else ():
            found = getattr(found, part)
        return found


def _entry_points(group: str) -> list[EntryPoint]:
    """The installed entry points of ``group``, by name.

    A scan of every installed distribution's metadata costs 40-50 ms on the
    2-core VM (with importlib.metadata's import), so each daemon scans once:
    the supervisor passes its scan to the children it spawns (:func:`pass_down`),
    and a child with that scan of the same interpreter reads it instead.
    """
    passed = os.environ.get(PASSED_ENV)
    if passed:
        try:
            scan = json.loads(passed)
            if scan.get("python") == sys.executable:
                return [EntryPoint(n, v) for n, v in scan["groups"].get(group, [])]
        except (ValueError, TypeError, AttributeError, KeyError):  # not ours: scan as if it were absent
            pass
    import importlib.metadata

    return sorted((EntryPoint(e.name, e.value) for e in importlib.metadata.entry_points(group=group)),
                  key=lambda e: e.name)


def pass_down() -> None:
    """Scan the installed entry points once, for this process's children (the supervisor, at start)."""
    import importlib.metadata

    found = importlib.metadata.entry_points()  # one scan for every group
    scan = {g: sorted([e.name, e.value] for e in found.select(group=g)) for g in GROUPS}
    os.environ[PASSED_ENV] = json.dumps({"python": sys.executable, "groups": scan})


def load_extensions(wanted: tuple[str, ...] | list[str] = ("*",)) -> list[type[Extension]]:
    """The installed :class:`Extension` classes, by entry-point name (a broken one is logged and skipped).

    ``wanted``: the entry-point names to load (``"*"``: all); ConfigError for
    a name no installed package provides.  The others are
    not even imported (``()``, a jobs-only daemon such as a private one,
    imports no audio code and does not scan the installed packages).
    """
    if not wanted:
        return []
    out = []
    installed = list(_entry_points("ensemble.extensions"))
    unknown = sorted(set(wanted) - {"*"} - {ep.name for ep in installed})
    if unknown:  # a typo ("audo") started a daemon with no audio, and its clients read "unknown message kind 65"
        from actors._errors import ConfigError

        raise ConfigError(f"[daemon] extensions names {', '.join(map(repr, unknown))}, which no installed package "
                          f"provides; installed: {', '.join(sorted(ep.name for ep in installed)) or 'none'} "
                          "('*' for all, [] for jobs only)")
    for ep in installed:
        if "*" not in wanted and ep.name not in wanted:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken package must not stop the runtime
            log.error("event=extension-failed name=%s reason=%s", ep.name, exc)
            continue
        out.append(cls)
    return out


def register_commands(group: Any) -> None:
    """Add the installed packages' commands to the ``ensemble`` click group."""
    for ep in _entry_points("ensemble.cli"):
        ep.load()(group)


def find_entry_point(group: str, name: str) -> Any:
    """What the installed entry point ``name`` of ``group`` names, or None if no package provides it."""
    for ep in _entry_points(group):
        if ep.name == name:
            return ep.load()
    return None


def internal_resolver(kind: str) -> Callable[[str], Callable[..., Any]] | None:
    """The resolver of internal job paths ``KIND:...`` (``script``), if a package provides one."""
    return find_entry_point("ensemble.internal_jobs", kind)  # type: ignore[no-any-return]

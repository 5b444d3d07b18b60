"""One typed configuration object: TOML file, then ``ENSEMBLE_*`` environment, then flags.

Precedence, lowest first: built-in defaults, the TOML file (``--config FILE``,
``$ENSEMBLE_CONFIG``, else ``$XDG_CONFIG_HOME/ensemble/config.toml`` when it
exists, ``~/.config`` when ``XDG_CONFIG_HOME`` is unset), environment variables
named ``ENSEMBLE_<SECTION>_<KEY>`` (for example
``ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT=2``; the daemon section's keys also
answer to ``ENSEMBLE_<KEY>``, e.g. ``ENSEMBLE_NAME``), then flags given on the
command line.  :func:`load_config` returns a frozen :class:`Config`.  An
``ENSEMBLE_*`` variable that names no setting, and is none of
:data:`OTHER_VARIABLES`, is an error, as an unknown TOML key is.  Every value
is checked against what its key allows (the comment by each field says; the
checks are in ``_RULES``) before anything starts: a wrong one is one
:class:`ConfigError` line naming the key as it was written (``config file F:
[audio] blocksize = 0``, ``ENSEMBLE_AUDIO_BLOCKSIZE='0' ([audio] blocksize)``),
the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import msgspec

from actors._errors import ConfigError
from actors._resources import check, parse

# tomllib (when a config file exists), difflib (for a typo's error) and tempfile (without XDG_RUNTIME_DIR) are
# imported where they are used: every client and daemon imports this module, and most never need them (4 ms)

_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a daemon's name
# What a *remote* client may run out of the box: the side-effect-free examples only (no file access).
# Local clients are trusted as the daemon's user and are not bound by it; see actors/_jobfn.py.
DEFAULT_ALLOW = ("examples.jobs:noop", "examples.jobs:echo", "examples.jobs:add", "examples.jobs:countdown",
                 "examples.jobs:fail")


# Every ENSEMBLE_* variable that is not a setting, with who sets or reads it: the one list (a test keeps it whole).
OTHER_VARIABLES: Mapping[str, str] = {
    "ENSEMBLE_CONFIG": "the config file (as --config)",
    "ENSEMBLE_INTERNAL_TOKEN": "set by the supervisor for the children that may submit internal jobs (controller)",
    "ENSEMBLE_DAEMON": "deploy/systemd: the daemon endpoint a remote worker unit connects to",
    "ENSEMBLE_PANEL": "set by `ensemble up --panel` for the daemon: start the control panel at HOST:PORT",
    "ENSEMBLE_OWNER_PID": "set for a private daemon: the process that owns it (the daemon stops when it exits)",
    "ENSEMBLE_PRIVATE_DIR": "set for a private daemon: its directory, removed when its owner exits unasked",
    "ENSEMBLE_JOB_OUTPUT": "set for a private daemon: the descriptors of its owner's stdout and stderr, which its "
                           "workers' jobs print to",
    "ENSEMBLE_WORKER_PID": "set by a local worker for its jobs: its pid, by which the daemon finds what a job of a "
                           "worker killed or crashed under it left in a session of its own",
    "ENSEMBLE_WORKER_DAEMON": "set by a local worker for its jobs: its daemon's key, by which the next start of a "
                              "daemon that was killed finds what its jobs left running",
    "ENSEMBLE_PRIVATE_START": "fork (default) or spawn: how a private daemon starts (a fork of its owner, or a new interpreter)",
    "ENSEMBLE_PREFORK": "0: spawn every worker as a fresh interpreter (by default the first ones are forked at "
                        "start-up, and a standby waits for the next restart once one was needed)",
    "ENSEMBLE_TEST_CRASH_ROLE": "tests: a child of this role exits at start (ROLE, or ROLE:FILE while FILE exists)",
    "ENSEMBLE_FULL": "tests: run the reliability suite at full size",
    "ENSEMBLE_FIGURES": "tests: append the reliability suite's figures to this file",
    "ENSEMBLE_PANEL_SCREENSHOTS": "tests: the browser tests save the panel's screenshots here",
}


class DaemonConfig(msgspec.Struct, frozen=True):
    """Where the daemon lives and how many workers it runs."""

    name: str = "default"  # 1-64 letters, digits, '.', '_' or '-'
    workers: str = "auto"  # "auto" (CPU count) or a number 0..1024
    run_dir: str = ""  # control sockets and lock; default $XDG_RUNTIME_DIR/ensemble/<name>
    state_dir: str = ""  # journal, log, parameters; default $XDG_STATE_HOME/ensemble/<name>
    log_level: str = "info"  # debug | info | warning | error | critical (any case, as logging takes them)
    max_frame: int = 64 * 1024 * 1024  # bytes, 65536..2**32; larger frames are refused (below 64 KiB, status
    # and job listings of a few actors did not fit: `up` waited for a status that could never come)
    tcp: str = ""  # tcp endpoint for remote workers, e.g. tcp://0.0.0.0:7700 (needs CURVE keys)
    client_tcp: str = ""  # tcp endpoint for remote clients (needs CURVE keys)
    keys_dir: str = ""  # default <state dir>/keys
    metrics_port: int = 0  # Prometheus metrics on 127.0.0.1:PORT (0..65535); 0 = off
    metrics_host: str = "127.0.0.1"
    extensions: tuple[str, ...] = ("*",)  # installed packages that add to the daemon (audio, controller); () = jobs only


class SupervisionConfig(msgspec.Struct, frozen=True):
    """Heartbeats, restart intensity and stop timing (OTP-style)."""

    # seconds, finite and at most a year; the interval and timeouts above 0, the graces 0 or more
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0  # greater than heartbeat_interval
    max_restarts: int = 5  # 0..1000000
    restart_period: float = 10.0
    stop_grace: float = 2.0  # stop message -> SIGTERM
    term_grace: float = 1.0  # SIGTERM -> SIGKILL
    worker_nice: int = 5  # the nice increment workers start with, -20..19 (below 0 needs CAP_SYS_NICE)


class JobsConfig(msgspec.Struct, frozen=True):
    """What jobs may run and how much the daemon keeps."""

    allow: tuple[str, ...] = DEFAULT_ALLOW  # MODULE or MODULE:FUNCTION globs (* and ? within a name part)
    queue_limit: int = 1_000_000  # 1..2**40
    queue_bytes: int = 1024 * 1024 * 1024  # budget for the arguments of unfinished jobs held by the daemon, 1024..2**50
    retention: float = 7 * 24 * 3600.0  # seconds finished jobs are kept, finite, 0..100 years
    window: int = 256  # at most this many jobs handed to one worker at once (credit; adaptive below it), 1..65536
    inline_array_limit: int = 64 * 1024  # bytes, 0..2**32; arrays above this size travel through shared memory
    # seconds a client waits for a shared daemon that went away (stopped, killed) to come back; then the jobs it
    # waits on end (an Executor's pool is broken) and its calls fail, instead of waiting for ever
    reconnect_wait: float = 60.0


class AudioConfig(msgspec.Struct, frozen=True):
    """The processor's backend and stream settings."""

    backend: str = "auto"  # auto (JACK if a server runs, else PortAudio, else null) | jack | sounddevice | null
    device: str = ""
    samplerate: int = 48000  # Hz, 8000..768000
    blocksize: int = 256  # frames, 1..8192 (JACK's largest period; any size, not only powers of two)
    channels: int = 2  # 1..256
    max_voices: int = 64  # 1..1024
    steal: str = "oldest"  # voice stealing at the polyphony limit: oldest | newest | quietest | none
    script: str = ""
    script_dirs: tuple[str, ...] = ()  # where `ensemble load` from a remote admin may load scripts from
    autoconnect: bool = True  # JACK backend: connect out_N to the physical playback ports at start
    midi_in: tuple[str, ...] = ()  # JACK MIDI sources (port-name regexes, valid ones) connected to <client>:midi_in
    # JACK backend: blocks a render thread keeps ready for a native process callback (0: render in JACK's
    # callback, the lowest latency; N adds N periods of output latency and N periods of slack; needs numba)
    jack_ahead: int = 0  # 0..16


class ClusterConfig(msgspec.Struct, frozen=True):
    """Workers placed on a Ray cluster (``ray = "auto"`` or ``"ray://HOST:PORT"``; empty: no cluster).

    Needs ``pip install 'ensemble-rt[ray]'`` here and on every node, and a
    worker endpoint (``[daemon] tcp`` with CURVE keys) the nodes can reach:
    each Ray actor hosts a worker that connects back with a key issued for it.
    """

    ray: str = ""  # "" (off) | "auto" (the cluster this host belongs to) | "ray://HOST:PORT" | "HOST:PORT"
    workers: int = 0  # Ray-placed workers started with the daemon, 0..max_workers (`ensemble scale N --on ray`)
    # what Ray reserves for each Ray-placed worker
    worker_resources: dict[str, float] = msgspec.field(default_factory=lambda: {"CPU": 1.0})
    max_workers: int = 64  # at most this many Ray-placed workers, those started for jobs' resources included (1..1024)
    connect: str = ""  # where workers connect back (tcp://HOST:PORT); default [daemon] tcp on this node's IP
    # numeric arrays of at least this many bytes cross to and from Ray-placed workers through Ray's object
    # store instead of the frame (0: never; everything goes in the frame, as to any remote worker).  2 MiB: the
    # frame is as fast at 1 MiB and twice as slow at 2 MiB (bench/README.md, ray_arrays)
    object_store_min_bytes: int = 2 << 20  # 0..2**50
    # seconds a Ray-placed worker may take to join; past that, if Ray runs its actor, the daemon logs where it runs
    # and that its worker cannot reach the daemon (ray-worker-not-joined)
    join_wait: float = 60.0


class Config(msgspec.Struct, frozen=True):
    """The whole configuration; sections mirror the TOML tables."""

    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    supervision: SupervisionConfig = msgspec.field(default_factory=SupervisionConfig)
    jobs: JobsConfig = msgspec.field(default_factory=JobsConfig)
    audio: AudioConfig = msgspec.field(default_factory=AudioConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)

    # -- derived values -------------------------------------------------
    @property
    def name(self) -> str:
        """The daemon's name (one daemon per name and user)."""
        return self.daemon.name

    def command(self, verb: str) -> str:
        """The CLI command ``verb`` for this daemon, as a message shows it: ``ensemble up``, ``ensemble up --name N``
        for a daemon not named ``default`` (the name an ``ensemble`` with no ``--name`` picks)."""
        return f"ensemble {verb}" if self.name == "default" else f"ensemble {verb} --name {self.name}"

    @property
    def run_dir(self) -> Path:
        """Directory (mode 0700) holding the control socket, lock and pid file."""
        if self.daemon.run_dir:
            return Path(self.daemon.run_dir)
        base = os.environ.get("XDG_RUNTIME_DIR")
        if base and os.path.isdir(base) and os.access(base, os.W_OK):
            return Path(base) / "ensemble" / self.name
        import tempfile

        return Path(tempfile.gettempdir()) / f"ensemble-{os.getuid()}" / self.name

    @property
    def state_dir(self) -> Path:
        """Directory holding the journal, the log file and persisted parameters."""
        if self.daemon.state_dir:
            return Path(self.daemon.state_dir)
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "ensemble" / self.name

    def make_state_dir(self) -> Path:
        """Create :attr:`state_dir` (mode 0700, parents too) and return it; ConfigError, naming it, if it cannot be."""
        path = self.state_dir
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise ConfigError(f"state directory {path} exists and is not a directory; set ENSEMBLE_STATE_DIR "
                              "([daemon] state_dir) to a directory") from None
        except OSError as exc:
            raise ConfigError(f"state directory {path} cannot be created: {exc.strerror}; set ENSEMBLE_STATE_DIR "
                              "([daemon] state_dir) to a directory you can write") from None
        if not os.access(path, os.W_OK | os.X_OK):  # (a read-only file system too: EROFS, root or not)
            why = "it is on a read-only file system" if _read_only(path) else "this user cannot write it"
            raise ConfigError(f"state directory {path} cannot be written: {why}; set ENSEMBLE_STATE_DIR "
                              "([daemon] state_dir) to a directory you can write")
        return path

    @property
    def shm_key(self) -> str:
        """This daemon's tag in shared-memory names (``ensemble.<key>.*``): its name plus a hash of its
        run directory, so two daemons of the same name (other users, tests) never sweep each other's."""
        import zlib  # not hashlib: a tag, not a secret, and loading OpenSSL costs a private Executor 5 ms

        return f"{self.name}.{zlib.crc32(str(self.run_dir).encode()):08x}"

    @property
    def worker_count(self) -> int:
        """Number of workers to start (``auto`` = CPU count)."""
        if self.daemon.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.daemon.workers)

    def absolute(self) -> "Config":
        """This config with every path made absolute against the current directory (daemons run in ``/``)."""
        def ab(p: str) -> str:
            return os.path.abspath(p) if p else p

        d, a = self.daemon, self.audio
        return msgspec.structs.replace(
            self,
            daemon=msgspec.structs.replace(d, run_dir=ab(d.run_dir), state_dir=ab(d.state_dir),
                                           keys_dir=ab(d.keys_dir)),
            audio=msgspec.structs.replace(a, script=ab(a.script), script_dirs=tuple(ab(p) for p in a.script_dirs)),
        )

    def to_json(self) -> str:
        """Serialise for handing to child processes (JSON, never pickle)."""
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """Inverse of :meth:`to_json`."""
        return _build(json.loads(text), "config")


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "daemon": DaemonConfig,
    "supervision": SupervisionConfig,
    "jobs": JobsConfig,
    "audio": AudioConfig,
    "cluster": ClusterConfig,
}


# How a value reads in an error: ``(section, key, value as given)`` -> ``ENSEMBLE_AUDIO_BLOCKSIZE='0' ([audio]
# blocksize)`` for the environment, ``config file F: [audio] blocksize = 0`` for the file.
_Namer = typing.Callable[[str, str, Any], str]


def _convert(value: Any, hint: Any, written: str) -> Any:
    """Coerce a TOML/env/flag value to the annotated type, or raise ConfigError naming ``written``.

    Numbers given as text take ASCII characters only (``int("٣")`` would read 3).
    """
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is int:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(_ascii(value))
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(_ascii(value))
        if hint is str:
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
        if origin is dict:  # resources: a TOML table, or NAME=AMOUNT,... from the environment or a flag
            return parse(value, written) if isinstance(value, str) else check(value, written)
        if origin is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{written} is not a valid {_type_name(hint)}") from exc
    raise ConfigError(f"{written}: unsupported setting type {hint!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    raise ValueError(value)


def _ascii(value: Any) -> Any:
    if isinstance(value, str) and not value.isascii():
        raise ValueError(value)
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "list of strings"
    if typing.get_origin(hint) is dict:
        return "table of name = amount"
    return getattr(hint, "__name__", str(hint))


# -- what each key allows ---------------------------------------------------------------------------
# A check takes the converted value and returns "" when it is allowed, else what is (the end of the error).
_Check = typing.Callable[[Any], str]
_YEAR = 365 * 24 * 3600.0


def _whole(lo: int, hi: int, unit: str = "") -> _Check:
    def check(value: int) -> str:
        return "" if lo <= value <= hi else f"give a whole number {lo}..{hi}{unit}"
    return check


def _seconds(*, above_zero: bool, most: float = _YEAR, most_text: str = "a year") -> _Check:
    least = "above 0" if above_zero else "0 or more"

    def check(value: float) -> str:
        ok = math.isfinite(value) and (value > 0 if above_zero else value >= 0) and value <= most
        return "" if ok else f"give a finite number of seconds, {least}, at most {most_text} ({most:.0f})"
    return check


def _choice(*choices: str, any_case: bool = False, shown: str = "") -> _Check:
    def check(value: str) -> str:
        if (value.lower() if any_case else value) in choices:
            return ""
        return f"give {shown or ', '.join(choices)}" + (" (any case)" if any_case else "")
    return check


def _matching(pattern: str, allowed: str) -> _Check:
    def check(value: str) -> str:  # compiled when first used (and cached by re): not at import, on every client
        return "" if re.fullmatch(pattern, value) else allowed
    return check


def _each(item_check: _Check) -> _Check:
    def check(values: tuple[str, ...]) -> str:
        for item in values:
            problem = item_check(item)
            if problem:
                return f"{item!r}: {problem}"
        return ""
    return check


def _text_problem(value: Any) -> str:
    """What no text of any key may hold, in a string, a list's item or a table's name: a NUL (C libraries and
    ZeroMQ cut the text there) or bytes that are not UTF-8 (an environment variable's; the daemon's config
    travels as JSON, ZeroMQ endpoints as UTF-8).  "" when there is none."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, tuple) else \
        list(value) if isinstance(value, dict) else []
    for text in texts:
        if "\0" in text:
            return "it cannot hold a NUL character"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "it holds bytes that are not UTF-8 (the \\udcXX above); write it in UTF-8"
    return ""


def _anything(value: Any) -> str:
    return ""  # checked by its type (bool), while converting (resources) or as text alone (_text_problem)


def _workers(value: str) -> str:
    if value == "auto" or re.fullmatch(r"[0-9]{1,4}", value) and int(value) <= 1024:
        return ""
    return "give 'auto' or a whole number 0..1024 (ASCII digits)"


def _endpoint(value: str) -> str:
    m = re.fullmatch(r"tcp://(\S+):([0-9]{1,5}|\*)", value)
    if not value or m and (m[2] == "*" or int(m[2]) <= 65535):
        return ""
    return "give \"\" (off) or a tcp://HOST:PORT endpoint (PORT 0..65535 or *)"


def _ray(value: str) -> str:
    if not value or value == "auto" or value.startswith("ray://") or re.fullmatch(r"[\w.-]+:[0-9]+", value):
        return ""
    return "give \"auto\", \"ray://HOST:PORT\" or \"HOST:PORT\" (\"\": no cluster)"


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a regular expression ({exc})"
    return ""


_RULES: dict[str, dict[str, _Check]] = {
    "daemon": {
        "name": _matching(_NAME_PATTERN, "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                                            "digit"),
        "workers": _workers,
        "run_dir": _anything,
        "state_dir": _anything,
        "log_level": _choice("debug", "info", "warning", "error", "critical", "notset", "warn", "fatal",
                             any_case=True, shown="debug, info, warning, error or critical"),
        "max_frame": _whole(65536, 2**32, " bytes (4 GiB)"),
        "tcp": _endpoint,
        "client_tcp": _endpoint,
        "keys_dir": _anything,
        "metrics_port": _whole(0, 65535, " (0: off)"),
        "metrics_host": _matching(r"\S+", "give a host name or address, without spaces"),
        "extensions": _each(_matching(r"\*|[\w.-]+", "give installed extension names (letters, digits, '_', '.', "
                                                     "'-') or \"*\"")),
    },
    "supervision": {
        "heartbeat_interval": _seconds(above_zero=True),
        "heartbeat_timeout": _seconds(above_zero=True),
        "max_restarts": _whole(0, 1_000_000),
        "restart_period": _seconds(above_zero=True),
        "stop_grace": _seconds(above_zero=False),
        "term_grace": _seconds(above_zero=False),
        "worker_nice": _whole(-20, 19, " (a nice increment; below 0 needs CAP_SYS_NICE)"),
    },
    "jobs": {
        "allow": _each(_matching(r"[\w.*?]+(?::[\w*?]+)?", "give MODULE or MODULE:FUNCTION patterns (names, '.', "
                                                           "'*' and '?')")),
        "queue_limit": _whole(1, 2**40),
        "queue_bytes": _whole(1024, 2**50, " bytes"),
        "retention": _seconds(above_zero=False, most=100 * _YEAR, most_text="100 years"),
        "window": _whole(1, 65536),
        "inline_array_limit": _whole(0, 2**32, " bytes"),
        "reconnect_wait": _seconds(above_zero=False),
    },
    "audio": {
        "backend": _choice("auto", "jack", "sounddevice", "null", shown="auto, jack, sounddevice or null"),
        "device": _anything,
        "samplerate": _whole(8000, 768000, " Hz"),
        "blocksize": _whole(1, 8192, " frames (8192: JACK's largest period)"),
        "channels": _whole(1, 256),
        "max_voices": _whole(1, 1024),
        "steal": _choice("oldest", "newest", "quietest", "none", shown="oldest, newest, quietest or none"),
        "script": _anything,
        "script_dirs": _anything,
        "autoconnect": _anything,
        "midi_in": _each(_regex),
        "jack_ahead": _whole(0, 16, " blocks"),
    },
    "cluster": {
        "ray": _ray,
        "workers": _whole(0, 1024),
        "worker_resources": _anything,
        "max_workers": _whole(1, 1024),
        "connect": _endpoint,
        "object_store_min_bytes": _whole(0, 2**50, " bytes (0: never)"),
        "join_wait": _seconds(above_zero=True),
    },
}


def _build(data: Mapping[str, Any], where: str, namer: _Namer | None = None) -> Config:
    """The Config ``data`` gives, every value checked; ``namer`` says how each was written (default: in ``where``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of sections")
    name = namer or (lambda section, key, value: f"{where}: [{section}] {key} = {value!r}")
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{key}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: [{key}] must be a table")
        sections[key] = _build_section(key, value, f"{where} [{key}]", name)
    cfg = Config(**sections)
    _validate(cfg, name)
    return cfg


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A section's resolved field types, once per process (``typing.get_type_hints`` compiles each annotation)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build_section(section: str, values: Mapping[str, Any], where: str, name: _Namer) -> Any:
    cls = _SECTIONS[section]
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(hints)}")
        written = name(section, key, value)
        try:
            converted = _convert(value, hints[key], written)
        except ConfigError as exc:  # "is not a valid int": and what it should be, where the key's rule says it
            want = _wanted(_RULES[section][key], hints[key])
            raise ConfigError(f"{exc}: {want}" if want else str(exc)) from exc.__cause__
        problem = _text_problem(converted) or _RULES[section][key](converted)
        if problem:
            raise ConfigError(f"{written} is invalid: {problem}")
        kwargs[key] = converted
    return cls(**kwargs)


def _wanted(rule: _Check, hint: Any) -> str:
    """What a number key's ``rule`` asks for ("give a whole number 1..1024"), read by showing it a value of the
    key's type that no rule takes; "" for other keys, or a rule that says nothing of it."""
    probe = {int: -(2**70), float: math.nan}.get(hint)
    if probe is None:
        return ""
    try:
        return str(rule(probe))
    except Exception:  # noqa: BLE001 - a rule for another kind of value: nothing to add
        return ""


def _validate(cfg: Config, name: _Namer) -> None:
    """What no single key shows: the keys that must agree with each other."""
    sup = cfg.supervision
    if sup.heartbeat_timeout <= sup.heartbeat_interval:
        raise ConfigError(f"{name('supervision', 'heartbeat_timeout', sup.heartbeat_timeout)} is invalid: "
                          "heartbeat_timeout must be greater than heartbeat_interval, here "
                          f"{name('supervision', 'heartbeat_interval', sup.heartbeat_interval)}")
    c = cfg.cluster
    if c.workers > c.max_workers:
        raise ConfigError(f"{name('cluster', 'workers', c.workers)} is invalid: more than "
                          f"{name('cluster', 'max_workers', c.max_workers)}")
    if c.workers and not c.ray:
        raise ConfigError(f"{name('cluster', 'workers', c.workers)} needs a cluster: set [cluster] ray = \"auto\" "
                          "(or \"ray://HOST:PORT\")")
    if c.ray and not cfg.daemon.tcp:
        raise ConfigError(f"{name('cluster', 'ray', c.ray)} needs a worker endpoint the nodes can reach: set "
                          "[daemon] tcp, e.g. \"tcp://0.0.0.0:7700\", and run `ensemble keys init`")


def _env_names() -> dict[str, tuple[str, str]]:
    """Every environment variable naming a setting: ``{variable: (section, key)}``."""
    names: dict[str, tuple[str, str]] = {}
    for section, cls in _SECTIONS.items():
        for key in cls.__struct_fields__:  # not typing.get_type_hints: it compiles every annotation (~3 ms)
            names[f"ENSEMBLE_{section.upper()}_{key.upper()}"] = (section, key)
            if section == "daemon":
                names[f"ENSEMBLE_{key.upper()}"] = (section, key)
    return names


def _env_settings(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(section, key): (variable, value)}`` for the ``ENSEMBLE_*`` settings in ``env``.

    Raises ConfigError for a variable that names no setting (a typo).
    """
    names = _env_names()
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for var, value in env.items():
        if not var.startswith("ENSEMBLE_") or var in OTHER_VARIABLES:
            continue
        if var not in names:
            import difflib

            # a near name among what a user sets (not what the runtime sets for its children, nor the tests'),
            # compared without the ENSEMBLE_ every name shares (a typo of any name was "near" the tests' ENSEMBLE_FIGURES)
            own = [*names, *(k for k, why in OTHER_VARIABLES.items() if not why.startswith(("tests:", "set ")))]
            near = difflib.get_close_matches(var.removeprefix("ENSEMBLE_"), [k.removeprefix("ENSEMBLE_") for k in own],
                                             n=1)
            raise ConfigError(f"environment variable {var} names no setting"
                              + (f"; did you mean ENSEMBLE_{near[0]}?" if near else "")
                              + " (a setting is ENSEMBLE_<SECTION>_<KEY>, a [daemon] key also ENSEMBLE_<KEY>); "
                              "unset it or fix its name")
        out[names[var]] = (var, value)
    return out


def _section_hint(key: str) -> str:
    """Where a key written outside every section belongs: ``put it under [daemon]``, or the sections there are."""
    homes = [section for section, cls in _SECTIONS.items() if key in _hints(cls)]
    if homes:
        return f"put it under {' or '.join(f'[{h}]' for h in homes)}"
    return f"keys go in a section: {', '.join(f'[{h}]' for h in _SECTIONS)}"


def _namer(sources: Mapping[tuple[str, str], str]) -> _Namer:
    """How a value reads in an error, after where it came from: ``sources`` maps ``(section, key)`` to an
    ``ENSEMBLE_*`` variable, ``config file F`` or ``config`` (a flag); a key it lacks holds its default."""
    def name(section: str, key: str, value: Any) -> str:
        source = sources.get((section, key))
        if source is None:
            return f"[{section}] {key} = {value!r} (the default)"
        if source.startswith("ENSEMBLE_"):
            return f"{source}={value!r} ([{section}] {key})"
        if source.startswith("--"):  # a command's own flag (see load_config's flags)
            return f"{source} {value!r} ([{section}] {key})"
        return f"{source}: [{section}] {key} = {value!r}"
    return name


def default_config_file(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/ensemble/config.toml`` (``~/.config/ensemble/config.toml`` when it is unset)."""
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ensemble" / "config.toml"


def not_regular_file(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be read as a file: ``"is not a regular file (...)"``, or "" when it is one or is missing.

    A FIFO would block the read forever, a device or a socket means nothing
    as a file.  Costs one ``stat`` (symbolic links followed).  The one check
    behind ``--config``, ``load`` and ``sample load`` (the CLI's
    ``RegularFile``) and behind the config file :func:`load_config` reads.
    """
    if os.path.exists(path) and not os.path.isfile(path):
        return "is not a regular file (a FIFO, device or socket cannot be read as one)"
    return ""


def _config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> tuple[Path, str, str] | None:
    """The config file to read (``path``, ``$ENSEMBLE_CONFIG``, else the default when it exists), or None;
    with how an error names it (where the path came from) and what to do about it.

    Raises ConfigError, so named, when it is not a regular file: reading a FIFO would hang.
    """
    if path:
        p = Path(path)
        named, fix = f"config file {p}", "give a TOML file"
    elif env.get("ENSEMBLE_CONFIG"):
        p = Path(env["ENSEMBLE_CONFIG"])
        named, fix = f"ENSEMBLE_CONFIG={env['ENSEMBLE_CONFIG']!r}", "point it at a TOML file or unset it"
    else:
        p = default_config_file(env)
        if not p.exists():
            return None
        named, fix = f"config file {p} (the default)", "make it a TOML file or remove it"
    problem = not_regular_file(p)
    if problem:
        raise ConfigError(f"{named} {problem}; {fix}")
    return p, named, fix


def _read_toml(p: Path, named: str, fix: str) -> dict[str, Any]:
    """The tables of the TOML file ``p``; ConfigError, naming it as ``named`` (and ``fix``), when it cannot be."""
    import tomllib

    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{named} does not exist; {fix}") from exc
    except OSError as exc:
        raise ConfigError(f"{named} cannot be read: {exc}; {fix}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{named} cannot be read: byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start} is not UTF-8; save it as UTF-8 (TOML files are)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    except ValueError as exc:  # a NUL in the path given: no variable or argument can hold one (after
        # TOMLDecodeError and UnicodeDecodeError, ValueErrors too)
        raise ConfigError(f"config file {str(p)!r} cannot be read: its path holds a NUL character; {fix}") from exc


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[tuple[str, str], str] | None = None,
) -> Config:
    """Load the configuration: TOML file, then ``ENSEMBLE_*`` environment, then ``overrides``.

    ``overrides`` is ``{"daemon": {"name": "x"}}``-shaped (from CLI flags; ``None``
    values are ignored).  Raises :class:`ConfigError` with one clear line on any
    bad file, key or value; a config path that is not a regular file (a FIFO
    would block the read forever) is refused before it is opened.  ``flags``
    names the flag that gave an override, ``{("daemon", "workers"): "--workers"}``,
    for its error (else it is named by its key).
    """
    env = os.environ if env is None else env
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}  # (section, key) -> where the user wrote it
    found = _config_path(path, env)
    if found is not None:
        p = found[0]
        raw = _read_toml(*found)
        for section, values in raw.items():
            if not isinstance(values, dict) and section in _SECTIONS:
                raise ConfigError(f"config file {p}: [{section}] must be a table")
            if not isinstance(values, dict):  # a key written above every section (log_level = "debug")
                raise ConfigError(f"config file {p}: {section} = {values!r} is outside every section: "
                                  f"{_section_hint(section)}")
            merged.setdefault(section, {}).update(values)
            sources.update(((section, key), f"config file {p}") for key in values)
        _build(merged, f"config file {p}", _namer(sources))  # file errors against the file, a default as one
    for (section, key), (var, value) in _env_settings(env).items():
        merged.setdefault(section, {})[key] = value
        sources[section, key] = var
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                merged.setdefault(section, {})[key] = value
                sources[section, key] = (flags or {}).get((section, key), "config")
    return _build(merged, "config", _namer(sources))


__all__ = [
    "AudioConfig",
    "ClusterConfig",
    "Config",
    "DaemonConfig",
    "JobsConfig",
    "SupervisionConfig",
    "load_config",
]



def _read_only(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False

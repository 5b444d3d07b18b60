"""One typed configuration object: TOML file, then ``ENSEMBLE_*`` environment, then flags.

Precedence, lowest first: built-in defaults, the TOML file (``--config FILE``,
``$ENSEMBLE_CONFIG``, else ``$XDG_CONFIG_HOME/ensemble/config.toml`` when it
exists, ``~/.config`` when ``XDG_CONFIG_HOME`` is unset), environment variables
named ``ENSEMBLE_<SECTION>_<KEY>`` (for example
``ENSEMBLE_SUPERVISION_HEARTBEAT_TIMEOUT=2``; the daemon section's keys also
answer to ``ENSEMBLE_<KEY>``, e.g. ``ENSEMBLE_NAME``), then flags given on the
command line.  :func:`load_config` returns a frozen :class:`Config`.  An
``ENSEMBLE_*`` variable that names no setting, and is none of
:data:`OTHER_VARIABLES`, is an error, as an unknown TOML key is.
"""

from __future__ import annotations

import json
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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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

    name: str = "default"
    workers: str = "auto"  # a number or "auto" (CPU count)
    run_dir: str = ""  # control sockets and lock; default $XDG_RUNTIME_DIR/ensemble/<name>
    state_dir: str = ""  # journal, log, parameters; default $XDG_STATE_HOME/ensemble/<name>
    log_level: str = "info"
    max_frame: int = 64 * 1024 * 1024  # bytes; larger frames are refused
    tcp: str = ""  # tcp endpoint for remote workers, e.g. tcp://0.0.0.0:7700 (needs CURVE keys)
    client_tcp: str = ""  # tcp endpoint for remote clients (needs CURVE keys)
    keys_dir: str = ""  # default <state dir>/keys
    metrics_port: int = 0  # Prometheus metrics on 127.0.0.1:PORT; 0 = off
    metrics_host: str = "127.0.0.1"
    extensions: tuple[str, ...] = ("*",)  # installed packages that add to the daemon (audio, controller); () = jobs only


class SupervisionConfig(msgspec.Struct, frozen=True):
    """Heartbeats, restart intensity and stop timing (OTP-style)."""

    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    max_restarts: int = 5
    restart_period: float = 10.0
    stop_grace: float = 2.0  # stop message -> SIGTERM
    term_grace: float = 1.0  # SIGTERM -> SIGKILL
    worker_nice: int = 5


class JobsConfig(msgspec.Struct, frozen=True):
    """What jobs may run and how much the daemon keeps."""

    allow: tuple[str, ...] = DEFAULT_ALLOW
    queue_limit: int = 1_000_000
    queue_bytes: int = 1024 * 1024 * 1024  # budget for the arguments of unfinished jobs held by the daemon
    retention: float = 7 * 24 * 3600.0  # seconds finished jobs are kept
    window: int = 64  # at most this many jobs handed to one worker at once (credit; adaptive below it)
    inline_array_limit: int = 64 * 1024  # arrays above this size travel through shared memory


class AudioConfig(msgspec.Struct, frozen=True):
    """The processor's backend and stream settings."""

    backend: str = "auto"  # auto (JACK if a server runs, else PortAudio, else null) | jack | sounddevice | null
    device: str = ""
    samplerate: int = 48000
    blocksize: int = 256
    channels: int = 2
    max_voices: int = 64
    steal: str = "oldest"  # voice stealing at the polyphony limit: oldest | newest | quietest | none
    script: str = ""
    script_dirs: tuple[str, ...] = ()  # where `ensemble load` from a remote admin may load scripts from
    autoconnect: bool = True  # JACK backend: connect out_N to the physical playback ports at start
    midi_in: tuple[str, ...] = ()  # JACK MIDI sources (port-name regexes) connected to <client>:midi_in


class ClusterConfig(msgspec.Struct, frozen=True):
    """Workers placed on a Ray cluster (``ray = "auto"`` or ``"ray://HOST:PORT"``; empty: no cluster).

    Needs ``pip install 'ensemble-rt[ray]'`` here and on every node, and a
    worker endpoint (``[daemon] tcp`` with CURVE keys) the nodes can reach:
    each Ray actor hosts a worker that connects back with a key issued for it.
    """

    ray: str = ""  # "" (off) | "auto" (the cluster this host belongs to) | "ray://HOST:PORT" | "HOST:PORT"
    workers: int = 0  # Ray-placed workers started with the daemon (`ensemble scale N --on ray` changes it)
    # what Ray reserves for each Ray-placed worker
    worker_resources: dict[str, float] = msgspec.field(default_factory=lambda: {"CPU": 1.0})
    max_workers: int = 64  # at most this many Ray-placed workers, those started for jobs' resources included
    connect: str = ""  # where workers connect back (tcp://HOST:PORT); default [daemon] tcp on this node's IP
    # numeric arrays of at least this many bytes cross to and from Ray-placed workers through Ray's object
    # store instead of the frame (0: never; everything goes in the frame, as to any remote worker).  2 MiB: the
    # frame is as fast at 1 MiB and twice as slow at 2 MiB (bench/README.md, ray_arrays)
    object_store_min_bytes: int = 2 << 20


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


_SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "supervision": SupervisionConfig,
    "jobs": JobsConfig,
    "audio": AudioConfig,
    "cluster": ClusterConfig,
}


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce a TOML/env/flag value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
        if origin is dict:  # resources: a TOML table, or NAME=AMOUNT,... from the environment or a flag
            return parse(value, where) if isinstance(value, str) else check(value, where)
        if origin is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(hint)}") from exc
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "list of strings"
    if typing.get_origin(hint) is dict:
        return "table of name = amount"
    return getattr(hint, "__name__", str(hint))


def _build(data: Mapping[str, Any], where: str) -> Config:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of sections")
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{key}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: [{key}] must be a table")
        sections[key] = _build_section(_SECTIONS[key], value, f"{where} [{key}]")
    cfg = Config(**sections)
    _validate(cfg)
    return cfg


def _build_section(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(hints)}")
        kwargs[key] = _convert(value, hints[key], f"{where} {key}")
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    if not _NAME_RE.match(cfg.daemon.name):
        raise ConfigError(
            f"daemon name {cfg.daemon.name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    workers = cfg.daemon.workers
    if workers != "auto" and not (workers.isdigit() and 0 <= int(workers) <= 1024):
        raise ConfigError(f"workers {workers!r} is invalid: give a number 0-1024 or 'auto'")
    sup = cfg.supervision
    if sup.heartbeat_interval <= 0 or sup.heartbeat_timeout <= sup.heartbeat_interval:
        raise ConfigError("heartbeat_timeout must be greater than heartbeat_interval > 0")
    if sup.max_restarts < 0 or sup.restart_period <= 0:
        raise ConfigError("max_restarts must be >= 0 and restart_period > 0")
    if cfg.daemon.max_frame < 1024:
        raise ConfigError(f"max_frame {cfg.daemon.max_frame} is too small (minimum 1024 bytes)")
    for field_name in ("tcp", "client_tcp"):
        endpoint = getattr(cfg.daemon, field_name)
        if endpoint and not endpoint.startswith("tcp://"):
            raise ConfigError(f"daemon.{field_name} {endpoint!r} must be a tcp:// endpoint")
    if not 0 <= cfg.daemon.metrics_port <= 65535:
        raise ConfigError(f"metrics_port {cfg.daemon.metrics_port} is not a port number")
    if not 1 <= cfg.jobs.queue_limit <= 2**40 or not 1024 <= cfg.jobs.queue_bytes <= 2**50:
        raise ConfigError("jobs.queue_limit must be 1..2**40 and jobs.queue_bytes 1024..2**50")
    if cfg.jobs.window < 1:
        raise ConfigError("jobs.window must be at least 1")
    if cfg.audio.steal not in ("oldest", "newest", "quietest", "none"):
        raise ConfigError(f"audio steal {cfg.audio.steal!r} is invalid: oldest, newest, quietest or none")
    _validate_cluster(cfg)
    if cfg.audio.backend not in ("auto", "jack", "sounddevice", "null"):
        raise ConfigError(f"audio backend {cfg.audio.backend!r} is invalid: auto, jack, sounddevice or null")


def _validate_cluster(cfg: Config) -> None:
    c = cfg.cluster
    if c.ray and c.ray != "auto" and not c.ray.startswith("ray://") and not re.match(r"^[\w.-]+:\d+$", c.ray):
        raise ConfigError(f"cluster ray {c.ray!r} is invalid: give \"auto\", \"ray://HOST:PORT\" or \"HOST:PORT\"")
    if not 0 <= c.workers <= 1024 or not 1 <= c.max_workers <= 1024:
        raise ConfigError("cluster.workers must be 0..1024 and cluster.max_workers 1..1024")
    if c.workers and not c.ray:
        raise ConfigError(f"cluster.workers = {c.workers} needs a cluster: set [cluster] ray = \"auto\" "
                          "(or \"ray://HOST:PORT\")")
    if c.ray and not cfg.daemon.tcp:
        raise ConfigError("[cluster] ray needs a worker endpoint the nodes can reach: set [daemon] tcp, "
                          "e.g. \"tcp://0.0.0.0:7700\", and run `ensemble keys init`")
    if c.connect and not c.connect.startswith("tcp://"):
        raise ConfigError(f"cluster.connect {c.connect!r} must be a tcp:// endpoint")
    if not 0 <= c.object_store_min_bytes <= 2**50:
        raise ConfigError(f"cluster.object_store_min_bytes {c.object_store_min_bytes} must be 0 (never) .. 2**50 bytes")


def _env_names() -> dict[str, tuple[str, str]]:
    """Every environment variable naming a setting: ``{variable: (section, key)}``."""
    names: dict[str, tuple[str, str]] = {}
    for section, cls in _SECTIONS.items():
        for key in typing.get_type_hints(cls):
            names[f"ENSEMBLE_{section.upper()}_{key.upper()}"] = (section, key)
            if section == "daemon":
                names[f"ENSEMBLE_{key.upper()}"] = (section, key)
    return names


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The settings ``ENSEMBLE_*`` variables give; ConfigError for one that names no setting (a typo)."""
    names = _env_names()
    out: dict[str, dict[str, Any]] = {}
    for var, value in env.items():
        if not var.startswith("ENSEMBLE_") or var in OTHER_VARIABLES:
            continue
        if var not in names:
            import difflib

            near = difflib.get_close_matches(var, [*names, *OTHER_VARIABLES], n=1)
            raise ConfigError(f"environment variable {var} names no setting"
                              + (f"; did you mean {near[0]}?" if near else "")
                              + " (a setting is ENSEMBLE_<SECTION>_<KEY>, a [daemon] key also ENSEMBLE_<KEY>); "
                              "unset it or fix its name")
        section, key = names[var]
        out.setdefault(section, {})[key] = value
    return out


def default_config_file(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/ensemble/config.toml`` (``~/.config/ensemble/config.toml`` when it is unset)."""
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ensemble" / "config.toml"


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load the configuration: TOML file, then ``ENSEMBLE_*`` environment, then ``overrides``.

    ``overrides`` is ``{"daemon": {"name": "x"}}``-shaped (from CLI flags; ``None``
    values are ignored).  Raises :class:`ConfigError` with one clear line on any
    bad file, key or value.
    """
    env = os.environ if env is None else env
    merged: dict[str, dict[str, Any]] = {}
    path = path or env.get("ENSEMBLE_CONFIG") or None
    if path is None and default_config_file(env).is_file():
        path = default_config_file(env)
    if path:
        import tomllib

        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config file {p}: [{section}] must be a table")
            merged.setdefault(section, {}).update(values)
        _build(merged, f"config file {p}")  # report file errors against the file
    for section, values in _env_overrides(env).items():
        merged.setdefault(section, {}).update(values)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                merged.setdefault(section, {})[key] = value
    return _build(merged, "config")


__all__ = [
    "AudioConfig",
    "ClusterConfig",
    "Config",
    "DaemonConfig",
    "JobsConfig",
    "SupervisionConfig",
    "load_config",
]


"""CURVE keys for tcp: the daemon's key pair, issued peer keys with their roles, and the allow-lists.

Layout under the keys directory (``[daemon] keys_dir``, default ``<state dir>/keys``, mode 0700)::

    server.key, server.key_secret      the daemon's key pair (ZeroMQ certificate files)
    issued/NAME.key, NAME.key_secret   key pairs issued to remote peers
    allowed/ROLE/NAME.key              public keys the daemon accepts, one directory per role

A key grants its role and nothing more (see docs/security.md):

* ``worker`` — accepted only on the worker endpoint (``[daemon] tcp``): runs the jobs it is handed;
* ``client`` — accepted only on the client endpoint (``[daemon] client_tcp``): submits jobs the
  allow-list admits, reads and cancels its own jobs;
* ``admin`` — client endpoint too, and may also scale, stop the daemon, load scripts and samples.

Revoking removes ``allowed/ROLE/NAME.key``; the running daemon notices and refuses
the key from then on, without a restart.  A key in ``allowed/`` itself (from a
release before roles) grants nothing: re-issue it with its role.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import zmq.auth

from actors._errors import ConfigError
from actors.config import Config

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # (fullmatch: "$" also matches before a final newline)
ROLES = ("worker", "client", "admin")


def keys_dir(cfg: Config) -> Path:
    """Where this daemon's keys live."""
    return Path(cfg.daemon.keys_dir) if cfg.daemon.keys_dir else cfg.state_dir / "keys"


def _mkdir(p: Path) -> None:
    old = os.umask(0o077)
    try:
        p.mkdir(parents=True, exist_ok=True, mode=0o700)
    finally:
        os.umask(old)
    os.chmod(p, 0o700)


def check_name(name: str) -> str:
    """A peer name, or ConfigError: 1-64 letters, digits, '.', '_' or '-', not starting with '.' (no paths)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "server":
        raise ConfigError(f"peer name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit; 'server' is the daemon's own)")
    return name


def init_keys(directory: Path, force: bool = False) -> Path:
    """Write the daemon's key pair; returns the public key file to hand to peers."""
    _mkdir(directory)
    _mkdir(directory / "issued")
    _mkdir(directory / "allowed")
    public = directory / "server.key"
    if public.exists() and not force:
        raise ConfigError(f"{public} exists; keys were initialised already (use --force to replace them)")
    old = os.umask(0o077)
    try:
        pub, secret = zmq.auth.create_certificates(str(directory), "server")
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    return Path(pub)


def add_peer(directory: Path, name: str, role: str) -> Path:
    """Issue a key pair for a remote peer with ``role`` and allow it; returns its secret key file."""
    check_name(name)
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is unknown: {', '.join(ROLES)}")
    if not (directory / "server.key").exists():
        raise ConfigError(f"no daemon keys in {directory}; run `ensemble keys init` first")
    for other in ROLES:
        if (directory / "allowed" / other / f"{name}.key").exists():
            raise ConfigError(f"a key named {name!r} is already allowed as {other}; revoke it first "
                              f"(`ensemble keys revoke {name}`) or pick another name")
    issued = directory / "issued"
    _mkdir(issued)
    _mkdir(directory / "allowed" / role)
    old = os.umask(0o077)
    try:
        pub, secret = zmq.auth.create_certificates(str(issued), name)
        shutil.copyfile(pub, directory / "allowed" / role / f"{name}.key")
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    return Path(secret)


def revoke(directory: Path, name: str) -> str:
    """Remove a peer from the allow-lists (the daemon refuses it from now on); returns the role it had."""
    check_name(name)
    for role in ROLES:
        target = directory / "allowed" / role / f"{name}.key"
        if target.exists():
            target.unlink()
            return role
    raise ConfigError(f"no allowed key named {name!r} in {directory / 'allowed'}")


def list_keys(directory: Path) -> list[tuple[str, str]]:
    """``(name, role)`` of every allowed key, by role then name."""
    out = []
    for role in ROLES:
        d = directory / "allowed" / role
        if d.is_dir():
            out += [(f.stem, role) for f in sorted(d.glob("*.key"))]
    return out


def allowed_keys(directory: Path) -> dict[bytes, tuple[str, str]]:
    """z85 public key -> ``(role, name)`` for every key currently allowed."""
    out: dict[bytes, tuple[str, str]] = {}
    for role in ROLES:
        d = directory / "allowed" / role
        if not d.is_dir():
            continue
        for f in d.glob("*.key"):
            try:
                out[zmq.auth.load_certificate(str(f))[0]] = (role, f.stem)
            except (OSError, ValueError):
                continue
    return out


def unassigned_keys(directory: Path) -> list[str]:
    """Names of keys left directly in ``allowed/`` (before roles): they grant nothing."""
    d = directory / "allowed"
    return sorted(f.stem for f in d.glob("*.key")) if d.is_dir() else []


def server_keys(directory: Path) -> tuple[bytes, bytes]:
    """The daemon's (public, secret) key pair; ConfigError if missing."""
    secret_file = directory / "server.key_secret"
    if not secret_file.exists():
        raise ConfigError(
            f"refusing to bind a tcp endpoint without CURVE keys: {secret_file} is missing; run `ensemble keys init`"
        )
    return load_pair(secret_file)


def load_pair(secret_file: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate file; ConfigError saying why not."""
    try:
        pub, sec = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read key file {secret_file}: {exc}") from exc
    if sec is None:
        raise ConfigError(f"{secret_file} holds no secret key (pass the .key_secret file)")
    return pub, sec


def load_public(public_file: str | os.PathLike[str]) -> bytes:
    """A public key from a ``.key`` certificate file."""
    try:
        pub, _ = zmq.auth.load_certificate(str(public_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read key file {public_file}: {exc}") from exc
    return pub


def curve_client(sock: zmq.Socket[bytes], secret_file: str, server_public_file: str) -> None:
    """Make ``sock`` a CURVE client of the daemon."""
    pub, sec = load_pair(secret_file)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = load_public(server_public_file)

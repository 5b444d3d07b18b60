"""CURVE keys for tcp: the daemon's key pair, issued peer keys and the allow-list.

Layout under the keys directory (``[daemon] keys_dir``, default ``<state dir>/keys``, mode 0700)::

    server.key, server.key_secret      the daemon's key pair (ZeroMQ certificate files)
    issued/NAME.key, NAME.key_secret   key pairs issued to remote workers and clients
    allowed/NAME.key                   public keys the daemon accepts (the ZAP allow-list)

Revoking removes ``allowed/NAME.key``; the running daemon notices and refuses
the key from then on, without a restart.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import zmq.auth

from actors._errors import ConfigError
from actors.config import Config

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def keys_dir(cfg: Config) -> Path:
    """Where this daemon's keys live."""
    return Path(cfg.daemon.keys_dir) if cfg.daemon.keys_dir else cfg.state_dir / "keys"


def _mkdir(p: Path) -> None:
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)


def init_keys(directory: Path, force: bool = False) -> Path:
    """Write the daemon's key pair; returns the public key file to hand to peers."""
    _mkdir(directory)
    _mkdir(directory / "issued")
    _mkdir(directory / "allowed")
    public = directory / "server.key"
    if public.exists() and not force:
        raise ConfigError(f"{public} exists; keys were initialised already (use --force to replace them)")
    pub, secret = zmq.auth.create_certificates(str(directory), "server")
    os.chmod(secret, 0o600)
    return Path(pub)


def add_peer(directory: Path, name: str) -> Path:
    """Issue a key pair for a remote worker or client and allow it; returns its secret key file."""
    if not _NAME.match(name):
        raise ConfigError(f"peer name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'")
    if not (directory / "server.key").exists():
        raise ConfigError(f"no daemon keys in {directory}; run `ensemble keys init` first")
    issued = directory / "issued"
    _mkdir(issued)
    _mkdir(directory / "allowed")
    pub, secret = zmq.auth.create_certificates(str(issued), name)
    os.chmod(secret, 0o600)
    shutil.copyfile(pub, directory / "allowed" / f"{name}.key")
    return Path(secret)


def revoke(directory: Path, name: str) -> None:
    """Remove a peer from the allow-list (the daemon refuses it from now on)."""
    target = directory / "allowed" / f"{name}.key"
    if not target.exists():
        raise ConfigError(f"no allowed key named {name!r} in {directory / 'allowed'}")
    target.unlink()


def server_keys(directory: Path) -> tuple[bytes, bytes]:
    """The daemon's (public, secret) key pair; ConfigError if missing."""
    secret_file = directory / "server.key_secret"
    if not secret_file.exists():
        raise ConfigError(
            f"refusing to bind a tcp endpoint without CURVE keys: {secret_file} is missing; run `ensemble keys init`"
        )
    try:
        pub, sec = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the daemon's key file {secret_file}: {exc}") from exc
    if sec is None:
        raise ConfigError(f"{secret_file} holds no secret key")
    return pub, sec


def load_pair(secret_file: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate file."""
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


def allowed_keys(directory: Path) -> set[bytes]:
    """z85 public keys currently in the allow-list."""
    out = set()
    allowed = directory / "allowed"
    if allowed.is_dir():
        for f in allowed.glob("*.key"):
            try:
                out.add(zmq.auth.load_certificate(str(f))[0])
            except (OSError, ValueError):
                continue
    return out


def curve_client(sock: zmq.Socket[bytes], secret_file: str, server_public_file: str) -> None:
    """Make ``sock`` a CURVE client of the daemon."""
    pub, sec = load_pair(secret_file)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = load_public(server_public_file)

"""Resources: what a job needs and what a worker's slot offers (``{"CPU": 1, "GPU": 1, "memory": 2e9}``).

A job that names resources runs only on a worker whose slot offers at least
that much of each (:func:`fits`); a job that names none runs anywhere.  A
worker runs one job at a time, so a slot's resources are never shared out
between jobs: a GPU job waits in the queue (by priority) while the GPU
worker is busy.  Names follow Ray's: ``CPU``, ``GPU``, ``memory`` (bytes) and
any custom name.

What slots offer: a local worker its host's CPUs and memory
(:func:`host_resources`); a worker placed on a Ray cluster what Ray reserved
for its actor; a worker joined by hand over tcp what it says in its hello
(``ensemble worker --resources``).

Pure functions, no sockets: unit-tested in ``tests/actors/test_dispatch.py``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

from actors._errors import ConfigError

MAX_NAMES = 32  # resource names one job or slot may carry
_MAX_NAME_LEN = 64
_MAX_AMOUNT = 1e18


def check(resources: Any, what: str) -> dict[str, float]:
    """``resources`` as ``{name: amount}`` with float amounts, or ConfigError saying what is wrong in ``what``.

    Names are 1-64 characters, at most :data:`MAX_NAMES` of them; amounts are
    finite numbers from 0 to 1e18.  Raised as :class:`ConfigError`; callers
    on the job path translate it to :class:`~actors.JobRefused`.
    """
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{what}: resources must be a table of name = amount, got {type(resources).__name__}")
    if len(resources) > MAX_NAMES:
        raise ConfigError(f"{what}: {len(resources)} resource names, at most {MAX_NAMES}")
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not 1 <= len(name) <= _MAX_NAME_LEN:
            raise ConfigError(f"{what}: resource name {name!r} must be 1-{_MAX_NAME_LEN} characters")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or not math.isfinite(amount) or not 0 <= amount <= _MAX_AMOUNT:
            raise ConfigError(f"{what}: resource {name} = {amount!r} must be a number from 0 to 1e18")
        out[name] = float(amount)
    return out


def parse(text: str, what: str) -> dict[str, float]:
    """``"CPU=1,GPU=0.5"`` (a flag or an environment variable) as a resources table (``none``: empty)."""
    out: dict[str, Any] = {}
    if text.strip() == "none":
        return {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, amount = part.partition("=")
        if not sep:
            raise ConfigError(f"{what}: {part[:80]!r} is no NAME=AMOUNT (e.g. GPU=1)")
        if name.strip() in out:
            raise ConfigError(f"{what}: resource {name.strip()[:80]} is given twice; give it once")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            out[name.strip()] = amount
    return check(out, what)


def fits(need: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    """Whether a slot offering ``offer`` can run a job needing ``need`` (every amount at least as big)."""
    for name, amount in need.items():
        if amount > 0 and offer.get(name, 0.0) < amount:
            return False
    return True


def host_resources() -> dict[str, float]:
    """What a local worker offers: this host's CPUs (the ones this process may use) and memory in bytes."""
    out = {"CPU": float(len(os.sched_getaffinity(0)))}
    try:
        out["memory"] = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass
    return out


def describe(resources: Mapping[str, float]) -> str:
    """``CPU=1,GPU=1`` for logs and errors (``none`` when empty)."""
    return ",".join(f"{k}={v:g}" for k, v in sorted(resources.items())) or "none"

"""Job functions of tests/actors/test_executor_differential.py: each runs alike on ProcessPoolExecutor and Executor."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def identity(value: Any) -> Any:
    return value


def add(a: Any, b: Any) -> Any:
    return a + b


def size(value: bytes) -> int:
    return len(value)


def zeros(n: int) -> bytes:
    return bytes(n)


def gate(marker_dir: str, gate_file: str, value: Any = None, seconds: float = 60.0) -> Any:
    """Say it started (a file in ``marker_dir``), then wait for ``gate_file`` to exist; return ``value``."""
    Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    end = time.monotonic() + seconds
    while not os.path.exists(gate_file):
        if time.monotonic() > end:
            raise TimeoutError(f"{gate_file} never appeared")
        time.sleep(0.005)
    return value


def write(path: str, text: str) -> str:
    Path(path).write_text(text)
    return text


class PlainError(Exception):
    """A module-level exception that pickles and rebuilds."""


class TwoArgError(Exception):
    """Pickles but cannot be rebuilt: its constructor takes two arguments, its args hold one."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")
        self.a, self.b = a, b


class LockedError(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class PickleRefused(Exception):
    """What :class:`RefusesPickle` raises when it is pickled: an exception class of the user's, not pickle's."""


class RefusesPickle:
    """A value whose own pickling raises :class:`PickleRefused` (a handle that must stay in its process)."""

    def __reduce__(self) -> Any:
        raise PickleRefused("this handle stays in its process")


def return_refuses_pickle() -> RefusesPickle:
    return RefusesPickle()


def raise_plain(message: str) -> None:
    raise PlainError(message)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_two_arg() -> None:
    raise TwoArgError(1, 2)


def raise_locked() -> None:
    raise LockedError("holds a lock")


def raise_system_exit() -> None:
    raise SystemExit(3)


def call_sys_exit() -> None:
    sys.exit(3)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("stop")


def exit_process() -> None:
    os._exit(1)


def return_lock() -> Any:
    return threading.Lock()


def return_local_function() -> Any:
    def local() -> None:
        pass

    return local


def nested(depth: int) -> Any:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    n = 0
    while value:
        value, n = value[0], n + 1
    return n


def init_fails(message: str) -> None:
    raise RuntimeError(message)


def nested_executor(kind: str, x: int) -> int:
    """A job that makes an executor of its own (with no argument, as a library would) and waits on it."""
    if kind == "ppe":
        from concurrent.futures import ProcessPoolExecutor as Pool
    else:
        from ensemble import Executor as Pool  # type: ignore[assignment]
    with Pool(1) as inner:
        return int(inner.submit(add, x, 1).result(60))


def nested_executor_in_thread(kind: str, x: int) -> int:
    """:func:`nested_executor` on a thread the job starts and waits for (a library's worker thread)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as threads:
        return threads.submit(nested_executor, kind, x).result(120)


def raising_items(n: int) -> Any:
    """A generator that yields ``n`` items, then raises."""
    yield from range(n)
    raise ValueError("the iterable broke")

"""A failed job's exception class found again in the client when the script run as ``__main__`` defines it.

No daemon: :func:`actors._errors.remote_error` reads the name a worker reported (:func:`error_name`, bare for a
class of ``__main__``, as a traceback prints it) against the modules of this process, here a stand-in
``__main__``.  tests/actors/test_executor_differential.py runs a real script on both pools.
"""

from __future__ import annotations

import sys
import types
from typing import Iterator

import pytest

from actors import RemoteError
from actors._errors import error_name, remote_error


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A stand-in for the script run as ``__main__``: its own ``MyError``, ``Outer.Inner``, a ``ValueError`` of
    its own, and ``ImportedError``, a class it imported from a module."""
    main = types.ModuleType("__main__")
    for name in ("MyError", "ValueError"):
        setattr(main, name, type(name, (Exception,), {"__module__": "__main__"}))
    inner = type("Inner", (Exception,), {"__module__": "__main__", "__qualname__": "Outer.Inner"})
    setattr(main, "Outer", type("Outer", (), {"__module__": "__main__", "Inner": inner}))
    setattr(main, "ImportedError", type("ImportedError", (Exception,), {"__module__": "somewhere"}))
    monkeypatch.setitem(sys.modules, "__main__", main)
    yield main


def test_a_class_of_the_script_comes_back_as_that_class_with_the_remote_traceback_as_its_cause(
        script: types.ModuleType) -> None:
    """It came back a plain RemoteError: only builtins were looked in for a bare name."""
    assert error_name(script.MyError) == "MyError"
    error = remote_error("MyError", "boom", "Traceback ...\nMyError: boom\n")
    assert isinstance(error, script.MyError) and isinstance(error, RemoteError)
    assert str(error) == "boom" and error.args == ("boom",) and type(error).__qualname__ == "MyError"
    assert isinstance(error.__cause__, RemoteError) and "Traceback ..." in str(error.__cause__)


def test_a_class_nested_in_one_of_the_script_s_is_found_by_its_qualname(script: types.ModuleType) -> None:
    assert error_name(script.Outer.Inner) == "Outer.Inner"
    assert isinstance(remote_error("Outer.Inner", "deep"), script.Outer.Inner)


def test_a_builtin_comes_first_and_a_class_the_script_only_imported_is_not_taken_for_its_own(
        script: types.ModuleType) -> None:
    """A bare name is a builtin's first (the script's own ``ValueError`` does not take a builtin's place); in
    ``__main__`` only a class the script defined counts: ``ImportedError`` there is somewhere's, whose jobs
    report it as ``somewhere.ImportedError``."""
    error = remote_error("ValueError", "builtin")
    assert isinstance(error, ValueError) and not isinstance(error, script.ValueError)
    plain = remote_error("ImportedError", "not the script's")
    assert type(plain) is RemoteError and str(plain).startswith("ImportedError: not the script's")


def test_without_such_a_class_in_the_script_it_is_a_plain_remote_error(script: types.ModuleType) -> None:
    for name in ("Missing", "Outer.Missing", "Outer"):  # (Outer is no exception)
        error = remote_error(name, "gone", "tb")
        assert type(error) is RemoteError and error.type_name == name and "tb" in str(error)

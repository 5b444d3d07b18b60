"""A value whose own pickling raises an exception of the user's: that exception, saying where, as a note.

Without processes: :mod:`actors._exact` alone.  tests/actors/test_executor_differential.py compares a job's
argument, result and map item of that kind on ProcessPoolExecutor and Executor.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from actors._exact import PICKLE_ERRORS, dumps, dumps_arguments


_LAMBDA = lambda: 1  # noqa: E731 - pickle cannot find it by its name: PicklingError


class Refused(Exception):
    pass


class Refuses:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        raise self.error if self.error is not None else Refused("not across")


def test_the_user_s_own_exception_is_raised_as_it_is_with_where_as_a_note() -> None:
    """It became a TypeError; the pool raises the user's exception, its type and text."""
    with pytest.raises(Refused) as caught:
        dumps_arguments("m:f", (1,), {"opts": {"handle": Refuses()}})
    assert str(caught.value) == "not across" and caught.value.args == ("not across",)
    assert caught.value.__notes__ == [
        f"m:f: kwargs['opts']['handle'] cannot cross to another process: a {__name__}.Refuses raised this when it was "
        "pickled"]
    assert isinstance(caught.value, PICKLE_ERRORS)  # what a submit catches, to fail the job's future with it
    with pytest.raises(Refused) as caught:
        dumps([Refuses()], "the job's result")
    assert caught.value.__notes__ == [
        f"the job's result[0] cannot cross to another process: a {__name__}.Refuses raised this when it was pickled"]


def test_an_exception_raised_again_and_again_is_noted_once() -> None:
    shared = Refused("one instance")
    for _ in range(3):
        with pytest.raises(Refused):
            dumps(Refuses(shared), "result")
    assert len(shared.__notes__) == 1


def test_pickle_s_own_errors_keep_their_class_with_where_in_their_text() -> None:
    """As before: the text names the part and where; a TypeError of the user's __reduce__ is pickle's kind."""
    with pytest.raises(TypeError, match=r"m:f: args\[0\] cannot cross to another process: a _thread.lock does not "
                                        r"pickle \(cannot pickle '_thread.lock' object\)"):
        dumps_arguments("m:f", (threading.Lock(),), {})
    with pytest.raises(TypeError, match=r"result cannot cross .* does not pickle \(mine\)") as caught:
        dumps(Refuses(TypeError("mine")), "result")
    assert not getattr(caught.value, "__notes__", None)
    with pytest.raises(pickle.PicklingError, match="result cannot cross"):
        dumps(_LAMBDA, "result")


def test_a_callable_job_s_arguments_are_named_as_the_caller_counts_them() -> None:
    """A function that travels with its arguments is ``args[0]`` on the wire; the caller's first argument is
    still ``args[0]`` in the error (it said ``args[1]``), and a function that does not pickle is named so."""
    with pytest.raises(TypeError, match=r"m:f: args\[0\] cannot cross .* _thread.lock"):
        dumps_arguments("m:f", (len, threading.Lock()), {}, head=True)
    with pytest.raises(TypeError, match=r"m:f: kwargs\['y'\] cannot cross .* _thread.lock"):
        dumps_arguments("m:f", (len, 1), {"y": threading.Lock()}, head=True)
    with pytest.raises(pickle.PicklingError, match=r"m:f: the function cannot cross"):
        dumps_arguments("m:f", (_LAMBDA, 1), {}, head=True)

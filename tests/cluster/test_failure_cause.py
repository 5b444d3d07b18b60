"""What the daemon's Ray driver reports of a failed run: the cause Ray's error ends with, short (no cluster needed)."""

from __future__ import annotations

from actors._ray_driver import failure_cause


class ActorDiedError(Exception):
    """Named as Ray's own: the report starts with the exception's type name."""


def test_the_last_error_line_of_ray_s_traceback_is_the_cause_without_colour_codes() -> None:
    text = ("The actor died because of an error raised in its creation task, \x1b[36mray::ray-ab12-1:WorkerHost"
            ".__init__()\x1b[39m (pid=1, ip=10.0.0.5)\n  File \"python/ray/_raylet.pyx\", line 2205\n"
            "RuntimeError: The actor with name WorkerHost failed to import on the worker.\n"
            "           ^^^^^^^^^^^^\n"
            "ModuleNotFoundError: No module named 'actors._ray_host'; 'actors' is not a package")
    assert failure_cause(ActorDiedError(text)) == ("ActorDiedError: ModuleNotFoundError: No module named "
                                                   "'actors._ray_host'; 'actors' is not a package")


def test_a_message_with_no_error_line_gives_its_first_line_and_a_long_one_is_cut() -> None:
    assert failure_cause(ActorDiedError("The actor died unexpectedly before finishing this task.\nmore")) == (
        "ActorDiedError: The actor died unexpectedly before finishing this task.")
    assert failure_cause(ActorDiedError("")) == "ActorDiedError"
    assert failure_cause(KeyError("x")) == "KeyError: 'x'"
    assert failure_cause(RuntimeError("RuntimeError: said twice")) == "RuntimeError: said twice"
    long = failure_cause(ActorDiedError("ValueError: " + "v" * 1000), limit=100)
    assert len(long) == 100 and long.endswith("...") and long.startswith("ActorDiedError: ValueError: vvv")

"""A parameter value the script would refuse is refused to the caller of ``param set``, never acknowledged.

Most tests share one daemon: each loads the script from a path of its own
(``tmp_path``), so that no value another test saved is restored, and reads
only its own script's saved state and the log lines written since it began.
The tests that assert a parameter's default take a daemon of their own: a
controller keeps the values the script before it had for parameters of the
same name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

import actors.cli  # noqa: F401 - first: controller._cli imports it, and it imports controller._cli (commands)
from actors import OutOfRange
from controller._cli import _value_of
from controller.client import ScriptLoadError
from controller.messages import ParamInfo
from tests.conftest import Daemon, wait_for

SCRIPT = '''
from controller.script import define_parameter

define_parameter("gain", "Gain", 0.5, 0.0, 1.0)
define_parameter("count", "Count", 3, 0, 16)
define_parameter("mode", "Mode", "a", choices=["a", "b"])
define_parameter("on", "On", False)
define_parameter("text", "Text", "hi")
define_parameter("free", "Free", 0.0)
'''
NAMES = {"gain", "count", "mode", "on", "text", "free"}


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The module's daemon (this module's tests only load scripts and set their parameters)."""
    return shared_daemon


@pytest.fixture
def own_daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon of the test's own, whose controller has run no script before (every parameter at its default)."""
    d = make_daemon()
    d.up()
    return d


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """This test's own copy of :data:`SCRIPT` (the daemon saves parameter values per script path)."""
    path = tmp_path / "params.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture
def new_log(daemon: Daemon) -> Callable[[], str]:
    """The daemon's log as written since this test began."""
    log = daemon.base / "state" / "daemon.log"
    start = log.stat().st_size
    return lambda: log.read_bytes()[start:].decode(errors="replace")


def _loaded(d: Daemon, script: Path) -> Any:
    c = d.client()
    c.load_script(str(script), wait=60)  # ready: the parameters listed are this script's, not the test's before
    wait_for(lambda: {p.name for p in c.params()} == NAMES, what="the script's parameters")
    return c


def _refused(d: Daemon, *cases: tuple[str, ...]) -> None:
    """``ensemble param set NAME VALUE`` of each case ``(NAME, VALUE, *REASONS)`` (run side by side) fails saying
    each of its reasons and does not claim the value was set."""
    for (name, value, *reasons), proc in zip(cases, d.cli_each(*(["param", "set", "--", *case[:2]] for case in cases))):
        assert proc.returncode == 1, (value, proc.stdout, proc.stderr)
        assert all(reason in proc.stderr for reason in reasons), (value, proc.stderr)
        assert f"{name} = " not in proc.stdout


def _state(d: Daemon, script: Path) -> str:
    """What the daemon saved for ``script`` (its entry in ``script-state.json``, as JSON text; "" when none)."""
    path = d.base / "state" / "script-state.json"
    if not path.exists():
        return ""
    entry = json.loads(path.read_text()).get(str(script.resolve()))  # written whole (renamed over the old one)
    return json.dumps(entry) if entry is not None else ""


def test_a_float_parameter_refuses_nan_and_infinity(daemon: Daemon, script: Path) -> None:
    c = _loaded(daemon, script)
    _refused(daemon, *(("gain", text, "a parameter value must be a finite number")
                       for text in ("NaN", "Infinity", "-Infinity", "1e999")))
    with pytest.raises(OutOfRange, match="finite"):
        c.set_param("gain", float("nan"))
    daemon.cli("param", "set", "gain", "0.25")
    wait_for(lambda: c.get_param("gain") == 0.25, what="a good value to be applied")
    wait_for(lambda: '"gain": 0.25' in _state(daemon, script), what="the good value to be persisted")
    assert "NaN" not in _state(daemon, script) and "Infinity" not in _state(daemon, script)


def test_an_int_parameter_refuses_what_is_no_int_in_range_without_an_internal_error(
        daemon: Daemon, script: Path, new_log: Callable[[], str]) -> None:
    c = _loaded(daemon, script)
    _refused(daemon, ("count", "1e999", "a parameter value must be a finite number"),
             ("count", "2.5", "an int parameter takes a whole number"),
             ("count", str(2**63), "an int parameter must fit in 64 bits"),
             ("count", "17", "outside 0..16"))
    assert "request-failed" not in new_log() and "internal error" not in new_log()
    daemon.cli("param", "set", "count", "7")
    wait_for(lambda: c.get_param("count") == 7, what="a good value to be applied")


def test_a_choice_parameter_refuses_a_value_it_does_not_offer(daemon: Daemon, script: Path,
                                                              new_log: Callable[[], str]) -> None:
    c = _loaded(daemon, script)
    _refused(daemon, ("mode", "bogus", "'bogus' is not one of ['a', 'b']"))
    with pytest.raises(OutOfRange, match="is not one of"):
        c.set_param("mode", 1)
    assert daemon.cli("param", "set", "mode", "b").stdout.strip() == 'mode = "b"'
    wait_for(lambda: c.get_param("mode") == "b", what="an offered value to be applied")
    assert "script-error" not in new_log()  # the controller never had a value to refuse


def test_a_choice_of_numbers_does_not_take_true_for_1_and_gives_back_the_choice_itself() -> None:
    from controller._host import ParamDef

    numbers = ParamDef("n", "N", 1, kind="choice", choices=(1, 2.5)).checked()
    for bad in (True, False, "1"):
        with pytest.raises(ValueError, match="is not one of"):
            numbers.coerce(bad)
    assert [(v, type(v)) for v in (numbers.coerce(1.0), numbers.coerce(2.5))] == [(1, int), (2.5, float)]
    flags = ParamDef("f", "F", True, kind="choice", choices=(True, "auto")).checked()
    assert flags.coerce(True) is True
    with pytest.raises(ValueError, match="is not one of"):
        flags.coerce(1)


@pytest.mark.slow  # many CLI processes: ~2.7 s
def test_a_bool_parameter_takes_true_or_false_and_their_spellings_only(own_daemon: Daemon, script: Path) -> None:
    c = _loaded(own_daemon, script)
    accepts = "a bool parameter takes true or false (or 1/0, yes/no, on/off)"
    _refused(own_daemon, ("on", "maybe", "'maybe' is not a valid bool"),
             *(("on", text, "parameter 'on': ", accepts) for text in ("maybe", "[]", "2", "0.5", '""', "null")))
    with pytest.raises(OutOfRange, match="is not a valid bool"):
        c.set_param("on", [])
    assert not c.get_param("on") and '"on"' not in _state(own_daemon, script)  # nothing refused was stored
    for text, value in (("on", True), ("NO", False), ("1", True), ("false", False), ("Yes", True)):
        assert own_daemon.cli("param", "set", "on", text).stdout.strip() == f"on = {str(value).lower()}"
        wait_for(lambda: c.get_param("on") is value, what=f"{text} to be applied as {value}")


def test_a_number_parameter_refuses_true_and_false(own_daemon: Daemon, script: Path) -> None:
    c = _loaded(own_daemon, script)
    _refused(own_daemon, ("count", "true", "int parameters take a number, not true or false"),
             ("gain", "false", "float parameters take a number, not true or false"))
    with pytest.raises(OutOfRange, match="not true or false"):
        c.set_param("count", True)
    assert c.get_param("count") == 3 and c.get_param("gain") == 0.5


def test_param_set_prints_the_value_the_parameter_takes_as_param_get_prints_it(daemon: Daemon,
                                                                              script: Path) -> None:
    c = _loaded(daemon, script)
    names = ("gain", "count", "on")
    set_to = daemon.cli_each(*(["param", "set", name, text] for name, text in zip(names, ("1", "4.0", "on"))))
    assert [out.stdout.strip() for out in set_to] == ["gain = 1.0", "count = 4", "on = true"], set_to
    wait_for(lambda: c.get_param("on") is True and c.get_param("count") == 4, what="the values to be applied")
    printed = [out.stdout.strip() for out in daemon.cli_each(*(["param", "get", name] for name in names))]
    again = daemon.cli_each(*(["param", "set", name, value] for name, value in zip(names, printed)))
    assert [out.stdout.strip() for out in again] == [f"{name} = {value}" for name, value in zip(names, printed)], again


@pytest.mark.parametrize("definitions, reason", [
    ('define_parameter("x", default=5.0, min=10, max=0)',
     "parameter 'x': min 10 is greater than max 0; give min <= max"),
    ('define_parameter("x", default=5.0, min=0, max=1)',
     "parameter 'x': the default is refused: 5.0 is outside 0..1"),
    ('define_parameter("x", default="c", choices=["a", "b"])',
     "parameter 'x': the default is refused: 'c' is not a valid choice"),
    ('define_parameter("x", default=1.0)\ndefine_parameter("x", default=2.0)',
     "parameter 'x' is defined twice"),
])
def test_a_parameter_that_could_never_be_set_fails_the_load_naming_it(daemon: Daemon, tmp_path: Path,
                                                                       definitions: str, reason: str) -> None:
    script = tmp_path / "bad_params.py"
    script.write_text(f"from controller.script import define_parameter\n{definitions}\n")
    out = daemon.cli("load", str(script), check=False)
    assert out.returncode == 1 and reason in out.stderr and "ValueError" in out.stderr, out.stderr
    with pytest.raises(ScriptLoadError, match="did not load"):
        daemon.client().load_script(str(script), wait=30)
    assert daemon.client().params() == []  # not loaded, so no parameter that can never be set


AS_TYPED = ("null", "true", '{"a": 1}', "1.50", "1e2", "123456789012345678901234", "-3", '"quoted"', " spaced ")
BIG = "100000000000000000000000000000"  # 10**29: beyond what the wire carries as an int (64 bits)


def test_param_set_stores_a_text_parameter_s_value_exactly_as_typed(daemon: Daemon, script: Path) -> None:
    c = _loaded(daemon, script)
    typed_texts = ("true", '{"a": 1}', "1.50", "123456789012345678901234")  # (every one: the test without a daemon)
    said = daemon.cli_each(*(["param", "set", "text", typed] for typed in typed_texts))
    assert [(out.returncode, out.stdout.strip()) for out in said] == [
        (0, f"text = {json.dumps(typed)}") for typed in typed_texts], said
    daemon.cli("param", "set", "text", "null")
    wait_for(lambda: c.get_param("text") == "null", what="the text 'null' to be applied as typed")
    wait_for(lambda: '"text": "null"' in _state(daemon, script), what="the text 'null' to be persisted as typed")


def test_a_number_too_large_for_the_wire_is_checked_as_the_parameter_takes_it(daemon: Daemon, script: Path) -> None:
    c = _loaded(daemon, script)
    _refused(daemon, ("count", BIG, "parameter 'count': ", "an int parameter must fit in 64 bits"),
             ("count", "-" + BIG, "an int parameter must fit in 64 bits"),
             ("on", BIG, "a bool parameter takes true or false"),
             ("mode", BIG, f"{BIG} is not one of ['a', 'b']"))
    assert daemon.cli("param", "set", "free", BIG).stdout.strip() == "free = 1e+29"
    wait_for(lambda: c.get_param("free") == 1e29, what="the large number to be applied as a float")


def test_a_number_parameter_takes_json_number_syntax_only(daemon: Daemon, script: Path) -> None:
    c = _loaded(daemon, script)
    before = c.get_param("count"), c.get_param("gain"), c.get_param("free")
    typos = (("count", "1_0"), ("count", "\u0663"), ("gain", "\u0660.\u0665"), ("free", '"3"'))
    _refused(daemon, *((name, text, f"parameter {name!r}: {text!r} is not a number", "JSON") for name, text in typos))
    assert (c.get_param("count"), c.get_param("gain"), c.get_param("free")) == before


def _info(kind: str, default: Any, choices: tuple[Any, ...] = (), low: Any = None, high: Any = None) -> ParamInfo:
    return ParamInfo("p", "P", default, default, low, high, kind, choices=list(choices))


def test_the_cli_reads_a_value_as_its_parameter_takes_it_without_a_daemon() -> None:
    assert [_value_of(_info("str", ""), typed) for typed in AS_TYPED] == list(AS_TYPED)
    assert _value_of(_info("float", 0.0), BIG) == 1e29 and _value_of(_info("float", 0.0), "1e2") == 100.0
    assert [_value_of(_info("int", 0, low=0, high=10), text) for text in ("7", "4.0", "-0")] == [7, 4, 0]
    for text, reason in ((BIG, "must fit in 64 bits"), ("11", "outside 0..10"), ("1_0", "is not a number"),
                         ("\u0663", "is not a number"), ("NaN", "finite"), ("[]", "is not a number"),
                         ("+1", "is not a number"), ('"3"', "is not a number"), (" 1_0", "is not a number")):
        with pytest.raises(ValueError, match=reason):
            _value_of(_info("int", 0, low=0, high=10), text)
    assert _value_of(_info("choice", "1", ("1", "null")), "1") == "1"  # the text, as no JSON value is a choice
    assert _value_of(_info("choice", "1", ("1", "null")), "null") == "null"
    assert _value_of(_info("choice", 1, (1, 2.5)), "2.5") == 2.5
    with pytest.raises(ValueError, match=r"^parameter 'p': 3 is not a valid choice: 3 is not one of \[1, 2.5\]"):
        _value_of(_info("choice", 1, (1, 2.5)), "3")
    assert [_value_of(_info("bool", False), text) for text in ("on", "false", "1")] == [True, False, True]
    assert _value_of(None, BIG) == BIG  # no such parameter: sent as text, which the daemon refuses naming it
def test_the_python_api_refuses_what_a_parameter_cannot_hold_saying_why(daemon: Daemon, script: Path) -> None:
    c = _loaded(daemon, script)
    before = c.get_param("text"), c.get_param("count")
    for value in (None, True, {"a": 1}, 1.5, 10**29):
        with pytest.raises(OutOfRange, match=r"^parameter 'text': .* a str parameter takes text \(a string\), not "):
            c.set_param("text", value)
    with pytest.raises(OutOfRange, match="an int parameter must fit in 64 bits"):
        c.set_param("count", 10**29)
    for typo in ("1_0", "\u0663", " 5 "):
        with pytest.raises(OutOfRange, match="as JSON writes it, in ASCII digits"):
            c.set_param("count", typo)
    assert (c.get_param("text"), c.get_param("count")) == before
    c.set_param("free", 10**29, wait=10)
    assert c.get_param("free") == 1e29

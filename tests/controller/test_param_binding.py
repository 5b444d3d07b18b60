"""How a MIDI controller's 0..1 maps onto a parameter bound to it (``ensemble param bind``), without a daemon."""

from __future__ import annotations

import pytest

from controller._host import ParamDef


def test_numbers_span_min_to_max() -> None:
    cutoff = ParamDef("cutoff", "Cutoff", 500.0, 20.0, 1020.0, "float")
    assert [cutoff.from_controller(v) for v in (0.0, 0.5, 1.0)] == [20.0, 520.0, 1020.0]
    steps = ParamDef("steps", "Steps", 1, 0, 4, "int")
    assert [steps.from_controller(v) for v in (0.0, 0.3, 1.0)] == [0, 1, 4]
    assert cutoff.from_controller(7.0) == 1020.0 and cutoff.from_controller(-1.0) == 20.0  # clamped


def test_bool_and_choice() -> None:
    on = ParamDef("on", "On", False, kind="bool")
    assert (on.from_controller(63 / 127), on.from_controller(64 / 127)) == (False, True)
    mode = ParamDef("mode", "Mode", "a", kind="choice", choices=("a", "b", "c"))
    assert [mode.from_controller(v) for v in (0.0, 0.34, 0.67, 1.0)] == ["a", "b", "c", "c"]


@pytest.mark.parametrize("param", [ParamDef("name", "Name", "x", kind="str"), ParamDef("gain", "Gain", 0.5, 0.0, None)])
def test_what_no_controller_can_move_is_refused_with_the_reason(param: ParamDef) -> None:
    with pytest.raises(ValueError, match="cannot follow a MIDI controller"):
        param.from_controller(0.5)

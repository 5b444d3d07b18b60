"""on_save / on_load round trip and parameter persistence."""

from controller.script import define_parameter, get_parameter, set_parameter


def on_save():
    return {"hello": get_parameter("gain")}


def on_load(state):
    set_parameter("restored", str(state.get("hello")))


define_parameter("gain", "Gain", 0.5, 0.0, 1.0)
define_parameter("restored", "Restored", "")

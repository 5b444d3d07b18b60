"""on_save returns what the state file cannot keep as it is, once a parameter says so."""

from controller.script import define_parameter, get_parameter, set_parameter


class Thing:
    pass


def on_save():
    how = get_parameter("how")
    if how == "object":
        return {"thing": Thing()}
    if how == "nan":
        return {"x": float("nan")}
    if how == "intkey":
        return {1: "one"}
    return {"fine": [1, 2.5, "three", None, True], "pair": (1, 2)}


def on_load(state):
    set_parameter("restored", repr(state))


define_parameter("how", "How", "fine", kind="choice", choices=["fine", "object", "nan", "intkey"])
define_parameter("restored", "Restored", "")

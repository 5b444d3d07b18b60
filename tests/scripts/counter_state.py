"""State that only a button changes, kept by on_save / on_load (no parameter moves with it)."""

from controller.script import add_button, add_label, define_parameter, set_parameter, set_text

count = 0


def inc():
    global count
    count += 1
    set_text("seen", f"{count} clicks")  # (no parameter moves: a parameter's change saved the state, on_save too)


def on_save():
    return {"count": count}


def on_load(state):
    global count
    count = (state or {}).get("count", 0)
    set_parameter("restored", count)


add_button("inc", "Increment", inc)
add_label("seen", "0 clicks")
define_parameter("restored", "Restored", 0, 0, 1_000_000)

"""UI elements: added in module code, changed by callbacks, used from the wrong context on purpose."""

from controller.script import *  # noqa: F403

clicks = []


def on_click():
    clicks.append(1)
    set_parameter("clicks", len(clicks))
    set_text("status", f"clicked {len(clicks)}")
    set_visible("hint", False)


def on_note(event):
    if event.note == 1:
        add_button("nope", "from the processor")  # controller-only, called in the processor
    else:
        post_event(event)


add_button("go", "Go", on_click)
add_label("status", "never clicked")
add_label("hint", "click Go")
define_parameter("clicks", "Clicks", 0, 0, 1000000)

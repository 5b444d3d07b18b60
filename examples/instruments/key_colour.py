"""HALion's runAsync example: on_note awaits a controller-only function with arguments.

The processor callback is suspended (the audio callback is not) while the
controller computes a key colour and records it; it resumes a block or more
later with the returned value and plays the note.
"""

from controller.script import define_parameter, get_parameter, play_note, print_, run_async

colours: dict[int, str] = {}


def set_key_colour(note: int, velocity: float) -> str:
    """Controller side: choose and store a colour for the key (controller-only state)."""
    colour = "red" if velocity > get_parameter("threshold") else "blue"
    colours[note] = colour
    return colour


async def on_note(event):
    colour = await run_async(set_key_colour, event.note, event.velocity)
    print_(f"key {event.note} is {colour}")
    play_note(event.note, event.velocity)


define_parameter("threshold", "Velocity threshold", 0.5, 0.0, 1.0)

"""HALion's arpeggiator pattern: on_note plays, waits, and plays again until release."""

from controller.script import define_parameter, get_parameter, is_note_held, play_note, wait

define_parameter("step_ms", "Step (ms)", 125.0, 10.0, 2000.0)
define_parameter("interval", "Interval (semitones)", 12, 1, 24)


async def on_note(event):
    note = event.note
    up = False
    while is_note_held(event):
        play_note(note + (get_parameter("interval") if up else 0), event.velocity, get_parameter("step_ms") * 0.8)
        up = not up
        await wait(get_parameter("step_ms"))

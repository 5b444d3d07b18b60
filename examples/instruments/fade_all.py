"""HALion's fade-all example: a parameter fades every playing voice (run_sync).

Note ids are collected in on_note (processor); the parameter's callback runs in
the controller and asks the processor, through run_sync, to fade them all over
one second at the start of the next block.

    ensemble load examples/instruments/fade_all.py
    ensemble note 60 --length 10 ; ensemble param set fade_voices true
"""

from controller.script import define_parameter, fade, get_parameter, post_event, run_sync

note_ids: list[int] = []


def on_note(event):
    note_ids.append(post_event(event))


def sync_fade_all_voices():
    for note_id in note_ids:
        fade(note_id, None, 0.0, 1000.0, True)
    note_ids.clear()


def fade_all_voices(value):
    if get_parameter("fade_voices"):
        run_sync(sync_fade_all_voices, id=1)


define_parameter("fade_voices", "Fade All Voices", False, on_change=fade_all_voices)

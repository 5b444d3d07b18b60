"""Processor callbacks that overrun the block budget (note 1) or never return (note 2)."""

import time

from controller.script import post_event


def on_note(event):
    if event.note == 1:
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass
    elif event.note == 2:
        while True:
            pass
    else:
        post_event(event)

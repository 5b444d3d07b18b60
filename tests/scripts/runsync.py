"""run_sync with the same id twice in one controller callback: only the last runs."""

from controller.script import define_parameter, run_sync

hits = []


def record(value):
    hits.append(value)


def fire(value):
    if value:
        run_sync(record, "first", id="x")
        run_sync(record, "second", id="x")
        run_sync(record, "other")


define_parameter("fire", "Fire", False, on_change=fire)

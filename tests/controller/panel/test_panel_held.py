"""The record of the notes the panel's pages hold (``panel-notes.json``), as bookkeeping over a file, no sockets.

The behaviour it serves (a killed panel's notes ended by its successor) is
tested against a real daemon in test_panel_restart.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from controller.panel._held import FILE, HeldNotes, remove


def test_the_file_names_the_notes_held_and_goes_when_none_is(tmp_path: Path) -> None:
    held = HeldNotes(tmp_path)
    held.started(64)
    held.started(60)
    held.started(64)  # two pages hold it: one note off ends every voice of it
    assert json.loads((tmp_path / FILE).read_text()) == {"notes": [60, 64]}
    assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o600
    held.ended(64)
    assert HeldNotes(tmp_path).left_over() == [60]  # what a successor reads
    held.ended(99)  # never held: nothing changes
    held.ended(60)
    assert not (tmp_path / FILE).exists() and not list(tmp_path.iterdir())


def test_a_successor_adopts_what_is_left_until_it_is_ended(tmp_path: Path) -> None:
    HeldNotes(tmp_path).started(72)  # a panel that died holding it
    successor = HeldNotes(tmp_path)
    left = successor.left_over()
    assert left == [72]
    successor.adopt(left)
    assert HeldNotes(tmp_path).left_over() == [72]  # still recorded until its note off went out
    successor.ended(72)
    assert HeldNotes(tmp_path).left_over() == []


def test_a_file_that_is_not_a_record_of_notes_names_none(tmp_path: Path) -> None:
    for text in ("", "{", "[1, 2]", '{"notes": 5}', '{"notes": [-1, 128, 60.5, "61", true, 62]}'):
        (tmp_path / FILE).write_text(text)
        assert HeldNotes(tmp_path).left_over() == ([62] if "62" in text else []), text
    remove(tmp_path)
    assert not list(tmp_path.iterdir())

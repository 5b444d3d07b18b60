"""The script state file (``controller._controller_side.StateFile``): saved off the script thread, never lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from controller._controller_side import StateFile


def test_a_save_is_read_back_at_once_and_the_newest_save_wins(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "script-state.json")
    try:
        for i in range(200):
            state.save("/s/a.py", {"params": {"gain": i}})
        state.save("/s/b.py", {"params": {"mode": "x"}})
        assert state.read("/s/a.py") == {"params": {"gain": 199}}  # read waits for the writes in flight
        assert state.read("/s/b.py") == {"params": {"mode": "x"}}
        assert state.read("/s/none.py") == {}
    finally:
        state.close()
    on_disk = json.loads((tmp_path / "script-state.json").read_text())
    assert on_disk == {"/s/a.py": {"params": {"gain": 199}}, "/s/b.py": {"params": {"mode": "x"}}}
    assert not (tmp_path / "script-state.tmp").exists()


def test_close_writes_what_is_pending_and_keeps_other_scripts_entries(tmp_path: Path) -> None:
    file = tmp_path / "script-state.json"
    file.write_text(json.dumps({"/s/old.py": {"params": {"kept": 1}}}))
    state = StateFile(file)
    entry = {"params": {"gain": 0.5}, "state": [1, 2]}
    state.save("/s/a.py", entry)
    entry["params"]["gain"] = 9.0  # changed after the save: the saved entry is the one handed over
    state.close()
    assert json.loads(file.read_text()) == {"/s/old.py": {"params": {"kept": 1}},
                                            "/s/a.py": {"params": {"gain": 0.5}, "state": [1, 2]}}


def test_a_save_does_not_wait_for_the_write_in_flight(tmp_path: Path) -> None:
    """The script thread hands the entry over; a slow write (a busy disk) holds only the writer."""
    file = tmp_path / "script-state.json"
    state = StateFile(file)
    entered, release = threading.Event(), threading.Event()
    write = state._write

    def slow_write(batch: dict[str, str]) -> None:  # the disk taking its time, as under heavy write-back
        entered.set()
        release.wait(30)
        write(batch)

    state._write = slow_write  # type: ignore[method-assign]
    try:
        state.save("/s/a.py", {"params": {"gain": 1}})
        assert entered.wait(30)

        def saves() -> None:
            for i in range(2, 50):
                state.save("/s/a.py", {"params": {"gain": i}})

        saver = threading.Thread(target=saves)
        saver.start()
        saver.join(20)  # generous: the saves only hand entries over
        assert not saver.is_alive(), "a save waited for the write in flight"
    finally:
        release.set()
        state.close()
    assert json.loads(file.read_text()) == {"/s/a.py": {"params": {"gain": 49}}}

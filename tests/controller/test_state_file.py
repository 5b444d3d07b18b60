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


def test_a_client_s_change_is_reported_applied_only_once_it_is_on_disk(tmp_path: Path) -> None:
    """The daemon stops sending a client's change again once the controller reports it applied
    (``ParamValues.applied``); that report went out as the value was handed to the writer, so a controller killed
    before the write lost a change the daemon thought saved (the next one read the old value from the file)."""
    from controller._controller_side import ControllerScript
    from controller.messages import ParamValues
    from tests.conftest import wait_for
    from tests.controller.test_callback_queue import Collect

    script = tmp_path / "instrument.py"
    script.write_text("from controller.script import define_parameter\n"
                      "define_parameter('level', 'Level', 0.5, 0.0, 1.0)\n")
    out = Collect()
    rt = ControllerScript(out, tmp_path)
    entered, release = threading.Event(), threading.Event()
    write = rt.state._write

    def slow_write(batch: dict[str, str]) -> None:  # the disk taking its time
        entered.set()
        release.wait(30)
        write(batch)

    def sent() -> list[ParamValues]:
        return [m for m in list(out.items) if isinstance(m, ParamValues)]

    try:
        rt.load(str(script), False)
        wait_for(lambda: rt.module is not None and sent(), what="the load")
        rt.barrier()
        rt.state._write = slow_write  # type: ignore[method-assign]
        rt.param_from_outside("level", 0.75, seq=7)
        wait_for(lambda: any(p.value == 0.75 for m in sent() for p in m.params), what="the value to be sent")
        assert entered.wait(30)  # the write has begun, and waits
        assert all(m.applied == 0 for m in sent()), "reported applied before the value was on disk"
        release.set()
        wait_for(lambda: any(m.applied == 7 for m in sent()), what="the change to be reported applied once written")
        assert json.loads((tmp_path / "script-state.json").read_text())[str(script)]["params"]["level"] == 0.75
        last = [m for m in sent() if m.applied == 7][-1]
        assert [p.value for p in last.params] == [0.75]  # with the values last sent
    finally:
        release.set()
        rt.stop()

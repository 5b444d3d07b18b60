"""The notes the panel's pages hold, on disk too, so that a panel that dies holding them still has them ended.

A page's note on starts a voice that sounds until its note off (or the end
of its sample, which may be minutes long).  A page that
goes away has its notes ended by the panel (``PanelServer._release_notes``),
but a panel process that dies (SIGKILL, a crash) ends nothing: the
processor, another process, goes on playing them.  So the panel records
every note a page started and has not ended in ``<run dir>/panel-notes.json``
(mode 0600, written atomically) *before* the note on leaves.  When the
process exits, the supervisor tells the panel's extension as it reaps it
(``PanelExtension.child_exited``, before any restart), which sends a note
off to the processor for each note that file names (and each the daemon
passed on and saw no note off for) and clears it: the notes
end whether or not a panel is started again (the supervisor gave up on it
after too many restarts, or each start exits before serving).  Those it
could not send (no processor running) stay in the file, and the next panel
process sends them before it does anything else
(``DaemonView.release_left_over``).

The file goes when the daemon stops (its audio stops with it), and one an
earlier daemon left is removed when the next one starts its children, as
``panel.json`` is.

:class:`HeldNotes` is bookkeeping over a file, without sockets; it is used
on the panel's notes thread only (no lock), and by the supervisor once that
process is gone.  Writing it costs one small
file write and a rename per note on or off.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("ensemble.panel")
FILE = "panel-notes.json"


class HeldNotes:
    """The notes the panel started and no note off has ended since, mirrored in ``<run dir>/panel-notes.json``.

    A note off ends every voice of its note, whoever started them (the
    processor's ``NoteOffEvent``), so one set serves all pages: a note two
    pages hold is ended by the first note off for it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.held: set[int] = set()

    def started(self, note: int) -> None:
        """A note on for ``note`` is about to go out: recorded, on disk first."""
        if note not in self.held:
            self.held.add(note)
            self._save()

    def ended(self, note: int) -> None:
        """A note off for ``note`` went out: no voice of it sounds for the panel any more."""
        if note in self.held:
            self.held.discard(note)
            self._save()

    def adopt(self, notes: list[int]) -> None:
        """Hold ``notes`` (an earlier process's, :meth:`left_over`) until :meth:`ended`: the file keeps them until
        then, for the next process should this one die first."""
        self.held.update(notes)
        self._save()

    def notes(self) -> list[int]:
        """The notes held, in order."""
        return sorted(self.held)

    def left_over(self) -> list[int]:
        """The notes the file names: those an earlier panel process held when it ended ([] without a file).

        Blocking (one small read); a file that cannot be read or parsed is logged and counts as none.
        """
        try:
            data = json.loads((self.run_dir / FILE).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("event=panel-notes-unreadable file=%s reason=%s", self.run_dir / FILE, exc)
            return []
        notes = data.get("notes") if isinstance(data, dict) else None
        if not isinstance(notes, list):
            return []
        return sorted({n for n in notes if type(n) is int and 0 <= n <= 127})

    def _save(self) -> None:
        """Write the held notes (none: remove the file).  A failure is logged, never raised: the note still plays."""
        try:
            notes = self.notes()
            if not notes:
                remove(self.run_dir)
                return
            tmp = self.run_dir / (FILE + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"notes": notes}, f)
            os.replace(tmp, self.run_dir / FILE)
        except OSError as exc:
            log.warning("event=panel-notes-unsaved file=%s reason=%s detail=a panel that dies now leaves these "
                        "notes sounding", self.run_dir / FILE, exc)


def remove(run_dir: Path) -> None:
    """Remove the file (no note held; the daemon stops, or a new one starts)."""
    from controller.panel._settings import remove_written

    remove_written(run_dir, FILE)

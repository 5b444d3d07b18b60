"""The panel's part of the daemon: start its actor on demand (``ensemble panel``) or with the daemon (``up --panel``).

Registered through the ``ensemble.extensions`` entry point; runs in the
supervisor's thread and never blocks.  The panel is a supervised child like
the others (restarted on a crash, within the restart intensity), but it is
started only when asked for: a daemon without a panel runs no web server.
When its process exits, the notes its pages held (``panel-notes.json``,
:mod:`~controller.panel._held`, and the daemon's own record) are ended here,
whether or not it is started again (:meth:`PanelExtension.child_exited`).
The panel sends its pages' notes on its own channel (its child socket), not
as a client: the daemon reads that channel only while the process lives, so
a note on still on its way when the process is reaped is dropped with its
other frames, never carried out after the note off (:meth:`PanelExtension._note`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from actors import DaemonError, PermissionDenied
from actors.extensions import ChildSpec, Extension
from actors.messages import Ack, Message
from audio.messages import NoteOffEvent, NoteOnEvent
from controller.messages import PanelStart
from controller.panel import _held, _settings
from controller.panel._settings import PanelSettings

log = logging.getLogger("ensemble.supervisor")
SPEC = ChildSpec("panel", "panel", "controller.panel.actor")
START_ENV = "ENSEMBLE_PANEL"  # HOST:PORT set by `ensemble up --panel`: start the panel with the daemon


class PanelExtension(Extension):
    """Starts the instrument panel's actor and keeps its settings (address and token) for its restarts."""

    name = "panel"

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.run_dir = host.cfg.run_dir
        self.settings: PanelSettings | None = None
        self._serial = 0  # of the settings last written (PanelSettings.serial)
        self.sounding: set[int] = set()  # notes the running panel process started and has not ended (_note)
        self._at_start: tuple[str, int] | None = None
        wanted = os.environ.get(START_ENV, "")
        if wanted:
            try:
                self._at_start = _settings.parse_address(wanted)
            except ValueError as exc:
                log.error("event=panel-refused %s=%s reason=%s", START_ENV, wanted[:100], exc)

    @property
    def children(self) -> tuple[ChildSpec, ...]:  # type: ignore[override]  # a class attribute in Extension
        """The panel, when the daemon was started with it (read once, as the children start: the run
        directory exists by then, and the settings file the panel reads is written into it here).

        A settings file already there is an earlier daemon's (its panel was
        killed as that daemon stopped, or the daemon was): its token is
        removed, never served again; so is its record of held notes (that
        daemon's audio is gone: this one's panel must not end notes of a
        keyboard playing now).
        """
        if self.settings is None:
            for module, file in ((_settings, _settings.FILE), (_held, _held.FILE)):
                try:
                    module.remove(self.run_dir)
                except OSError as exc:
                    log.error("event=panel-stale-settings file=%s reason=%s", self.run_dir / file, exc)
        if self._at_start is None:
            return ()
        if self.settings is None:
            try:
                self.settings = self._new(*self._at_start)
            except OSError as exc:
                log.error("event=panel-refused reason=%s", exc)
                return ()
        return (SPEC,)

    def requests(self) -> dict[type, Any]:
        return {PanelStart: self._start}

    def child_messages(self) -> dict[type, Any]:
        return {NoteOnEvent: self._note, NoteOffEvent: self._note}

    def _note(self, slot: Any, msg: NoteOnEvent | NoteOffEvent) -> None:
        """A page's note on or off, on the panel process's own channel: to the processor, and into our record.

        In the order the panel sent them, and only while that process lives:
        the supervisor reads no frame of a process it has reaped, so every
        note on passed on here came before :meth:`child_exited` ends the
        notes left (our record of what was passed on, and the panel's file).
        A note from another child, or out of range, is dropped; one the
        processor cannot take (not running) is logged.
        """
        if slot.name != SPEC.name or not 0 <= msg.note <= 127:
            log.warning("event=panel-note-ignored from=%s note=%s", slot.name, msg.note)
            return
        if isinstance(msg, NoteOnEvent):
            if not 0.0 < msg.velocity <= 1.0:
                log.warning("event=panel-note-ignored from=%s note=%d velocity=%s", slot.name, msg.note, msg.velocity)
                return
            self.sounding.add(msg.note)
            event: NoteOnEvent | NoteOffEvent = NoteOnEvent(msg.note, msg.velocity)
        else:
            self.sounding.discard(msg.note)
            event = NoteOffEvent(msg.note)
        processor = self.host.child("processor")
        if processor is None or not self.host.send_child(processor, event):
            log.warning("event=panel-note-dropped kind=%s note=%d reason=the processor is not running",
                        type(event).__name__, msg.note)

    def status(self, counters: dict[str, Any]) -> None:
        current = _settings.read(self.run_dir) if self.settings is not None else None  # the port it really got
        if current is not None:
            refused = self._bind_error()
            counters["panel"] = f"not serving: {refused}" if refused else current.url(with_token=False)

    def child_ready(self, slot: Any) -> None:
        if slot.name == SPEC.name:  # a fresh start said hello: a give-up of an earlier start is history (in the log)
            slot.detail = ""

    def child_exited(self, slot: Any) -> None:
        """The panel's process exited: send a note off for each note its pages held, and clear the record.

        The process wrote the notes it started and had not ended to
        ``panel-notes.json`` before each note on, and the notes it sent came
        through :meth:`_note`, which keeps its own record; dead, it ends none
        of them, and the supervisor may not start another (past its restart
        intensity, or each start exits before serving).  Its frames still on
        their way are not read (its note ons too).  Those that cannot
        go (no processor running) stay in the file, for a panel process
        started later (``DaemonView.release_left_over``).  Supervisor's
        thread: one small file read, and a write when notes are left.
        """
        if slot.name != SPEC.name:
            return
        held = _held.HeldNotes(self.run_dir)
        left = sorted(set(held.left_over()) | self.sounding)  # ours: a note off it sent after it wrote the file
        self.sounding = set()  # the next process starts holding none
        if not left:
            return
        processor = self.host.child("processor")
        ended = []
        for note in left:
            if processor is None or not self.host.send_child(processor, NoteOffEvent(note)):
                break
            ended.append(note)
        kept = left[len(ended):]
        held.adopt(kept)  # the file names those left only (none: it goes)
        if ended:
            log.info("event=panel-notes-released notes=%s reason=the panel process that held them ended "
                     "without their note offs (exit code %s)", ended, slot.last_exit)
        if kept:
            log.warning("event=panel-note-release-failed notes=%s reason=the processor is not reachable "
                        "detail=a panel process started later ends them", kept)

    def _bind_error(self) -> str:
        """Why the running panel serves nothing (the address it was given could not be bound), else ""."""
        slot = self.host.child(SPEC.name)
        return str(slot.stats.get("bind_error") or "") if slot is not None else ""

    def _new(self, host: str, port: int, token: str = "") -> PanelSettings:
        self._serial += 1
        settings = PanelSettings(host, port, token or _settings.new_token(), self._serial)
        _settings.write(self.run_dir, settings)
        return settings

    def _start(self, corr: int, msg: PanelStart) -> Message:
        """``ensemble panel``: start the panel, or have the running one try again the address it could not bind.

        Refuses what could never serve before any process tries it: a host
        that is no IP address or host name, a port outside 0..65535.
        """
        if self.host.peer.role != "local":
            raise PermissionDenied("the panel is started by the daemon's own user on its host (`ensemble panel`)")
        if not -1 <= msg.port <= 65535:
            raise DaemonError(f"panel port {msg.port} is not a port number (0..65535, or -1 for the current one)")
        why = _settings.host_refusal(msg.host)
        if why:
            raise DaemonError(why)
        current = _settings.read(self.run_dir) if self.settings is not None else None
        same = current is not None and msg.host == current.host and msg.port in (-1, current.port)
        refused = self._bind_error()
        if current is not None and same and not refused:
            self.host.start_child(SPEC)  # a no-op while it runs; the same token and port after a failure
            return Ack(current.url(with_token=False))
        if current is not None and not refused and self.host.child(SPEC.name) is not None:
            raise DaemonError(f"the panel already serves {current.url(with_token=False)}; stop the daemon "
                              "to move it, or run `ensemble panel` without --port/--host")
        if current is not None and same:  # it could not bind that address: try it again (the port may be free now)
            self.settings = self._new(current.host, current.port, current.token)
        else:
            self.settings = self._new(msg.host, _settings.DEFAULT_PORT if msg.port == -1 else msg.port)
        slot = self.host.child(SPEC.name)
        if refused and slot is not None:  # up, serving nothing: it serves the new settings (PanelStart)
            self.host.send_child(slot, PanelStart(self.settings.port, self.settings.host))
        else:
            self.host.start_child(SPEC)
        log.info("event=panel-start address=%s", self.settings.url(with_token=False))
        return Ack(self.settings.url(with_token=False))

"""The panel process: a supervised child serving the instrument panel on its own thread.

The main thread runs the usual child loop (heartbeats, stop); the web server
runs on a thread of its own (:class:`~controller.panel._server.PanelServer`)
and reaches the daemon as a local client, like the CLI.  Killing this process
(SIGKILL, or SIGTERM to it alone) changes nothing for audio or jobs: the
supervisor restarts it with the same address and token (``<run dir>/panel.json``),
and an open page reconnects.  Only the daemon's own stop (its ``Stop``
message) removes that file.  The notes its pages held when it was killed are
ended by the panel's extension in the daemon as the process is reaped, or else
by its successor, before anything else (:mod:`controller.panel._held`).

An address it cannot bind (the port in use, an address this host does not
have) would fail again on every restart, so the process does not exit for
it: it stays up without a server and says why in its heartbeat
(``bind_error``, for the serial of ``panel.json`` it tried), which the CLI
prints; the next ``ensemble panel`` writes new settings and sends it
``PanelStart``: it then serves what ``panel.json`` names.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from actors import Child, child_main
from actors.messages import Message
from controller.messages import PanelStart
from controller.panel import _held, _settings
from controller.panel._server import PanelServer
from controller.panel._settings import PanelSettings
from controller.panel._view import DaemonView

log = logging.getLogger("ensemble.panel")


class Panel(Child):
    """Supervised panel process."""

    role = "panel"
    waits_out_silence = False  # it holds no job and no sound: a silent daemon's panel leaves, started again later

    def __init__(self, cfg: Any, name: str) -> None:
        super().__init__(cfg, name)
        settings = _settings.read(cfg.run_dir)
        if settings is None:
            raise SystemExit(f"panel: no {cfg.run_dir / _settings.FILE}; start the panel with `ensemble panel`")
        self.server: PanelServer | None = None
        self.tried = settings  # the settings it last tried to serve (their serial goes in every heartbeat)
        self.bind_error = ""  # why those could not be bound, with the fix ("" while it serves)
        self.signalled = False  # a SIGTERM came before any Stop: this process alone ends, the daemon goes on
        self._serve(settings)

    def _serve(self, settings: PanelSettings) -> None:
        """Serve ``settings`` (already served: nothing to do); a bind error is kept for the stats, not raised."""
        self.tried = settings
        running = self.server
        if running is not None and dataclasses.replace(running.settings, serial=settings.serial) == settings:
            return
        if running is not None:  # asked to move (a race with a failed bind): the new address replaces it
            running.stop()
            self.server = None
        server = PanelServer(settings, DaemonView(self.cfg, self.outbox.put))  # notes: on our own channel
        try:
            port = server.start()
        except OSError as exc:
            server.stop()
            self.bind_error = _settings.bind_refusal(settings.host, settings.port, exc)
            log.error("event=panel-bind-failed address=%s reason=%s detail=not retried until the next "
                      "`ensemble panel`", settings.url(with_token=False), self.bind_error)
            return
        self.server, self.bind_error = server, ""
        if port != settings.port:  # asked for any free port: keep the one we got across restarts
            _settings.write(self.cfg.run_dir, dataclasses.replace(settings, port=port))
        log.info("event=panel-listening url=%s", dataclasses.replace(settings, port=port).url(with_token=False))

    def handle(self, msg: Message) -> None:
        """``PanelStart`` from the daemon: serve what ``panel.json`` names now (after a bind that failed)."""
        if not isinstance(msg, PanelStart):
            super().handle(msg)
            return
        settings = _settings.read(self.cfg.run_dir)
        if settings is not None:
            self._serve(settings)
            self.last_sent = 0.0  # the outcome goes out in a heartbeat at once

    def stats(self) -> dict[str, Any]:
        served = self.server.stats() if self.server is not None else {"host": self.tried.host, "port": 0, "pages": 0}
        return {**served, "serial": self.tried.serial, "bind_error": self.bind_error}

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM (main thread): stop.  Before the daemon's ``Stop`` it was sent to this process alone."""
        if self.running:  # no Stop read yet (a SIGTERM after it is the daemon's stop running out of patience)
            self.signalled = True
        super().on_sigterm(signum, frame)

    def on_stop(self) -> None:
        """Close the pages (their notes end); when the daemon stops (its ``Stop``), remove the token file too,
        and the record of held notes (the audio stops with the daemon).

        A SIGTERM to this process alone keeps the file, as a silent
        supervisor does: the supervisor restarts the panel and the restart
        serves the same address and token (without the file it could not
        start at all).
        """
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            if not self.signalled and self.stop_reason != "supervisor silent":
                _settings.remove(self.cfg.run_dir)
                _held.remove(self.cfg.run_dir)


if __name__ == "__main__":
    child_main(Panel)

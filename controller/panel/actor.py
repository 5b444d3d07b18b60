"""The panel process: a supervised child serving the instrument panel on its own thread.

The main thread runs the usual child loop (heartbeats, stop); the web server
runs on a thread of its own (:class:`~controller.panel._server.PanelServer`)
and reaches the daemon as a local client, like the CLI.  Killing this process
changes nothing for audio or jobs: the supervisor restarts it with the same
address and token (``<run dir>/panel.json``), and an open page reconnects.
"""

from __future__ import annotations

import logging
from typing import Any

from actors import Child, child_main
from controller.panel import _settings
from controller.panel._server import PanelServer
from controller.panel._view import DaemonView

log = logging.getLogger("ensemble.panel")


class Panel(Child):
    """Supervised panel process."""

    role = "panel"

    def __init__(self, cfg: Any, name: str) -> None:
        super().__init__(cfg, name)
        settings = _settings.read(cfg.run_dir)
        if settings is None:
            raise SystemExit(f"panel: no {cfg.run_dir / _settings.FILE}; start the panel with `ensemble panel`")
        self.server = PanelServer(settings, DaemonView(cfg))
        port = self.server.start()  # OSError (the port is taken): the exit is logged, the supervisor retries
        if port != settings.port:  # asked for any free port: keep the one we got across restarts
            _settings.write(cfg.run_dir, _settings.PanelSettings(settings.host, port, settings.token))
        log.info("event=panel-listening url=%s", settings.url(with_token=False).replace(f":{settings.port}/",
                                                                                         f":{port}/"))

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def on_stop(self) -> None:
        """The daemon stops (only then is this child told to stop): close the pages, remove the token file."""
        self.server.stop()
        if self.stop_reason != "supervisor silent":  # a silent supervisor may come back and restart us
            _settings.remove(self.cfg.run_dir)


if __name__ == "__main__":
    child_main(Panel)

"""``ensemble panel`` and ``ensemble up --panel`` (the ``ensemble.cli`` entry point ``panel``)."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from actors.cli import Number, client_of, config_of, fail

START_ENV = "ENSEMBLE_PANEL"  # read by controller.panel._supervision when the daemon starts


def register(main: click.Group) -> None:
    """Add ``panel`` and the ``--panel`` option of ``up``."""
    main.add_command(panel)
    up = main.commands.get("up")
    if up is not None and up.callback is not None:
        _add_panel_option(up)


def _add_panel_option(up: click.Command) -> None:
    original = up.callback
    assert original is not None
    up.params.append(click.Option(["--panel", "panel_address"], is_flag=False, flag_value="127.0.0.1:8765",
                                  default=None, metavar="[HOST:PORT]",
                                  help="Start the instrument panel with the daemon (default 127.0.0.1:8765); "
                                       "prints its URL."))

    @click.pass_context
    def up_with_panel(ctx: click.Context, /, panel_address: str | None, **kwargs: Any) -> Any:
        if panel_address is None:
            return ctx.invoke(original, **kwargs)
        from controller.panel._settings import parse_address

        try:
            parse_address(panel_address)  # before the daemon starts: it would only log the refusal
        except ValueError as exc:
            fail(str(exc))
        os.environ[START_ENV] = panel_address  # the daemon (in-process with --foreground) starts it
        if kwargs.get("foreground"):
            return ctx.invoke(original, **kwargs)
        ctx.invoke(original, **kwargs)
        with client_of(ctx) as c:
            click.echo(f"panel: {_wait_url(ctx, c, 30.0)}")
        return None

    up.callback = up_with_panel


def _wait_url(ctx: click.Context, client: Any, timeout: float) -> str:
    """The panel's URL with its token, once its actor listens (reads the token from the run directory)."""
    from controller.panel import _settings

    cfg = config_of(ctx)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        actor = next((a for a in client.status().actors if a.role == "panel"), None)
        if actor is not None and actor.state == "failed":
            fail(f"the panel could not start: {actor.detail or 'see the daemon log'}")
        settings = _settings.read(cfg.run_dir)
        if actor is not None and actor.state == "running" and settings is not None \
                and actor.stats.get("serial", 0) == settings.serial:  # its report on these settings, not older ones
            if actor.stats.get("bind_error"):
                fail(f"the panel could not start: {actor.stats['bind_error']}")
            if actor.stats.get("port") and settings.port == actor.stats["port"]:
                return settings.url()
        time.sleep(0.05)
    fail(f"the panel did not start within {timeout:g}s; see {cfg.state_dir / 'daemon.log'}")


@click.command()
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=None,
              help="Port to serve on (default 8765, or the one it already has; 0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback exposes the panel (still behind the token).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the panel to listen.",
              type=Number(float, 0, 86400, "how long to wait for the panel to listen", unit="seconds",
                          low_open=True))
@click.pass_context
def panel(ctx: click.Context, port: int | None, host: str, open_browser: bool, timeout: float) -> None:
    """Serve the instrument panel (a local web page) and print its URL with the token.

    The panel is a supervised actor of the daemon: it plays notes, moves
    parameters, shows the script's buttons, the jobs and the actors.  Open the
    URL with the token: the page keeps it in its browser tab (no cookie).
    """
    from controller.messages import PanelStart

    if ctx.ensure_object(dict).get("connect"):
        fail("the panel is started on the daemon's own host (drop --connect)")
    with client_of(ctx) as c:
        c._call(PanelStart(-1 if port is None else port, host))
        url = _wait_url(ctx, c, timeout)
    click.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)

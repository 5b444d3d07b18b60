"""The instrument panel: a local web page to play, tweak and watch the runtime (``ensemble panel``).

A supervised child of the daemon (``controller/panel/actor.py``) serves one
page on 127.0.0.1 with aiohttp: the script's parameters as controls, an
on-screen keyboard, the script's own UI elements (``add_button`` ...), the
job list with cancel buttons and the loading bar, and the actors with their
health.  Every request needs the token ``ensemble panel`` prints.  The
runtime never imports this package; it plugs in through the
``ensemble.extensions`` and ``ensemble.cli`` entry points.
"""

from controller.panel._settings import PanelSettings

__all__ = ["PanelSettings"]

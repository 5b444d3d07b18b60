"""``python -m actors`` is the ``ensemble`` command."""

from actors.cli import run

run()

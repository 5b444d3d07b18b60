"""``python -m actors.supervisor CONFIG_JSON [--foreground]`` (used by ``ensemble up``)."""

from actors.supervisor import main

main()

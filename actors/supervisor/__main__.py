"""``python -m actors.supervisor CONFIG_JSON [--foreground] [--ready-fd=N]`` (used by ``ensemble up``)."""

from actors.supervisor import main

main()

"""The processor process (placeholder until the engine lands)."""

from __future__ import annotations

from actors._child import Child, child_main


class Processor(Child):
    """Supervised processor process."""

    role = "processor"


if __name__ == "__main__":
    child_main(Processor)

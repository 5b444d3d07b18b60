"""The controller process: runs the control side of the instrument script.

Today it is a supervised actor with heartbeats; script loading, parameters and
the prioritised callback queue arrive with the controller issue.
"""

from __future__ import annotations

from actors._child import Child, child_main


class Controller(Child):
    """Supervised controller process."""

    role = "controller"


if __name__ == "__main__":
    child_main(Controller)

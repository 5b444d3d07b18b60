"""What a job sees as its command line: never the daemon's configuration."""

from __future__ import annotations

from actors.client import Executor
from tests.conftest import Daemon


def test_a_job_does_not_see_the_daemons_configuration_in_sys_argv(module_daemon: Daemon) -> None:
    """A worker is started as ``python -m actors.worker CONFIG_JSON NAME``; a job's ``sys.argv`` held that whole
    JSON (every setting of the daemon) until a script's own function brought its caller's command line."""
    with Executor(config=module_daemon.config) as ex:
        argv = ex.submit(eval, "__import__('sys').argv").result(60)
    assert len(argv) == 1 and "{" not in argv[0], argv

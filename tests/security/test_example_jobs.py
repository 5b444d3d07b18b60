"""The example jobs a README's allow-list named: a path argument is a file name, never an option to a program."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import RemoteError
from tests.conftest import Daemon


def test_count_lines_reads_a_path_that_looks_like_an_option_as_a_file_name(shared_daemon: Daemon,
                                                                           tmp_path: Path) -> None:
    """``count_lines("--files0-from=FILE")`` made ``wc`` print FILE's contents in its error, which the job
    raised to its caller: a remote key allowed ``examples.jobs:*`` read the daemon's secret key that way."""
    secret = tmp_path / "secret"
    secret.write_text("the-secret-text\n")
    c = shared_daemon.client()
    with pytest.raises(RemoteError) as caught:
        c.submit("examples.jobs:count_lines", f"--files0-from={secret}").result(60)
    assert "the-secret-text" not in str(caught.value) and "No such file" in str(caught.value), caught.value
    assert c.submit("examples.jobs:count_lines", str(secret)).result(60) == 1

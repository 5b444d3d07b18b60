"""A key file that holds no key fails the client at once, saying which file (it hung: the I/O thread died on it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from actors import ConfigError
from actors.config import Config
from tests.conftest import ROOT
from tests.security.conftest import free_port


def test_the_cli_with_a_file_that_is_no_key_exits_saying_so(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-key"
    bad.write_text("junk\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
    env.update({"PYTHONPATH": str(ROOT), "ENSEMBLE_RUN_DIR": str(tmp_path / "run")})
    proc = subprocess.run([sys.executable, "-m", "actors", "--connect", f"tcp://127.0.0.1:{free_port()}",
                           "--key", str(bad), "--server-key", str(bad), "status"],
                          env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode != 0
    assert f"cannot read key file {bad}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_client_with_a_file_that_is_no_key_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    from ensemble import Client

    bad = tmp_path / "not-a-key"
    bad.write_text("junk\n")
    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="cannot read key file"):
        Client(config=Config(), endpoint=f"tcp://127.0.0.1:{free_port()}", curve=(str(bad), str(bad)), timeout=5)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]

"""``ensemble load`` waits for the controller: a script that does not load exits non-zero with its error."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.client import ScriptLoadError
from tests.conftest import Daemon, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


def test_load_of_a_syntax_error_exits_non_zero_with_file_and_line(daemon: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("from controller.script import *\n\ndef on_note(e)\n    pass\n")
    out = daemon.cli("load", str(bad), check=False)
    assert out.returncode == 1, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble: error: script ")
    assert "SyntaxError" in lines[0] and f"{bad.resolve()}:3" in lines[0]
    good = ROOT / "examples" / "instruments" / "fade_all.py"
    out = daemon.cli("load", str(good))
    assert out.stdout.strip() == f"loaded {good.resolve()}"
    assert daemon.cli("reload").stdout.strip() == "reloaded"
    raising = tmp_path / "raising.py"
    raising.write_text("x = 1\nraise RuntimeError('no licence')\n")
    with pytest.raises(ScriptLoadError, match=rf"RuntimeError in module code: no licence \({raising.resolve()}:2"):
        daemon.client().load_script(str(raising), wait=30)
    assert daemon.cli("load", str(bad), "--timeout", "0").stdout.startswith("loading ")  # no wait: as before


def test_load_of_a_path_the_system_cannot_look_up_says_why(daemon: Daemon) -> None:
    """A name too long for the file system is the caller's mistake, said as such (not "internal error")."""
    from actors import DaemonError

    with pytest.raises(DaemonError, match="cannot be read: File name too long"):
        daemon.client().load_script("/" + "x" * 5000)
    assert daemon.client().ping() is not None


def test_after_a_load_that_failed_the_last_script_s_parameters_are_refused_not_lost(daemon: Daemon,
                                                                                     tmp_path: Path) -> None:
    """The controller runs no script after a load failed: a `param set` of the script before was acknowledged
    (the daemon still listed its parameters) and then dropped by the controller."""
    from actors import DaemonError

    c = daemon.client()
    c.load_script(str(ROOT / "tests" / "scripts" / "stateful.py"), wait=30)
    assert "gain" in [p.name for p in c.params()]
    bad = tmp_path / "broken.py"
    bad.write_text("def on_note(e)\n    pass\n")
    with pytest.raises(ScriptLoadError, match="SyntaxError"):
        c.load_script(str(bad), wait=30)
    assert c.params() == []
    with pytest.raises(DaemonError, match="no parameter named 'gain'; no script with parameters is loaded"):
        c.set_param("gain", 0.7)
    out = daemon.cli("param", "set", "gain", "0.7", check=False)
    assert out.returncode == 1 and "no parameter named 'gain'" in out.stderr


PROCESSOR_ONLY_FAILURE = """from controller.script import get_context

if get_context() == "Processor":
    raise RuntimeError("no DSP licence here")
"""


@pytest.mark.slow  # 1-2 s: the default suite keeps under its 5 minutes in CI
def test_load_of_a_script_whose_processor_side_fails_exits_non_zero_with_the_processor_s_error(
        daemon: Daemon, tmp_path: Path) -> None:
    """The controller ran it, the processor's copy raised: not "loaded" (the daemon waited for the controller only)."""
    good = ROOT / "examples" / "instruments" / "fade_all.py"
    daemon.cli("load", str(good))
    wait_for(lambda: daemon.actor("processor").stats.get("script") == str(good.resolve()), what="the first script")
    bad = tmp_path / "processor_fails.py"
    bad.write_text(PROCESSOR_ONLY_FAILURE)
    out = daemon.cli("load", str(bad), check=False)
    assert out.returncode == 1 and out.stdout == "", out.stdout  # was: "loaded ...", exit 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ensemble: error: script {bad} did not load: "), lines
    assert f"RuntimeError in the processor's module code: no DSP licence here ({bad.resolve()}:4" in lines[0]
    # the processor runs no script after it (not the one before, its parameters cleared for this load)
    wait_for(lambda: daemon.actor("processor").stats.get("script") == "", what="the processor to run no script")
    out = daemon.cli("reload", check=False)
    assert out.returncode == 1 and "no DSP licence here" in out.stderr and out.stdout == ""
    with pytest.raises(ScriptLoadError, match="in the processor's module code: no DSP licence here"):
        daemon.client().load_script(str(bad), wait=30)
    assert daemon.cli("load", str(good)).stdout.strip() == f"loaded {good.resolve()}"

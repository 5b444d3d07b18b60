"""Every guide in docs/guides/ is followed, command by command, against a real daemon.

Each guide becomes one bash script (``tests/docs/guides.py``), run the way a
reader types the blocks into one terminal at the root of a fresh clone:

* ```` ```sh ```` blocks run in order in one bash process per guide, so
  variables, the working directory and background jobs carry over from block
  to block; ``set -euo pipefail`` is on, and a command that fails fails the
  test, naming the block (``guide.md:LINE``) and showing the output.
* ```` ```python ```` blocks run with ``python`` in the same directory and
  environment.
* A block with a title (```` ```python title="mywork.py" ````, also ``toml``,
  ``yaml``, ``ini``, ``sh``) is a file the guide asks you to create: it is
  written to that path, not run.
* **Skipped** (the guide's text says why each is not run here):
  ```` ```console-noexec ```` (systemd, containers, kubectl, interactive
  commands such as ``ensemble top``), ```` ```python-noexec ```` (other tools'
  code, for comparison), ```` ```text ```` (output) and fences without a
  language. Any other info string fails :func:`test_every_fence_is_known`, so
  that a typo (```` ```shell ````) is never skipped silently.

The environment is private: ``HOME``, ``XDG_RUNTIME_DIR`` and
``XDG_STATE_HOME`` point into a temporary directory (so the daemon's run and
state directories, keys and journal are the defaults a reader gets, under it),
every ``ENSEMBLE_*`` variable of the caller is dropped, and two are set: 2
workers and the null audio backend (no sound card needed, same result
everywhere). The working directory holds links to the clone's top-level files
and directories; what a guide creates lands beside them. ``ensemble``,
``python`` and ``python3`` on ``PATH`` run this tree with this interpreter;
``pip`` is a stand-in that accepts only the documented ``pip install -e .``
forms and installs nothing: the tree under test is already importable, which
:func:`test_the_tree_under_test_is_installed` checks. Each guide must stop what
it starts: a daemon still running at its end fails the test (it is then
stopped), and the leak check of ``tests/conftest.py`` runs after each guide.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, processes_mentioning, wait_for
from tests.docs.guides import KNOWN, blocks, script

pytestmark = pytest.mark.slow  # each guide followed end to end, about a minute in all: .ci/run runs them (-m slow)

GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
GUIDE_TIMEOUT = 120.0  # seconds for one whole guide: a hang guard, far above the normal run time
# Fixed ports the operations guide uses (tcp endpoints, metrics); they must be free.
PORTS = {"operations.md": (7700, 7701, 9464)}
_LINKED_OUT = {".git", "build", "dist", "site", ".pytest_cache", ".hypothesis", ".benchmarks"}

_PIP = """#!/bin/sh
# Stand-in for pip in the guide test: the tree under test is already installed.
case "$*" in
  "install -e ."|"install -e .[docs]"|"install -e .[test]"|"install -e .[deploy]")
    echo "(guide test: pip $*: not run, the tree under test is what is installed)"; exit 0;;
esac
echo "guide test: unexpected pip command: pip $*" >&2
exit 1
"""


def _shim(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def reader(short_tmp: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh working directory (a clone's files, linked) and a private environment for one guide."""
    work = short_tmp / "w"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in _LINKED_OUT and not entry.name.endswith(".egg-info"):
            (work / entry.name).symlink_to(entry)
    bin_dir = short_tmp / "bin"
    bin_dir.mkdir()
    _shim(bin_dir / "ensemble", f'#!/bin/sh\nexec {sys.executable} -m actors "$@"\n')
    for name in ("python", "python3"):
        _shim(bin_dir / name, f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    _shim(bin_dir / "pip", _PIP)
    for d in ("home", "xdg-run", "xdg-state"):
        (short_tmp / d).mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENSEMBLE_", "XDG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "HOME": str(short_tmp / "home"),
        "XDG_RUNTIME_DIR": str(short_tmp / "xdg-run"),
        "XDG_STATE_HOME": str(short_tmp / "xdg-state"),
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "ENSEMBLE_WORKERS": "2",
        "ENSEMBLE_AUDIO_BACKEND": "null",
        "NO_COLOR": "1",
        "COLUMNS": "120",
    })
    yield work, env
    _stop_daemons(short_tmp, env)


def _running_daemons(base: Path) -> list[str]:
    """Names of daemons whose lock is held under the private runtime directory."""
    import fcntl

    names = []
    for lock in (base / "xdg-run" / "ensemble").glob("*/daemon.lock"):
        with open(lock, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                names.append(lock.parent.name)
    return names


def _stop_daemons(base: Path, env: dict[str, str]) -> None:
    """Stop whatever a guide left running (daemons by `ensemble down`, then any process of its directory)."""
    for name in _running_daemons(base):
        subprocess.run([sys.executable, "-m", "actors", "--name", name, "down"], env=env, capture_output=True,
                       timeout=60)
    for pid in processes_mentioning(str(base)):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    wait_for(lambda: not processes_mentioning(str(base)), 15, what=f"processes of {base} to exit")


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as ZeroMQ and http.server bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_tree_under_test_is_installed() -> None:
    """The stand-in pip installs nothing: the clone's packages and dependencies must import as they are."""
    out = subprocess.run([sys.executable, "-c", "import actors, audio, controller.script, zmq, msgpack, numpy, click; "
                          "print(actors.__file__)"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().is_relative_to(ROOT)


def test_every_fence_is_known() -> None:
    """Every block is run, written or knowingly skipped; every guide runs something."""
    assert GUIDES, "no guides in docs/guides"
    for guide in GUIDES:
        found = blocks(guide)
        unknown = [f"{b.where} ```{b.lang}" for b in found if b.lang not in KNOWN]
        assert not unknown, f"fence languages the guide test does not know (run? skip?): {unknown}"
        assert any(b.runs and b.lang == "sh" and not b.title for b in found), f"{guide.name} runs no sh block"


@pytest.mark.timeout(GUIDE_TIMEOUT + 60)
@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide(guide: Path, reader: tuple[Path, dict[str, str]]) -> None:
    """Run the guide's blocks in order; every command must succeed and the guide must stop its daemon."""
    work, env = reader
    busy = [p for p in PORTS.get(guide.name, ()) if not _port_free(p)]
    assert not busy, f"{guide.name} uses fixed ports {busy}, which another process holds; free them and rerun"
    (work.parent / "guide.sh").write_text(script(guide))
    start = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(work.parent / "guide.sh")], cwd=work, env=env, capture_output=True,
                              text=True, timeout=GUIDE_TIMEOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{guide.name} did not finish within {GUIDE_TIMEOUT:g}s; last block: "
                             f"{_last_block(str(exc.stderr or ''))}\n{exc.stdout!s}\n{exc.stderr!s}") from None
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise AssertionError(f"{guide.name}: block {_last_block(proc.stderr)} failed (exit {proc.returncode}) "
                             f"after {took:.1f}s\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    print(f"{guide.name}: {took:.1f}s; slowest blocks: {_slowest(proc.stderr)}\n{proc.stdout}")  # shown with -rP
    left = _running_daemons(work.parent)
    assert not left, f"{guide.name} left daemons running: {left} (end the guide with `ensemble down`)"


def _marks(stderr: str) -> list[tuple[str, float]]:
    """``(where, time)`` of every block marker the guide script printed."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("@@block "):
            where, _, stamp = line.removeprefix("@@block ").partition(" ")
            out.append((where, float(stamp or 0)))
    return out


def _last_block(stderr: str) -> str:
    marks = _marks(stderr)
    return marks[-1][0] if marks else "(before the first block)"


def _slowest(stderr: str, n: int = 3) -> str:
    marks = _marks(stderr)
    spans = sorted(((b[1] - a[1], a[0]) for a, b in zip(marks, marks[1:])), reverse=True)[:n]
    return ", ".join(f"{where} {secs:.1f}s" for secs, where in spans)

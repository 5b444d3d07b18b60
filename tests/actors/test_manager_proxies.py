"""A ``multiprocessing.Manager`` proxy passed to an ``Executor`` job works as under ``ProcessPoolExecutor``.

A proxy unpickled in a worker connects back to its manager with the worker's
``current_process().authkey``.  ``ProcessPoolExecutor``'s workers have their
parent's key (forked, or given it when spawned); a private daemon's workers
take their owner's, whether the daemon was forked or spawned and whether the
worker was forked at start-up or spawned to replace one that died.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_main

_JOBS = '''
import os


def put(d, key, value):
    d[key] = value
    return len(d)


def die():
    os._exit(3)
'''

_MAIN = '''
import multiprocessing

from ensemble import Executor

import mjobs

if __name__ == "__main__":
    with multiprocessing.Manager() as manager:
        d = manager.dict()
        with Executor(max_workers=1) as ex:
            print("first", ex.submit(mjobs.put, d, "a", 1).result(timeout=60))
            try:  # the only worker dies: a fresh interpreter replaces it
                ex.submit(mjobs.die).result(timeout=60)
            except Exception as exc:
                print("died", type(exc).__name__)
            print("replaced", ex.submit(mjobs.put, d, "b", 2).result(timeout=60))
        print("dict", sorted(d.items()))
'''


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_manager_proxy_reaches_its_manager_from_a_job_and_from_a_replaced_worker(tmp_path: Path,
                                                                                   start: str) -> None:
    (tmp_path / "mjobs.py").write_text(_JOBS)
    out = run_main(tmp_path, _MAIN, timeout=150, ENSEMBLE_PRIVATE_START=start).stdout.splitlines()
    assert out[0] == "first 1"
    assert out[1].startswith("died ")
    assert out[2:] == ["replaced 2", "dict [('a', 1), ('b', 2)]"]


def test_a_job_does_not_see_the_owners_key_in_its_environment(tmp_path: Path) -> None:
    """The key is the worker's, as in the pool; it is not left in the environment that a job's subprocesses
    inherit."""
    (tmp_path / "mjobs.py").write_text("import os\n\n\ndef env():\n    return sorted(os.environ)\n")
    main = ("import multiprocessing\nfrom ensemble import Executor\nimport mjobs\n"
            "if __name__ == '__main__':\n"
            "    multiprocessing.current_process()\n"
            "    with Executor(max_workers=1) as ex:\n"
            "        print([k for k in ex.submit(mjobs.env).result(timeout=60) if 'AUTHKEY' in k])\n")
    assert run_main(tmp_path, main, timeout=120).stdout.strip() == "[]"

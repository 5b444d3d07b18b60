"""A failing initializer's traceback reaches the caller's stderr, as a ProcessPoolExecutor worker logs it there."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_main

_SCRIPT = '''\
from actors.client import Executor


def setup(x):
    raise RuntimeError(f"no licence for {x}")


def work(x):
    return x


if __name__ == "__main__":
    with Executor(1, initializer=setup, initargs=("dsp",)) as ex:
        try:
            ex.submit(work, 1).result(60)
        except Exception as exc:
            print("raised", type(exc).__name__, flush=True)
'''


def test_a_failing_initializer_prints_its_traceback_on_the_caller_s_stderr(tmp_path: Path) -> None:
    proc = run_main(tmp_path, _SCRIPT, timeout=120)
    assert proc.stdout.splitlines() == ["raised BrokenProcessPool"]
    err = proc.stderr
    assert "Exception in initializer __main__:setup:" in err, err
    assert "Traceback (most recent call last):" in err and 'main.py", line 5, in setup' in err, err
    assert err.rstrip().endswith("RuntimeError: no licence for dsp"), err

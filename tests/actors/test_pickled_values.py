"""A local client's values that only pickle carries (dataclasses, named tuples, enums, numpy scalars, your
classes) cross as ext 5 and come back as they went in; the daemon never unpickles them (issue 13).

A ``ProcessPoolExecutor`` carries them between local processes, so a local ``Client`` does too: the client
and the worker pickle them a value at a time, the daemon keeps the bytes.  What does not pickle is refused at
submit naming where it sits; what does not unpickle fails only the call that reads it.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import fractions
from typing import Any

import numpy as np
import pytest

from actors import Executor, ProtocolError, RemoteError
from actors._values import Pickled
from actors.messages import EXT_PICKLED, JobInfo, _decode_value, _encode_value, decode, encode
from tests.actors.test_exact_values import same
from tests.conftest import Daemon


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    tags: tuple[str, ...] = ()


class Mode(enum.Enum):
    FAST = "fast"


Pair = collections.namedtuple("Pair", "left right")

VALUES: list[Any] = [
    Point(1, ("a",)), Mode.FAST, fractions.Fraction(1, 3), Pair(1, "x"), np.float32(2.5), np.int16(-3),
    collections.OrderedDict(b=1, a=2), collections.defaultdict(list, {"k": [1]}), collections.Counter("aab"),
    {Point(2): "a dataclass as a key", "plain": [Pair(3, 4), (5, Mode.FAST)]}, {frozenset({Point(3)})},
]


def test_a_local_client_gets_back_what_only_pickle_carries(shared_daemon: Daemon) -> None:
    c = shared_daemon.client()
    handles = [c.submit("examples.jobs:echo", v) for v in VALUES]
    for value, h in zip(VALUES, handles):
        assert same(h.result(60), value), value
    objects = np.array([Point(1), "text", None], dtype=object)  # an array of objects, as a pool sends it
    back = c.submit("examples.jobs:echo", objects).result(60)
    assert back.dtype == object and list(back) == list(objects)
    got = c.submit("tests.jobs:type_names", Point(1), Pair(1, 2), kwargs={"m": Mode.FAST, "n": np.int8(1)}).result(60)
    assert got == ["Point", "Pair", "Mode", "int8"]  # as the job received them


def test_a_reattached_job_rebuilds_its_value_and_a_listing_runs_no_user_code(shared_daemon: Daemon) -> None:
    from tests import jobs

    c = shared_daemon.client()
    done = c.submit("examples.jobs:echo", Point(7))
    assert done.result(60) == Point(7)
    assert c.job(done.id).result(60) == Point(7)
    bad = c.submit("tests.jobs:unloadable_result")
    bad.wait(60)
    listed = {info.id: info for info in c.jobs(limit=20)}
    assert type(listed[done.id].result) is Pickled  # a listing keeps the bytes: it rebuilds nothing
    assert type(listed[bad.id].result["inside"]) is Pickled
    with pytest.raises(RemoteError, match=r"cannot be rebuilt here: ValueError: refused to load: LoadsNowhere"):
        bad.result(60)
    assert bad.wait(1).state == "done"  # the job itself succeeded; only reading its value here failed
    assert jobs.LoadsNowhere  # (the class the result holds)


def test_what_does_not_pickle_is_refused_at_submit_and_what_does_not_unpickle_fails_its_job(
        shared_daemon: Daemon) -> None:
    import threading

    from tests import jobs

    c = shared_daemon.client()
    with pytest.raises(ProtocolError, match=r"the arguments\[1\]\['held'\] cannot cross .*_thread.lock does not "
                                            r"pickle"):
        c.submit("examples.jobs:echo", 1, {"held": threading.Lock()})
    big = np.arange(200_000, dtype=np.float64)  # its pooled segment goes back to the pool, not lost
    with pytest.raises(ProtocolError, match="does not pickle"):
        c.submit("tests.jobs:type_names", big, threading.Lock())
    assert np.array_equal(c.submit("examples.jobs:echo", big).result(60), big)
    with pytest.raises(RemoteError, match="cannot be rebuilt in the worker: ValueError: refused to load") as info:
        c.submit("examples.jobs:echo", [jobs.LoadsNowhere()]).result(60)
    assert isinstance(info.value, TypeError)
    assert c.submit("examples.jobs:add", 2, 3).result(60) == 5  # the daemon and the worker carry on


def test_the_daemon_keeps_pickled_bytes_as_they_came_and_refuses_them_from_another_host() -> None:
    from actors import messages
    from actors._values import to_wire
    from actors.messages import JobSpec, Submit

    blob = _encode_value(to_wire([(Pickled(b"\x80\x05K\x01."),)]))
    saved = messages._KEEPS_EXACT[0]
    try:
        messages.keep_exact_values()  # this process, as the daemon does at start
        kept = _decode_value(blob)
        assert _encode_value(kept) == blob  # passed on as it came, never unpickled
    finally:
        messages._KEEPS_EXACT[0] = saved
    frame = encode(Submit([JobSpec("examples.jobs:echo", [Pickled(b"\x80\x05K\x01.")])]), 3)
    assert decode(frame, handles="ensemble.x.")[1].jobs[0].args[0] == Pickled(b"\x80\x05K\x01.")
    with pytest.raises(ProtocolError, match="accepted only from a client on the daemon's host"):
        decode(frame, handles=None)  # a tcp peer's frame, in the daemon
    assert EXT_PICKLED == 5


def test_a_client_on_another_host_never_unpickles_a_result(tmp_path: Any) -> None:
    """A result holding a pickled value, read by a tcp client: refused before any byte is unpickled."""
    import os
    import pickle

    from actors.client import _raise_for

    marker = tmp_path / "ran"
    evil = Pickled(pickle.dumps(_Touch(str(marker))))
    info = JobInfo(1, "examples.jobs:echo", "", "done", result={"x": [evil]})
    with pytest.raises(RemoteError, match="nothing that crossed tcp is unpickled"):
        _raise_for(info, local=False)
    assert not os.path.exists(marker)
    _raise_for(info, local=True)  # the same value, read locally, is rebuilt (and so runs its reduce)
    assert os.path.exists(marker)


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def test_a_local_client_s_error_keeps_the_job_s_exception_s_attributes(shared_daemon: Daemon, tmp_path: Any) -> None:
    """A job's exception came back with its class and text only: ``errno``, ``filename`` and a class's own fields
    were lost (``ProcessPoolExecutor`` keeps them).  It is still a RemoteError with the remote traceback."""
    from tests import jobs

    c = shared_daemon.client()
    missing = str(tmp_path / "nowhere.wav")
    with pytest.raises(FileNotFoundError) as info:
        c.submit("tests.jobs:open_missing", missing).result(60)
    assert (info.value.errno, info.value.filename) == (2, missing)
    assert isinstance(info.value, RemoteError) and "open_missing" in info.value.traceback_text
    assert str(info.value) == f"[Errno 2] No such file or directory: '{missing}'"
    with pytest.raises(jobs.FieldsError) as fields:
        c.submit("tests.jobs:raise_with_fields", 42, "why").result(60)
    assert (fields.value.code, fields.value.detail, fields.value.args) == (42, "why", (42, "why"))
    assert isinstance(fields.value, RemoteError) and fields.value.type_name == "tests.jobs.FieldsError"


def test_an_exception_pickle_cannot_rebuild_still_comes_back_with_its_fields(shared_daemon: Daemon) -> None:
    """``__init__(self, status, message)`` calling ``super().__init__(message)``: pickle rebuilds it as
    ``StatusError(message)``, which raises (``ProcessPoolExecutor`` breaks its pool on it).  It came back by name
    and text, its ``status`` lost; it is rebuilt without its ``__init__`` now, from a Client and an Executor."""
    from tests import jobs

    with pytest.raises(jobs.StatusError) as client_side:
        shared_daemon.client().submit("tests.jobs:raise_status", 404, "not here").result(60)
    with Executor(config=shared_daemon.config) as ex:
        with pytest.raises(jobs.StatusError) as executor_side:
            ex.submit(jobs.raise_status, 503, "busy").result(60)
    for caught, status, message in ((client_side, 404, "not here"), (executor_side, 503, "busy")):
        assert (caught.value.status, caught.value.args, str(caught.value)) == (status, (message,), message)
        assert "raise_status" in str(caught.value.__cause__)  # the remote traceback
    assert isinstance(client_side.value, RemoteError)  # (an Executor raises the job's exception itself, as PPE does)


def test_a_client_on_another_host_never_unpickles_an_error(tmp_path: Any) -> None:
    import os
    import pickle

    from actors.client import _raise_for

    marker = tmp_path / "ran"
    info = JobInfo(1, "examples.jobs:echo", "", "failed", result=Pickled(pickle.dumps(_Touch(str(marker)))),
                   error_type="ValueError", error_message="boom")
    with pytest.raises(ValueError, match="boom"):
        _raise_for(info, local=False)
    assert not os.path.exists(marker)


_SCRIPT = '''\\
import dataclasses
import sys

from actors.client import Client


@dataclasses.dataclass
class Cfg:
    gain: float


def scale(cfg, x):
    return Cfg(cfg.gain * x)


class Mixer:
    def __init__(self, level):
        self.level = level

    def mix(self, x):
        return self.level + x

    def __call__(self, x):
        return self.level * x


if __name__ == "__main__":
    with Client() as c:
        # first a module's function named by path, the script's objects among its arguments (the workers have
        # loaded no script yet), then inside them
        print(c.submit("tests.jobs:type_names", Cfg(1.0)).result(60), flush=True)
        print(c.submit("tests.jobs:type_names", [Cfg(1.0)]).result(60), flush=True)
        print(c.submit(scale, Cfg(2.0), 3).result(60), flush=True)
        print(c.submit(Mixer(10).mix, 1).result(60), c.submit(Mixer(10), 2).result(60), flush=True)
        job = c.submit(Mixer(1).mix, 1)
        print(c.jobs(limit=1)[0].name, job.result(60), flush=True)
        many = c.submit_many([c.spec(scale, Cfg(1.0), i, priority=1) for i in range(3)] + [c.spec(Mixer(5), 2)])
        print([h.result(60) for h in many], flush=True)
'''


def test_a_client_runs_the_script_s_own_functions_and_classes_on_a_shared_daemon(shared_daemon: Daemon,
                                                                                 tmp_path: Any) -> None:
    """``Client.submit`` refused the script's own function ("defined in __main__, which workers cannot import"),
    where ``Executor.submit`` runs it: one calling convention now.  The workers were not forked from the
    script: they load it as ``__mp_main__`` (its ``__main__`` block does not run there).  ``Client.spec`` builds
    the same jobs for ``submit_many`` (``make_spec`` refused them, knowing no daemon)."""
    import subprocess
    import sys

    (tmp_path / "main.py").write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, "main.py"], cwd=str(tmp_path), env=shared_daemon.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['Cfg']", "['list']", "Cfg(gain=6.0)", "11 20",
                                      "__main__:Mixer.mix 2", "[Cfg(gain=0.0), Cfg(gain=1.0), Cfg(gain=2.0), 10]"]


@dataclasses.dataclass
class Voice:
    name: str
    buffer: Any


def test_arrays_inside_pickled_values_keep_the_shared_memory_path(make_daemon: Any) -> None:
    """A dataclass holding a big array crossed inside its pickle, so over the frame limit it could not cross
    at all; its arrays now leave the pickle and cross through shared memory (a shared one stays shared)."""
    d = make_daemon(jobs_only=True, extra_env={"ENSEMBLE_MAX_FRAME": str(1 << 20)})
    d.up()
    c = d.client()
    voice = Voice("pad", np.arange(1_000_000, dtype=np.float32))  # 4 MB, four times the frame limit
    back = c.submit("examples.jobs:echo", voice).result(60)
    assert type(back) is Voice and back.name == "pad" and np.array_equal(back.buffer, voice.buffer)
    shared = c.empty((300_000,), "float64")
    shared[:] = 0.5
    again = c.submit("examples.jobs:echo", {"v": Voice("shared", shared)}).result(60)
    assert type(again["v"].buffer).__name__ == "SharedNDArray" and float(again["v"].buffer[-1]) == 0.5
    assert c.submit("examples.jobs:echo", Voice("small", np.ones(3))).result(60).buffer.tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="too big to carry"):  # an exception whose pickle is over the limit still
        c.submit("tests.jobs:raise_big", 2 << 20).result(60)  # comes back as itself, by type and text


def test_a_pickled_value_with_arrays_is_checked_and_kept_as_it_came() -> None:
    import msgspec

    from actors import messages
    from actors.messages import ArrayHandle

    def ext5(payload: Any) -> bytes:
        return msgspec.msgpack.encode(msgspec.msgpack.Ext(EXT_PICKLED, msgspec.msgpack.encode(payload)))

    for bad in ([b"\x80\x05N.", 1], [1, 2], [b"x"], "text"):
        with pytest.raises(ProtocolError, match="pickled value"):
            _decode_value(ext5(bad))
    handle = ArrayHandle("ensemble.k.1.0", "<f8", (4,), 0)
    blob = _encode_value([Pickled(b"\x80\x05N.", [handle])])
    saved = messages._KEEPS_EXACT[0]
    try:
        messages.keep_exact_values()
        kept = _decode_value(blob)
        assert kept[0].refs == [handle] and _encode_value(kept) == blob
    finally:
        messages._KEEPS_EXACT[0] = saved
    frame = encode(messages.Submit([messages.JobSpec("examples.jobs:echo", [Pickled(b"\x80\x05N.", [handle])])]), 4)
    with pytest.raises(ProtocolError, match="does not name a segment of this daemon"):
        decode(frame, handles="ensemble.other.")  # the arrays beside a pickle follow the frame's policy

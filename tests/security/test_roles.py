"""Findings 3 and 4: a remote key is exactly its role; identities are the daemon's, bound to socket and key.

The tests that only send requests and run short jobs share one daemon (``shared_remote``); those that kill a
job, scale the daemon or join workers to it take one of their own (``remote``).
"""

from __future__ import annotations

import os

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from actors import JobNotFound, PermissionDenied, TransportError
from actors.messages import (
    Hello, JobDone, JobSpec, JobsDone, ListJobs, Ping, Scale, Shutdown, Status, Submit, VERSION, decode, encode,
)
from controller.messages import ScriptLoad
from tests.conftest import wait_for, wait_refused
from tests.security.conftest import Remote, remote_daemon


def _running_remote(r: Remote) -> list[Any]:
    return [a for a in r.d.status().actors if a.name.startswith("remote:") and a.state == "running"]


def test_a_client_key_gets_exactly_the_client_role(remote: Remote, tmp_path: Path) -> None:
    c1, c2, admin = remote.client("c1"), remote.client("c2"), remote.client("a1")
    assert c1.submit("examples.jobs:add", 1, 2).result(60) == 3
    for call in (c1.status, lambda: c1.scale(64), c1.shutdown, lambda: c1.load_script(str(tmp_path / "x.py")),
                 lambda: c1.note_on(60)):
        with pytest.raises(PermissionDenied, match="client"):
            call()
    # a client reads and cancels only its own jobs
    mine = c1.submit("tests.jobs:sleep", 30.0)
    with pytest.raises(JobNotFound):
        c2.job(mine.id)
    with pytest.raises(JobNotFound):
        c2.cancel(mine.id)
    assert all(j.id != mine.id for j in c2.jobs())
    assert any(j.id == mine.id for j in c1.jobs())
    assert any(j.id == mine.id for j in admin.jobs())  # an admin sees every job
    mine.cancel()
    # remote clients are bound by the allow-list
    from actors import JobRefused

    with pytest.raises(JobRefused, match="allow-list"):
        c1.submit("examples.jobs:normalize", "/etc/passwd", str(tmp_path / "out.wav"))
    assert remote.d.cli("status").returncode == 0  # the local user keeps every power
    assert admin.status().daemon.name


@pytest.mark.slow  # a remote worker process starts and is refused: run by .ci/run's slow pass (default suite < 5 min)
def test_a_worker_key_is_refused_on_the_client_endpoint_and_a_client_key_on_the_worker_one(remote: Remote) -> None:
    with remote.client("w1", timeout=600) as c:  # told at once (it waited out its timeout for a TransportError)
        with pytest.raises(PermissionDenied, match="refused this client's key in the CURVE handshake"):
            c.ping()
    mon: list[Any] = []
    s = remote.raw("c1", remote.worker_ep, monitor=mon)
    try:
        s.send(encode(Hello("worker", "x", 1)))  # queued behind a handshake the worker endpoint refuses
        wait_refused(s, mon[0], what="the worker endpoint, to a client key,")
        assert not any(a.name.startswith("remote:") for a in remote.d.status().actors)
    finally:
        s.close(0)


def test_a_worker_key_s_results_are_never_unpickled_by_a_local_executor(remote: Remote, tmp_path: Path) -> None:
    """A local Executor's job run on a worker of another host: its result crossed tcp, so it must not be
    unpickled.  A forged pickle sent as the result was unpickled in the Executor's process (code as the
    daemon's user, from a key that may only run jobs); now the daemon hands it on as a MessagePack value, and a
    pickled exception is dropped (the error by name only)."""
    import pickle

    from actors.client import Executor
    from actors.messages import RunJobs

    remote.d.cli("scale", "0")
    wait_for(lambda: not [a for a in remote.d.status().actors if a.role == "worker" and a.pid], 60,
             what="local workers to retire")
    marker = tmp_path / "ran"
    forged = pickle.dumps(_Opens(str(marker)))
    evil = remote.raw("w2", remote.worker_ep)
    try:
        evil.send(encode(Hello("worker", "evil", 4242)))
        wait_for(lambda: len(_running_remote(remote)) == 1, 60, what="the worker key to join")
        with Executor(config=remote.d.config) as ex:
            futures = [ex.submit(pow, 2, 3), ex.submit(pow, 2, 4)]
            ids = []
            while len(ids) < 2:  # the worker's side of the protocol, by hand: each job answered with the pickle
                assert evil.poll(60_000), "no job reached the worker key"
                _, msg = decode(evil.recv(), handles="", stored=True)
                if isinstance(msg, RunJobs):
                    ids += [d.job_id for d in msg.jobs]
                    assert all(d.pickled for d in msg.jobs)
            evil.send(encode(JobsDone([JobDone(ids[0], True, forged, started=time.time()),
                                       JobDone(ids[1], False, forged, "ValueError", "forged", started=time.time())])))
            assert futures[0].result(60) == forged  # the bytes it sent, as bytes
            with pytest.raises(ValueError, match="forged"):
                futures[1].result(60)
        assert not marker.exists()  # nothing it sent ran here
    finally:
        evil.close(0)


def test_a_remote_admin_loads_scripts_only_from_the_script_dirs(shared_remote: Remote, tmp_path: Path) -> None:
    import subprocess as sp

    admin = shared_remote.client("a1")
    with pytest.raises(PermissionDenied, match="script_dirs"):
        admin.load_script(sp.__file__)  # the standard library's subprocess.py, as in the review
    assert shared_remote.d.cli("status").returncode == 0


def test_a_worker_key_cannot_finish_or_steal_another_worker_s_jobs(remote: Remote, tmp_path: Path) -> None:
    remote.d.cli("scale", "0")
    wait_for(lambda: not [a for a in remote.d.status().actors if a.role == "worker" and a.pid], 60,
             what="local workers to retire")
    victim = remote.start_worker("w1")
    remote.procs.append(victim)  # type: ignore[attr-defined]
    wait_for(lambda: _running_remote(remote), 60, what="the remote worker to join")
    c = remote.d.client()
    gate = tmp_path / "gate"
    job = c.submit("tests.jobs:wait_file", str(gate), 120.0)
    wait_for(lambda: job.refresh().state == "running", 60, what="the job to run on the remote worker")
    (name,) = [a.name for a in _running_remote(remote)]
    assert name.startswith("remote:w1#")  # named from its key, not from what the peer said
    # an attacker with another worker key joins and forges the result of the victim's job
    evil = remote.raw("w2", remote.worker_ep)
    try:
        evil.send(encode(Hello("worker", "evil", 4242)))
        wait_for(lambda: len(_running_remote(remote)) == 2, 60, what="the second worker key to join")
        evil.send(encode(JobsDone([JobDone(job.id, True, "forged", started=time.time())])))
        # and a client key cannot even reach the worker endpoint to try
        mon: list[Any] = []
        spy = remote.raw("c1", remote.worker_ep, routing_id=b"w1-1-" + b"0" * 12, monitor=mon)
        spy.send(encode(JobsDone([JobDone(job.id, True, "forged too", started=time.time())])))
        wait_refused(spy, mon[0], what="the worker endpoint, to a client key,")
        # the forged result was read and dropped (counted), not taken for the victim's
        wait_for(lambda: remote.d.status().daemon.counters.get("stale_results", 0) >= 1, 60,
                 what="the forged result to be counted as stale")
        assert job.refresh().state == "running"
        gate.write_text("go")
        assert job.result(60) == "released"  # the victim's own result, not a forged one
        spy.close(0)
    finally:
        evil.close(0)


@pytest.mark.parametrize("key", ["c1", "a1"])
def test_every_request_a_role_may_not_send_is_refused_and_the_daemon_lives(shared_remote: Remote, key: str) -> None:
    from actors.extensions import load_extensions
    from actors.messages import _REGISTRY
    from actors.supervisor._requests import ADMIN_REQUESTS, CLIENT_REQUESTS

    s = shared_remote.raw(key, shared_remote.client_ep)
    allowed = CLIENT_REQUESTS if key.startswith("c") else ADMIN_REQUESTS.union(
        *(ext.admin_requests for ext in load_extensions()))
    try:
        for kind, cls in sorted(_REGISTRY.items()):
            if cls in allowed:
                continue
            s.send(msgpack.packb([VERSION, kind, kind, [kind]]))  # a well-formed envelope: the role decides
            assert s.poll(10_000), f"no answer to {cls.__name__}"
            corr, reply = decode(s.recv())
            assert type(reply).__name__ == "Error", (cls.__name__, reply)
            assert reply.code in ("permission", "protocol"), (cls.__name__, reply)
    finally:
        s.close(0)
    assert shared_remote.d.cli("status").returncode == 0
    assert not any(a.restarts for a in shared_remote.d.status().actors)


def _refused(s: Any, arg: Any, corr: int) -> str:
    """Submit one echo job of ``arg`` on the raw socket ``s``: the daemon's protocol error, its message."""
    s.send(encode(Submit([JobSpec("examples.jobs:echo", [arg])]), corr))
    assert s.poll(10_000)
    got, reply = decode(s.recv())
    assert got == corr and reply.code == "protocol", reply
    return str(reply.message)


def test_remote_peers_cannot_name_shared_memory(shared_remote: Remote) -> None:
    from actors.messages import ArrayHandle

    s = shared_remote.raw("c1", shared_remote.client_ep)
    try:
        handle = ArrayHandle(f"ensemble.{shared_remote.d.config.shm_key}.1.0", "<f8", (4,), 0)
        assert "remote peer" in _refused(s, handle, 7)
    finally:
        s.close(0)


def test_a_remote_client_s_array_result_comes_inline_and_leaves_no_segment(shared_remote: Remote) -> None:
    import numpy as np

    prefix = f"ensemble.{shared_remote.d.config.shm_key}."

    def segments() -> set[str]:
        return {p for p in os.listdir("/dev/shm") if p.startswith(prefix)}

    before = segments()
    a = np.arange(1 << 18, dtype="<f8")  # 2 MiB: a local client's would come back through shared memory
    back = shared_remote.client("c1").submit("examples.jobs:echo", a).result(60)
    assert np.array_equal(back, a)
    # the worker sent it in the frame (its owner is on another host): no segment waits for a `down`
    assert segments() - before == set()


def test_a_remote_peer_s_pickled_values_are_refused_and_its_objects_are_not_sent(shared_remote: Remote,
                                                                                tmp_path: Path) -> None:
    """Pickled values (ext 5) cross only between a client and the workers of the daemon's host: from a tcp peer
    they are refused, in the open or inside an exact value, and nothing runs; a remote client does not pickle
    what MessagePack cannot carry, it is refused naming the type."""
    import dataclasses
    import pickle

    from actors import ProtocolError
    from actors._values import Exact, Pickled

    marker = tmp_path / "ran"
    evil = Pickled(pickle.dumps(_Opens(str(marker))))
    s = shared_remote.raw("c1", shared_remote.client_ep)
    try:
        assert "accepted only from a client on the daemon's host" in _refused(s, evil, 11)
        assert "accepted only from a client on the daemon's host" in _refused(s, Exact(0, [1, evil]), 12)
    finally:
        s.close(0)
    assert not marker.exists()

    @dataclasses.dataclass
    class Point:
        x: int

    c = shared_remote.client("c1")
    with pytest.raises(ProtocolError, match="Point to a daemon on another host"):
        c.submit("examples.jobs:echo", [Point(1)]).result(60)
    assert c.submit("examples.jobs:add", 1, 2).result(60) == 3


class _Opens:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def test_a_remote_client_s_exact_values_cross_and_hide_no_handle(shared_remote: Remote) -> None:
    """Tuples, sets, datetimes... cross from another host too (ext 4 is data only); an array handle hidden inside
    one is refused as it is in the open, and a malformed one is a protocol error; the daemon answers after both."""
    import datetime

    import msgspec

    from actors._values import Exact
    from actors.messages import ArrayHandle, EXT_VALUE

    value = ((1, 2), {3}, datetime.datetime(2026, 1, 2, 3, 4), 2**80)
    back = shared_remote.client("c1").submit("examples.jobs:echo", value).result(60)
    assert back == value and [type(v) for v in back] == [tuple, set, datetime.datetime, int]
    s = shared_remote.raw("c1", shared_remote.client_ep)
    try:
        handle = ArrayHandle(f"ensemble.{shared_remote.d.config.shm_key}.1.0", "<f8", (4,), 0)
        assert "remote peer" in _refused(s, Exact(0, ["x", handle]), 8)
        bad = msgspec.msgpack.Ext(EXT_VALUE, msgspec.msgpack.encode([5, ["not a date", ""]]))
        assert "malformed exact value" in _refused(s, bad, 9)
    finally:
        s.close(0)
    assert shared_remote.client("c1").submit("examples.jobs:add", 1, 2).result(60) == 3


@pytest.mark.parametrize("payload, why", [
    (["<f8", [2**62, 2**62, 0], b""], "shape"),       # no item, so the size check passes; numpy cannot make it
    (["<f8", [0, 2**63 - 1], b""], "shape"),
    (["f8,(", [1], b"\0" * 8], "unknown array dtype"),  # numpy's dtype parser raises SyntaxError
    (["f8,)", [1], b"\0" * 8], "unknown array dtype"),
])
def test_an_inline_array_numpy_cannot_make_is_a_protocol_error(shared_remote: Remote, payload: list[Any],
                                                               why: str) -> None:
    """One frame with such an array (ext 1), in the open or inside an exact value (ext 4), ended the daemon: what
    numpy raised escaped the decoder.  It is the sender's protocol error now, and the daemon keeps its jobs."""
    import msgspec

    from actors._values import Exact
    from actors.messages import EXT_INLINE_ARRAY

    c = shared_remote.client("c1")
    running = c.submit("tests.jobs:sleep", 600)
    wait_for(lambda: running.state == "running", 60, what="the job to start")
    array = msgspec.msgpack.Ext(EXT_INLINE_ARRAY, msgspec.msgpack.encode(payload))
    s = shared_remote.raw("c1", shared_remote.client_ep)
    try:
        assert why in _refused(s, array, 11)
        assert why in _refused(s, Exact(0, [array]), 12)  # nested in a tuple
    finally:
        s.close(0)
    assert running.state == "running"  # the daemon did not restart under it
    c.cancel(running.id, block=True)
    assert c.submit("examples.jobs:add", 1, 2).result(60) == 3



def _exact_bytes(tag: int, data: Any) -> bytes:
    """An exact value (ext 4) as a client would encode it: ``[tag, data]``, ``data`` MessagePack (may hold more)."""
    import msgspec

    from actors.messages import EXT_VALUE

    return msgspec.msgpack.encode(msgspec.msgpack.Ext(EXT_VALUE, msgspec.msgpack.encode([tag, data])))


def _set_in_a_set() -> bytes:
    import msgspec

    from actors._values import SET

    return _exact_bytes(SET, [msgspec.msgpack.decode(_exact_bytes(SET, [1]))])


@pytest.mark.parametrize("arg, why", [
    (b"\x81" + _exact_bytes(0, [[1, 2]]) + b"\x01", "map keys must be hashable"),  # {([1, 2],): 1}
    (_set_in_a_set(), "unhashable type: 'set'"),  # {{1}}
], ids=["tuple-holding-a-list-as-a-key", "set-in-a-set"])
def test_an_exact_value_that_is_no_key_where_it_is_rebuilt_is_refused_at_the_daemon(shared_remote: Remote, arg: bytes,
                                                                                    why: str) -> None:
    """The daemon keeps exact values (ext 4) as they came, and hashed them by identity, so a tuple holding a list
    passed as a dict key, and a set as a set's item: the job was accepted, its worker could not read the frame,
    and the job held that worker running for ever.  Such a value is the sender's protocol error now."""
    import msgspec

    s = shared_remote.raw("c1", shared_remote.client_ep)
    try:
        assert why in _refused(s, msgspec.Raw(arg), 13)
    finally:
        s.close(0)
    c = shared_remote.client("c1")
    assert [c.submit("examples.jobs:add", i, 1).result(60) for i in range(3)] == [1, 2, 3]  # no worker is held


def test_a_revoked_key_is_told_so_at_once(remote: Remote) -> None:
    """A revoked client's submit said the daemon "stopped or restarted", and its listing waited out the whole
    timeout: the daemon refuses the key in the CURVE handshake, and the client says that, for every call."""
    c = remote.client("c2", timeout=600)
    assert c.submit("examples.jobs:add", 1, 2).result(60) == 3
    remote.d.cli("keys", "revoke", "c2")
    log = remote.d.base / "state" / "daemon.log"
    wait_for(lambda: "event=allow-list-reloaded" in log.read_text(), 30, what="the daemon to read the allow-list")
    revoked = remote.client("c2", timeout=600)  # (a client made after the revocation: its handshake is refused)
    for call in (lambda: revoked.submit("examples.jobs:add", 1, 2), revoked.jobs):
        with pytest.raises(PermissionDenied, match="refused this client's key in the CURVE handshake: the key was "
                                                   "revoked"):
            call()
    assert remote.client("c1").submit("examples.jobs:add", 2, 2).result(60) == 4  # the others go on


def test_a_revoked_key_s_request_on_a_new_thread_is_told_so_at_once(remote: Remote) -> None:
    """A client made before the revocation: a thread's first request opens a socket of its own, whose handshake
    the daemon refuses. Nothing watched that socket, and the request waited out the client's whole timeout to
    end ``NoAnswer`` ("is it overloaded or stopped?"); it says why now."""
    import threading

    c = remote.client("c2", timeout=600)
    assert c.ping().pid
    remote.d.cli("keys", "revoke", "c2")
    log = remote.d.base / "state" / "daemon.log"
    wait_for(lambda: "event=allow-list-reloaded" in log.read_text(), 30, what="the daemon to read the allow-list")
    out: list[Any] = []

    def ping() -> None:
        try:
            out.append(c.ping())
        except Exception as exc:  # noqa: BLE001 - what it raised is what the test looks at
            out.append(exc)

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the request waited on for an answer a refused handshake never brings"
    assert isinstance(out[0], PermissionDenied) and "the key was revoked" in str(out[0]), out


def test_a_call_queued_as_the_handshake_is_refused_fails_with_it(remote: Remote) -> None:
    """A call that passed the client's refusal check just before the refusal was read, and was queued just after it
    failed the queue, was sent to the daemon that refused the key and waited out the client's whole timeout (seen
    once in a loaded default suite: test_a_revoked_key_is_told_so_at_once's submit hung).  The interleaving,
    made certain: the call is queued once the refusal is known."""
    from concurrent.futures import Future

    remote.d.cli("keys", "revoke", "c2")
    log = remote.d.base / "state" / "daemon.log"
    wait_for(lambda: "event=allow-list-reloaded" in log.read_text(), 30, what="the daemon to read the allow-list")
    conn = remote.client("c2", timeout=600).conn
    wait_for(lambda: conn.gone is not None, 60, what="the client to read the refusal")
    fut: Future[list[int]] = Future()
    conn._outgoing.append(("submit", [], fut, None))  # what _enqueue appends, its check of gone passed before
    conn._wake()
    wait_for(fut.done, 30, what="the late call to fail")
    with pytest.raises(PermissionDenied, match="refused this client's key in the CURVE handshake"):
        fut.result(0)


def test_a_revoked_key_is_sent_nothing_more_of_the_jobs_it_watched(remote: Remote) -> None:
    """A revoked key's frames were dropped, but the daemon went on pushing it the progress and the result of the
    jobs it watched (a probe counted 12-20 pushes after the revocation).  Its watches go with its key."""
    gate = remote.d.base / "gate"
    s = remote.raw("c2", remote.client_ep)
    try:
        s.send(encode(Submit([JobSpec("tests.jobs:wait_file", [str(gate)])], watch=True, progress=True), 7))
        assert s.poll(30_000)
        corr, reply = decode(s.recv())
        assert corr == 7 and len(reply.ids) == 1, reply
        local = remote.d.client()
        wait_for(lambda: local.job(reply.ids[0]).state == "running", 60, what="the watched job to start")
        while s.poll(1000):  # its start, pushed before the revocation
            s.recv()
        remote.d.cli("keys", "revoke", "c2")
        log = remote.d.base / "state" / "daemon.log"
        wait_for(lambda: "event=allow-list-reloaded" in log.read_text(), 30, what="the daemon to read the allow-list")
        gate.touch()
        wait_for(lambda: local.job(reply.ids[0]).state == "done", 60, what="the job to end")
        assert not s.poll(2000), decode(s.recv())  # its end was pushed with the rest, before: not any more
    finally:
        s.close(0)


def test_a_new_key_given_a_revoked_key_s_name_sees_none_of_its_jobs(remote: Remote) -> None:
    """Jobs were recorded under the key's role and name: a key pair issued later under a revoked key's name read
    the old key's jobs and results.  The owner names the key itself now."""
    from actors import JobNotFound
    from actors._keys import add_peer, keys_dir

    old = remote.client("c2", timeout=60)
    job = old.submit("examples.jobs:add", 40, 2)
    assert job.result(60) == 42
    remote.d.cli("keys", "revoke", "c2")
    log = remote.d.base / "state" / "daemon.log"
    wait_for(lambda: "event=allow-list-reloaded" in log.read_text(), 30, what="the daemon to read the allow-list")
    remote.keys["c2"] = str(add_peer(keys_dir(remote.d.config), "c2", "client"))  # a new key, the same name
    wait_for(lambda: log.read_text().count("event=allow-list-reloaded") >= 2, 30, what="the new key to be allowed")
    new = remote.client("c2", timeout=60)
    assert new.submit("examples.jobs:add", 1, 1).result(60) == 2  # it works
    assert job.id not in [j.id for j in new.jobs(states=["done"])]
    with pytest.raises(JobNotFound):
        new.job(job.id)


def test_a_remote_key_fills_half_the_queue_at_most(short_tmp: Path) -> None:
    """Any client key could fill the whole queue (jobs.queue_limit, jobs.queue_bytes), and the daemon's own user
    then had every submit refused "queue full".  A remote key holds half of it at most; the rest stays free."""
    from actors import QueueFull

    for remote in remote_daemon(short_tmp, env={"ENSEMBLE_JOBS_QUEUE_LIMIT": "10"}):
        gate = remote.d.base / "gate"
        c = remote.client("c1", timeout=60)
        jobs = [c.submit("tests.jobs:wait_file", str(gate)) for _ in range(5)]
        with pytest.raises(QueueFull, match=r"queue full for this key: it has 5 unfinished jobs, and a remote key "
                                            r"may have at most half the queue \(5, jobs.queue_limit / 2\)"):
            c.submit("tests.jobs:wait_file", str(gate))
        local = remote.d.client()
        mine = [local.submit("tests.jobs:wait_file", str(gate)) for _ in range(5)]  # the daemon's own user: room left
        gate.touch()
        assert [j.result(60) for j in jobs + mine] == ["released"] * 10
        assert c.submit("examples.jobs:add", 1, 2).result(60) == 3  # its share is free again

"""The accounts of :mod:`actors.supervisor._outbox` without sockets (tests/reliability/test_unread_replies.py runs
them against a live daemon): trackers stand in as objects with ZeroMQ's ``done``."""

from __future__ import annotations

from actors.supervisor._outbox import MIN_BUDGET, SMALL, SMALL_BATCH, Outbox


class Tracker:
    def __init__(self) -> None:
        self.done = False


def test_a_key_s_connections_share_one_budget_and_read_frames_leave_it() -> None:
    box = Outbox(1024)
    assert box.budget == MIN_BUDGET
    box.heard(b"a", "client:c1", 0.0)
    box.heard(b"b", "client:c1", 0.0)
    box.heard(b"c", "client:c2", 0.0)
    t1, t2 = Tracker(), Tracker()
    box.sent(b"a", t1, MIN_BUDGET // 2 + 1, 0.0)
    assert not box.over(b"b")
    box.sent(b"b", t2, MIN_BUDGET // 2 + 1, 0.0)
    assert box.over(b"a") and box.over(b"b") and not box.over(b"c")
    assert "client:c1" in box.describe(b"a")
    t1.done = True  # read on one connection: the other's look sees it too
    assert not box.over(b"b")
    assert box.unread(b"a") == MIN_BUDGET // 2 + 1


def test_small_frames_ride_on_the_next_tracked_one() -> None:
    box = Outbox(1024)
    box.heard(b"a", "k", 0.0)
    sent = 0
    while not box.tracks(b"a", 100, 0.0):
        box.sent(b"a", None, 100, 0.0)
        sent += 100
    assert box.unread(b"a") == 0 and sent < SMALL_BATCH
    t = Tracker()
    box.sent(b"a", t, 100, 0.0)
    assert box.unread(b"a") == sent + 100
    assert box.tracks(b"a", SMALL + 1, 0.0)
    t.done = True
    assert box.unread(b"a") == 0


def test_pushes_owed_wait_for_room_and_a_gone_client_is_forgotten() -> None:
    box = Outbox(1024)
    box.heard(b"a", "k", 0.0)
    t = Tracker()
    box.sent(b"a", t, MIN_BUDGET, 0.0)
    box.owe(b"a", [3, 1])
    box.owe(b"a", [3, 7])
    box.owe(b"local", [5])  # a local client (no account): due at once
    assert box.due() == [(b"local", [5])]
    t.done = True
    assert box.due() == [(b"a", [3, 1, 7])] and not box.owed
    box.owe(b"a", [9])
    box.gone(b"a")
    assert not box.owed and b"a" not in box.conns and "k" not in box.unread_bytes


def test_idle_connections_are_forgotten_unless_something_is_unread_or_owed() -> None:
    box = Outbox(1024)
    box.heard(b"idle", "k", 0.0)
    box.heard(b"busy", "k", 0.0)
    box.sent(b"busy", Tracker(), 10, 0.0)
    box.heard(b"owed", "k", 0.0)
    box.owe(b"owed", [1])
    box.sweep(1000.0)
    assert set(box.conns) == {b"busy", b"owed"}

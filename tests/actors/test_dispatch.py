"""The dispatch policy, without processes: who gets which job, what is recalled, what is due."""

from __future__ import annotations

from pathlib import Path

from actors._jobs import JobBook
from actors._journal import Journal
from actors.messages import JobSpec
from actors.supervisor import _dispatch as plan
from actors.supervisor._children import Slot


def _book(tmp_path: Path, priorities: list[int]) -> JobBook:
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    book.accept([JobSpec("m:f", priority=p) for p in priorities], 0.0)
    return book


def _worker(name: str, outstanding: tuple[int, ...] = ()) -> Slot:
    s = Slot(name, "worker", "actors.worker", ready=True)
    s.outstanding.extend(outstanding)
    return s


def test_window_tracks_job_length() -> None:
    assert plan.window(0.0, 64) == 2  # untimed: two at a time
    assert plan.window(0.0001, 64) == 64  # 0.1 ms jobs: a full window
    assert plan.window(0.01, 64) == 2
    assert plan.window(5.0, 64) == 1  # long jobs one at a time


def test_plan_shares_the_queue_best_first_and_respects_credit(tmp_path: Path) -> None:
    book = _book(tmp_path, [0, 5, 1, 9, 0, 0])
    a, b, busy, controller = _worker("a"), _worker("b"), _worker("c", (99, 98)), Slot("controller", "controller", "x")
    controller.ready = True
    out = plan.plan(book, [a, b, busy, controller], credit=2)
    got = {slot.name: [j.spec.priority for j in jobs] for slot, jobs in out}
    assert set(got) == {"a", "b"}  # the busy worker has no credit left, the controller runs no jobs
    assert sorted(got["a"] + got["b"], reverse=True) == [9, 5, 1, 0]  # the best four
    assert got["a"][0] == 9  # best first
    assert book.queued == 2 and all(j.state == "dispatched" for _, jobs in out for j in jobs)


def test_plan_skips_retiring_and_unready_workers(tmp_path: Path) -> None:
    book = _book(tmp_path, [0])
    retiring, starting = _worker("r"), _worker("s")
    retiring.retire, starting.ready = True, False
    assert plan.plan(book, [retiring, starting], credit=4) == []
    assert book.queued == 1


def test_recalls_ask_back_lower_priority_prefetched_jobs_once(tmp_path: Path) -> None:
    book = _book(tmp_path, [1, 1, 1])
    (slot, jobs), = plan.plan(book, [_worker("a")], credit=3)
    slot.outstanding.extend(j.id for j in jobs)
    (got_slot, ids), = plan.recalls(book, [slot], priority=5)
    assert got_slot is slot and ids == [jobs[1].id, jobs[2].id]  # never the head: it may be running
    assert plan.recalls(book, [slot], priority=5) == []  # already on their way back


def test_due_finds_expired_deadlines_and_ignored_aborts(tmp_path: Path) -> None:
    book = _book(tmp_path, [0, 0])
    a, b = _worker("a"), _worker("b")
    (sa, ja), (sb, jb) = plan.plan(book, [a, b], credit=1)
    sa.outstanding.append(ja[0].id)
    sb.outstanding.append(jb[0].id)
    ja[0].deadline_at = 10.0
    jb[0].kill_at = 20.0
    assert plan.due(book, [a, b], 5.0) == ([], [])
    expired, kills = plan.due(book, [a, b], 25.0)
    assert expired == [ja[0]] and kills == [(sb, jb[0])]
    assert plan.next_wakeup(book, [a, b], 5.0, 60.0) == 5.0

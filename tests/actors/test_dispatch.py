"""The dispatch policy, without processes: who gets which job, what is recalled, what is due."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors._jobs import JobBook
from actors._journal import Journal
from actors.messages import JobSpec
from actors.supervisor import _dispatch as plan
from actors.supervisor._children import Slot


def _book(tmp_path: Path, priorities: list[int]) -> JobBook:
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    book.accept([JobSpec("m:f", priority=p) for p in priorities], 0.0)
    book.journal.commit()  # a job is dispatched once its row is written
    return book


def _worker(name: str, outstanding: tuple[int, ...] = ()) -> Slot:
    s = Slot(name, "worker", "actors.worker", ready=True)
    s.outstanding.extend(outstanding)
    return s


def test_window_tracks_job_length() -> None:
    assert plan.window(0.0, 64) == 2  # untimed: two at a time
    assert plan.window(0.0, 64, starting=1) == 1  # untimed, and a worker still starting: one each, in order
    assert plan.window(0.0001, 64, starting=1) == 64
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


def test_plan_deals_the_queue_in_turn_so_jobs_start_in_the_order_they_came(tmp_path: Path) -> None:
    """Two idle workers and four jobs: the first worker took jobs 1 and 2, the second 3 and 4, so 1 and 3 started
    and 2 waited (a shutdown's cancel_futures spared 3 and cancelled 2).  Dealt in turn: 1 and 2 start first."""
    book = _book(tmp_path, [0, 0, 0, 0, 0])
    a, b = _worker("a"), _worker("b", (99,))
    got = {slot.name: [j.id for j in jobs] for slot, jobs in plan.plan(book, [a, b], credit=2)}
    assert got == {"a": [1, 3], "b": [2]}  # b had one outstanding: a's second job comes after b's first
    (tmp_path / "2").mkdir()
    book = _book(tmp_path / "2", [0, 0, 0, 0])
    got = {slot.name: [j.id for j in jobs] for slot, jobs in plan.plan(book, [_worker("a"), _worker("b")], credit=2)}
    assert got == {"a": [1, 3], "b": [2, 4]}


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


# -- resources -------------------------------------------------------------------------------------
def _needy_book(tmp_path: Path, needs: list[tuple[int, dict[str, float]]]) -> JobBook:
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    book.accept([JobSpec("m:f", priority=p, resources=r) for p, r in needs], 0.0)
    book.journal.commit()
    return book


def test_a_job_naming_resources_goes_only_to_a_worker_offering_them(tmp_path: Path) -> None:
    book = _needy_book(tmp_path, [(9, {"GPU": 1}), (5, {}), (1, {"CPU": 1})])
    cpu = _worker("cpu")
    cpu.resources = {"CPU": 2.0}
    out = plan.plan(book, [cpu], credit=8)
    assert [(s.name, [j.spec.priority for j in jobs]) for s, jobs in out] == [("cpu", [5, 1])]
    assert book.queued == 1 and book.needy == 1  # the GPU job keeps its place
    gpu = _worker("gpu")
    gpu.resources = {"CPU": 1.0, "GPU": 1.0}
    (slot, jobs), = plan.plan(book, [gpu], credit=8)
    assert slot is gpu and [j.spec.resources for j in jobs] == [{"GPU": 1.0}]
    assert book.queued == 0 and book.needy == 0


def test_a_busy_resource_waits_by_priority_and_plain_jobs_pass_it(tmp_path: Path) -> None:
    book = _needy_book(tmp_path, [(1, {"GPU": 1}), (7, {"GPU": 1}), (0, {})])
    gpu, cpu = _worker("gpu", (99,)), _worker("cpu")
    gpu.resources = {"GPU": 1.0}
    out = plan.plan(book, [gpu, cpu], credit=1)  # the GPU worker is busy (its credit is used)
    assert [(s.name, [j.spec.priority for j in jobs]) for s, jobs in out] == [("cpu", [0])]
    gpu.outstanding.clear()
    (slot, jobs), = plan.plan(book, [gpu, cpu], credit=1)
    assert slot is gpu and jobs[0].spec.priority == 7  # the better of the two waiting GPU jobs first


def test_a_requeued_or_finished_needy_job_keeps_the_count(tmp_path: Path) -> None:
    book = _needy_book(tmp_path, [(0, {"GPU": 1}), (0, {"GPU": 1})])
    gpu = _worker("gpu")
    gpu.resources = {"GPU": 1.0}
    (_, jobs), = plan.plan(book, [gpu], credit=1)
    assert book.needy == 1
    book.requeue(jobs[0], "")
    assert book.needy == 2
    book.finish(book.jobs[jobs[0].id], "cancelled", 0.0)
    assert book.needy == 1 and book.queued == 1


def test_refusal_only_when_no_worker_and_no_cluster_can_offer_it() -> None:
    cpu = _worker("cpu")
    cpu.resources = {"CPU": 2.0, "memory": 8e9}
    offered = plan.offers([cpu, Slot("controller", "controller", "x")])
    assert offered == [{"CPU": 2.0, "memory": 8e9}]
    assert plan.refusal({}, offered, placeable=False) == ""
    assert plan.refusal({"CPU": 2}, offered, placeable=False) == ""
    why = plan.refusal({"GPU": 1}, offered, placeable=False)
    assert "GPU=1" in why and "CPU=2" in why and "--resources" in why
    assert plan.refusal({"GPU": 1}, offered, placeable=True) == ""  # a Ray node may come that has one
    assert plan.refusal({"GPU": 1}, [], placeable=False).count("no workers") == 1


def test_unmet_needs_are_distinct_and_skip_what_a_worker_offers(tmp_path: Path) -> None:
    book = _needy_book(tmp_path, [(0, {"GPU": 1}), (0, {"GPU": 1}), (0, {"CPU": 1}), (0, {"TPU": 4})])
    cpu = _worker("cpu")
    cpu.resources = {"CPU": 1.0}
    assert plan.unmet(book, [cpu]) == [{"GPU": 1.0}, {"TPU": 4.0}]


def test_resource_tables_are_checked_and_matched() -> None:
    from actors._errors import ConfigError
    from actors._resources import check, fits, parse

    assert parse("CPU=1, GPU=0.5", "flag") == {"CPU": 1.0, "GPU": 0.5}
    assert fits({"GPU": 0.5}, {"GPU": 1.0}) and not fits({"GPU": 1}, {"CPU": 8})
    assert fits({"GPU": 0}, {})  # asking for none of something needs nothing
    for bad in ({"GPU": -1}, {"GPU": float("nan")}, {"": 1}, {"GPU": True}, {"x" * 65: 1}, [1]):
        with pytest.raises(ConfigError):
            check(bad, "test")
    with pytest.raises(ConfigError, match="GPU"):
        parse("GPU=lots", "flag")


def test_journal_keeps_a_jobs_resources_and_reads_older_rows(tmp_path: Path) -> None:
    from actors._jobs import pack_spec, unpack_job

    spec = JobSpec("m:f", resources={"GPU": 1.0})
    assert unpack_job(pack_spec(spec))[0] == spec
    plain = JobSpec("m:f")
    assert unpack_job(pack_spec(plain))[0] == plain  # no resources: the row of an older release, unchanged


def test_the_book_counts_distinct_needs_and_skips_a_worker_none_fits(tmp_path: Path) -> None:
    book = _needy_book(tmp_path, [(0, {"GPU": 1}), (0, {"GPU": 1.0}), (0, {"TPU": 2})])
    assert sorted(book.waiting_needs(), key=str) == [{"GPU": 1.0}, {"TPU": 2.0}]
    heap = list(book.heap)
    assert book.pop(8, {"CPU": 4.0}) == [] and book.heap == heap  # nothing looked through, nothing moved
    (job,) = book.pop(8, {"TPU": 2.0})
    assert job.spec.resources == {"TPU": 2.0} and book.waiting_needs() == [{"GPU": 1.0}]


def _holders(book: JobBook, group: str = "g", owner: str = "") -> dict[str, int]:
    return dict(book.capped[owner, group].holders)


def test_a_capped_group_is_held_by_at_most_its_cap_of_workers_each_with_a_window(tmp_path: Path) -> None:
    """An Executor's ``max_workers`` on a shared daemon (``JobSpec.cap``) counts workers: two idle workers, a group
    capped at 1 and another client's job.  The worker that takes the group's first job is handed the rest as its
    window (it runs one at a time: never more than one of them at once, and never idle waiting for the daemon to
    hear of each end); the other worker gets none of them, though it is free.  Cancelled held jobs are skipped,
    and the group is forgotten once none of its jobs is left."""
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    ids = book.accept([JobSpec("m:f", cap=1, cap_group="g") for _ in range(4)], 0.0)
    other = book.accept([JobSpec("m:other")], 0.0)
    book.journal.commit()
    a, b = _worker("a"), _worker("b")
    got = {slot.name: [j.id for j in jobs] for slot, jobs in plan.plan(book, [a, b], credit=2)}
    assert got == {"a": [ids[0], other[0]]} and _holders(book) == {"a": 1}  # b: the group's one place is a's
    assert plan.plan(book, [_worker("c")], credit=8) == []  # nor any other worker
    book.finish(book.jobs[ids[1]], "cancelled", 1.0)  # a held job cancelled: skipped when its turn comes
    assert [j.id for _, jobs in plan.plan(book, [a], credit=8) for j in jobs] == ids[2:]  # a's window
    assert _holders(book) == {"a": 3} and book.queued == 0
    for jid in (ids[0], other[0], ids[2], ids[3]):
        book.finish(book.jobs[jid], "done", 2.0)
    assert book.capped == {} and book.holding == {} and book.queued == 0
    book.journal.close()


def test_a_capped_group_s_place_is_free_once_its_worker_holds_none_of_its_jobs(tmp_path: Path) -> None:
    """Cap 2, three workers: two hold the group, the third gets none of it.  A holder's job that ends while it
    holds more keeps its place; once it holds none (its last job ended, or was put back: its worker died), the
    third worker may take one, and a job put back waits in the group's own line, where the holders find it."""
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    ids = book.accept([JobSpec("m:f", cap=2, cap_group="g", retries=1) for _ in range(8)], 0.0)
    book.journal.commit()
    a, b, c = _worker("a"), _worker("b"), _worker("c")
    got = {s.name: [j.id for j in js] for s, js in plan.plan(book, [a, b, c], credit=2)}
    assert sorted(got) == ["a", "b"] and len(got["a"]) == len(got["b"]) == 2
    assert book.pop(8, {}, "c") == []
    first, second = (book.jobs[jid] for jid in got["a"])
    book.finish(first, "done", 1.0)  # a still holds `second`
    assert book.pop(8, {}, "c") == [] and _holders(book) == {"a": 1, "b": 2}
    book.start(second, "a", 1.0, 1.0)
    book.requeue(second, "worker a died")  # a holds none now: its place is free
    assert _holders(book) == {"b": 2}
    taken = book.pop(1, {}, "c")
    assert [j.id for j in taken] == [second.id]  # back in its place, first of the group's line
    assert _holders(book) == {"b": 2, "c": 1} and book.pop(8, {}, "a") == []
    assert len(book.pop(8, {}, "b")) == 4 and book.queued == 0  # the holders' windows: the rest of the line
    book.journal.close()


def test_a_job_behind_an_overrun_one_is_not_stolen_when_its_group_has_no_worker_to_spare(tmp_path: Path) -> None:
    """Cap 1: the jobs waiting behind the group's long job can go to no other worker; asking them back would send
    them to the same worker again, over and over.  With a place to spare (cap 2) they are asked back."""
    for cap, stolen in ((1, False), (2, True)):
        book = JobBook(Journal(tmp_path / f"j{cap}.sqlite3"))
        book.accept([JobSpec("m:f", cap=cap, cap_group="g") for _ in range(4)], 0.0)
        book.journal.commit()
        busy, idle = _worker("busy"), _worker("idle")
        jobs = book.pop(4, {}, "busy")
        busy.outstanding.extend(j.id for j in jobs)
        book.start(jobs[0], "busy", 0.0, 0.0)
        out = plan.steals(book, [busy, idle], 1000.0, job_seconds=0.001)
        assert bool(out) is stolen, cap
        book.journal.close()


def test_a_held_job_that_ends_unstarted_no_longer_says_it_is_held(tmp_path: Path) -> None:
    """A capped job cancelled while held kept "held: its executor runs at most 1 ..." beside its cancel."""
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    ids = book.accept([JobSpec("m:f", cap=1, cap_group="g") for _ in range(2)], 0.0)
    held = book.jobs[ids[1]]
    assert held.status.startswith("held: ")
    assert book.finish(held, "cancelled", 1.0).status == ""
    book.journal.close()


def test_a_capped_group_is_one_client_s_own(tmp_path: Path) -> None:
    """Two owners naming the same group each get its cap (a remote key cannot hold back another's jobs)."""
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    book.accept([JobSpec("m:f", cap=1, cap_group="g") for _ in range(2)], 0.0, owner="worker:x")
    book.accept([JobSpec("m:f", cap=1, cap_group="g") for _ in range(2)], 0.0, owner="")
    book.journal.commit()
    out = plan.plan(book, [_worker("a"), _worker("b")], credit=8)
    assert sorted(j.owner for _, jobs in out for j in jobs) == ["", "worker:x"]
    book.journal.close()


def test_a_capped_group_keeps_its_cap_across_a_daemon_restart(tmp_path: Path) -> None:
    """The cap travels in the journaled spec: a new daemon's book recovers the group's jobs under it, one that
    was running (requeued) first among them: two workers hold them, a third gets none."""
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    ids = book.accept([JobSpec("m:f", cap=2, cap_group="g", retries=1) for _ in range(5)], 0.0)
    book.journal.commit()
    [(_, jobs)] = plan.plan(book, [_worker("a")], credit=1)
    book.start(jobs[0], "a", 1.0, 1.0)
    book.journal.commit()
    book.journal.close()
    again = JobBook(Journal(tmp_path / "j.sqlite3"))
    assert again.recover(2.0) == (4, 1, 0)
    again.journal.commit()
    got = {s.name: [j.id for j in js] for s, js in plan.plan(again, [_worker("a"), _worker("b"), _worker("c")],
                                                             credit=8)}
    assert sorted(got) == ["a", "b"] and got["a"][0] == ids[0]  # the requeued one first
    assert _holders(again) == {"a": 2, "b": 2} and again.queued == 1
    assert again.pop(8, {}, "c") == [] and [j.id for j in again.pop(8, {}, "a")] == ids[4:]
    again.journal.close()


def test_a_capped_group_s_next_job_goes_behind_jobs_queued_before_it_was_admitted(tmp_path: Path) -> None:
    """A group with as many places as workers: with its held jobs keeping their submit-time place, another
    client's later job waited for every one of them (1.8 s behind 60 jobs of 0.1 s); held back in the client,
    as before, the next capped job was sent after it.  An admitted job now enters behind what is queued."""
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    ids = book.accept([JobSpec("m:f", cap=1, cap_group="g") for _ in range(3)], 0.0)
    book.journal.commit()
    a = _worker("a")
    [(_, [first])] = plan.plan(book, [a], credit=1)
    later = book.accept([JobSpec("m:other")], 0.0)
    book.journal.commit()
    book.finish(first, "done", 1.0)  # ids[1] is admitted now, behind `later`
    assert [j.id for _, js in plan.plan(book, [a], credit=1) for j in js] == later
    assert [j.id for _, js in plan.plan(book, [_worker("b")], credit=1) for j in js] == [ids[1]]
    book.journal.close()


def test_a_raised_cap_admits_the_held_jobs_in_their_order_first(tmp_path: Path) -> None:
    book = JobBook(Journal(tmp_path / "j.sqlite3"))
    held = book.accept([JobSpec("m:f", cap=1, cap_group="g") for _ in range(3)], 0.0)
    new = book.accept([JobSpec("m:f", cap=3, cap_group="g")], 0.0)
    book.journal.commit()
    got = [j.id for _, js in plan.plan(book, [_worker("a"), _worker("b"), _worker("c")], credit=1) for j in js]
    assert got == held and book.jobs[new[0]].state == "queued"
    book.journal.close()

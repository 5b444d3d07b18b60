"""Jobs on workers: dispatch by credit, results, progress, aborts, kills, deadlines.

What to send is decided by the pure functions of :mod:`actors.supervisor._dispatch`;
this mixin applies their decisions to sockets and the job book.

A cancel or a deadline reaches the worker only once the journal has written
it (:meth:`WorkMixin._abort`, :meth:`~WorkMixin._tell_aborts`): the next
``up`` after a kill -9 then ends the job cancelled, never runs it again.

A result array a worker put in shared memory is its taker's to unlink (the
client that asks for the result); one nobody takes is unlinked when its job
is pruned: the journal records which segments a result holds with its end
(:meth:`WorkMixin._note_segments`), and pruning hands them back
(:meth:`WorkMixin._prune`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import msgspec
import zmq

from actors._errors import EnsembleError, ProtocolError
from actors._jobs import Job, ending, spec_values
from actors._task import MAX_TIMEOUT_MS
from actors._values import TUPLE, Exact
from actors.messages import AbortJob, Ack, Dispatch, JobInfos, JobsDone, JobUpdate, Recall, Recalled, RunJobs, encode
from actors.shm import made_by, process_prefix, unlink_ended
from actors.supervisor import _dispatch as plan
from actors.supervisor._children import Slot
from actors.supervisor._cluster import holds_stored
from actors.supervisor._transport import _inline, _short
from actors.supervisor._state import State

log = logging.getLogger("ensemble.supervisor")
# a job is pruned no sooner than this after it ended, whatever the retention: its end may still be on its way to
# its owner, whose client maps its result arrays when it comes (pruning unlinks the ones nobody took)
KEEP_ENDED_S = 60.0


class WorkMixin(State):
    """The job path of the :class:`~actors.supervisor.Supervisor` (mixed in)."""

    def _jobs_done(self, slot: Slot, msg: JobsDone) -> None:
        """End the jobs of a worker's results (those still outstanding there; others are stale), then start its next.

        Also for the results a local worker held back when it died, read from
        its file (:meth:`ChildrenMixin._held_results
        <actors.supervisor._children.ChildrenMixin._held_results>`): its line
        is then settled there, so nothing starts.
        """
        book = self.book
        assert book is not None
        now = time.time()
        gone = slot.proc is None and not slot.remote  # a reaped local worker's held results
        if msg.results and not gone:
            first = msg.results[0]
            if first.started:
                took = max(1e-6, (now - first.started) / len(msg.results))
                self.job_seconds = took if self.job_seconds <= 0 else 0.8 * self.job_seconds + 0.2 * took
        for done in msg.results:
            job = book.jobs.get(done.job_id)
            if job is None or done.job_id not in slot.outstanding:
                self.counters["stale_results"] += 1
                if slot.remote and self.cluster is not None:  # its result arrays in Ray's store go unread
                    self.cluster.discard(slot.key_name, done.value)
                continue
            if slot.remote and self.cluster is not None:  # result arrays a Ray-placed worker left in Ray's store
                done = self._stored_results(slot, done, local=not job.owner)
            if slot.outstanding[0] == done.job_id:
                slot.outstanding.popleft()
            else:
                slot.outstanding.remove(done.job_id)
            if job.state == "dispatched" and not job.abort_reason:  # ran and ended in a batch behind the head
                book.start(job, slot.name, done.started or now, time.monotonic())
            job.progress, job.status, job.properties = done.progress, done.status, done.properties
            if done.started and job.state == "running":
                job.started = done.started
            state, value, etype, text, traceback = ending(done, job.spec, job.abort_reason)
            if slot.remote and job.spec.pickled:  # nothing a worker of another host sends is unpickled: its value
                # (MessagePack, as it sends a pickled job's) goes as a 1-tuple, which no local client takes for a
                # pickle (those are bytes or lists: actors._exact.pickled_value), and its exception by name only
                value = Exact(TUPLE, [value]) if state == "done" else None
            self._finish(job, state, now, value, etype, text, traceback)
            if value is not None and not slot.remote:  # (a reaped worker's held results: its last pid)
                self._note_segments(job, value, slot.proc.pid if slot.proc is not None else slot.gone_pid)
        if gone:
            return
        self._advance(slot, now, time.monotonic())
        if slot.retire and not slot.outstanding:
            self.stop_child(slot, "scaled down")

    def _note_segments(self, job: Job, value: Any, pid: int) -> None:
        """Journal the shared-memory segments a job's result holds that its worker (process ``pid``) made, with
        the job's end (just staged), to be unlinked when the job is pruned should nobody take them
        (:func:`actors.shm.made_by`: not an argument the job returned, which its client owns).

        The result as the journal writes it is searched for the names that
        worker gives its segments first (a segment's name is there as it is,
        at any depth): the walk of the value's leaves, a Python loop, is made
        only for a result that holds one.  Held results of a worker that died
        (read from its file) are looked at with the pid it had: what they
        name is kept when the rest it left is unlinked
        (:meth:`ChildrenMixin._unlink_left
        <actors.supervisor._children.ChildrenMixin._unlink_left>`).
        An argument of a gone client that the result returns is recorded
        the same way (:meth:`HandedSegments.claim
        <actors.supervisor._handed.HandedSegments.claim>`): nobody else
        would unlink it.
        """
        assert self.book is not None
        journal = self.book.journal
        maker = process_prefix(self.shm_prefix, pid)
        blob = journal.staged_result(job.id)
        if blob is None:
            return
        names = made_by(value, maker) if maker.encode() in blob else []
        if self.handed.names:  # an argument of a gone client, returned: the result's now (HandedSegments.claim)
            names += self.handed.claim(value, blob)
        if names:
            journal.stage_segments(job.id, names)

    def _advance(self, slot: Slot, now: float, mono: float) -> None:
        """Mark the job now at the head of a worker's line as running.

        Not while a Recall of it is on its way: the worker may give it back
        unstarted; :meth:`_recalled` advances once it has answered.
        """
        assert self.book is not None
        if slot.outstanding and not self.stopping_since:  # stopping workers start nothing new
            job = self.book.jobs.get(slot.outstanding[0])
            if job is not None and job.state == "dispatched" and not job.recalling:
                self.book.start(job, slot.name, now, mono)
                self._push_progress(job)  # it runs now
                # aborted while it waited in the worker's line (and told: else the kill waits for the telling)
                if job.abort_reason and not job.kill_at and job.id not in self.book.aborting:
                    job.kill_at = mono + job.timeout_ms / 1000

    def _job_update(self, slot: Slot, msg: JobUpdate) -> None:
        book = self.book
        assert book is not None
        job = book.jobs.get(msg.job_id)
        if job is None or msg.job_id not in slot.outstanding:
            return
        if msg.properties and slot.remote and self.cluster is not None and holds_stored(msg.properties):
            log.warning("event=stored-key-refused name=%s job=%d where=properties", slot.name, job.id)
            msg = msgspec.structs.replace(msg, properties={})
        job.progress, job.status = msg.progress, msg.status
        timeout_ms = max(1, min(msg.timeout_ms, MAX_TIMEOUT_MS))
        if msg.properties or not msg.event:
            job.properties = msg.properties
        if timeout_ms != job.timeout_ms:
            job.timeout_ms = timeout_ms
            if job.kill_at:
                job.kill_at = time.monotonic() + timeout_ms / 1000
        if msg.event:
            book.event(job, msg.event, msg.detail)
            log.warning("event=job-%s job=%d detail=%s", _short(msg.event), job.id, _short(msg.detail))
        else:
            book.journal.stage_progress(job.id, job.progress, job.status, job.properties)
        self._push_progress(job)

    def _push_progress(self, job: Job) -> None:
        """Queue the job's snapshot for those watching its progress (the last one of an iteration is sent)."""
        if job.progress_watchers:
            info = job.info()
            for ident in job.progress_watchers:
                self.progress_pushes.setdefault(ident, {})[job.id] = info

    def _finish(self, job: Job, state: str, now: float, value: Any = None, error_type: str = "",
                error_message: str = "", traceback: str = "") -> None:
        assert self.book is not None
        if self.cluster is not None:  # its arguments in Ray's object store go now
            self.cluster.release(job.id)
        info = self.book.finish(job, state, now, value, error_type, error_message, traceback)
        if self.metrics is not None and job.started:
            self.metrics.job_finished(now - job.started)
        if job.watchers:
            for ident in job.watchers:
                self.pushes.setdefault(ident, []).append(info)
        if job.blockers:
            for ident, corr in job.blockers:
                self.replies.append((ident, self._encode_for(ident, JobInfos([info]), corr)))
        if job.unstarted_cancels:
            self._answer_unstarted(job, "cancelled" if state == "cancelled" and not job.started
                                   else f"job {job.id} had already ended ({state})")

    def _finish_killed(self, job: Job, now: float) -> None:
        self._finish(job, "killed", now, error_type="JobTimeout" if job.killed == "deadline" else "JobCancelled",
                     error_message=f"killed: {job.killed} (no return within {job.timeout_ms} ms of the abort)")

    def _abort(self, job: Job, reason: str) -> None:
        """Ask a job to stop for ``reason`` (once: a second abort changes nothing).

        A cancel or a deadline is journaled first (:meth:`JobBook.abort
        <actors._jobs.JobBook.abort>`) and its worker told by
        :meth:`_tell_aborts` once the commit that writes it is done (the same
        iteration's, for a commit written on the loop's thread); a stop's is
        told at once.
        """
        assert self.book is not None
        if self.book.abort(job, reason):
            self._tell_abort(job)

    def _tell_abort(self, job: Job) -> None:
        """Send an aborted job's worker the AbortJob; the grace before the kill runs from now if the job runs."""
        slot = self.slots.get(job.worker) if job.worker else self._slot_of(job.id)
        if slot is not None:
            self._send_child(slot, AbortJob(job.id, job.abort_reason))
            if job.state == "running":
                job.kill_at = time.monotonic() + job.timeout_ms / 1000

    def _tell_aborts(self) -> None:
        """Tell the workers of the cancels and deadlines the journal has written since (JobBook.durable_aborts).

        Called after every commit the loop collects (``Supervisor._flush``,
        ``Supervisor._journal_written``), before the replies that waited for
        that commit (a cancel's acknowledgement among them) are sent.  Cheap when there is
        none: one test.
        """
        book = self.book
        if book is None or not book.aborting:
            return
        for job in book.durable_aborts():
            self._tell_abort(job)

    def _slot_of(self, job_id: int) -> Slot | None:
        for slot in self.slots.values():
            if job_id in slot.outstanding:
                return slot
        return None

    def _timers(self, mono: float) -> None:
        """Abort jobs whose deadline passed; SIGKILL the workers of jobs that ignored their abort."""
        assert self.book is not None
        expired, kills = plan.due(self.book, list(self.slots.values()), mono)
        for job in expired:
            self._abort(job, "deadline")
        for slot, job in kills:
            if job.killed:
                continue
            job.killed = job.abort_reason or "abort"
            self.book.event(job, "killed", f"no return within {job.timeout_ms} ms of the abort; process group SIGKILLed")
            self._kill(slot, f"job {job.id} ignored its abort for {job.timeout_ms} ms")
            if job.id in self.book.jobs:  # SIGKILL cannot fail: record the end now, not at the reap
                slot.outstanding.remove(job.id)
                self._finish_killed(job, time.time())

    def _dispatch(self, mono: float) -> None:
        """Send what :func:`~actors.supervisor._dispatch.plan` hands each worker, then steal for the idle ones."""
        book = self.book
        assert book is not None
        now = time.time()
        slots = list(self.slots.values())
        late = plan.overrun(book, slots, now, self.job_seconds) if book.queued else ()
        credit = plan.window(self.job_seconds, self.cfg.jobs.window,
                             plan.starting(slots) if self.job_seconds <= 0 else 0)
        for slot, jobs in plan.plan(book, slots, credit, late):
            was_idle = not slot.outstanding
            batch, sent = [], []
            for job in jobs:
                s = job.spec
                try:
                    if not slot.remote:
                        args, kwargs = s.args, s.kwargs  # as held: packed (held_spec), copied into the frame
                    elif self.cluster is not None and slot.key_name in self.cluster.members:  # big arrays: Ray's store
                        args, kwargs = self.cluster.stage(slot.key_name, job.id, list(spec_values(s)), self.shm_prefix)
                    else:
                        args, kwargs = (_inline(v, self.shm_prefix) for v in spec_values(s))
                except EnsembleError as exc:  # a segment gone since submit: this job fails, nothing else
                    self._finish(job, "failed", now, error_type="ProtocolError",
                                 error_message=f"the job cannot be dispatched: {exc}")
                    continue
                slot.outstanding.append(job.id)
                job.worker = slot.name
                job.recalling = False  # (a Recall to a worker that died since was never answered)
                sent.append(job)
                cwd, path = job.context if not slot.remote else ("", [])
                if path and path is slot.path_sent:  # one submit's jobs share one list: the worker keeps it
                    path = []
                elif path:
                    slot.path_sent = path
                batch.append(Dispatch(job.id, s.fn, args, kwargs, job.timeout_ms, job.attempts + 1, s.with_task,
                                      job.internal, cwd, path, s.pickled, s.setup, bool(job.owner)))
            if not batch:
                continue
            if not self._send_batch(slot, batch, sent, now):
                continue
            if was_idle:
                self._advance(slot, now, mono)
        self._steal(slots, now)

    def _steal(self, slots: list[Slot], now: float) -> None:
        """Ask local workers stuck in a long job for the jobs waiting behind it, for idle workers to run.

        :func:`~actors.supervisor._dispatch.steals` decides; the jobs a worker
        gives back (those it had not started) are queued again by
        :meth:`_recalled` and handed out by the next :meth:`_dispatch`.  It
        runs after every dispatch: a steal that falls due while nothing
        happens waits for the next iteration (a heartbeat's at most).
        """
        assert self.book is not None
        for slot, ids in plan.steals(self.book, slots, now, self.job_seconds):
            self._ask_back(slot, ids)
            self.counters["stolen"] += len(ids)
            log.info("event=steal name=%s jobs=%d", slot.name, len(ids))

    def _ask_back(self, slot: Slot, ids: list[int]) -> None:
        """Send a worker a Recall of ``ids`` (marked ``recalling``); if it cannot go, none of them is being recalled."""
        if self._send_child(slot, Recall(ids)):
            slot.recalls.append(ids)
            return
        assert self.book is not None
        for jid in ids:
            job = self.book.jobs.get(jid)
            if job is not None:
                job.recalling = False
                if job.unstarted_cancels:  # (the worker is going: the job will be requeued or lost, then ended)
                    self._answer_unstarted(job, "running")

    def _feed_hungry(self) -> None:
        """Dispatch now, in the middle of a drain, if a worker has (almost) run out of jobs.

        The loop dispatches once per iteration, after draining every socket;
        a drain of many large submits (thousands of jobs each, as ``map``
        sends them) would otherwise keep the workers idle until it ends.
        """
        book = self.book
        assert book is not None
        if self.stopping_since or not book.queued:
            return
        hungry = sum(1 for slot in self.slots.values() if plan.takes_jobs(slot) and len(slot.outstanding) < 2)
        if hungry:
            journal = self.journal
            assert journal is not None
            if journal.busy:
                journal.collect()
            # what was accepted so far may run once written: the jobs these workers take first are written
            # here and now, the rest by the writer thread while they run (a map's first batches are thousands
            # of short jobs: a quarter keeps the workers busy while the writer writes the rest)
            journal.write_first(max(hungry * plan.window(self.job_seconds, self.cfg.jobs.window),
                                    journal.staged_jobs() // 4))
            self._commit()
            self._dispatch(time.monotonic())

    def _send_batch(self, slot: Slot, batch: list[Dispatch], jobs: list[Job], now: float) -> bool:
        """Send jobs to a worker; a job that cannot be encoded or fit a frame fails alone, the rest go."""
        try:
            frame = encode(RunJobs(batch))
            fits = len(frame) <= self.cfg.daemon.max_frame
        except ProtocolError:
            fits = False
        if fits:
            try:
                (slot.sock or self.internal).send_multipart([slot.identity, frame], zmq.NOBLOCK)
                return True
            except zmq.ZMQError as exc:
                for job in jobs:
                    slot.outstanding.remove(job.id)
                    self.book.requeue(job, "")  # type: ignore[union-attr]
                self._unreachable(slot, exc)
                return False
        sent_any = False
        for d, job in zip(batch, jobs):  # one at a time, to find the ones that cannot go
            try:
                one = encode(RunJobs([d]))
                if len(one) > self.cfg.daemon.max_frame:
                    raise ProtocolError(f"it is {len(one)} bytes, over the frame limit of {self.cfg.daemon.max_frame}")
            except ProtocolError as exc:
                slot.outstanding.remove(job.id)
                self._finish(job, "failed", now, error_type="ProtocolError",
                             error_message=f"the job cannot be sent to worker {slot.name}: {exc}")
                continue
            try:
                (slot.sock or self.internal).send_multipart([slot.identity, one], zmq.NOBLOCK)
                sent_any = True
            except zmq.ZMQError as exc:
                slot.outstanding.remove(job.id)
                self.book.requeue(job, "")  # type: ignore[union-attr]
                if self._unreachable(slot, exc):
                    break
        return sent_any

    def _unreachable(self, slot: Slot, exc: zmq.ZMQError) -> bool:
        """A send to ``slot`` failed: a worker on another host that the socket no longer reaches is gone (True).

        Its jobs were queued again, and would have been handed to it again at
        the next dispatch, and failed again, for ever: a probe saw a daemon
        whose loop stalled on each try (a job's arguments decoded for the
        slot each time) never give the worker up.  A full queue (``EAGAIN``)
        is no sign of that; a local worker's end is seen by its process.
        """
        if not slot.remote or exc.errno != zmq.EHOSTUNREACH or self.slots.get(slot.name) is not slot:
            return False
        self._remote_gone(slot, "a send to it failed: the connection is gone")
        return True

    def _recall_below(self, priority: int) -> None:
        """Ask workers to give back prefetched jobs of lower priority than a newly queued one."""
        assert self.book is not None
        for slot, ids in plan.recalls(self.book, list(self.slots.values()), priority):
            self._ask_back(slot, ids)

    def _recalled(self, slot: Slot, msg: Recalled) -> None:
        """Queue again the jobs a worker gave back unstarted; the rest of its line stays, its head runs now."""
        book = self.book
        assert book is not None
        asked = slot.recalls.popleft() if slot.recalls else msg.job_ids  # what this reply answers
        for jid in msg.job_ids:
            job = book.jobs.get(jid)
            if job is None or jid not in slot.outstanding:
                continue
            slot.outstanding.remove(jid)
            job.recalling = False
            if job.state == "running":  # marked so as the job before it ended: it never began, no attempt spent
                job.attempts -= 1
                job.started = 0.0
            if job.abort_reason == "cancel":  # its AbortJob came after the Recall: the worker had nothing to stop
                self._finish(job, "cancelled", time.time(), error_type="JobCancelled",
                             error_message="cancelled before it started")
                continue
            book.requeue(job, "")
            if job.unstarted_cancels:  # taken back for a Cancel(if_queued): it never started, it is cancelled
                self._finish(job, "cancelled", time.time(), error_type="JobCancelled",
                             error_message="cancelled before it started")
        pending = {j for ids in slot.recalls for j in ids}  # asked back again, by a Recall not answered yet
        for jid in asked:  # those asked that had started meanwhile stay where they are
            job = book.jobs.get(jid) if jid in slot.outstanding and jid not in pending else None
            if job is not None:
                job.recalling = False
                if job.unstarted_cancels:
                    self._answer_unstarted(job, "running")
        self._advance(slot, time.time(), time.monotonic())

    def _answer_unstarted(self, job: Job, detail: str) -> None:
        """Answer the Cancel(if_queued) requests waiting for this job's Recall."""
        for ident, corr in job.unstarted_cancels or ():
            self.replies.append((ident, self._encode_for(ident, Ack(detail), corr)))
        job.unstarted_cancels = None

    def _prune(self) -> None:
        """One slice of pruning (:meth:`Journal.prune <actors._journal.Journal.prune>`): jobs that ended
        ``[jobs] retention`` ago (and at least :data:`KEEP_ENDED_S`) leave the journal, and the result arrays
        nobody took leave shared memory with them."""
        assert self.journal is not None and self.book is not None
        self.book.mark_horizon()  # committed at the end of this iteration, with the results it relies on
        if self.journal.write_error:  # the disk is full, say: pruning writes too; the next prune tries again
            return
        try:
            n = self.journal.prune(time.time() - max(self.cfg.jobs.retention, KEEP_ENDED_S), self._unlink_pruned)
        except sqlite3.OperationalError as exc:  # as a commit's: it may pass (the disk full); the daemon goes on
            log.warning("event=prune-failed reason=%s", exc)
            return
        self.pruned += n
        if self.pruned and not self.journal.prune_behind:  # once a round (a backlog takes hundreds of slices)
            log.info("event=prune jobs=%d", self.pruned)
            self.pruned = 0

    def _unlink_pruned(self, segments: list[tuple[str, float]]) -> None:
        """Unlink the result segments of pruned jobs that nobody took (counted in ``result_segments_unlinked``)."""
        self.counters["result_segments_unlinked"] += unlink_ended(segments, self.shm_prefix)

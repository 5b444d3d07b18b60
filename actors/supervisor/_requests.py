"""Client requests and child messages: who may ask for what, and the handlers of the runtime's own requests.

Audio and script requests are not here: the packages that own them register
handlers through :mod:`actors.extensions`.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Callable

import msgspec

from actors import __version__
from actors._errors import (
    DaemonError, EnsembleError, JobNotFound, JobRefused, OutOfRange, PermissionDenied, ProtocolError, QueueFull,
    UnknownKind, code_of,
)
from actors._jobfn import check_allowed, check_name
from actors._state import JobState
from actors._task import MAX_TIMEOUT_MS
from actors.messages import (
    MAX_CAP, MAX_IDS, Ack, Cancel, Error, GetJobs, Heartbeat, Hello, JobInfo, JobInfos, JobSpec, JobsDone, JobUpdate, ListJobs,
    Message, Ping, Pong, Recalled, ResultsClosed, Retiring, Scale, Shutdown, Status, StatusReply, Stop, Submit, Submitted,
    TaskSubmit, Unwatch, Watch, decode, encode, peek_corr,
)
from actors._resources import check as check_resources
from actors.supervisor import _dispatch as plan
from actors.supervisor._transport import LOCAL, TCP, Peer, _short
from actors.supervisor._state import State

log = logging.getLogger("ensemble.supervisor")
_REFUSED_CACHE = 4096  # job names whose check result is remembered
_SNAPSHOT_CHUNK = 256  # job records read (and measured) at a time for one GetJobs or Watch
_MAX_PATH = 4096  # characters of a local client's working directory or of one import-path entry (PATH_MAX)
_MAX_PATHS = 1024  # entries of a local client's import path
_STATES = frozenset(JobState)  # what a listing may ask for
# a remote worker's heartbeat is ~200 bytes; its stats are kept decoded and sent in every status, so one that
# sent megabytes a second (a worker key is no admin) took the daemon's memory and every status's time
REMOTE_STATS_BYTES = 16_384
_STATS_DROPPED: dict[str, object] = {"dropped": f"its heartbeats were over {REMOTE_STATS_BYTES} bytes"}
# What each remote role may ask for of the runtime (extensions add their admin requests).
CLIENT_REQUESTS = frozenset({Ping, Submit, Cancel, GetJobs, ListJobs, Watch, Unwatch})
ADMIN_REQUESTS = CLIENT_REQUESTS | {Status, Scale, Shutdown}
# Requests that only read: after an iteration that served nothing else, timers and dispatch have nothing new to do.
QUIET_REQUESTS = frozenset({Ping, Status, GetJobs, ListJobs})
_ROLE_HINT = {
    "client": "a client key submits jobs and reads or cancels its own; ask the operator for an admin key "
              "(`ensemble keys add-admin NAME`) to manage the daemon",
    "admin": "only the daemon's own user may send it, through the local socket",
}
_READS = (GetJobs, ListJobs, Watch)  # requests answered with job snapshots (held for the commit they show)
_UNHELD = (Error, Pong, StatusReply)  # replies sent at once while the journal cannot commit (see _drain_control)
# What a remote worker may send (scripts, voices and samples are the local children's business).
_REMOTE_WORKER_SENDS = (Heartbeat, JobsDone, JobUpdate, Recalled, Hello)


def _with(idents: tuple[bytes, ...] | None, ident: bytes) -> tuple[bytes, ...]:
    """A watcher tuple with ``ident`` in it."""
    if not idents:
        return (ident,)
    return idents if ident in idents else (*idents, ident)



def _check_setup(spec: JobSpec, remote: bool, allow: Any) -> None:
    """An Executor's worker setup: its initializer named by the same rules as a job function."""
    setup = spec.setup
    assert setup is not None
    if setup.initializer:
        check_allowed(setup.initializer, allow) if remote else check_name(setup.initializer)
    if remote and setup.pickled:
        raise JobRefused(f"job {spec.fn}: pickled initargs are accepted only from local clients")
    if setup.max_tasks < 0 or len(setup.key) > 64:
        raise JobRefused(f"job {spec.fn}: max_tasks must be >= 0 and the setup key at most 64 characters")


def _check_context(cwd: str, path: list[str]) -> None:
    """A local client's working directory and import path, as a worker can use them.

    A NUL in either made every worker that took the job fail in ``chdir`` or
    ``realpath`` and retire, and the job went to the next one, for ever,
    taking the jobs dispatched beside it down as lost; a path of a million
    entries would slow every later import of the worker that took it.
    """
    if len(cwd) > _MAX_PATH or len(path) > _MAX_PATHS or any(len(p) > _MAX_PATH for p in path):
        raise JobRefused(f"the submit's working directory and import-path entries may be at most {_MAX_PATH} "
                         f"characters, and the import path at most {_MAX_PATHS} entries")
    if "\x00" in cwd or any("\x00" in p for p in path):
        raise JobRefused("the submit's working directory or an import-path entry holds a NUL character, "
                         "which no directory name can")


def _wrong_option(spec: JobSpec) -> str:
    """What is wrong with a job's options, said for the one that is (the first), or ""."""
    if not 1 <= spec.timeout_ms <= MAX_TIMEOUT_MS:
        return f"its grace (the abort's timeout) must be 1..{MAX_TIMEOUT_MS} ms, got {spec.timeout_ms}"
    if not 0 <= spec.deadline <= 1e9:
        return f"its deadline must be 0..1e9 s, got {spec.deadline!r}"
    if not 0 <= spec.retries <= 1000:
        return f"its retries must be 0..1000, got {spec.retries}"
    if len(spec.name) > 1024:
        return f"its name may be at most 1024 characters, got {len(spec.name)}"
    if not 0 <= spec.cap <= MAX_CAP:
        return f"its cap (jobs of its group at once) must be 0..{MAX_CAP}, got {spec.cap}"
    if spec.cap and not 1 <= len(spec.cap_group) <= 64:
        return f"its cap_group must be 1..64 characters with a cap, got {len(spec.cap_group)}"
    return ""


class RequestsMixin(State):
    """Request handling of the :class:`~actors.supervisor.Supervisor` (mixed in)."""

    def _drain_control(self, sock: Any) -> bool:
        """Answer the requests waiting on a client socket; whether any of them may have changed state.

        Only :data:`QUIET_REQUESTS` change nothing; after an iteration that
        served nothing else, the loop skips its timers and dispatch.
        """
        changed = False
        tcp = sock is self.control_tcp
        handles = None if tcp else self.shm_prefix
        for parts, key, role, name in self._frames(sock):
            ident = parts[0]
            addr = TCP + ident if tcp else ident
            if len(parts) == 3 and parts[1] == b"" and not tcp:  # a local REQ client: keep its delimiter
                frame = parts[2]
            elif len(parts) != 2:
                self.counters["bad_frames"] += 1
                self.replies.append((addr, encode(Error("protocol", f"expected one frame per message, got {len(parts) - 1}"))))
                continue
            else:
                frame = parts[1]
            try:
                corr, msg = decode(frame, self.limits, handles)
            except ProtocolError as exc:
                self.counters["bad_frames"] += 1
                log.warning("event=bad-frame bytes=%d reason=%s", len(frame), _short(str(exc)))
                said = self._unknown_kind(exc.kind) if isinstance(exc, UnknownKind) else str(exc)
                self.replies.append((addr, encode(Error("protocol", said), peek_corr(frame))))
                continue
            if type(msg) not in QUIET_REQUESTS:
                changed = True
            self._peer = Peer(role, name, addr, key)
            self._frame_len = len(frame)
            try:
                reply = self._request(addr, corr, msg)
            except EnsembleError as exc:
                reply = Error(code_of(exc), str(exc))
            except Exception as exc:  # a bug must not take the daemon down
                log.exception("event=request-failed kind=%s", type(msg).__name__)
                reply = Error("daemon", f"internal error handling {type(msg).__name__}: {exc}")
            finally:
                self._peer = LOCAL
            if reply is not None:
                try:
                    out = self._encode_for(addr, reply, corr)
                    if len(out) > self.cfg.daemon.max_frame:  # the client would refuse it, and wait on
                        out = encode(Error("protocol", f"the reply to {type(msg).__name__} is {len(out)} bytes, over "
                                                       f"the frame limit of {self.cfg.daemon.max_frame} "
                                                       "(daemon.max_frame); ask for less at once"), corr)
                    if type(reply) is Pong and not self.replies and not self.held:  # nothing to commit or keep in order
                        self._send_client(addr, out)
                    elif self.held and type(reply) in _UNHELD and self.journal is not None and self.journal.write_error:
                        # held replies wait for a commit that is failing: what depends on no commit (a refusal,
                        # the status saying why) goes now, or the caller would wait as long as the disk is full
                        self._send_client(addr, out)
                    elif type(msg) in _READS and self.journal is not None and self.journal.write_error:
                        # a listing would say what the journal does not hold yet, so it waits for the commit: as
                        # long as the disk is full, its caller timed out saying the daemon did not answer
                        self._send_client(addr, encode(Error("daemon", self._unwritable(
                            f"; it answers {type(msg).__name__} once it can")), corr))
                    else:
                        self.replies.append((addr, out))
                except ProtocolError as exc:
                    self.replies.append((addr, encode(Error("protocol", f"the reply cannot be sent: {exc}"), corr)))
            if type(msg) is Submit:
                self._feed_hungry()  # a drain of many big submits must not leave the workers idle meanwhile
        return changed

    def _unknown_kind(self, kind: object) -> str:
        """Why a request of a kind this daemon has no class for is refused: the extension it needs is not loaded
        here (the kinds of audio, scripts and samples are their packages', see :func:`actors.messages.register`)."""
        names = ", ".join(ext.name for ext in self.extensions)
        if not names:
            return (f"unknown message kind {kind!r}: this daemon runs jobs only (no extension loaded: [daemon] "
                    "extensions = [], as in a private daemon), so it has no audio, script, parameter or sample "
                    "requests; use a daemon started with them (`ensemble up`, whose default is extensions = [\"*\"])")
        return (f"unknown message kind {kind!r}: none of this daemon's extensions ({names}) answers it: a client of "
                "another release, or a request of an extension this daemon was started without ([daemon] extensions)")

    def _request(self, ident: bytes, corr: int, msg: Message) -> Message | None:
        handler: Callable[[bytes, int, Message], Message | None] | None = self.handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"{type(msg).__name__} is not a request the daemon answers")
        role = self._peer.role
        if role != "local" and type(msg) not in self.role_requests[role]:
            self.counters["denied_requests"] += 1
            raise PermissionDenied(f"{type(msg).__name__} is not allowed for a remote {role} key "
                                   f"({self._peer.name!r}); {_ROLE_HINT[role]}")
        return handler(ident, corr, msg)

    def _unwritable(self, then: str) -> str:
        """What a client is told while the journal cannot be written: that, with SQLite's reason, ``then`` (what
        follows from it for this request), and where to look (for a submit refused, a listing put off)."""
        assert self.journal is not None
        return (f"the daemon cannot write its job journal ({self.journal.write_error}){then} (is the disk of "
                f"{self.state_dir} full? `ensemble status` shows journal_error while it lasts)")

    def _mine(self, job_id: int) -> bool:
        """Whether the requesting peer may see and cancel this job (a client key: only its own)."""
        if self._peer.role != "client":
            return True
        assert self.book is not None
        return self.book.owner_of(job_id) == self._peer.owner

    def _on_ping(self, ident: bytes, corr: int, msg: Ping) -> Message:
        return Pong(__version__, os.getpid())

    def _on_submit(self, ident: bytes, corr: int, msg: Submit) -> Message | None:
        """Client jobs: name rules for everyone, the allow-list for remote keys, limits on every field."""
        remote = self._peer.role != "local"
        cache = self._module_ok_remote if remote else self._module_ok
        for spec in msg.jobs:
            known = cache.get(spec.fn)
            if known is None:
                try:
                    check_allowed(spec.fn, self.allow) if remote else check_name(spec.fn)
                    known = ""
                except EnsembleError as exc:
                    known = str(exc)
                if len(cache) >= _REFUSED_CACHE:
                    cache.clear()
                if len(spec.fn) <= 256:  # longer names are refused cheaply and never kept
                    cache[spec.fn] = known
            if known:
                raise JobRefused(known)
            if remote and spec.pickled:
                raise JobRefused(f"job {spec.fn}: pickled arguments are accepted only from local clients; "
                                 "a remote peer sends MessagePack values")
            if spec.setup is not None:
                _check_setup(spec, remote, self.allow)
        if not remote:
            _check_context(msg.cwd, msg.path)
        context = (msg.cwd, list(msg.path)) if not remote else ("", [])  # a remote peer's paths mean nothing here
        return self._accept(ident, corr, msg.jobs, msg.watch, internal=False, context=context, progress=msg.progress)

    def _on_task_submit(self, ident: bytes, corr: int, msg: TaskSubmit) -> Message | None:
        """The controller's jobs: internal and script functions, proven by the token given at its spawn."""
        if not _same_key(msg.token.encode(), self.internal_token.encode()):
            self.counters["denied_requests"] += 1
            raise PermissionDenied("TaskSubmit is the controller's own message; clients submit with Submit")
        for spec in msg.jobs:  # an extension that knows the function vouches for it, or it is refused
            if not any(ext.check_task(spec) for ext in self.extensions):
                raise JobRefused(f"internal job function {spec.fn!r} is not one any installed package runs")
        return self._accept(ident, corr, msg.jobs, msg.watch, internal=True)

    def _accept(self, ident: bytes, corr: int, jobs: list[JobSpec], watch: bool, internal: bool,
                context: tuple[str, list[str]] = ("", []), progress: bool = False) -> Message | None:
        book = self.book
        assert book is not None
        if self.stopping_since:
            raise DaemonError("the daemon is stopping; submit again after the next `ensemble up`")
        gone = self.no_workers_left()
        if gone:
            raise JobRefused(gone)
        if self.journal is not None and self.journal.lost_file:
            raise JobRefused(self.journal.lost_file)
        if self.journal is not None and self.journal.write_error:
            raise JobRefused(self._unwritable(", so it accepts no new job until it can; the jobs it has accepted "
                                              "are kept and go on once it can write"))
        for spec in jobs:
            if spec.resources:
                self._check_resources(spec)
            wrong = _wrong_option(spec)
            if wrong:
                raise JobRefused(f"job {spec.fn[:200]}: {wrong}")
        limit = self.cfg.jobs.queue_limit
        if len(book.jobs) + len(jobs) > limit:
            raise QueueFull(f"queue full: {len(book.jobs)} unfinished jobs, limit {limit} (jobs.queue_limit); "
                            "retry later or raise the limit")
        nbytes = self._frame_len
        budget = self.cfg.jobs.queue_bytes
        if book.queued_bytes + nbytes > budget:
            raise QueueFull(f"queue full: unfinished jobs hold {book.queued_bytes} bytes of arguments and this "
                            f"submit adds {nbytes}, budget {budget} (jobs.queue_bytes); retry later, pass big "
                            "arrays through shared memory (client.empty), or raise the budget")
        owner = self._peer.owner
        if owner:  # a remote key: half the queue at most, so that it never fills it for the daemon's own user
            if book.owned[owner] + len(jobs) > limit // 2:
                raise QueueFull(f"queue full for this key: it has {book.owned[owner]} unfinished jobs, and a remote "
                                f"key may have at most half the queue ({limit // 2}, jobs.queue_limit / 2); retry "
                                "later")
            if book.owned_bytes[owner] + nbytes > budget // 2:
                raise QueueFull(f"queue full for this key: its unfinished jobs hold {book.owned_bytes[owner]} bytes of "
                                f"arguments and this submit adds {nbytes}; a remote key may hold at most half the "
                                f"budget ({budget // 2} bytes, jobs.queue_bytes / 2); retry later")
        ids = book.accept(jobs, time.time(), owner, nbytes, internal, context)
        self._recall_below(max(spec.priority for spec in jobs) if jobs else 0)
        if watch:
            watchers = (ident,)  # one tuple for the submit's jobs (a set would cost 216 bytes a job)
            for jid in ids:
                book.jobs[jid].watchers = watchers
            if progress:  # its start and progress too (an Executor's futures turn running)
                for jid in ids:
                    book.jobs[jid].progress_watchers = watchers
        frame = encode(Submitted(ids, book.journal.ident, self.no_worker_yet() if ids else ""), corr)
        self.replies.append((ident, frame))
        if ids:
            self.unacked.append((ids[0], ids[-1], ident, corr, frame))
        return None

    def _check_unacked(self) -> None:
        """Forget the acknowledgements whose jobs are written; if the journal's commit failed (a full disk),
        refuse the submits whose jobs it did not write, at once, and send what waited for that commit
        (:meth:`_send_held_unjournaled`).

        The loop calls this after every commit it collects, before it sends
        what waited for that commit.  None of the submits refused was
        acknowledged (an acknowledgement waits for its jobs' commit), so
        nothing accepted is lost: their jobs leave the queue and
        the journal's kept commit, and each submitter hears why now, instead
        of waiting as long as the disk stays full.  The rest of the failed
        commit (results, starts) is kept and written once it can be.
        """
        journal, book = self.journal, self.book
        assert journal is not None and book is not None
        unacked, written = self.unacked, journal.written_id
        while unacked and unacked[0][1] <= written:  # written: acknowledged, or about to be
            unacked.popleft()
        if not journal.write_error:
            return
        if unacked:
            self._refuse_unwritten()
        if journal.write_error:
            self._send_held_unjournaled()

    def _refuse_unwritten(self) -> None:
        """Refuse, at once, the submits none of whose jobs the journal could write (see :meth:`_check_unacked`)."""
        journal, book = self.journal, self.book
        assert journal is not None and book is not None
        unacked, written = self.unacked, journal.written_id
        # a submit whose first jobs were written ahead (Journal.write_first) may have them running: it is not
        # refused but waits for the rest of its jobs to be written, as its acknowledgement always does
        partly = [rec for rec in unacked if rec[0] <= written]
        refused = [rec for rec in unacked if rec[0] > written]
        if not refused:
            return
        dropped = book.forget(journal.drop_unwritten(above=max((rec[1] for rec in partly), default=0)))
        frames = {id(rec[4]) for rec in refused}
        self.replies = [r for r in self.replies if id(r[1]) not in frames]
        self.held = collections.deque((need, [r for r in out if id(r[1]) not in frames]) for need, out in self.held)
        refusal = JobRefused(self._unwritable(": this submit's jobs were not journaled, so none was accepted; "
                                              "submit them again once it can"))
        for _, _, ident, corr, _ in refused:
            self._send_client(ident, self._encode_for(ident, Error(code_of(refusal), str(refusal)), corr))
        log.warning("event=submits-refused submits=%d jobs=%d reason=%s", len(refused), len(dropped),
                    journal.write_error)
        unacked.clear()
        unacked.extend(partly)
        journal.commit()  # at once if what failed was only these jobs (Journal.drop_unwritten): nothing fails now

    def _send_held_unjournaled(self) -> None:
        """While the journal cannot be written, send what waits for its commit: from memory, not journaled yet.

        Replies and pushes wait for the commit that journals what they tell
        (:meth:`Supervisor._flush <actors.supervisor.Supervisor._flush>`).
        A commit that cannot be written (a full disk) held them as long as
        it failed: the result of a job that finished meanwhile, which the
        daemon holds, never reached the client waiting for it, nor did the
        answer to a cancel or to ``down``.  They go now, in order, up to the
        acknowledgement of a submit some of whose jobs are not written yet
        (see :meth:`_refuse_unwritten`): it, and what follows it, wait on.
        The ends sent so are journaled once the journal can be written (at
        ``down`` with the space it keeps in reserve: :meth:`Journal.close
        <actors._journal.Journal.close>`); until then a daemon killed would
        find those jobs unfinished at its next start (``replies_unjournaled``
        in ``ensemble status`` counts what was sent so).
        """
        held = self.held
        if not held:
            return
        waiting = {id(rec[4]) for rec in self.unacked}  # the frames of acknowledgements not to send yet
        sent = 0
        while held:
            need, out = held[0]
            stop = next((i for i, (_, frame) in enumerate(out) if id(frame) in waiting), None)
            for ident, frame in out[:stop]:
                self._send_client(ident, frame)
            if stop is not None:
                sent += stop
                held[0] = (need, out[stop:])
                break
            sent += len(out)
            held.popleft()
        if sent:
            self.counters["replies_unjournaled"] += sent

    def _check_resources(self, spec: JobSpec) -> None:
        """JobRefused when a job's resources are malformed or no worker can ever offer them."""
        try:
            check_resources(spec.resources, f"job {spec.fn}")
        except EnsembleError as exc:
            raise JobRefused(str(exc)) from None
        why = plan.refusal(spec.resources, plan.offers(self.slots.values()), self.cluster is not None)
        if why:
            raise JobRefused(f"job {spec.fn}: {why}")

    def _on_cancel(self, ident: bytes, corr: int, msg: Cancel) -> Message | None:
        book = self.book
        assert book is not None
        if not self._mine(msg.job_id):
            raise JobNotFound(f"job {msg.job_id} is unknown to this daemon (never submitted, or pruned)")
        job = book.jobs.get(msg.job_id)
        if job is None:
            infos = book.infos([msg.job_id])
            if msg.job_id not in infos:
                raise JobNotFound(f"job {msg.job_id} is unknown to this daemon (never submitted, or pruned)")
            if msg.block:  # it has stopped: its final snapshot, as for a job that stops later
                return JobInfos([infos[msg.job_id]])
            return Ack(f"job {msg.job_id} had already ended ({infos[msg.job_id].state})")
        if job.state == "queued":
            if msg.block:  # answered with its final snapshot as it ends, just below (see _finish)
                job.blockers = [*(job.blockers or ()), (ident, corr)]
            self._finish(job, "cancelled", time.time(), error_type="JobCancelled", error_message="cancelled before it started")
            return None if msg.block else Ack("cancelled")
        if msg.if_queued:  # never interrupt what started: a job still in its worker's line is taken back first
            slot = self._slot_of(job.id) if job.state == "dispatched" and not job.abort_reason else None
            if slot is None:
                return Ack("running")
            if job.unstarted_cancels is None:
                job.unstarted_cancels = []
            job.unstarted_cancels.append((ident, corr))  # answered by _recalled (or _finish, should it end first)
            if not job.recalling:  # (else the Recall on its way answers for it)
                job.recalling = True
                self._ask_back(slot, [job.id])
            return None
        self._abort(job, "cancel")
        if msg.block:
            if job.blockers is None:
                job.blockers = []
            job.blockers.append((ident, corr))
            return None
        return Ack("abort requested")

    def _on_get(self, ident: bytes, corr: int, msg: GetJobs) -> Message:
        return self._snapshots("GetJobs", msg.job_ids)

    def _snapshots(self, what: str, job_ids: list[int]) -> JobInfos:
        """The snapshots of ``job_ids`` in that order (for ``GetJobs`` and ``Watch``), within one frame.

        Each job once: a job named 100,000 times would make a reply 100,000
        times its record (a 1 MB result: 100 GB for one small request).  The
        records are read a chunk at a time and measured as they come, so a
        reply that could not fit a frame (which the client refuses, and whose
        jobs it would then wait for) costs no more than a frame before it is
        refused, saying so.  A client key sees only its own jobs (one query
        for all of them); the others are unknown to it.
        """
        book = self.book
        assert book is not None
        if len(job_ids) > MAX_IDS:  # (the decoder refuses a longer list as it reads the frame: kept for the
            raise ProtocolError(f"{what} asks for {len(job_ids)} jobs; at most {MAX_IDS} at once")  # internal calls)
        if len(set(job_ids)) != len(job_ids):
            twice = next(j for j, n in collections.Counter(job_ids).items() if n > 1)
            raise ProtocolError(f"{what} names job {twice} more than once; name each job once")
        ids = self._owned(job_ids)
        room = self.cfg.daemon.max_frame - 4096
        infos: dict[int, JobInfo] = {}
        size = 0
        for start in range(0, len(ids), _SNAPSHOT_CHUNK):
            chunk = book.infos(ids[start:start + _SNAPSHOT_CHUNK])
            if len(ids) > 1:  # (one job's record fits: its worker sent it in a frame)
                # measured a chunk at a time: one encode of 256 records costs a fifth of 256 encodes of one
                size += len(encode(JobInfos(list(chunk.values()))))
                if size > room:
                    raise ProtocolError(
                        f"{what} of {len(ids)} jobs: their records come to more than the frame limit of "
                        f"{self.cfg.daemon.max_frame} bytes (daemon.max_frame), a reply the client could not read; "
                        "ask for fewer jobs at once (`ensemble result ID` reads one)")
            infos.update(chunk)
        missing = [j for j in job_ids if j not in infos]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise JobNotFound(f"job(s) {shown} unknown to this daemon (never submitted, or pruned)")
        return JobInfos([infos[j] for j in job_ids], book.journal.ident)

    def _owned(self, job_ids: list[int]) -> list[int]:
        """Those of ``job_ids`` the requesting peer may see: all of them, or a client key's own (one journal query
        for the jobs no longer in memory, where a query per job held the loop 0.5 s for 100,000 ids)."""
        book = self.book
        assert book is not None
        if self._peer.role != "client":
            return list(job_ids)
        owner = self._peer.owner
        live = book.jobs
        mine = [j for j in job_ids if j in live and live[j].owner == owner]
        rest = [j for j in job_ids if j not in live]
        if rest:
            book.journal.commit()
            owners = book.journal.owners(rest)
            mine += [j for j in rest if owners.get(j) == owner]
        return mine

    def _on_list(self, ident: bytes, corr: int, msg: ListJobs) -> Message:
        assert self.book is not None
        owner = self._peer.owner if self._peer.role == "client" else None
        states = set(msg.states)
        unknown = states - _STATES
        if unknown:
            raise OutOfRange(f"no job is in state {sorted(unknown)[0][:40]!r}: give states of "
                             f"{', '.join(sorted(_STATES))}")
        if msg.limit < 1:
            raise OutOfRange(f"a listing of {msg.limit} jobs: give a limit of 1 or more (at most 10000 are sent)")
        return _fitting(self.book.recent(sorted(states), min(msg.limit, 10_000), owner), self.cfg.daemon.max_frame)

    def _on_watch(self, ident: bytes, corr: int, msg: Watch) -> Message:
        assert self.book is not None
        reply = self._snapshots("Watch", msg.job_ids)  # (refused as a whole: nothing watched)
        for jid in msg.job_ids:
            job = self.book.jobs.get(jid)
            if job is not None:
                job.watchers = _with(job.watchers, ident)
                if msg.progress:
                    job.progress_watchers = _with(job.progress_watchers, ident)
        return reply

    def _on_unwatch(self, ident: bytes, corr: int, msg: Unwatch) -> Message:
        assert self.book is not None
        for jid in msg.job_ids:
            job = self.book.jobs.get(jid)
            if job is not None:
                job.watchers = tuple(w for w in job.watchers or () if w != ident) or None
                job.progress_watchers = tuple(w for w in job.progress_watchers or () if w != ident) or None
        return Ack()

    def _on_status(self, ident: bytes, corr: int, msg: Status) -> Message:
        return self.status()

    def _on_scale(self, ident: bytes, corr: int, msg: Scale) -> Message:
        if not 0 <= msg.workers <= 1024:
            raise EnsembleError(f"cannot scale to {msg.workers} workers: give 0..1024")
        if msg.on == "ray":
            self.scale_cluster(msg.workers)
            return Ack(f"workers on ray: {msg.workers}")
        if msg.on not in ("", "local"):
            raise EnsembleError(f"cannot scale workers on {msg.on!r}: give local or ray")
        self.scale(msg.workers)
        return Ack(f"workers: {msg.workers}")

    def _on_shutdown(self, ident: bytes, corr: int, msg: Shutdown) -> Message:
        self.begin_stop("shutdown request")
        return Ack("stopping")

    _handlers: dict[type, Callable[..., Message | None]] = {
        Ping: _on_ping, Submit: _on_submit, TaskSubmit: _on_task_submit, Cancel: _on_cancel, GetJobs: _on_get,
        ListJobs: _on_list, Watch: _on_watch, Unwatch: _on_unwatch, Status: _on_status, Scale: _on_scale,
        Shutdown: _on_shutdown,
    }

    def _drain_internal(self, sock: Any) -> None:
        """Child messages: local children on the ipc socket, remote workers on the tcp one, never mixed.

        A frame counts for a slot only when it comes in on that slot's socket,
        with its routing id, and (tcp) under the key the slot joined with.
        """
        tcp = sock is self.internal_tcp
        table = self.remote_slots if tcp else self.by_identity
        handles = None if tcp else self.shm_prefix
        for parts, key, _role, name in self._frames(sock):
            slot = table.get(parts[0])
            if tcp:
                if slot is None and len(parts) == 2:
                    slot = self._remote_hello(sock, parts[0], key, name, parts[1])
                elif slot is not None and not _same_key(slot.key, key):
                    self.counters["forged_frames"] += 1
                    continue
            if slot is None or len(parts) != 2:
                self.counters["stray_frames"] += 1
                continue
            try:
                # object-store keys only from a Ray-placed worker (results it left with its host actor)
                stored = tcp and self.cluster is not None and slot.key_name in self.cluster.members
                _, msg = decode(parts[1], self.limits, handles, stored)
            except ProtocolError as exc:
                self.counters["bad_frames"] += 1
                log.error("event=bad-child-frame name=%s reason=%s", slot.name, _short(str(exc)))
                continue
            if slot.remote and not isinstance(msg, _REMOTE_WORKER_SENDS):
                self.counters["stray_frames"] += 1
                continue
            slot.last_heard = time.monotonic()
            if isinstance(msg, Heartbeat):
                if slot.remote and len(parts[1]) > REMOTE_STATS_BYTES:  # kept decoded, shown in every status
                    self.counters["bad_frames"] += 1
                    if slot.stats is not _STATS_DROPPED:  # said once a run of them
                        log.warning("event=remote-stats-dropped name=%s bytes=%d limit=%d", slot.name,
                                    len(parts[1]), REMOTE_STATS_BYTES)
                    slot.stats = _STATS_DROPPED
                else:
                    slot.stats = msg.stats
            elif isinstance(msg, JobsDone):
                self._jobs_done(slot, msg)
            elif isinstance(msg, JobUpdate):
                self._job_update(slot, msg)
            elif isinstance(msg, Recalled):
                self._recalled(slot, msg)
            elif isinstance(msg, ResultsClosed) and not slot.remote:
                slot.results_closed = True
            elif isinstance(msg, Retiring) and not slot.remote:  # it leaves on purpose: replace it, no failure
                slot.ready = False
                slot.expected_exit = True
                log.info("event=worker-retiring name=%s reason=%s", slot.name, msg.reason)
                self._send_child(slot, Stop("retiring"))  # its results came first: now it may exit
            elif isinstance(msg, Hello):
                slot.ready = True
                slot.state = "running"
                log.info("event=ready name=%s pid=%d", slot.name, msg.pid)
                if slot.stop_owed:  # it was asked to stop before it connected: now it can hear it
                    log.info("event=stop-resent name=%s reason=%s detail=it connected after its Stop was sent",
                             slot.name, slot.stop_owed)
                    reason, slot.stop_owed = slot.stop_owed, ""
                    self._send_child(slot, Stop(reason))
                    if self.stopping_since:
                        slot.state = "stopping"
                if slot.role == "worker":
                    self.start_pending()  # a start slot is free: the next of a scale-up may begin
                    self._keep_standby()  # a replacement is up: its successor may start warming now
                for ext in self.extensions:
                    ext.child_ready(slot)
            elif type(msg) in self.child_handlers and not slot.remote:
                self.child_handlers[type(msg)](slot, msg)
            else:
                self.counters["stray_frames"] += 1


def _same_key(a: bytes, b: bytes) -> bool:
    """Whether two secrets are equal, in constant time (``hmac.compare_digest``).

    ``hmac`` is imported at the first comparison, not with this module: it loads OpenSSL (2-4 ms), on a private
    daemon's path to ready, where no token or remote key is compared.
    """
    import hmac

    return hmac.compare_digest(a, b)


def _fitting(infos: list[JobInfo], max_frame: int) -> JobInfos:
    """A listing that fits one frame: the biggest results (then tracebacks and properties) left out first.

    Two jobs that each returned 40 MB made every ``ensemble jobs`` fail until
    they were pruned.  A job's whole record stays one ``GetJobs`` away
    (``ensemble result ID``); a job left out this way says so in its status.
    """
    reply = JobInfos(infos)
    room = max_frame - 65536
    if len(encode(reply)) <= room:  # (the common case: one encode here, one to send)
        return reply
    sizes = sorted(((len(encode(JobInfos([info]))), i) for i, info in enumerate(infos)), reverse=True)
    total = sum(size for size, _ in sizes)
    out = list(infos)
    for size, i in sizes:
        if total <= room:
            break
        info = out[i]
        out[i] = msgspec.structs.replace(info, result=None, traceback="", properties={},
                                         status=f"(too big to list: {size} bytes; `ensemble result {info.id}`)")
        total -= size - len(encode(JobInfos([out[i]])))
    return JobInfos(out)

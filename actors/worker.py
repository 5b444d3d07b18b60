"""A worker process: runs jobs one at a time, with the task handle, on its main thread.

Threads: the main thread runs job functions, as a ``ProcessPoolExecutor``
worker's does (a job may use ``signal.signal``, ``signal.alarm``, or anything
else only the main thread may); the loop thread runs the supervision loop
(:meth:`Child.serve <actors._child.Child.serve>`: heartbeats, dispatch, aborts,
publishing progress).  Jobs go from the loop to the main thread through the
``pending`` deque (jobs handed over but not yet started sit there, so an abort
of one of them answers at once).  A local worker's main thread sends each
result to the daemon itself, on a DEALER of its own (routing id: the worker's
name + :data:`~actors._rundir.RESULTS_SUFFIX`), and its ``Retiring`` after its
last result on the same socket, so the daemon reads them in that order;
handing each result to the loop thread to send cost a thread wake-up and a
wait for the GIL per job (the job side spent a fifth of its time there in
``Executor.map``).  A remote worker's results go through the loop thread (an
inproc PAIR wakes it): its one CURVE connection is the loop's.

Held results: while more jobs wait, a local worker holds short jobs' results
back to send them in one frame (:meth:`Worker._hold`).  Each is encoded once,
as it is held, and written to the incarnation's held-results file in the run
directory (:class:`~actors._rundir.HeldResults`, mapped shared: a ``kill -9``
of the worker loses nothing stored there); the frame is built from those
encoded items (``msgspec.Raw``).  Should the next job kill the worker, the
daemon reads that file when it reaps it and finishes the held jobs with their
results, as if the frame had come (:meth:`ChildrenMixin._held_results
<actors.supervisor._children.ChildrenMixin._held_results>`); after a daemon
``kill -9``, the next daemon's recovery reads them (``RunDir.take_all_held``).

Signals: Python runs handlers on the main thread only, which may be deep in a
job's C call.  The worker's SIGTERM handler asks for an orderly stop, and the
loop thread learns of a SIGTERM through the wake-up fd of Python's signal
handling (:class:`~actors._signals.SignalPipe`) without waiting for that
handler, so a worker stops as promptly whatever its job does.  The loop thread
blocks the asynchronous signals, so they land on the main thread (a job's
``signal.alarm`` interrupts its ``time.sleep``).  A job that installs a SIGTERM
handler of its own (or an Executor's initializer) has it run instead, as in a
``ProcessPoolExecutor`` worker, for the rest of the worker's life: the worker
then stops on its supervisor's ``Stop`` message alone, which never depended on
a signal, and a daemon that is stopping SIGKILLs a worker still there
``term_grace`` after its SIGTERM.

A job may fork (a ``multiprocessing.Pool`` of the fork start method,
``os.fork``): the child is a copy of the worker with the forking thread alone
in it, and :meth:`Worker._forked` makes it a process of its own before it runs
anything (the signal handlers of a fresh interpreter, no wake-up fd, a task
handle of its own); it never touches the worker's ZeroMQ sockets, and one that
returns from the job ends there.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import itertools
import logging
import queue
import re
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, NoReturn

import msgspec
import zmq

from actors import callables
from actors._child import Child, child_main
from actors._exact import big_bytes, dumps, loads as exact_loads, loads_referencing, spill
from actors._freshness import RETIRE_CODE, UserCode
from actors._values import Pickled, plain, scalars, unpickled
from actors._logging import setup as one_line_logging
from actors._rundir import RESULTS_SUFFIX, HeldResults, RunDir, StartedLog
from actors._arrays import WorkerArrays
from actors._errors import POOL_BROKEN, ProtocolError, error_name, rebuilt_exception
from actors._jobfn import explain_task_parameter, resolve, resolve_internal, takes_task
from actors._keeper import fork_keeper
from actors._subreaper import DAEMON_ENV, WORKER_ENV
from actors._signals import SignalPipe, start_unsignalled
from actors._task import Task, activate, deactivate, set_home
from actors.messages import (
    REMOTE_EXT_VALUES,
    AbortJob,
    Dispatch,
    JobDone,
    JobsDone,
    JobUpdate,
    Limits,
    remote_ext_left,
    Message,
    Recall,
    Recalled,
    ResultsClosed,
    Retiring,
    RunJobs,
    VoicesDone,
    VoicesOp,
    WorkerSetup,
    decode,
    encode,
    salvage_run_jobs,
)

log = logging.getLogger("ensemble.worker")
_POLLIN = int(zmq.POLLIN)  # a plain int: `&` on the IntFlag costs a Python call
_VOICES_TIMEOUT = 10.0  # seconds to wait for the processor to fall silent
_RETIRE_WAIT = 5.0  # seconds a retiring worker waits for the supervisor's Stop before it leaves anyway
_HOLD_MAX = 64  # results held back at most while jobs are pending (see Worker._hold)
_HOLD_WAIT = 0.01  # seconds a held result waits at most for the job after it (the loop thread then sends it)
_FORK_SIGNALS = {signal.SIGTERM, signal.SIGINT}  # held back while a job forks (see Worker._before_fork)
# A frame of one result is ``[VERSION, kind, 0, [kind, [result]]]``: the result starts where it would end in a frame
# of none (the header of a list of one is as long as that of an empty one), and a frame of many is the same
# header over the results' own bytes, each a ``msgspec.Raw`` (tests/actors/test_held_results.py checks both)
_ITEM_AT = len(encode(JobsDone([])))


class Worker(Child):
    """Supervised worker: receives :class:`RunJobs`, reports :class:`JobsDone`."""

    role = "worker"

    def __init__(self, cfg: Any, name: str, endpoint: str | None = None, curve: tuple[str, str] | None = None) -> None:
        super().__init__(cfg, name, endpoint, curve)
        if not self.remote:  # a job's Client() reaches this daemon (a remote worker's daemon is another host's)
            set_home(cfg)
            # inherited by what its jobs start: the daemon finds by it what a job of this worker, killed or crashed
            # under it, left in a session of its own (actors._subreaper.kill_marked)
            os.environ[WORKER_ENV] = str(os.getpid())
            os.environ[DAEMON_ENV] = cfg.shm_key  # and the next start of a daemon killed meanwhile (kill_left_by_daemon)
        self.pending: collections.deque[Dispatch] = collections.deque()  # guarded by _work
        self.current: tuple[Dispatch, Task] | None = None  # set by the main thread under _work
        self._work = threading.Condition(threading.Lock())
        self._stopping = False
        self._jobs_over = threading.Event()  # the main thread left its job loop (see run)
        self._signals = SignalPipe()  # what the main thread's signal handling caught, for the loop thread
        self._arrived = False  # jobs came since the main thread last checked the user's code (see _job_loop)
        self._wake_sent = False  # coalesces loop-thread wake-ups: one per drain of ``finished``
        self.direct = not self.remote  # results leave from the main thread (see the module's doc)
        self.out: Any = None  # its socket for them; the loop thread uses it too, under _out_lock
        self._results_closed = False  # ResultsClosed was sent (the daemon reads up to it when it reaps us)
        self._out_lock = threading.Lock()
        self._held: list[Any] = []  # results not yet sent, each a msgspec.Raw of its encoded JobDone (see _hold)
        self._held_size = 0
        self._held_since = 0.0
        self.results_in = self.ctx.socket(zmq.PAIR)
        self.results_in.bind(f"inproc://results-{id(self)}")
        self.results_out = self.ctx.socket(zmq.PAIR)
        self.results_out.connect(f"inproc://results-{id(self)}")
        self.finished: "queue.SimpleQueue[tuple[JobDone, int]]" = queue.SimpleQueue()
        # on another host shared memory is out of reach: arrays cross as bytes, within the frame limit
        self.arrays = WorkerArrays(cfg.shm_key, cfg.daemon.max_frame if self.remote else cfg.jobs.inline_array_limit,
                                   shared=not self.remote, spill_over=cfg.daemon.max_frame // 2)
        self.voice_requests: "queue.SimpleQueue[VoicesOp]" = queue.SimpleQueue()
        self.voice_waits: dict[int, list[Any]] = {}
        self._voice_tokens = itertools.count(1)
        self.done_count = 0
        # the id of the job last started, written before the job runs: after a SIGKILL the supervisor reads
        # it to tell prefetched jobs that had begun (their results unsent) from those that never started
        self._started: StartedLog | None = None
        # the results held back, also where a kill -9 leaves them for the supervisor (see _hold)
        self._kept: HeldResults | None = None
        if not self.remote:
            run = RunDir(cfg.run_dir)
            self._started = StartedLog(run.started_file(name))
            self._kept = HeldResults(run.held_file(name))
        self.code = UserCode()
        # job id -> the import path of its client (a Dispatch carries it only when it changed: the last one holds)
        self._path_of: dict[int, list[str]] = {}
        self._last_path: list[str] = []
        self.retire_reason = ""
        self.retiring_since = 0.0  # monotonic time the main thread left to retire; the supervisor's Stop ends us
        self.fns: dict[str, Callable[..., Any]] = {}  # job path -> its function, resolved once (main thread)
        self.setups: dict[str, int] = {}  # Executor key -> its jobs run here, once its initializer ran (main thread)
        self._pid = os.getpid()  # a process a job forks has another (see _run_jobs)
        self._fork_masks = threading.local()  # each forking thread's signal mask, while it forks
        os.register_at_fork(before=self._before_fork, after_in_parent=self._after_fork, after_in_child=self._forked)

    def run(self) -> int:
        """Run jobs on this, the main thread, and :meth:`serve` on the loop thread until a stop; the exit code.

        Returns once both are over; should a job ignore its abort past the
        stop grace, the loop thread ends the process instead (see :meth:`_supervise`).
        """
        self.catch_signals()
        self._signals.install()
        loop = threading.Thread(target=self._supervise, name="supervision", daemon=True)
        start_unsignalled(loop)
        try:
            self._job_loop()
        finally:
            self._jobs_over.set()
        loop.join()  # (it ends soon: the job loop returns on a stop, or to retire, which ends in one within 5 s)
        return self.exit_code

    # -- loop thread ---------------------------------------------------------------
    def _supervise(self) -> None:
        """The loop thread: :meth:`serve`; then, if the main thread is still in a job, end the process here.

        That job ignored its abort for the whole stop grace (the daemon would
        SIGKILL it next); a failure of the loop itself ends the process too
        (code 1, its traceback in the log), or jobs would run unsupervised.
        """
        try:
            code = self.serve()
        except BaseException:  # noqa: BLE001 - a bug: said in the log, and the daemon replaces this worker
            log.exception("event=loop-thread-failed name=%s", self.name)
            code = 1
        else:
            if self._jobs_over.is_set():
                return  # the main thread returns the exit code
        _flush_output()  # (as child_main does after run)
        os._exit(code)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler (main thread): an orderly stop, the loop woken (a job may have changed the wake-up fd)."""
        self._request_stop("SIGTERM")
        self._signals.poke()

    def _caught(self) -> None:
        """Signals caught (the wake-up fd): SIGTERM stops, unless a job put a handler of its own in place of ours."""
        if signal.SIGTERM in self._signals.caught() and signal.getsignal(signal.SIGTERM) == self.on_sigterm:
            self._request_stop("SIGTERM")

    def extra_sockets(self) -> list[Any]:
        return [self.results_in, self._signals.read_fd]

    def stats(self) -> dict[str, Any]:
        return {"done": self.done_count, "pending": len(self.pending), "busy": self.current is not None}

    def poll_timeout(self) -> float:
        if self._held:
            return _HOLD_WAIT
        # busy: a job runs or is about to (the main thread may not have taken it yet), so that a result it holds
        # back (see _hold) leaves within _HOLD_WAIT and not at the next heartbeat
        return 0.02 if self.current is not None or self.pending else super().poll_timeout()

    def handle(self, msg: Message) -> None:
        if isinstance(msg, RunJobs):
            paths = self._path_of
            for d in msg.jobs:  # an import path comes only when it changed: it holds for the jobs after it
                if d.cwd:
                    if d.path:
                        self._last_path = d.path
                    paths[d.job_id] = self._last_path
            with self._work:
                self.pending.extend(msg.jobs)
                self._arrived = True
                self._work.notify()
        elif isinstance(msg, AbortJob):
            self._abort(msg.job_id, msg.reason)
        elif isinstance(msg, Recall):
            wanted = set(msg.job_ids)
            with self._work:
                back = [d.job_id for d in self.pending if d.job_id in wanted]
                self.pending = collections.deque(d for d in self.pending if d.job_id not in wanted)
            for job_id in back:
                self._path_of.pop(job_id, None)
            self.send(Recalled(back))
        elif isinstance(msg, VoicesDone):
            wait = self.voice_waits.get(msg.token)
            if wait is not None:
                wait[1] = msg
                wait[0].set()
        else:
            super().handle(msg)

    def unreadable(self, frame: bytes) -> None:
        """Jobs of a :class:`RunJobs` this worker cannot read whole: those that read run, each that does not
        fails now, saying why (a dropped frame would hold them all running for ever)."""
        salvaged = salvage_run_jobs(frame, self.limits)
        if salvaged is None:
            return
        jobs, failed = salvaged
        if jobs:
            self.handle(RunJobs(jobs))
        if failed:
            now = time.time()
            self.send(JobsDone([JobDone(job_id, False, None, "ProtocolError", f"the job's arguments cannot be read "
                                        f"in the worker: {why}", "", started=now) for job_id, why in failed]))

    def _abort(self, job_id: int, reason: str) -> None:
        with self._work:
            cur = self.current
            if cur is not None and cur[0].job_id == job_id:
                cur[1].abort(reason)
                return
            found = next((d for d in self.pending if d.job_id == job_id), None)
            if found is None:
                return
            self.pending.remove(found)
        self.send(JobsDone([JobDone(job_id, False, None, "JobCancelled", reason or "cancelled before it started", "",
                                    aborted=True, started=time.time())]))

    def on_ready(self, sock: Any) -> None:
        if sock == self._signals.read_fd:
            self._caught()
            return
        voices = 0
        while self.results_in.getsockopt(zmq.EVENTS) & _POLLIN:  # type: ignore[operator]
            frame = self.results_in.recv()
            if frame == b"v":
                voices += 1
            elif frame == b"x":  # the job loop left: code changed on disk, or an Executor's max_tasks_per_child
                self.retiring_since = time.monotonic()
        for _ in range(voices):
            self.send(self.voice_requests.get_nowait())
        self._wake_sent = False  # before draining: a result queued after this wakes us again
        done: list[JobDone] = []
        size = 0
        budget = self.cfg.daemon.max_frame // 2
        while True:
            try:
                one, cost = self.finished.get_nowait()
            except queue.Empty:
                break
            if done and size + cost > budget:  # results travel in frames the daemon accepts
                self.send(JobsDone(done))
                done, size = [], 0
            done.append(one)
            size += cost
            self.done_count += 1
        if done:
            self.send(JobsDone(done))
        if self.retiring_since and not self.exit_code:
            # after its last results: the supervisor reads those, then answers Retiring with Stop, so the
            # exit never races them (a job that returned would otherwise count as lost with its worker); a
            # direct worker's main thread sent it itself, behind its results
            if not self.direct:
                self.send(Retiring(self.retire_reason))
            self.exit_code = RETIRE_CODE

    def tick(self, now: float) -> None:
        if self._held and now - self._held_since > _HOLD_WAIT:  # the job after them runs long: send them now
            with self._out_lock:
                self._send_held()
        if self.retiring_since and time.monotonic() - self.retiring_since > _RETIRE_WAIT:
            self._request_stop(self.retire_reason)  # no Stop came (a remote worker's daemon sends none)
        cur = self.current
        if cur is None:
            return
        d, task = cur
        snap = task.snapshot_if_due(now)
        if snap is not None:
            try:
                self.send(JobUpdate(d.job_id, snap[0], snap[1], snap[2], snap[3]))
            except ProtocolError as exc:  # a property changed in place since set_property checked it: the update
                # goes without the properties, saying why (the job's result is checked again as it ends)
                self.send(JobUpdate(d.job_id, snap[0], snap[1], {}, snap[3], "unsendable",
                                    f"the job's properties cannot be sent: {exc}"))
        gap = task.stalled_for(now)
        if gap is not None:
            self.send(
                JobUpdate(d.job_id, task.get_progress(), task.get_status_message(), {}, task.get_timeout(),
                          "stalled", f"no should_abort() call for {gap * 1000:.0f} ms (timeout {task.get_timeout()} ms)")
            )

    def on_stop(self) -> None:
        # Jobs still in ``pending`` never started: they are not reported, so the
        # supervisor puts them back in its queue when this worker exits (and a
        # stopping daemon leaves them queued in the journal for the next ``up``).
        with self._work:
            self._stopping = True
            if self.current is not None:
                self.current[1].abort(self.stop_reason or "worker stopping")
            self._work.notify()
        self._jobs_over.wait(timeout=self.cfg.supervision.stop_grace)
        self.on_ready(self.results_in)  # report the job that returned
        self._close_out()  # if the main thread is stuck in a job: what it held back leaves now
        if self.direct and not self._results_closed:  # its main thread never opened its socket: say it here
            self.send(ResultsClosed())
        if self._jobs_over.is_set():  # let the context terminate (and flush) on exit
            self.results_out.close(linger=0)
            self.results_in.close(linger=0)

    # -- forks (in the thread that forks: the main thread or one of the job's) ------------------------
    def _before_fork(self) -> None:
        """Before a fork in this worker (the forking thread): hold SIGTERM and SIGINT back until the child has
        its own handlers (see :meth:`_forked`), so that one sent at once is not lost to the worker's handler
        (``Process.terminate()`` just after ``start()``).  Two system calls."""
        self._fork_masks.old = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_SIGNALS)

    def _after_fork(self) -> None:
        """After a fork in this worker, in the worker (the forking thread): its signal mask back."""
        signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_masks.old)

    def _forked(self) -> None:
        """In a process forked from this worker, before anything else runs there (``os.register_at_fork``).

        Runs in the child's one thread, the one that forked (the main thread, or
        a thread the job started), and makes the child a process of its own,
        as a ``ProcessPoolExecutor`` worker's child is: SIGTERM and SIGINT act
        as in a fresh interpreter, and only then reach it (the worker's SIGTERM
        handler, inherited, would only ask the child's copy of the loop to
        stop: the child outlived ``terminate()``, and a ``multiprocessing.Pool``
        whose worker had missed its sentinel waited for it in ``join`` for
        ever), its signals no longer write to the worker's wake-up pipe (a
        SIGTERM it caught would stop the worker), and the job's task handle
        becomes the child's own (:meth:`Task.forked`).  It touches no socket and
        takes no lock.
        """
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(-1)
        cur = self.current
        if cur is not None:
            cur[1].forked()
        signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_masks.old)

    # -- main thread: jobs --------------------------------------------------------------
    def _kill_voices_and_call(self, fn: Any) -> bool:
        """Suspend the processor's voices, run ``fn`` here, resume (main thread, in a job)."""
        token = next(self._voice_tokens)
        wait: list[Any] = [threading.Event(), None]
        self.voice_waits[token] = wait
        try:
            self.voice_requests.put(VoicesOp("suspend", token))
            self.results_out.send(b"v")
            if not wait[0].wait(_VOICES_TIMEOUT) or not wait[1].ok:
                return False
            try:
                fn()
            finally:
                self.voice_requests.put(VoicesOp("resume", token))
                self.results_out.send(b"v")
            return True
        finally:
            self.voice_waits.pop(token, None)

    def _job_loop(self) -> None:
        """Main thread: take the next pending job, run it, send its result (or queue it for the loop thread)."""
        if self.direct:
            out = self.ctx.socket(zmq.DEALER)
            out.setsockopt(zmq.IDENTITY, self.name.encode() + RESULTS_SUFFIX)
            out.setsockopt(zmq.SNDHWM, 0)
            out.connect(RunDir(self.cfg.run_dir).internal_endpoint)
            self.out = out
        try:
            self._run_jobs()
        except BaseException:  # a bug, not a job's failure (those are results): leave, so the job is not stuck
            # here with a live-looking worker; the daemon replaces us and retries the job or reports it lost
            # (or an exception a job's signal handler raised between two jobs)
            log.exception("event=job-loop-failed name=%s", self.name)
            self._leave("its job loop failed (the worker's log has the traceback)")
        finally:
            self._close_out()

    def _close_out(self) -> None:
        """Send what is held back and close the results socket (it is delivered before the process ends, see
        actors._child): the main thread as it leaves its job loop, or the loop thread on stop when a job is stuck."""
        with self._out_lock:
            if self.out is not None:
                self._send_held()
                self.out.send(encode(ResultsClosed()))  # the daemon reads up to here before it reaps us
                self._results_closed = True
                self.out.close(linger=1000)
                self.out = None

    def _send_held(self) -> None:
        """Send the results held back (main thread, or the loop when they wait too long; under ``_out_lock``).

        Their records stay in the held-results file (until its half is reused,
        see :meth:`HeldResults.turn <actors._rundir.HeldResults.turn>`): the
        frame may still wait in ZeroMQ's queue, in this process, when the next
        job kills it; the supervisor ignores the records of results it has.
        """
        if self._held and self.out is not None:
            self.out.send(encode(JobsDone(self._held)))
            self.done_count += len(self._held)
            self._held, self._held_size = [], 0

    def _hold(self, job_id: int, frame: bytes) -> None:
        """Send a result now, or hold it back while more jobs wait here (main thread).

        ``frame``: the result encoded as a ``JobsDone`` of its own.  Held
        results leave together, one frame for many short jobs: when no job is
        pending any more, at :data:`_HOLD_MAX` of them or half a frame, when
        the held-results file turns to its other half, or, should the next job
        run long, from the loop thread after :data:`_HOLD_WAIT`.  Each is
        written to the held-results file as it is held (a copy of its bytes into
        a shared mapping, no system call): the supervisor ends its job from
        there should the worker die first.  A result over
        :data:`HeldResults.ITEM_MAX <actors._rundir.HeldResults.ITEM_MAX>` bytes,
        or one with no job pending after it, is not held: it leaves at once,
        behind those held.
        """
        item = memoryview(frame)[_ITEM_AT:]
        kept = self._kept
        assert kept is not None  # a local worker's
        with self._out_lock:
            if self.out is not None and (len(item) > kept.ITEM_MAX or not self._held and not self.pending):
                self._send_held()
                self.out.send(frame)
                self.done_count += 1
                return
            if self._held and self._held_size + len(frame) > self.cfg.daemon.max_frame // 2:
                self._send_held()
            if not kept.fits(len(item)):  # this half is full: what it holds leaves, the other half is reused
                self._send_held()
                kept.turn()
            if not self._held:
                self._held_since = time.monotonic()
            kept.add(job_id, item)
            self._held.append(msgspec.Raw(item))
            self._held_size += len(frame)
            if not self.pending or len(self._held) >= _HOLD_MAX:
                self._send_held()

    def _leave(self, reason: str) -> None:
        """Stop taking jobs, to be replaced (main thread): ``Retiring`` behind the last result, then tell the loop."""
        self.retire_reason = reason
        with self._out_lock:
            if self.out is not None:
                self._send_held()
                self.out.send(encode(Retiring(reason)))
        self.results_out.send(b"x")

    def _run_jobs(self) -> None:
        while True:
            with self._work:
                while not self.pending and not self._stopping:
                    if self._held:  # nothing left to wait for
                        with self._out_lock:
                            self._send_held()
                    self._work.wait()
                if self._stopping:
                    return
                d = self.pending.popleft()
                task = Task(d.job_id, d.timeout_ms, self._kill_voices_and_call, self.arrays)
                self.current = (d, task)
                # the user's code is looked at once per arrival of jobs (those that came together were all
                # submitted before it): a module edited before a submit is seen before that job runs
                look = self._arrived and bool(d.cwd)
                if look:
                    self._arrived = False
            if d.cwd:  # a local client's job: its directory, its import path, its current code
                changed = self.code.stale() if look else ""
                if changed:  # never run a job on old code: leave; the replacement imports the new one
                    self._leave(f"module {changed} changed on disk since this worker imported it")
                    return
                path = self._path_of.pop(d.job_id, None)
                if path is not None and self.code.use(path):  # its client's path and modules (others' aside):
                    self.fns.clear()  # functions looked up in the modules put aside are not this job's
                self.code.enter(d.cwd, look)
            if self._started is not None:
                self._started.record(d.job_id)
            began = time.time_ns() if d.cwd else 0
            result = _run_one(d, task, self.arrays, self._set_up, self.fns)
            if os.getpid() != self._pid:
                _end_forked(result)
            if self._started is not None:
                self._started.ended()
            done, cost, frame = _sendable_encoded(result, self.cfg.daemon.max_frame, self.remote)
            _flush_output()  # what the job printed is out before its result: in order, not at the worker's exit
            if d.cwd:
                self.code.note_imports(began)
            with self._work:
                self.current = None
            if self.direct:
                self._hold(done.job_id, frame or encode(JobsDone([done])))
            else:
                self.finished.put((done, cost))
                if not self._wake_sent:
                    self._wake_sent = True
                    self.results_out.send(b"r")
            if d.setup is not None and self._served(d.setup):
                self._leave(f"ran max_tasks_per_child={d.setup.max_tasks} jobs of one executor")
                return

    def _set_up(self, setup: WorkerSetup) -> None:
        """Run an Executor's initializer before its first job here (main thread); raise BrokenProcessPool if it fails."""
        if setup.key in self.setups:
            return
        if setup.initializer:
            init = resolve(setup.initializer)
            args = setup.initargs
            if setup.pickled:  # the pickle, or [b"", its handle] when it was big (Executor._share_setup)
                mapped: list[Any] = []
                try:
                    args = _unpickled(args, self.arrays, mapped)
                finally:
                    for seg in mapped:
                        seg.close()
            if init is callables.pickled:  # a local Executor's initializer, pickled as the head of its arguments
                init, args = callables.carried(args, setup.pickled)
            try:
                init(*args)
            except BaseException as exc:  # noqa: BLE001 - as ProcessPoolExecutor: the pool is broken
                from concurrent.futures.process import BrokenProcessPool

                # as the pool's worker logs it: on the worker's stderr (a private daemon's is the caller's)
                print(f"Exception in initializer {callables.label(init)}:", file=sys.stderr)
                traceback.print_exc()
                _flush_output()

                broken = BrokenProcessPool(f"the executor's initializer {callables.label(init)} raised "
                                           f"{type(exc).__name__}: {exc}")
                broken.pool_broken = True  # type: ignore[attr-defined]  # (reported as POOL_BROKEN: _run_one)
                raise broken from exc
        self.setups[setup.key] = 0

    def _served(self, setup: WorkerSetup) -> bool:
        """Count one more job of an Executor; whether this worker has now run its ``max_tasks`` (main thread)."""
        if setup.key not in self.setups:  # its initializer failed: the job never ran
            return False
        self.setups[setup.key] += 1
        return 0 < setup.max_tasks <= self.setups[setup.key]


def _flush_output() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` as a job left them (main thread; about a microsecond when empty).

    A worker's ``sys.stdout`` is block-buffered (it starts on a pipe to the daemon, not a
    terminal), so without this what a job prints would appear at the
    worker's exit, after the results of later jobs.  A stream the job
    closed, broke or replaced with something that cannot flush is let be.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the job's own doing (closed, a broken pipe, None): nothing to write to
            pass


def _end_forked(done: JobDone) -> NoReturn:
    """End a process the job forked that returned from the job rather than end with ``os._exit`` (its thread).

    It would otherwise run on as a second copy of the worker, sending on the
    worker's ZeroMQ sockets (whose I/O threads it lacks) and taking its jobs.
    Flushes what it printed; exits 0 if the job returned there, 1 if it raised.
    """
    _flush_output()
    os._exit(0 if done.ok else 1)


_ARG_COUNT = re.compile(r"^(\S+\(\) takes )(?:from (\d+) to )?(\d+)( positional arguments?)"
                        r"(?: \(and .*\))?( but )(\d+)( (?:was|were) given)$")


def _uncount_task(exc: TypeError) -> None:
    """Python counts the task handle among a job function's positional arguments (``add() takes 3 positional
    arguments but 4 were given`` for ``add(task, a, b)`` given three): the message, in place, counts the
    caller's only."""
    m = _ARG_COUNT.match(str(exc)) if len(exc.args) == 1 else None
    if m is None:
        return
    low, high, given = (None if m[2] is None else int(m[2]) - 1), int(m[3]) - 1, int(m[6]) - 1
    takes = f"from {low} to {high}" if low is not None else str(high)
    noun = "argument" if high == 1 and low is None else "arguments"
    verb = "was" if given == 1 else "were"
    exc.args = (f"{m[1]}{takes} positional {noun} after the task handle but {given} {verb} given",)


def _message(exc: BaseException) -> str:
    """``str(exc)``, or what went wrong with it: an exception's own ``__str__`` may raise too."""
    try:
        return str(exc)
    except BaseException as failed:  # noqa: BLE001 - any failure of the user's __str__
        return f"<str() of the {type(exc).__name__} raised {type(failed).__name__}>"


def _pickled_error(exc: BaseException) -> bytes | None:
    """The exception itself, pickled for a local client to re-raise (None if it cannot be pickled).

    An exception whose ``__init__`` wants other arguments than its ``args``
    (``super().__init__(message)`` beside fields of its own, a common form)
    pickles but does not unpickle: pickle calls the class with ``args``.  It
    is pickled again to be rebuilt as ``copy`` rebuilds it, without its
    ``__init__`` (:func:`actors._errors.rebuilt_exception`), so its fields
    still come back.  One that does not rebuild either comes back by name
    and text only (RemoteError).
    """
    for dump in (pickle.dumps, _dumps_without_init):
        try:
            blob = dump(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(blob)  # (it rebuilds here: it rebuilds in the client, which has the same modules)
            return blob
        except Exception:  # noqa: BLE001 - whatever the exception's own pickling or rebuilding raised
            continue
    return None


def _dumps_without_init(exc: BaseException, protocol: int) -> bytes:
    """``exc`` pickled to be rebuilt by :func:`actors._errors.rebuilt_exception` (what it holds pickled as usual)."""
    out = io.BytesIO()
    _WithoutInit(out, protocol, exc).dump(exc)
    return out.getvalue()


class _WithoutInit(pickle.Pickler):
    def __init__(self, file: Any, protocol: int, exc: BaseException) -> None:
        super().__init__(file, protocol)
        self.exc = exc

    def reducer_override(self, obj: Any) -> Any:
        if obj is self.exc:
            return rebuilt_exception, (type(obj), obj.args, vars(obj) or None)
        return NotImplemented


def _unpickled(crossed: list[Any], arrays: WorkerArrays, mapped: list[Any]) -> Any:
    """A local client's pickled value as it crossed (``[blob]``, or ``[blob, array, ...]``: see :mod:`actors._exact`),
    its arrays mapped from shared memory (appended to ``mapped``, for the caller to close)."""
    if len(crossed) == 1:
        return exact_loads(crossed[0])
    return loads_referencing(crossed[0], arrays.import_args(crossed[1:], mapped))


def _rebuilt(payload: tuple[list[Any], dict[str, Any]]) -> tuple[list[Any], dict[str, Any]]:
    """A job's arguments with the values its local client pickled unpickled (:func:`actors._values.unpickled`);
    one that does not unpickle here fails the job, saying which argument and why."""
    args, kwargs = payload
    try:
        return unpickled(args), unpickled(kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever the value's unpickling raised
        raise TypeError(f"an argument came pickled from the client but cannot be rebuilt in the worker: "
                        f"{type(exc).__name__}: {exc}") from exc


def _run_one(d: Dispatch, task: Task, arrays: WorkerArrays,
             set_up: Callable[[WorkerSetup], None] | None = None,
             fns: dict[str, Callable[..., Any]] | None = None) -> JobDone:
    token = activate(task)
    started = task.started
    mapped: list[Any] = []
    try:
        if d.setup is not None and set_up is not None:
            set_up(d.setup)
        if d.internal:
            fn = resolve_internal(d.fn)
        elif fns is None:
            fn = resolve(d.fn)
        else:  # a worker resolves each name once: its modules stay as imported (changed code retires it)
            fn = fns.get(d.fn) or fns.setdefault(d.fn, resolve(d.fn))
        if d.pickled:  # a local client's exact values (its own user: pickle is trusted here, never in the daemon)
            # with its big arrays beside the bytes, mapped from shared memory (see actors._exact)
            payload = _unpickled(d.args, arrays, mapped)
        elif d.args or d.kwargs:
            payload = arrays.import_args(d.args, mapped), arrays.import_args(d.kwargs, mapped)
            if Pickled.made:  # values a local client pickled (ext 5), read now that the job's import path is in place
                payload = _rebuilt(payload)
        else:
            payload = _NO_ARGS
        if fn is callables.pickled:  # a local client's callable, sent pickled as the head of its arguments
            if type(payload) is list:  # a map chunk: the head, then the slice of each iterable
                fn, columns = callables.carried(payload, d.pickled)
                payload = columns
            else:  # (a Client's head is ext 5, which the daemon takes from a client on its host only)
                local = d.pickled or bool(d.args) and type(d.args[0]) is Pickled
                fn, args = callables.carried(payload[0] if type(payload) is tuple else None, local)
                if type(fn) is str:  # a job path whose arguments needed the script loaded first (Client)
                    fn = resolve(fn)
                payload = (args, payload[1])
            # read afresh: the cache would keep each unpickled object alive (a bound method holds its instance),
            # and a callable object may be unhashable
            with_task = takes_task.__wrapped__(fn)
        else:
            # one calling convention for every entry point, read from the signature; internal jobs
            # (a script's background task) keep the seed's fn(task) form
            with_task = d.with_task if d.internal else takes_task(fn)
        value: Any
        try:
            if type(payload) is list:  # an Executor.map chunk: a slice of each iterable; fn over them, results in
                # a list (the first exception ends the chunk, as in the pools)
                value = [fn(task, *a) for a in zip(*payload)] if with_task else list(map(fn, *payload))
            else:
                args, kwargs = payload
                value = fn(task, *args, **kwargs) if with_task else fn(*args, **kwargs)
        except (TypeError, AttributeError) as exc:
            if not with_task:  # a function written for the old rule (a first parameter named task) says so
                explain_task_parameter(exc, fn)
            elif isinstance(exc, TypeError) and type(payload) is not list and exc.__traceback__ is not None \
                    and exc.__traceback__.tb_next is None:
                _uncount_task(exc)  # the call itself failed (the arguments did not fit), not the function
            raise
        if d.pickled and arrays.shared:  # big arrays in the result leave the pickle and cross through shared memory
            # (a worker on another host sends MessagePack: nothing it sends is unpickled)
            value = spill(dumps(value, "the job's result", _keep_arrays(value, arrays.inline_limit)), arrays.spill_over)
            if type(value) is list:
                value = [value[0], *arrays.export_result(value[1:], d.inline)]
        elif not plain(value):
            # arrays leave as handles, and exact values as ext 4 (a tuple stays a tuple: actors._values); a plain
            # value needs neither
            value = arrays.export_result(value, d.inline)
        progress, status, props = task.final_state()
        return JobDone(d.job_id, True, value, progress=progress, status=status, properties=props,
                       aborted=task.aborted, started=started)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the client
        progress, status, props = task.final_state()
        tb = traceback.format_exc()  # (safe: it prints "<exception str() failed>" where str() raises)
        if d.pickled:
            raised: Any = _pickled_error(exc) if arrays.shared else None
        else:  # a local client's job: the exception itself too, for result() to raise it with its attributes
            raised = _pickled_error(exc) if arrays.shared and not d.inline else None
            raised = Pickled(raised) if raised is not None else None
        name = POOL_BROKEN if getattr(exc, "pool_broken", False) is True else error_name(type(exc))
        return JobDone(d.job_id, False, raised, name, _message(exc), tb, progress, status, props,
                       aborted=task.aborted, started=started)
    finally:
        deactivate(token)
        for seg in mapped:
            seg.close()


_PLAIN = (type(None), bool, int, float, str, bytes)
_NO_ARGS: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})  # a job without arguments (never mutated: ** copies)


def _keep_arrays(value: Any, limit: int) -> int | None:
    """What leaves a pickled result by reference: big arrays, once numpy is in use here (else nothing to look at),
    and big bytes (:func:`actors._exact.big_bytes`: they leave as arrays of bytes)."""
    if big_bytes(value, limit):
        import numpy  # noqa: F401 - (in sys.modules from now on, for the pickler's table)

        return limit
    if type(value) in _PLAIN or "numpy" not in sys.modules:
        return None
    return limit
_SMALL = (bool, float)
_INT64, _UINT64 = -2**63, 2**64  # the integers MessagePack carries


def _sendable(done: JobDone, max_frame: int) -> tuple[JobDone, int]:
    """``(done, bytes it costs)``, the result replaced by an error saying why when it cannot cross the wire
    (:func:`_sendable_encoded` without the frame)."""
    checked = _sendable_encoded(done, max_frame)
    return checked[0], checked[1]


def _sendable_encoded(done: JobDone, max_frame: int, remote: bool = False) -> tuple[JobDone, int, bytes]:
    """``(done, bytes it costs, its frame)``, the result replaced by an error saying why when it cannot cross the wire.

    Its frame: ``encode(JobsDone([done]))`` when this had to encode it to
    know, else ``b""`` (a plain value's size is known without encoding it).

    It cannot when the codec cannot encode it (an object, a complex number),
    when the daemon's decoder would refuse it (a property name that is not a
    string), or when it is larger than the daemon's frame limit
    (``daemon.max_frame``; big numpy arrays go through shared memory and never count).

    ``remote``: a worker on another host, whose frames the daemon reads as
    any remote peer's: at most :data:`~actors.messages.REMOTE_EXT_VALUES`
    ext values (tuples, sets, big ints...) a frame.  A result that holds more
    fails its job saying so; the bytes it costs count its ext values too
    (that many cost half a frame), so that the results sent in one frame
    (:meth:`Worker._send_results`, half a frame at most) never hold more.
    """
    if len(done.error_message) > 65536 or len(done.traceback) > 65536:
        done = msgspec.structs.replace(done, error_message=done.error_message[:65536],
                                       traceback=done.traceback[-65536:])
    value = done.value
    if done.ok and not done.status and not done.properties and (  # (no ext value in it either: remote too)
            value is None or type(value) in _SMALL or type(value) is int and _INT64 <= value < _UINT64
            or type(value) is bytes and len(value) < max_frame - 8192):
        # nothing in it the codec could refuse (no text: a lone surrogate would be): its size, without encoding it
        return done, 256 + (len(value) if type(value) is bytes else 0), b""
    try:
        frame = encode(JobsDone([done]))
        size = len(frame)
        if size > max_frame - 4096:
            raise ValueError(f"it is {size} bytes, over the daemon's frame limit of {max_frame} (daemon.max_frame); "
                             "return a numpy array (it travels through shared memory) or write it to a file")
        if remote:  # read back as the daemon will read a remote peer's frame
            decode(frame, Limits(max_frame), handles=None, stored=True)
            exts = REMOTE_EXT_VALUES - remote_ext_left()
            return done, max(size, exts * (max_frame // 2 // REMOTE_EXT_VALUES + 1)), frame
        scalar_list = type(done.value) is list and scalars(done.value)  # (reads back whole if it encoded)
        if (type(done.value) not in _PLAIN and not scalar_list) or done.properties:
            decode(frame, Limits(max_frame), handles="", stored=True)  # containers: read back the way the daemon will
        return done, size, frame
    except (ProtocolError, ValueError) as exc:
        if not done.ok and done.value is not None:  # the exception itself, pickled, too big: its type and text go
            return _sendable_encoded(msgspec.structs.replace(done, value=None), max_frame, remote)
        what = "return value or properties" if done.ok else "error"
        return JobDone(done.job_id, False, None, "TypeError", f"the job's {what} cannot be sent: {exc}",
                       "", done.progress, done.status, {}, done.aborted, done.started), 1024, b""


def run_remote(cfg: Any, endpoint: str, key_file: str, server_key_file: str, name: str,
               resources: dict[str, float] | None = None, store_fd: int = -1) -> int:
    """``ensemble worker --connect tcp://HOST:PORT``: a worker on another host (returns the exit code).

    ``resources``: what it offers jobs (``{"GPU": 1}``); only jobs that need
    no more than that are dispatched to it.  ``store_fd``: a Ray-placed
    worker's end of the object-store link its host actor made (-1: none; see
    :mod:`actors._storelink`).  The process forks first: its child is the
    worker, and this process stays behind as the worker's keeper, which
    SIGKILLs whatever the worker's jobs left running once the worker has
    ended, and exits with its code (:mod:`actors._keeper`).
    """
    one_line_logging("worker", sys.stderr)
    fork_keeper()  # before ZeroMQ starts its threads; returns in the worker only
    worker = Worker(cfg, f"{name}-{os.getpid()}-{os.urandom(6).hex()}", endpoint, (key_file, server_key_file))
    worker.resources = dict(resources or {})
    if store_fd >= 0:
        from actors._storelink import StoreLink

        worker.arrays.link = StoreLink(store_fd, cfg.cluster.object_store_min_bytes)
    return worker.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--standby"]:  # the daemon's standby (--standby RUN_DIR): orders first (actors._blank)
        from actors._blank import standby_main

        standby_main()
    child_main(Worker)

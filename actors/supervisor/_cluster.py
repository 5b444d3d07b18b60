"""Workers on a Ray cluster, as the supervisor sees them: open, scale, deaths Ray reports, placement for resources.

The Ray side lives in :mod:`actors._ray` (the daemon's end, imported only
when ``[cluster] ray`` is set; its driver process is
:mod:`actors._ray_driver`, the actor on each node :mod:`actors._ray_host`);
this mixin applies what it reports to the daemon's slots.  A
Ray-placed worker joins like any remote worker (a ``remote:ray-...`` slot,
bound to its key); what is particular to it is handled here:

* Ray says its actor died: its slot goes at once (its running job is retried
  per its ``retries`` or ends ``worker-lost``), without waiting for the
  heartbeat timeout; Ray restarts the actor and a new slot joins;
* queued jobs whose resources no worker offers get a worker placed for them
  (Ray keeps it pending until a node fits, or its autoscaler adds one);
* ``scale --on ray`` retires idle workers first, as local scaling does; an
  actor whose worker stopped is removed for good and its key revoked;
* big result arrays come as :class:`~actors.messages.StoredArray` keys: they
  are taken from the worker's actor through Ray before the job is recorded;
  a local client's land in a shared-memory segment of this daemon, so the
  journal and the client get a handle as from a local worker.  A key
  anywhere else (a failed job's value, properties) is refused, so no key
  ever reaches the journal or a client.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import zmq

from actors._errors import EnsembleError, OutOfRange
from actors._values import Exact
from actors.messages import JobDone, StoredArray
from actors.shm import walk
from actors.supervisor import _dispatch as plan
from actors.supervisor._children import Slot
from actors.supervisor._state import State

log = logging.getLogger("ensemble.supervisor")


class ClusterMixin(State):
    """Ray placement of the :class:`~actors.supervisor.Supervisor` (mixed in); ``self.cluster`` is None without it."""

    def _cluster_open(self) -> None:
        """Start joining the Ray cluster, which then starts ``[cluster] workers`` (ConfigError without Ray).

        Returns at once: a cluster that is unreachable is reported by
        ``status`` (``ray_cluster``, ``ray_error``) and the log, and joined
        once it answers; local workers run jobs meanwhile.
        """
        if not self.cfg.cluster.ray:
            return
        from actors._ray import RayWorkers

        bound = self.internal_tcp.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.cluster = RayWorkers(self.cfg, self.keys_dir, bound)
        self.cluster.start()
        self._refresh_allowed(force=True)

    def _cluster_tick(self) -> None:
        """Apply Ray's reports (dead actors, stopped workers) and place workers for unmet resources (each heartbeat)."""
        cluster = self.cluster
        if cluster is None or self.stopping_since:
            return
        for name, why in cluster.poll():
            slots = [s for s in self.slots.values() if s.remote and s.key_name == name]
            for slot in slots:
                slot.detail = why
                self._remote_gone(slot, why)
            if not slots:
                cluster.failed_unconnected(name, why)
        assert self.book is not None
        self._cluster_where()
        cluster.overdue()
        self._cluster_unneeded()
        needs = plan.unmet(self.book, self.slots.values())
        for need, why in cluster.place(needs):
            now = time.time()
            for job in [j for j in self.book.jobs.values() if j.state == "queued" and j.spec.resources == need]:
                self._finish(job, "failed", now, error_type="JobRefused", error_message=f"job {job.spec.fn}: {why}")

    def _cluster_where(self) -> None:
        """Say in each Ray-placed worker's ``detail`` where it runs: its node, its host, its pid there, since when.

        ``status`` shows pid "-" for a worker of another host (no process of
        this daemon's); the driver asks its actor once per slot.
        """
        for slot in self.slots.values():
            member = self.cluster.members.get(slot.key_name) if slot.remote else None
            if member is None:
                continue
            self.cluster.locate(member.name, slot.name)
            self.cluster.connected(member.name)
            # (over what the worker said of itself at its hello: Ray's word is the daemon's, and says more)
            if member.pid and (not slot.detail or slot.detail.startswith(("on Ray node", "calls itself"))):
                joined = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(slot.started))
                slot.detail = (f"on Ray node {member.node[:12]} ({member.host}), worker pid {member.pid} there, "
                               f"joined {joined}")

    def _cluster_unneeded(self) -> None:
        """Remove workers placed for queued jobs that no queued job needs any more (cancelled, or run elsewhere).

        One not connected yet goes at once (Ray, and its autoscaler, no
        longer hold a node for it); a connected one retires as a scale-down's.
        """
        assert self.book is not None
        busy = {s.key_name for s in self.slots.values() if s.remote and s.outstanding}
        joined = {s.key_name for s in self.slots.values() if s.remote}
        for name in self.cluster.unneeded(self.book.waiting_needs(), busy, joined):
            slots = [s for s in self.slots.values() if s.remote and s.key_name == name]
            if not slots:
                self.cluster.remove(name, "no queued job needs it")
                continue
            self.cluster.retire(name)
            for slot in slots:
                slot.retire = True
                self.stop_child(slot, "no queued job needs it")

    def scale_cluster(self, n: int) -> None:
        """Aim for ``n`` Ray-placed workers: start actors, or retire idle workers first (then remove their actors)."""
        if self.cluster is None:
            raise EnsembleError("this daemon runs no Ray workers: set [cluster] ray (and [daemon] tcp) in its "
                                "config and restart it")
        cap = self.cfg.cluster.max_workers
        if n > cap:  # (it started as many as asked, past the cap the placement keeps to)
            raise OutOfRange(f"cannot scale to {n} workers on Ray: at most [cluster] max_workers = {cap}")
        busy = {s.key_name for s in self.slots.values() if s.remote and s.outstanding}
        for name in self.cluster.scale(n, busy):
            slots = [s for s in self.slots.values() if s.remote and s.key_name == name]
            if not slots:  # not connected yet: nothing to finish
                self.cluster.remove(name, "scaled down")
            for slot in slots:
                slot.retire = True
                if not slot.outstanding:
                    self.stop_child(slot, "scaled down")
        log.info("event=scale workers=%d on=ray", n)

    def _stored_results(self, slot: Slot, done: JobDone, local: bool) -> JobDone:
        """A remote worker's report with its result arrays taken from Ray's object store (keys elsewhere dropped).

        ``local``: the job is a local client's, so its arrays land in segments
        it maps (a remote client's stay arrays, journalled and sent inline,
        with no segment left behind).  A result that cannot be taken (the actor died, the key is unknown)
        fails its job with ``ResultLost`` saying why.
        """
        assert self.cluster is not None
        if done.properties and holds_stored(done.properties):
            log.warning("event=stored-key-refused name=%s job=%d where=properties", slot.name, done.job_id)
            done = msgspec.structs.replace(done, properties={})
        if type(done.value) not in (list, dict, StoredArray, Exact):  # (a tuple is an Exact here: arrays in it too)
            return done
        if not done.ok:
            if holds_stored(done.value):
                log.warning("event=stored-key-refused name=%s job=%d where=error", slot.name, done.job_id)
                self.cluster.discard(slot.key_name, done.value)
                done = msgspec.structs.replace(done, value=None)
            return done
        try:
            value = self.cluster.take(slot.key_name, done.value, local)
            return msgspec.structs.replace(done, value=value)
        except EnsembleError as exc:
            log.error("event=stored-result-lost name=%s job=%d reason=%s", slot.name, done.job_id, exc)
            return msgspec.structs.replace(done, ok=False, value=None, error_type="ResultLost",
                                           error_message=f"the job returned but {exc}")

    def _cluster_close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()


def holds_stored(value: Any) -> bool:
    """Whether ``value`` holds a :class:`StoredArray` key anywhere."""
    found: list[bool] = []
    walk(value, lambda v: found.append(True) if type(v) is StoredArray else None)
    return bool(found)

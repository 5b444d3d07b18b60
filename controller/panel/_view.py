"""What the panel shows and does, as a local client of the daemon (no web code here).

:class:`DaemonView` runs on three threads of the panel, two with their own
:class:`~actors.client.Client` (one socket each): the **client thread**
(snapshots and the quick actions) and the **slow thread** (:data:`SLOW_OPS`,
which wait on the daemon for many seconds, and uploads), so that a reload
waiting for its script does not hold up the snapshots every page gets.  A
third, the **notes thread** (:data:`NOTE_OPS`), has no client: notes go on
the panel process's own channel, and none waits behind a request to a slow
daemon.  The server hands each its work through a one-thread executor.
:meth:`DaemonView.collect` takes one snapshot of the daemon as JSON-ready
sections; :meth:`DaemonView.act` carries out one action a page asked for.
The cost to the supervisor is a fixed number of requests per snapshot
whatever happens in the daemon: a burst of job updates is seen as the jobs'
latest state at the next snapshot, never one message per update.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from actors import EnsembleError
from controller.client import Client
from actors.config import Config
from actors.messages import JobInfo, Message
from audio.messages import NoteOffEvent, NoteOnEvent
from controller.panel._held import HeldNotes
from controller.panel._sound import SoundRefused, decode

log = logging.getLogger("ensemble.panel")
JOB_ROWS = 30
LOG_LINES = 40
LOG_BYTES = 16 * 1024
SAMPLES_EVERY = 8  # snapshots between two sample-list requests (samples change rarely)
AUDIO_KEYS = ("backend", "samplerate", "blocksize", "active_voices", "peak_voices", "load_p50", "load_p99",
              "load_max", "xruns", "underflows", "deadline_misses", "blocks", "script_errors", "script_overruns",
              "output_peak")
MAX_ACTION = 64 * 1024  # characters of one action as JSON text (the page's are under 200)
SCALARS = (str, int, float, bool, type(None))
RELOAD_WAIT = 30.0  # seconds a reload from the page may take before the page is told it has not loaded yet
SLOW_OPS = frozenset({"reload"})  # actions that may wait long on the daemon: done on the slow thread, with its client
NOTE_OPS = frozenset({"note_on", "note_off"})  # actions that ask the daemon nothing: done on the notes thread


class ActionError(Exception):
    """A page asked for something that cannot be done; the message goes back to the page."""


def parse_action(text: str) -> dict[str, Any]:
    """One action from a page's JSON text: an object whose fields hold strings, numbers, booleans or null.

    Pure; raises ActionError saying what is wrong (too long, not JSON, nested
    too deep for the reader, not an object, a field holding a list or an object).
    """
    if len(text) > MAX_ACTION:
        raise ActionError(f"an action is at most {MAX_ACTION} characters of JSON; this one has {len(text)}")
    try:
        msg = json.loads(text)
    except RecursionError:
        raise ActionError("an action is a flat JSON object; this one nests too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, and an integer of more than 4300 digits
        raise ActionError(f"an action is a JSON object; this one is not JSON: {str(exc)[:200]}") from None
    if not isinstance(msg, dict):
        raise ActionError(f"an action is a JSON object, not a {_kind(msg)}")
    for key, value in msg.items():
        if not isinstance(value, SCALARS):
            raise ActionError(f"field {key[:40]!r} of an action holds a {_kind(value)}; "
                              "fields hold a string, a number, true/false or null")
    return msg


def _kind(value: Any) -> str:
    return {dict: "JSON object", list: "JSON list", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), "number")


def _job(j: JobInfo) -> dict[str, Any]:
    return {"id": j.id, "fn": j.fn, "name": j.name, "state": j.state, "progress": j.shown_progress(),
            "status": j.status, "properties": j.properties, "events": [list(e)[:3] for e in j.events[-5:]],
            "worker": j.worker, "submitted": j.submitted, "started": j.started, "finished": j.finished,
            "attempts": j.attempts,
            "error": f"{j.error_type}: {j.error_message}" if j.error_type else ""}


class DaemonView:
    """Snapshots of the daemon and actions on it, through two local clients: the client thread's and the slow one's.

    Each method says on which thread it runs; each thread has its own client.
    ``send`` puts a message on the panel process's own channel to the daemon
    (its child socket, :class:`actors._child.Outbox`): the notes go there, not
    through a client (see :meth:`_note_on`).
    """

    def __init__(self, cfg: Config, send: Callable[[Message], None]) -> None:
        self.cfg = cfg
        self.send = send
        self.client: Client | None = None  # the client thread's
        self.slow_client: Client | None = None  # the slow thread's (SLOW_OPS, uploads)
        self.held = HeldNotes(cfg.run_dir)  # notes thread: the notes the pages hold, on disk for a successor
        self.log_file = cfg.state_dir / "daemon.log"
        self._n = 0
        self._samples_stale = False  # set by the slow thread after an upload: the next snapshot lists the samples
        self._samples: list[dict[str, Any]] = []
        self._jobs_key: Any = None
        self._recent: list[JobInfo] = []

    def _c(self) -> Client:
        if self.client is None:
            self.client = Client(config=self.cfg, timeout=10.0)
        return self.client

    def _slow(self) -> Client:
        if self.slow_client is None:
            self.slow_client = Client(config=self.cfg, timeout=10.0)
        return self.slow_client

    def close(self) -> None:
        """Client thread: close its client (the panel stops)."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def close_slow(self) -> None:
        """Slow thread: close its client (the panel stops)."""
        if self.slow_client is not None:
            self.slow_client.close()
            self.slow_client = None

    # ------------------------------------------------------------------ snapshots
    def collect(self) -> dict[str, Any]:
        """Client thread: one snapshot: ``daemon``, ``actors``, ``audio``, ``loading``, ``jobs``, ``params``, ``ui``,
        ``samples``, ``log``.

        Status, parameters and UI elements; the running jobs while some run and
        the newest jobs when the job counters moved; the samples every
        ``SAMPLES_EVERY`` snapshots; the tail of the log file read here.
        Raises EnsembleError if the daemon does not answer.
        """
        c = self._c()
        st = c.status()
        d = st.daemon
        out: dict[str, Any] = {
            "daemon": {"name": d.name, "pid": d.pid, "version": d.version, "uptime": round(d.uptime),
                       "workers_wanted": d.workers_wanted, "queued": d.queued, "running": d.running,
                       "script": d.counters.get("script", ""),
                       "script_errors": list(d.counters.get("script_errors_recent", []))},
            "actors": [{"name": a.name, "role": a.role, "pid": a.pid, "state": a.state, "uptime": round(a.uptime),
                        "restarts": a.restarts, "heartbeat_age": round(a.heartbeat_age, 2), "rss": a.rss,
                        "detail": a.detail} for a in st.actors],
        }
        proc = next((a for a in st.actors if a.role == "processor"), None)
        out["audio"] = {k: proc.stats.get(k) for k in AUDIO_KEYS} if proc is not None and proc.stats else {}
        ctl = next((a for a in st.actors if a.role == "controller"), None)
        out["loading"] = dict(ctl.stats.get("loading") or {}) if ctl is not None and ctl.stats else {}
        out["jobs"] = self._jobs(c, d)
        out["params"] = [{"name": p.name, "long_name": p.long_name, "value": p.value, "default": p.default,
                          "min": p.min, "max": p.max, "kind": p.kind, "choices": list(p.choices)}
                         for p in c.params()]
        ui = c.ui_elements()
        out["ui"] = [{"id": e.id, "kind": e.kind, "text": e.text, "visible": e.visible, "value": round(e.value, 4)}
                     for e in ui.elements]
        if self._samples_stale or self._n % SAMPLES_EVERY == 0:
            self._samples_stale = False
            self._samples = [{"name": s.name, "frames": s.frames, "channels": s.channels,
                              "samplerate": s.samplerate, "root_key": s.root_key} for s in c.samples()]
        self._n += 1
        out["samples"] = self._samples
        out["log"] = self._log_tail()
        return out

    def _jobs(self, c: Client, d: Any) -> list[dict[str, Any]]:
        """Running jobs (their progress moves) and the newest ones; the newest are asked for again only when
        the job counters in ``status`` moved, so an idle daemon costs one request less per snapshot."""
        running = c.jobs(["running"], JOB_ROWS) if d.running else []
        key = (d.queued, d.running, tuple(sorted((k, v) for k, v in d.counters.items() if k.startswith("jobs_"))))
        if key != self._jobs_key:
            self._jobs_key = key
            self._recent = c.jobs((), JOB_ROWS)
        seen = {j.id for j in running}
        return [_job(j) for j in running] + [_job(j) for j in self._recent if j.id not in seen]

    def _log_tail(self) -> list[str]:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - LOG_BYTES))
                data = f.read()
        except OSError:
            return []
        lines = data.decode(errors="replace").splitlines()
        return lines[-LOG_LINES:] if size <= LOG_BYTES else lines[1:][-LOG_LINES:]

    # ------------------------------------------------------------------ actions
    def act(self, msg: dict[str, Any]) -> str:
        """Carry out one page action; returns a short confirmation, raises ActionError saying why not.

        On the notes thread for an op in :data:`NOTE_OPS`, the slow thread for one in :data:`SLOW_OPS`, the
        client thread for any other.
        """
        op = msg.get("op")
        if op == "note_on":  # (no client: it asks the daemon nothing)
            self._note_on(_int(msg, "note", 0, 127), _int(msg, "velocity", 1, 127, 100))
            return "note_on done"
        if op == "note_off":
            note = _int(msg, "note", 0, 127)
            self.send(NoteOffEvent(note))
            self.held.ended(note)
            return "note_off done"
        try:
            c = self._slow() if op in SLOW_OPS else self._c()  # (its daemon gone: an error for the page)
            if op == "param":
                c.set_param(str(msg.get("name", "")), msg.get("value"))
            elif op == "ui":
                c.ui_event(str(msg.get("id", "")), msg.get("value"))
            elif op == "cancel":
                c.cancel(_int(msg, "id", 1, 2**62))
            elif op == "reload":
                c.reload_script(wait=RELOAD_WAIT)  # its outcome, as `ensemble reload` reports it
            elif op == "scale":
                c.scale(_int(msg, "workers", 0, 1024))
            elif op == "drop_sample":
                c.drop_sample(str(msg.get("name", "")))
            else:
                raise ActionError(f"unknown action {str(op)[:40]!r}")
        except EnsembleError as exc:
            raise ActionError(str(exc).splitlines()[0]) from None
        return f"{op} done"

    def _note_on(self, note: int, velocity: int) -> None:
        """Record ``note`` as held (on disk, for the daemon, should this process die), then send its note on.

        Notes go on the panel process's own channel to the daemon, which reads
        it only while this process lives: as it reaps the process it ends the
        notes held (``PanelExtension.child_exited``), and a note on still on
        its way then is dropped with the dead process's other frames.  Sent as
        a client request, such a note on was carried out after that note off,
        and sounded on.  Never blocks; a note the daemon cannot pass on (no
        processor running) is logged there.
        """
        self.held.started(note)
        self.send(NoteOnEvent(note, velocity / 127))

    def release_notes(self, notes: list[int], reason: str = "the page that held them went away") -> bool:
        """Notes thread: note offs for ``notes``, which nobody holds any more, on the channel of the note ons.

        Never blocks; returns True (the daemon ends each note whatever becomes
        of this process: it keeps its own record of the notes the panel holds).
        """
        for note in notes:
            self.send(NoteOffEvent(note))
            self.held.ended(note)
        log.info("event=panel-notes-released notes=%s reason=%s", notes, reason)
        return True

    def release_left_over(self) -> None:
        """Notes thread, before anything else: end the notes an earlier panel process held when it ended.

        That process died without its note offs (SIGKILL, a crash), and the
        daemon could not end its notes then (no processor ran); they are in
        ``panel-notes.json`` (:mod:`~controller.panel._held`).  Never blocks.
        """
        left = self.held.left_over()
        if left:
            self.held.adopt(left)
            self.release_notes(left, "the panel process that held them ended without their note offs")

    def load_wav(self, name: str, data: bytes) -> str:
        """Slow thread: decode a sound file the page dropped and register it as sample ``name`` (its stem).

        Blocking; the decoded audio is bounded by ``_sound.MAX_DECODED``.
        Raises ActionError: no usable name, not a sound file, too large, or
        the daemon's refusal.
        """
        stem = Path(name).stem if name and len(name) <= 128 else ""
        if not stem:
            raise ActionError(f"a sample needs a file name of 1..128 characters, got {name[:40]!r}")
        try:
            array, rate = decode(data)
        except SoundRefused as exc:
            raise ActionError(str(exc)) from None
        try:
            self._slow().upload_sample(array, stem, rate)
        except EnsembleError as exc:
            raise ActionError(str(exc).splitlines()[0]) from None
        self._samples_stale = True  # the sample list is read again at the next snapshot
        return f"sample {stem!r}: {len(array)} frames at {rate} Hz"


def _int(msg: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ActionError(f"{key} must be an integer {lo}..{hi}, got {str(value)[:40]!r}")
    return value


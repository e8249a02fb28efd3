"""The memory backend of the run registry: runs held in this process (the embedded default).

One gunicorn worker, any number of threads or greenlets. One lock guards the state of
all runs; every critical section is a few dict/list operations, so contention is
negligible, and the single lock keeps the invariants simple (no lock ordering, gc sees a
consistent picture). Readers never wait on that lock: each run's ``RunFeed`` wakes only
the readers of that run, and they read its chunks without a lock.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from chatsvc.runs.feed import RunFeed
from chatsvc.runs.model import RunInfo, RunNotFound, freeze
from chatsvc.runs.registry import RunRegistry
from chatsvc.runs.sse import done_json, done_wire, log_event_wire


@dataclass(eq=False)
class _Run:
    """A run's mutable state (only changed while holding the registry lock) and its feed."""

    info: RunInfo  # everything but event_count, which is the feed's
    truncated: bool = False
    # The events, stored only as their SSE bytes (encoded once, for every subscriber),
    # and the signal that wakes readers. Bytes, not dicts: a run's thousands of events
    # add nothing for the garbage collector to walk (see docs/performance.md).
    feed: RunFeed = field(default_factory=RunFeed)

    def snapshot(self) -> RunInfo:
        # Not dataclasses.replace: a listing snapshots every run, and replace() costs more.
        return RunInfo(**{**vars(self.info), "event_count": self.feed.last_seq})

    def change(self, **values: Any) -> None:
        self.info = replace(self.info, **values)


class MemoryRunRegistry(RunRegistry):
    """Runs held in this process."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}  # insertion order = creation order
        self._live: dict[str, _Run] = {}  # unfinished runs, checked for timeouts
        self._live_by_owner: dict[str, int] = {}
        # Finished run ids in the order they finished, so gc only looks at the
        # oldest ones instead of scanning every run each pass.
        self._finished_order: deque[str] = deque()

    def create(self, *, kind: str, target_id: int, team_id: int, owner: str) -> RunInfo:
        limits = self.limits
        with self._lock:
            if len(self._live) >= limits.max_live_runs:
                raise limits.full()
            owned = self._live_by_owner.get(owner, 0)
            if limits.max_active_per_owner is not None and owned >= limits.max_active_per_owner:
                raise limits.owner_full()
            info = RunInfo(run_id=uuid.uuid4().hex, kind=kind, target_id=target_id, team_id=team_id,
                           owner=owner, status="queued", created_at=self._clock(), started_at=None,
                           finished_at=None, event_count=0)
            run = self._runs[info.run_id] = self._live[info.run_id] = _Run(info)
            self._live_by_owner[owner] = owned + 1
            return run.info

    def get(self, run_id: str) -> RunInfo | None:
        with self._lock:
            run = self._runs.get(run_id)
            return None if run is None else run.snapshot()

    def list_runs(self) -> list[RunInfo]:
        with self._lock:
            return [run.snapshot() for run in reversed(self._runs.values())]

    def mark_running(self, run_id: str) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.info.status != "queued":
                return False
            run.change(status="running", started_at=self._clock())
            return True

    def _append(self, run_id: str, level: str, message: str, data: dict) -> int | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.info.finished:
                return None
            return self._append_locked(run, level, message, data, self._clock())

    def _finish(self, run_id: str, status: str, result: Any, error: dict | None) -> bool:
        frozen_result, frozen_error = freeze(result), freeze(error)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.info.finished:
                return False
            self._finish_locked(run, status, frozen_result, frozen_error, self._clock())
            return True

    @contextmanager
    def subscribe(self, run_id: str) -> Iterator[RunFeed]:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFound(run_id)
            feed = run.feed  # kept even if gc deletes the run meanwhile: it has `done`
            feed.subscribers += 1
        try:
            yield feed
        finally:
            with self._lock:
                feed.subscribers -= 1

    def request_cancel(self, run_id: str) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.info.finished:
                return False
            run.change(cancel_requested=True)
            return True

    def is_cancel_requested(self, run_id: str) -> bool:
        run = self._runs.get(run_id)  # one dict lookup and one attribute read: atomic enough
        return run is not None and run.info.cancel_requested

    def gc(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        limits = self.limits
        timed_out = []
        with self._lock:
            for run in list(self._live.values()):
                if now - run.info.created_at > limits.run_timeout_seconds:
                    timed_out.append(run.info.run_id)
                    self._append_locked(run, "error", "run_timeout", freeze(limits.timeout_event()), now)
                    self._finish_locked(run, "failed", None, freeze(limits.timeout_error()), now)
                    run.change(cancel_requested=True)  # tells the job, still running, to stop

            deleted = 0
            while self._finished_order:
                run = self._runs[self._finished_order[0]]
                # Runs finish in clock order, so the first one not yet expired
                # ends the pass. (If the wall clock steps back, a run may be
                # deleted a little late, never early.)
                if now - run.info.finished_at <= limits.ttl_seconds:
                    break
                self._finished_order.popleft()
                del self._runs[run.info.run_id]
                deleted += 1
        if self.on_stop_requested is not None:
            for run_id in timed_out:
                self.on_stop_requested(run_id)
        return deleted

    def _append_locked(self, run: _Run, level: str, message: str, data: dict, ts: float) -> int | None:
        """Stores an event, applying the per-run limit; the caller holds the lock."""
        # Errors bypass the limit: they are the events a user needs most.
        if level != "error" and run.feed.last_seq >= self.limits.max_events_per_run:
            if not run.truncated:
                run.truncated = True
                self._store_locked(run, "warn", "events_truncated", self.limits.truncated_event(), ts)
            return None
        return self._store_locked(run, level, message, data, ts)

    def _store_locked(self, run: _Run, level: str, message: str, data: dict, ts: float) -> int:
        seq = run.feed.last_seq + 1
        # Encoded here, once for every subscriber of this process (the encoding is the
        # registry's copy of `data`); under the lock because the feed must receive
        # events in seq order.
        run.feed.publish(seq, log_event_wire(seq, ts, level, message, data))
        return seq

    def _finish_locked(self, run: _Run, status: str, result: Any, error: dict | None, now: float) -> None:
        done_seq = run.feed.last_seq + 1
        run.change(status=status, finished_at=now, result=result, error=error, done_seq=done_seq)
        run_id, owner = run.info.run_id, run.info.owner
        del self._live[run_id]
        remaining = self._live_by_owner[owner] - 1
        if remaining:
            self._live_by_owner[owner] = remaining
        else:
            del self._live_by_owner[owner]
        self._finished_order.append(run_id)
        run.feed.close(done_wire(done_seq, done_json(run_id, status, result, error)))

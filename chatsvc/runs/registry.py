"""Run registry: the state and event log of every run (SPEC §6.3, §6.4, §10).

`RunRegistry` is the interface; `MemoryRunRegistry` keeps everything in this
process. The interface is shaped so that a Redis Streams backend can implement
it later without changing callers:

- an event's `seq` maps to a stream entry id (one stream per run),
- `read(run_id, after_seq, timeout)` maps to `XREAD BLOCK timeout STREAMS key after_seq`
  (readers are stateless: they remember `after_seq`, the registry keeps no
  per-reader queue),
- the TTL of finished runs maps to `EXPIRE`.

Run lifecycle: `queued` → `running` → one of `TERMINAL_STATUSES`. Once a run is
finished it accepts no more events, and its `done_seq` (the `id:` of the SSE
`done` event) is one past its last event.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

from chatsvc.errors import ServiceUnavailable
from chatsvc.runs.feed import RunFeed
from chatsvc.runs.sse import encode_done, event_json, log_event_wire

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
LEVELS = frozenset({"info", "warn", "error"})

log = logging.getLogger("chatsvc.runs")


# --- Public value types -------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One log line of a run; `seq` is 1-based per run and never reused."""

    seq: int
    ts: float
    level: str
    message: str
    data: dict

    def to_dict(self) -> dict:
        return {"seq": self.seq, "ts": self.ts, "level": self.level,
                "message": self.message, "data": self.data}

    @classmethod
    def from_json(cls, event_json: str | bytes) -> "Event":
        """The event whose ``to_dict()`` this JSON is (data read-only, as stored)."""
        raw = json.loads(event_json)
        return cls(seq=raw["seq"], ts=raw["ts"], level=raw["level"], message=raw["message"],
                   data=_freeze(raw["data"]))


@dataclass(frozen=True)
class RunInfo:
    """An immutable snapshot of a run; `owner` is e.g. "user:3" or "service:7"."""

    run_id: str
    kind: str
    target_id: int
    team_id: int
    owner: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    event_count: int
    result: Any = None
    error: dict | None = None
    cancel_requested: bool = False
    done_seq: int | None = None  # seq of the `done` event once finished

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class ReadResult:
    """What `read` found: new events, and `done` once the reader has seen them all."""

    events: list[Event]  # seq > after_seq, in order
    # Set when the run is finished and `events` reached its last event: the
    # reader should now send `done` (id = done.done_seq) and close.
    done: RunInfo | None


class RunNotFound(KeyError):
    """The run does not exist, or has expired and been garbage-collected."""


class RegistryFull(Exception):
    """Too many live (unfinished) runs; try again after `retry_after` seconds."""

    def __init__(self, message: str = "too many live runs", *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyActiveRuns(RegistryFull):
    """This owner already has its limit of live runs (429, not 503: it is the caller's limit)."""


class RegistryUnavailable(ServiceUnavailable):
    """The registry's backend cannot be reached (Redis down): 503 + Retry-After wherever it surfaces."""

    def __init__(self, message: str = "Run registry unavailable; try again shortly", *,
                 retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Read-only containers -----------------------------------------------------
# Every reader of a run receives the same result and error objects (RunInfo
# snapshots share them). So that one caller cannot change what the others see,
# results, errors and the data of events handed out by `read()` are read-only
# subclasses of dict/list: they still are dicts and lists for isinstance checks,
# `==`, json.dumps and jsonify, but refuse in-place changes.
# `copy.deepcopy(x)` returns plain, mutable dicts and lists.


def _read_only(self: Any, *args: Any, **kwargs: Any) -> None:
    raise TypeError("run registry data is read-only; use copy.deepcopy() for a mutable copy")


class _FrozenDict(dict):
    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # copy / deepcopy / pickle produce a plain dict.
        return (dict, (dict(self),))


class _FrozenList(list):
    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (list, (list(self),))


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _freeze(value: Any) -> Any:
    """Deep-copies dicts, lists, tuples and sets into read-only equivalents.

    A finished workflow's result can hold thousands of values: scalars return first,
    and containers are built from a comprehension (half the time of a generator).
    """
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return _FrozenDict({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return _FrozenList([_freeze(item) for item in value])
    if isinstance(value, tuple):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    return value


# --- Interface ----------------------------------------------------------------


class RunRegistry(ABC):
    """Where runs live while they execute and for a TTL after they finish."""

    #: How often a sleeping job re-reads `is_cancel_requested`. None: a cancel can
    #: only come from this process, whose executor wakes the job directly.
    cancel_poll_seconds: float | None = None

    def __init__(self) -> None:
        # Created here, not at import time, so that under gunicorn's gevent
        # worker these are gevent's (monkey-patched) primitives.
        self._gc_guard = threading.Lock()
        self._gc_thread: threading.Thread | None = None
        self._gc_stop: threading.Event | None = None
        self._gc_pid: int | None = None
        #: Set by the executor: called with a run's id when the registry itself
        #: stops the run (run timeout), so that a sleeping job wakes at once.
        self.on_stop_requested: Callable[[str], None] | None = None

    @abstractmethod
    def create(self, *, kind: str, target_id: int, team_id: int, owner: str) -> RunInfo:
        """Registers a `queued` run.

        Raises RegistryFull when too many runs are unfinished, TooManyActiveRuns
        when `owner` has too many (both limits count every process of the backend).
        """

    @abstractmethod
    def get(self, run_id: str) -> RunInfo | None: ...

    @abstractmethod
    def list_runs(self) -> list[RunInfo]:
        """Every run still in the registry, newest first."""

    @abstractmethod
    def mark_running(self, run_id: str) -> bool:
        """queued → running; False if the run is no longer queued (e.g. cancelled while queued)."""

    @abstractmethod
    def append(self, run_id: str, level: str, message: str, data: dict | None = None) -> int | None:
        """Adds an event and wakes its readers; returns its seq, or None if not stored.

        None means the run is unknown or finished, or the event was dropped
        because the run reached its event limit.
        """

    @abstractmethod
    def finish(self, run_id: str, status: str, *, result: Any = None,
               error: dict | None = None) -> bool:
        """Ends the run (first call wins, later calls return False) and wakes every reader."""

    @abstractmethod
    def read(self, run_id: str, after_seq: int, timeout: float) -> ReadResult:
        """Events with seq > after_seq, waiting up to `timeout` seconds for some to arrive.

        Returns at once when there are events or the run is finished; returns
        no events and no `done` on timeout (the caller sends a heartbeat).
        Raises RunNotFound if the run does not exist.
        """

    @abstractmethod
    def subscribe(self, run_id: str) -> ContextManager[RunFeed]:
        """This process's feed of the run's encoded events, held open for one SSE subscriber.

        Raises RunNotFound if the run does not exist.
        """

    @abstractmethod
    def request_cancel(self, run_id: str) -> bool:
        """Sets the cooperative cancel flag; False if the run is unknown or finished."""

    @abstractmethod
    def is_cancel_requested(self, run_id: str) -> bool: ...

    @abstractmethod
    def gc(self, now: float | None = None) -> int:
        """Fails runs past the run timeout, deletes expired ones; returns how many were deleted."""

    def ping(self) -> bool:
        """True if the backend answers (readiness probe); memory always does."""
        return True

    def close_streams(self) -> None:
        """Ends this process's open streams before it stops (a shared backend: they resume elsewhere).

        The memory backend keeps them: its runs exist only here, and their
        streams end with ``done`` when the runs end.
        """

    def start_gc(self, interval: float = 1.0) -> None:
        """Starts the daemon thread that calls gc() every `interval` seconds, once per process.

        Safe to call from every gunicorn worker after the fork: a forked child
        inherits the parent's attributes but not its threads, so the thread is
        keyed by pid.
        """
        with self._gc_guard:
            pid = os.getpid()
            thread = self._gc_thread
            if thread is not None and self._gc_pid == pid and thread.is_alive():
                return
            stop = threading.Event()
            thread = threading.Thread(target=self._gc_loop, args=(stop, interval),
                                      name="chatsvc-run-gc", daemon=True)
            self._gc_thread, self._gc_stop, self._gc_pid = thread, stop, pid
            thread.start()

    def close(self) -> None:
        """Stops this process's gc thread (used by tests and app teardown)."""
        with self._gc_guard:
            thread, stop, pid = self._gc_thread, self._gc_stop, self._gc_pid
            self._gc_thread = self._gc_stop = self._gc_pid = None
        if stop is not None:
            stop.set()
        if thread is not None and pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _gc_loop(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            try:
                self.gc()
            except RegistryUnavailable as exc:  # the backend is down: no traceback every second
                log.warning("run registry gc skipped: %s", exc)
            except Exception:
                # Keep collecting: one bad pass must not leave runs to pile up forever.
                log.exception("run registry gc failed; retrying in %ss", interval)


# --- Memory backend -----------------------------------------------------------


@dataclass(eq=False)
class _Run:
    """Mutable per-run state; only changed while holding the registry lock."""

    run_id: str
    kind: str
    target_id: int
    team_id: int
    owner: str
    created_at: float
    status: str = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict | None = None
    cancel_requested: bool = False
    done_seq: int | None = None
    truncated: bool = False
    # The events, stored only as their SSE bytes (encoded once, for every subscriber),
    # and the signal that wakes readers. Bytes, not dicts: a run's thousands of events
    # add nothing for the garbage collector to walk (see docs/performance.md).
    feed: RunFeed = field(default_factory=RunFeed)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def snapshot(self) -> RunInfo:
        return RunInfo(
            run_id=self.run_id, kind=self.kind, target_id=self.target_id,
            team_id=self.team_id, owner=self.owner, status=self.status,
            created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, event_count=self.feed.last_seq,
            result=self.result, error=self.error,
            cancel_requested=self.cancel_requested, done_seq=self.done_seq,
        )


class MemoryRunRegistry(RunRegistry):
    """Runs held in this process: one gunicorn worker, any number of threads or greenlets.

    Locking: one lock guards the state of all runs; every critical section is
    a few dict/list operations, so contention is negligible, and the single
    lock keeps the invariants simple (no lock ordering, gc sees a consistent
    picture). Readers never wait on that lock: each run's ``RunFeed`` wakes
    only the readers of that run, and they read its chunks without a lock.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 900,
        run_timeout_seconds: float = 600,
        max_events_per_run: int = 10_000,
        max_live_runs: int = 1_000,
        max_active_per_owner: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._ttl = ttl_seconds
        self._run_timeout = run_timeout_seconds
        self._max_events = max_events_per_run
        self._max_live = max_live_runs
        self._max_per_owner = max_active_per_owner
        self._clock = clock  # timestamps and TTLs; waits use time.monotonic
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}  # insertion order = creation order
        self._live: dict[str, _Run] = {}  # unfinished runs, checked for timeouts
        self._live_by_owner: dict[str, int] = {}
        # Finished run ids in the order they finished, so gc only looks at the
        # oldest ones instead of scanning every run each pass.
        self._finished_order: deque[str] = deque()

    def create(self, *, kind: str, target_id: int, team_id: int, owner: str) -> RunInfo:
        with self._lock:
            if len(self._live) >= self._max_live:
                raise RegistryFull(f"too many live runs (limit {self._max_live})")
            owned = self._live_by_owner.get(owner, 0)
            if self._max_per_owner is not None and owned >= self._max_per_owner:
                raise TooManyActiveRuns(f"too many active runs for this caller (limit {self._max_per_owner})")
            run = _Run(run_id=uuid.uuid4().hex, kind=kind, target_id=target_id,
                       team_id=team_id, owner=owner, created_at=self._clock())
            self._runs[run.run_id] = run
            self._live[run.run_id] = run
            self._live_by_owner[owner] = owned + 1
            return run.snapshot()

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
            if run is None or run.status != "queued":
                return False
            run.status = "running"
            run.started_at = self._clock()
            return True

    def append(self, run_id: str, level: str, message: str, data: dict | None = None) -> int | None:
        if level not in LEVELS:
            raise ValueError(f"unknown event level {level!r}; expected one of {sorted(LEVELS)}")
        if data is not None and not isinstance(data, dict):
            raise TypeError(f"event data must be a dict, not {type(data).__name__}")
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.finished:
                return None
            return self._append_locked(run, level, message, data or {}, self._clock())

    def finish(self, run_id: str, status: str, *, result: Any = None,
               error: dict | None = None) -> bool:
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is not a terminal status; "
                             f"expected one of {sorted(TERMINAL_STATUSES)}")
        frozen_result, frozen_error = _freeze(result), _freeze(error)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.finished:
                return False
            self._finish_locked(run, status, frozen_result, frozen_error, self._clock())
            return True

    def read(self, run_id: str, after_seq: int, timeout: float) -> ReadResult:
        after_seq = max(0, after_seq)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                run = self._runs.get(run_id)
                if run is None:
                    raise RunNotFound(run_id)
                wires = run.feed.wire_after(after_seq)
                done = run.snapshot() if run.finished else None
                # Taken under the lock, before any later append can swap it.
                changed = run.feed.signal()
            if wires or done:
                return ReadResult(events=[Event.from_json(event_json(wire)) for wire in wires], done=done)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ReadResult(events=[], done=None)
            # A waiting reader cannot be stranded by gc: gc only deletes finished
            # runs, and finishing a run sets this signal.
            changed.wait(remaining)

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
            if run is None or run.finished:
                return False
            run.cancel_requested = True
            return True

    def is_cancel_requested(self, run_id: str) -> bool:
        run = self._runs.get(run_id)  # one dict lookup and one attribute read: atomic enough
        return run is not None and run.cancel_requested

    def gc(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        timed_out = []
        with self._lock:
            for run in list(self._live.values()):
                if now - run.created_at > self._run_timeout:
                    timed_out.append(run.run_id)
                    self._append_locked(run, "error", "run_timeout",
                                        _freeze({"timeout_seconds": self._run_timeout}), now)
                    error = {"type": "RunTimeout",
                             "message": f"run did not finish within {self._run_timeout:g} seconds"}
                    self._finish_locked(run, "failed", None, _freeze(error), now)
                    run.cancel_requested = True  # tells the job, still running, to stop

            deleted = 0
            while self._finished_order:
                run = self._runs[self._finished_order[0]]
                # Runs finish in clock order, so the first one not yet expired
                # ends the pass. (If the wall clock steps back, a run may be
                # deleted a little late, never early.)
                if now - run.finished_at <= self._ttl:
                    break
                self._finished_order.popleft()
                del self._runs[run.run_id]
                deleted += 1
        if self.on_stop_requested is not None:
            for run_id in timed_out:
                self.on_stop_requested(run_id)
        return deleted

    def _append_locked(self, run: _Run, level: str, message: str, data: dict,
                       ts: float) -> int | None:
        """Stores an event, applying the per-run limit; the caller holds the lock."""
        # Errors bypass the limit: they are the events a user needs most.
        if level != "error" and run.feed.last_seq >= self._max_events:
            if not run.truncated:
                run.truncated = True
                self._store_locked(run, "warn", "events_truncated", {"limit": self._max_events}, ts)
            return None
        return self._store_locked(run, level, message, data, ts)

    def _store_locked(self, run: _Run, level: str, message: str, data: dict, ts: float) -> int:
        seq = run.feed.last_seq + 1
        # Encoded here, once for every subscriber of this process (the encoding is the
        # registry's copy of `data`); under the lock because the feed must receive
        # events in seq order.
        run.feed.publish(seq, log_event_wire(seq, ts, level, message, data))
        return seq

    def _finish_locked(self, run: _Run, status: str, result: Any, error: dict | None,
                       now: float) -> None:
        run.status = status
        run.finished_at = now
        run.result = result
        run.error = error
        run.done_seq = run.feed.last_seq + 1
        del self._live[run.run_id]
        remaining = self._live_by_owner[run.owner] - 1
        if remaining:
            self._live_by_owner[run.owner] = remaining
        else:
            del self._live_by_owner[run.owner]
        self._finished_order.append(run.run_id)
        run.feed.close(encode_done(run.snapshot()).encode())

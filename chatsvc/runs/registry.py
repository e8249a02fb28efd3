"""The run registry's interface: where runs live while they execute and for a TTL after (SPEC §10).

Callers (the executor, the logger, the API) use ``RunRegistry`` only. It checks its
arguments once, here, and hands each backend a narrow job:

- ``memory.MemoryRunRegistry``: this process's dicts and one lock (the embedded default);
- ``redis.RedisRunRegistry``: Lua scripts, keys and leases shared by every process and
  host, and a follower that feeds this process's subscribers (SPEC §12).

Readers never poll the registry: ``subscribe(run_id)`` hands a stream the run's
``RunFeed`` (its events as SSE bytes, encoded once per process), which wakes it on every
append. The run's shape, limits and errors are ``model``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ContextManager

from chatsvc.concurrency import ProcessThread
from chatsvc.runs.feed import RunFeed
from chatsvc.runs.model import RegistryUnavailable, RunInfo, RunLimits, check_event, check_terminal

log = logging.getLogger("chatsvc.runs")


class RunRegistry(ABC):
    """Runs while they execute, and for ``limits.ttl_seconds`` after they finish."""

    #: How often a sleeping job re-reads `is_cancel_requested`. None: a cancel can
    #: only come from this process, whose executor wakes the job directly.
    cancel_poll_seconds: float | None = None

    def __init__(self, *, clock: Callable[[], float] = time.time, **limits: Any) -> None:
        self.limits = RunLimits(**limits)
        self._clock = clock  # timestamps and TTLs; waits use time.monotonic
        self._gc_interval = 1.0
        self._gc = ProcessThread("chatsvc-run-gc", self._gc_loop)
        #: Set by the executor: called with a run's id when the registry itself
        #: stops the run (run timeout), so that a sleeping job wakes at once.
        self.on_stop_requested: Callable[[str], None] | None = None

    # --- the interface: checked here, stored by the backend ---------------------------

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

    def append(self, run_id: str, level: str, message: str, data: dict | None = None) -> int | None:
        """Adds an event and wakes its readers; returns its seq, or None if not stored.

        None means the run is unknown or finished, or the event was dropped because the
        run reached its event limit (errors always pass; the first refused event adds one
        ``events_truncated`` warning).
        """
        check_event(level, data)
        return self._append(run_id, level, message, data or {})

    def finish(self, run_id: str, status: str, *, result: Any = None, error: dict | None = None) -> bool:
        """Ends the run (first call wins, later calls return False) and wakes every reader."""
        check_terminal(status)
        return self._finish(run_id, status, result, error)

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

    @abstractmethod
    def _append(self, run_id: str, level: str, message: str, data: dict) -> int | None:
        """Stores a checked event under the events limit (see ``append``)."""

    @abstractmethod
    def _finish(self, run_id: str, status: str, result: Any, error: dict | None) -> bool:
        """Ends a run with a checked terminal status (see ``finish``)."""

    # --- process lifecycle ----------------------------------------------------------

    def ping(self) -> bool:
        """True if the backend answers (readiness probe); memory always does."""
        return True

    def close_streams(self) -> None:
        """Ends this process's open streams before it stops (a shared backend: they resume elsewhere).

        The memory backend keeps them: its runs exist only here, and their
        streams end with ``done`` when the runs end.
        """

    def start_gc(self, interval: float = 1.0) -> None:
        """Starts the daemon thread that calls gc() every `interval` seconds, once per process."""
        self._gc_interval = interval
        self._gc.ensure_started()

    def close(self) -> None:
        """Stops this process's gc thread (used by tests and app teardown)."""
        self._gc.stop()

    def _gc_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self._gc_interval):
            try:
                self.gc()
            except RegistryUnavailable as exc:  # the backend is down: no traceback every second
                log.warning("run registry gc skipped: %s", exc)
            except Exception:
                # Keep collecting: one bad pass must not leave runs to pile up forever.
                log.exception("run registry gc failed; retrying in %ss", self._gc_interval)

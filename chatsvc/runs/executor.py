"""The executor: runs jobs in a thread pool and guarantees every run ends.

A job is a function of a ``RunContext`` returning a ``RunOutcome`` (or a plain
result, meaning success). Whatever the job does, including raising, the run
goes queued → running → succeeded | failed | cancelled with ``run_started`` and
``run_finished`` events, and the worker thread survives.

Limits (SPEC §10): queued runs (503 + Retry-After); live runs and active runs
per caller are the registry's (503 and 429), so they hold across processes
with a shared backend.

Under gevent the pool's "threads" are greenlets: a run waiting on the LLM or in
a ``sleep`` node costs a greenlet, so the pool is sized to run every live run at
once (``default_workers``). CPU-heavy work (JSONata) runs in evaluator processes,
not here, so it cannot starve the streams; a job that computes for long without
waiting (a workflow of thousands of nodes) calls ``RunContext.take_turns`` between
steps, so it gives the worker's one thread up every ``TURN_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from chatsvc.concurrency import under_gevent
from chatsvc.errors import ServiceUnavailable, TooManyRequests
from chatsvc.runs.logger import RunLogger
from chatsvc.runs.model import RegistryFull, RunInfo, TooManyActiveRuns
from chatsvc.runs.registry import RunRegistry

log = logging.getLogger("chatsvc.runs")

# Longest a run computes before letting the process's other greenlets (streams, requests,
# other runs) go first: a 10,000-node workflow held the worker for 1.6 s in one go.
TURN_SECONDS = 0.005
# How it gives way: a sleep, but not sleep(0). gevent's sleep(0) lets the greenlets that are
# ready run, but looks at sockets and timers only every 50 such yields (its loop checks the
# switch interval every CALLBACK_CHECK_COUNT callbacks): 250 ms of stalled streams. Any
# positive time puts the run behind a poll of the loop; 1 µs has expired by then, so an
# otherwise idle process does not wait (0.1 ms did: the loop's poll rounds up to 1 ms).
GIVE_WAY_SECONDS = 1e-6


class RunCancelled(Exception):
    """Raised inside a run when cancellation was requested; ends it as ``cancelled``."""


@dataclass(frozen=True)
class RunOutcome:
    status: str = "succeeded"
    result: Any = None
    error: dict | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # extra `run_finished` data


class RunContext:
    """What a running job sees: its log, and cooperative cancellation."""

    def __init__(self, run_id: str, registry: RunRegistry, logger: RunLogger, team_id: int | None = None) -> None:
        self.run_id = run_id
        self.team_id = team_id  # whose run: shared resources (JSONata evaluators) are shared out by team
        self._registry = registry
        self._logger = logger
        # Set by cancel() in this process, so a sleeping run wakes at once; the
        # registry flag is the source of truth (another process may set it).
        self._cancel_event = threading.Event()
        self._turn_started = time.monotonic()

    def log_info(self, message: str, **data: Any) -> None:
        self._logger.log_info(self.run_id, message, **data)

    def log_warn(self, message: str, **data: Any) -> None:
        self._logger.log_warn(self.run_id, message, **data)

    def log_error(self, message: str, exc: BaseException | None = None, **data: Any) -> None:
        self._logger.log_error(self.run_id, message, exc=exc, **data)

    @property
    def cancelled(self) -> bool:
        if self._cancel_event.is_set():
            return True
        if self._registry.is_cancel_requested(self.run_id):
            self._cancel_event.set()
            return True
        return False

    def wake_for_cancel(self) -> None:
        """Cancellation was requested in this process: wake a sleeping job at once."""
        self._cancel_event.set()

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise RunCancelled("Run cancelled")

    def take_turns(self) -> None:
        """Between steps: if the run has computed for ``TURN_SECONDS`` since it last gave way,
        let the rest of the process go first (under gevent: every ready greenlet, socket and
        timer; under threads the sleep only releases the GIL)."""
        if time.monotonic() - self._turn_started >= TURN_SECONDS:
            time.sleep(GIVE_WAY_SECONDS)
            self._turn_started = time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; raise RunCancelled as soon as the run is cancelled."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_cancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            poll = self._registry.cancel_poll_seconds
            self._cancel_event.wait(remaining if poll is None else min(remaining, poll))


Job = Callable[[RunContext], "RunOutcome | Any"]


class RunExecutor:
    def __init__(
        self,
        registry: RunRegistry,
        logger: RunLogger,
        *,
        workers: int,
        max_queued: int,
        on_finished: Callable[[RunInfo], None] | None = None,
    ) -> None:
        self.registry = registry
        self.logger = logger
        self._max_queued = max_queued
        self._on_finished = on_finished
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chatsvc-run")
        self._lock = threading.Lock()
        self._queued = 0
        self._contexts: dict[str, RunContext] = {}
        self._done: dict[str, threading.Event] = {}
        self._accepting = True
        registry.on_stop_requested = self._wake

    @property
    def queue_depth(self) -> int:
        return self._queued

    def submit(self, *, kind: str, target_id: int, team_id: int, owner: str, job: Job) -> RunInfo:
        """Register a run and queue it; raises 429/503 when a limit is reached."""
        with self._lock:
            if not self._accepting:
                raise ServiceUnavailable("The server is shutting down; try again shortly", retry_after=5)
            if self._queued >= self._max_queued:
                raise ServiceUnavailable("Too many queued runs; try again shortly", retry_after=5)
            self._queued += 1  # reserved now; the registry call below may wait on the network
        try:
            info = self.registry.create(kind=kind, target_id=target_id, team_id=team_id, owner=owner)
        except BaseException as exc:
            with self._lock:
                self._queued -= 1
            if isinstance(exc, TooManyActiveRuns):
                raise TooManyRequests(f"Too many active runs for this caller ({exc})",
                                      retry_after=exc.retry_after) from None
            if isinstance(exc, RegistryFull):
                raise ServiceUnavailable("Too many live runs; try again shortly",
                                         retry_after=exc.retry_after) from None
            raise
        ctx = RunContext(info.run_id, self.registry, self.logger, team_id=info.team_id)
        with self._lock:
            self._contexts[info.run_id] = ctx
            self._done[info.run_id] = threading.Event()
        try:
            self._pool.submit(self._execute, info, job, ctx)
        except RuntimeError as exc:  # the pool is shutting down
            with self._lock:
                self._queued -= 1
            self.logger.finish(info.run_id, "failed", error=shutting_down_error(str(exc)))
            self._release(info.run_id)  # after finish: on_finished reports the final state
            raise ServiceUnavailable("The server is shutting down; try again shortly", retry_after=5) from None
        return info

    def cancel(self, run_id: str) -> bool:
        """Request cooperative cancellation; False if the run is unknown or finished."""
        if not self.registry.request_cancel(run_id):
            return False
        self._wake(run_id)
        # Under the lock that _execute holds to start a run: either the run is
        # still queued and ends here, or it has started and its job sees the
        # flag. Never both, so `run_finished` is logged once.
        with self._lock:
            info = self.registry.get(run_id)
            ended_in_queue = info is not None and info.status == "queued" and self.logger.finish(
                run_id, "cancelled", error=cancelled_error(), duration_ms=0)
        if ended_in_queue:
            # Not started yet: it is over now (the registry freed its caller slot), so wake
            # wait(); the worker that dequeues it later sees it finished and skips it.
            self._release(info.run_id)
        return True

    def wait(self, run_id: str, timeout: float) -> RunInfo | None:
        """Wait up to ``timeout`` for a run of this process to finish; its final state, or None."""
        done = self._done.get(run_id)
        if done is not None and not done.wait(timeout):
            return None
        info = self.registry.get(run_id)
        return info if info is not None and info.finished else None

    def shutdown(self, grace_seconds: float = 0.0) -> None:
        """Take no new runs, give live runs ``grace_seconds`` to finish, end the rest as failed.

        The rest end with error ``ShuttingDown`` and are told to stop; nothing of
        this process is left ``queued`` or ``running``. Idempotent.
        """
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + grace_seconds
        for done in list(self._done.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not done.wait(remaining):
                break
        for run_id, ctx in list(self._contexts.items()):
            if self.logger.finish(run_id, "failed", error=shutting_down_error()):
                log.warning("run %s: ended as ShuttingDown", run_id)
            ctx.wake_for_cancel()  # the job stops at its next checkpoint; its finish is a no-op
        self._pool.shutdown(wait=True, cancel_futures=True)
        for run_id in list(self._contexts):  # never started: their futures were cancelled
            with self._lock:
                self._queued -= 1
            self._release(run_id)

    def _wake(self, run_id: str) -> None:
        """A stop was requested in this process: a job of ours wakes from its sleep at once."""
        ctx = self._contexts.get(run_id)
        if ctx is not None:
            ctx.wake_for_cancel()

    def _execute(self, info: RunInfo, job: Job, ctx: RunContext) -> None:
        run_id = info.run_id
        started = time.monotonic()
        try:
            with self._lock:
                self._queued -= 1
                runnable = self.registry.mark_running(run_id)
            if not runnable:
                return  # already finished: cancelled or timed out while queued
            if ctx.cancelled:
                self.logger.finish(run_id, "cancelled", error=cancelled_error(), duration_ms=0)
                return
            self.logger.log_info(run_id, "run_started", kind=info.kind, target_id=info.target_id)
            outcome = self._run_job(job, ctx)
            self.logger.finish(
                run_id,
                outcome.status,
                result=outcome.result,
                error=outcome.error,
                duration_ms=_ms_since(started),
                **outcome.summary,
            )
        except BaseException as exc:  # never leave a run unfinished, never kill the worker
            log.exception("run %s: executor failure", run_id)
            self.registry.finish(run_id, "failed", error={"type": type(exc).__name__, "message": "internal error"})
        finally:
            self._release(info.run_id)

    def _run_job(self, job: Job, ctx: RunContext) -> RunOutcome:
        try:
            outcome = job(ctx)
        except RunCancelled:
            return RunOutcome("cancelled", error=cancelled_error())
        except Exception as exc:
            ctx.log_error("run_error", exc=exc)
            return RunOutcome("failed", error={"type": type(exc).__name__, "message": str(exc)})
        if not isinstance(outcome, RunOutcome):
            outcome = RunOutcome(result=outcome)
        if outcome.status == "cancelled" and outcome.error is None:
            # A job that noticed the cancel itself (a workflow between two nodes): the same
            # error as any other cancelled run.
            outcome = replace(outcome, error=cancelled_error())
        return outcome

    def _release(self, run_id: str) -> None:
        """Wakes wait() and reports the run finished; once per run."""
        with self._lock:
            if self._contexts.pop(run_id, None) is None:
                return  # already released (cancelled while queued)
            done = self._done.pop(run_id, None)
        if done is not None:
            done.set()
        if self._on_finished is not None:
            final = self.registry.get(run_id)
            if final is not None:
                self._on_finished(final)


def default_workers(max_live_runs: int) -> int:
    """Pool size: every live run at once under gevent (greenlets), a thread pool's worth otherwise."""
    return max_live_runs if under_gevent() else 32


def shutting_down_error(message: str = "the server shut down before the run finished") -> dict[str, str]:
    return {"type": "ShuttingDown", "message": message}


def cancelled_error() -> dict[str, str]:
    """The error of a run that ended because it was cancelled (the executor's and the jobs')."""
    return {"type": "RunCancelled", "message": "Run cancelled"}


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)

"""RunExecutor without HTTP: lifecycle, failures, cancellation, limits, wait (SPEC §6.3, §10)."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest

from chatsvc.errors import ServiceUnavailable, TooManyRequests
from chatsvc.runs.executor import RunContext, RunExecutor, RunOutcome
from chatsvc.runs.logger import RunLogger
from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.model import RunInfo
from tests.helpers.runs import FakeClock, read

WAIT = 5.0  # upper bound for anything that should happen "at once"


class Gate:
    """A job that reports it started and then blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()
        self.thread_ids: list[int] = []

    def __call__(self, ctx: RunContext) -> Any:
        self.thread_ids.append(threading.get_ident())
        self.started.set()
        assert self.opened.wait(WAIT), "the test never opened the gate"
        return {"gate": "passed"}

    def wait_started(self) -> None:
        assert self.started.wait(WAIT), "job did not start"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock, request) -> Iterator[MemoryRunRegistry]:
    """The per-caller limit is the registry's: ``@pytest.mark.owner_limit(n)`` sets it (default 5)."""
    marker = request.node.get_closest_marker("owner_limit")
    reg = MemoryRunRegistry(ttl_seconds=60, run_timeout_seconds=600, max_live_runs=100,
                            max_active_per_owner=marker.args[0] if marker else 5, clock=clock)
    yield reg
    reg.close()


@pytest.fixture
def make_executor(registry) -> Iterator:
    """Builds executors on the `registry`; each is shut down after the test."""
    made: list[RunExecutor] = []

    def factory(*, reg: MemoryRunRegistry | None = None, workers: int = 2, max_queued: int = 10,
                on_finished=None) -> RunExecutor:
        reg = reg or registry
        ex = RunExecutor(reg, RunLogger(reg), workers=workers, max_queued=max_queued, on_finished=on_finished)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.shutdown()


def submit(ex: RunExecutor, job, owner: str = "user:1") -> RunInfo:
    return ex.submit(kind="workflow", target_id=7, team_id=3, owner=owner, job=job)


def finished(ex: RunExecutor, run_id: str) -> RunInfo:
    info = ex.wait(run_id, WAIT)
    assert info is not None, f"run {run_id} did not finish within {WAIT} s: {ex.registry.get(run_id)}"
    return info


def events_of(reg: MemoryRunRegistry, run_id: str) -> list:
    return read(reg, run_id, 0, timeout=0).events


def messages(reg: MemoryRunRegistry, run_id: str) -> list[str]:
    return [ev.message for ev in events_of(reg, run_id)]


# --- lifecycle ----------------------------------------------------------------


def test_queued_running_succeeded_with_started_and_finished_events(make_executor, registry):
    ex = make_executor()
    gate = Gate()

    def job(ctx: RunContext) -> dict:
        ctx.log_info("working", step=1)
        return gate(ctx)

    info = submit(ex, job)
    assert info.status == "queued" and info.started_at is None and info.finished_at is None
    gate.wait_started()
    running = registry.get(info.run_id)
    assert running.status == "running" and running.started_at is not None and running.finished_at is None
    assert ex.wait(info.run_id, 0.05) is None  # still running: wait times out with None

    gate.opened.set()
    final = finished(ex, info.run_id)
    assert final.status == "succeeded"
    assert final.result == {"gate": "passed"} and final.error is None
    assert final.created_at <= final.started_at <= final.finished_at
    events = events_of(registry, info.run_id)
    assert [ev.message for ev in events] == ["run_started", "working", "run_finished"]
    assert events[0].data == {"kind": "workflow", "target_id": 7}
    assert events[-1].level == "info"
    assert events[-1].data["status"] == "succeeded" and events[-1].data["duration_ms"] >= 0
    assert final.done_seq == 4 and final.event_count == 3


def test_plain_return_value_is_the_result_and_outcome_summary_is_logged(make_executor, registry):
    ex = make_executor()
    info = submit(ex, lambda ctx: RunOutcome(result={"n": 1}, summary={"steps": [{"node_key": "a"}]}))
    final = finished(ex, info.run_id)
    assert final.status == "succeeded" and final.result == {"n": 1}
    assert events_of(registry, info.run_id)[-1].data["steps"] == [{"node_key": "a"}]


def test_job_that_raises_fails_without_traceback_and_the_worker_survives(make_executor, registry):
    ex = make_executor(workers=1)
    thread_ids = []

    def boom(ctx: RunContext) -> None:
        thread_ids.append(threading.get_ident())
        raise ValueError("bad input: 42")

    info = submit(ex, boom)
    final = finished(ex, info.run_id)
    assert final.status == "failed"
    assert final.error == {"type": "ValueError", "message": "bad input: 42"}
    events = events_of(registry, info.run_id)
    assert [ev.message for ev in events] == ["run_started", "run_error", "run_finished"]
    error_event = events[1]
    assert error_event.level == "error"
    assert error_event.data == {"exception": {"type": "ValueError", "message": "bad input: 42"}}
    assert "Traceback" not in repr([ev.to_dict() for ev in events])
    assert events[-1].level == "error" and events[-1].data["status"] == "failed"

    # The one worker thread is still there and runs the next job.
    gate = Gate()
    gate.opened.set()
    nxt = submit(ex, gate)
    assert finished(ex, nxt.run_id).status == "succeeded"
    assert gate.thread_ids == thread_ids


def test_job_returning_a_failed_outcome(make_executor, registry):
    ex = make_executor()
    error = {"type": "NodeError", "message": "node b failed", "node_key": "b"}
    info = submit(ex, lambda ctx: RunOutcome("failed", result={"steps": []}, error=error))
    final = finished(ex, info.run_id)
    assert final.status == "failed" and final.error == error and final.result == {"steps": []}
    last = events_of(registry, info.run_id)[-1]
    assert last.message == "run_finished" and last.level == "error" and last.data["status"] == "failed"


# --- cancellation ---------------------------------------------------------------


def test_cancel_while_running_wakes_a_sleeping_job_at_once(make_executor, registry, monkeypatch):
    # If cancel() did not wake ctx.sleep directly, the job would only notice at
    # its next registry poll: make that poll far longer than the wait below.
    monkeypatch.setattr(registry, "cancel_poll_seconds", 60)
    ex = make_executor()
    started = threading.Event()

    def sleeper(ctx: RunContext) -> str:
        started.set()
        ctx.sleep(60)
        return "slept through the cancel"

    info = submit(ex, sleeper)
    assert started.wait(WAIT)
    assert ex.cancel(info.run_id) is True
    final = finished(ex, info.run_id)
    assert final.status == "cancelled"
    assert final.error == {"type": "RunCancelled", "message": "Run cancelled"}
    assert final.result is None
    assert messages(registry, info.run_id) == ["run_started", "run_finished"]
    assert events_of(registry, info.run_id)[-1].data["status"] == "cancelled"
    assert ex.cancel(info.run_id) is False  # finished: nothing to cancel


@pytest.mark.owner_limit(2)
def test_cancel_while_queued_never_runs_the_job(make_executor, registry):
    ex = make_executor(workers=1)
    blocker = Gate()
    first = submit(ex, blocker)
    blocker.wait_started()

    ran = threading.Event()
    queued = submit(ex, lambda ctx: ran.set())
    assert registry.get(queued.run_id).status == "queued"
    assert ex.cancel(queued.run_id) is True

    # It is over at once, although the only worker is still busy with `first`.
    final = ex.wait(queued.run_id, WAIT)
    assert final is not None and final.status == "cancelled"
    assert final.started_at is None
    assert messages(registry, queued.run_id) == ["run_finished"]
    # A cancelled run is not active: its caller slot is free again.
    third = submit(ex, lambda ctx: "third")

    blocker.opened.set()
    assert finished(ex, first.run_id).status == "succeeded"
    assert finished(ex, third.run_id).status == "succeeded"
    assert not ran.is_set()
    assert registry.get(queued.run_id).status == "cancelled"
    assert messages(registry, queued.run_id) == ["run_finished"]


def test_cancel_unknown_run_is_false(make_executor):
    assert make_executor().cancel("nope") is False


# --- limits ---------------------------------------------------------------------


@pytest.mark.owner_limit(1)
def test_active_runs_per_caller_limit_is_429(make_executor):
    ex = make_executor()
    gate = Gate()
    first = submit(ex, gate, owner="user:1")
    with pytest.raises(TooManyRequests) as caught:
        submit(ex, gate, owner="user:1")
    assert caught.value.code == 429 and caught.value.retry_after
    assert "limit 1" in caught.value.message
    other = submit(ex, lambda ctx: None, owner="service:9")  # another caller is not limited
    gate.opened.set()
    finished(ex, first.run_id)
    finished(ex, other.run_id)
    submit(ex, lambda ctx: None, owner="user:1")  # the slot is free again


def test_full_queue_is_503_with_retry_after(make_executor, registry):
    ex = make_executor(workers=1, max_queued=1)
    gate = Gate()
    running = submit(ex, gate, owner="user:1")
    gate.wait_started()  # it left the queue
    queued = submit(ex, lambda ctx: "queued", owner="user:2")
    assert ex.queue_depth == 1
    with pytest.raises(ServiceUnavailable) as caught:
        submit(ex, lambda ctx: None, owner="user:3")
    assert caught.value.code == 503 and caught.value.retry_after
    assert len(registry.list_runs()) == 2  # the refused run was never registered
    gate.opened.set()
    assert finished(ex, running.run_id).status == "succeeded"
    assert finished(ex, queued.run_id).status == "succeeded"
    assert ex.queue_depth == 0


def test_full_registry_is_503_with_retry_after(make_executor, clock):
    reg = MemoryRunRegistry(max_live_runs=1, clock=clock)
    ex = make_executor(reg=reg)
    gate = Gate()
    first = submit(ex, gate, owner="user:1")
    with pytest.raises(ServiceUnavailable) as caught:
        submit(ex, lambda ctx: None, owner="user:2")
    assert caught.value.code == 503 and caught.value.retry_after
    gate.opened.set()
    finished(ex, first.run_id)
    # The refusal took no caller slot and no queue slot.
    assert ex.queue_depth == 0
    assert finished(ex, submit(ex, lambda ctx: None, owner="user:2").run_id).status == "succeeded"
    reg.close()


@pytest.mark.parametrize("job", [
    pytest.param(lambda ctx: 1 / 0, id="raises"),
    pytest.param(lambda ctx: RunOutcome("failed", error={"type": "X", "message": "y"}), id="failed-outcome"),
    pytest.param(lambda ctx: ctx.check_cancelled() or ctx.sleep(0), id="succeeds"),
])
@pytest.mark.owner_limit(1)
def test_caller_slots_are_released_whatever_the_outcome(make_executor, job):
    ex = make_executor()
    for _ in range(5):  # a leaked slot would refuse the second submit with 429
        finished(ex, submit(ex, job, owner="service:4").run_id)
    assert ex.queue_depth == 0


def test_on_finished_is_called_once_per_run_with_the_final_state(make_executor, registry):
    seen: list[RunInfo] = []
    ex = make_executor(workers=1, on_finished=seen.append)
    gate = Gate()
    first = submit(ex, gate)
    gate.wait_started()
    queued = submit(ex, lambda ctx: None)
    ex.cancel(queued.run_id)
    gate.opened.set()
    finished(ex, first.run_id)
    failing = submit(ex, lambda ctx: 1 / 0)
    finished(ex, failing.run_id)
    # The cancelled-while-queued run is skipped by the worker after `first`; wait for that too.
    deadline = time.monotonic() + WAIT
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted((i.run_id, i.status) for i in seen) == sorted(
        [(first.run_id, "succeeded"), (queued.run_id, "cancelled"), (failing.run_id, "failed")])


# --- wait and the run timeout ------------------------------------------------------


def test_wait_returns_none_on_timeout_and_the_final_info_when_done(make_executor):
    ex = make_executor()
    gate = Gate()
    info = submit(ex, gate)
    started = time.monotonic()
    assert ex.wait(info.run_id, 0.2) is None
    assert time.monotonic() - started >= 0.2
    gate.opened.set()
    final = finished(ex, info.run_id)
    assert final.run_id == info.run_id and final.status == "succeeded"
    # After the run was released, wait still answers from the registry.
    assert ex.wait(info.run_id, 0) == final


def test_wait_for_unknown_run_is_none(make_executor):
    assert make_executor().wait("nope", 0.01) is None


def test_run_timeout_fails_the_run_and_stops_the_job(make_executor, clock):
    reg = MemoryRunRegistry(run_timeout_seconds=30, max_active_per_owner=1, clock=clock)
    ex = make_executor(reg=reg)
    started, stopped = threading.Event(), threading.Event()

    def sleeper(ctx: RunContext) -> None:
        started.set()
        try:
            ctx.sleep(60)
        finally:
            stopped.set()

    info = submit(ex, sleeper)
    assert started.wait(WAIT)
    clock.now += 31
    reg.gc()
    timed_out = reg.get(info.run_id)
    assert timed_out.status == "failed" and timed_out.error["type"] == "RunTimeout"
    assert [ev.message for ev in read(reg, info.run_id, 0, 0).events] == ["run_started", "run_timeout"]
    # The job is told to stop, and its worker and caller slot are freed.
    assert stopped.wait(WAIT), "the timed-out job kept running"
    final = finished(ex, info.run_id)
    assert final.status == "failed" and final.error["type"] == "RunTimeout"
    submit(ex, lambda ctx: None)  # the caller's only slot is free again
    reg.close()

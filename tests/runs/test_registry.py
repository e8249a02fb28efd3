"""The run registry's behaviour on both backends (memory, Redis), and RunLogger, without Flask.

Most tests take the ``registry`` / ``make_registry`` fixtures, parametrized over
``memory`` and ``redis`` (a real Redis: CHATSVC_TEST_REDIS_URL, each test under its
own key prefix, deleted afterwards). Tests that move a FakeClock to travel through
TTLs and timeouts construct ``MemoryRunRegistry`` directly and stay memory-only;
their Redis counterparts (tests/runs/test_redis_registry.py) use short real TTLs,
timeouts and leases, because Redis decides those by its own clock. Events are read as a
stream reads them: ``subscribe`` and the run's feed (``tests.helpers.runs.read``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import threading
import time
from datetime import datetime, timezone

import pytest

from chatsvc import concurrency
from chatsvc.runs.redis import RedisRunRegistry
from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.model import TERMINAL_STATUSES, RegistryFull, RunInfo, RunNotFound
from chatsvc.runs.shape import RunSchema, run_fields
from tests.helpers.runs import StreamRead, new_run, read, read_until_done

WAIT = 5.0  # generous upper bound for anything that should happen "at once"


def public_shape(info: RunInfo) -> dict:
    """The run as GET /chat/runs/{id} shows it, without the links the API adds."""
    return RunSchema().dump(run_fields(info))


def wait_for_waiters(reg, run_id: str, count: int) -> None:
    """Blocks until `count` readers are parked waiting for the run (white-box, no sleeps)."""
    deadline = time.monotonic() + WAIT
    while _waiters(reg, run_id) < count:
        assert time.monotonic() < deadline, "reader never started waiting"
        time.sleep(0.001)


def _waiters(reg, run_id: str) -> int:
    """Readers parked on the run's feed in this process (CPython's threading.Event internals)."""
    followed = reg._follower._runs if isinstance(reg, RedisRunRegistry) else reg._runs
    run = followed.get(run_id)
    return 0 if run is None else len(run.feed.signal()._cond._waiters)


# --- create / get / list / lifecycle ---------------------------------------------


def test_create_returns_queued_snapshot(registry, clock):
    run = new_run(registry)
    assert run.status == "queued"
    assert len(run.run_id) == 32 and int(run.run_id, 16) >= 0  # uuid4 hex
    assert (run.kind, run.target_id, run.team_id, run.owner) == ("workflow", 1, 2, "user:3")
    assert run.created_at == clock.now
    assert run.started_at is None and run.finished_at is None
    assert run.event_count == 0 and not run.finished and run.done_seq is None
    assert registry.get(run.run_id) == run


def test_get_unknown_is_none(registry):
    assert registry.get("nope") is None


def test_list_runs_newest_first(registry, clock):
    first = new_run(registry)
    clock.now += 1
    second = new_run(registry)
    assert [r.run_id for r in registry.list_runs()] == [second.run_id, first.run_id]


def test_lifecycle_and_public_shape(registry, clock):
    run = new_run(registry)
    clock.now = 1_763_700_000.0
    assert registry.mark_running(run.run_id)
    assert not registry.mark_running(run.run_id)  # already running
    registry.append(run.run_id, "info", "run_started")
    clock.now += 2.5
    assert registry.finish(run.run_id, "succeeded", result={"steps": [1, 2]})

    info = registry.get(run.run_id)
    assert info.finished and info.done_seq == 2 and info.event_count == 1
    assert public_shape(info) == {
        "run_id": run.run_id,
        "kind": "workflow",
        "target_id": 1,
        "team_id": 2,
        "status": "succeeded",
        "created_at": datetime.fromtimestamp(1_000_000.0, timezone.utc).isoformat(),
        "started_at": "2025-11-21T04:40:00+00:00",
        "finished_at": "2025-11-21T04:40:02.500000+00:00",
        "event_count": 1,
        "result": {"steps": [1, 2]},
    }
    json.dumps(public_shape(info))  # serialisable as is


def test_public_shape_omits_unset_result_and_includes_error(registry):
    run = new_run(registry)
    registry.finish(run.run_id, "failed", error={"type": "Boom", "message": "x"})
    body = public_shape(registry.get(run.run_id))
    assert "result" not in body
    assert body["error"] == {"type": "Boom", "message": "x"}


def test_finish_is_idempotent_and_first_call_wins(registry):
    run = new_run(registry)
    assert registry.finish(run.run_id, "cancelled", result="first")
    assert not registry.finish(run.run_id, "succeeded", result="second")
    info = registry.get(run.run_id)
    assert (info.status, info.result) == ("cancelled", "first")
    assert registry.append(run.run_id, "info", "late") is None
    assert not registry.finish("unknown", "succeeded")


def test_finish_rejects_non_terminal_status(registry):
    run = new_run(registry)
    with pytest.raises(ValueError):
        registry.finish(run.run_id, "running")
    assert registry.get(run.run_id).status == "queued"


def test_append_validates_level(registry):
    run = new_run(registry)
    with pytest.raises(ValueError):
        registry.append(run.run_id, "debug", "x")
    assert registry.append("unknown", "info", "x") is None


def test_mark_running_false_when_finished_while_queued(registry):
    run = new_run(registry)
    registry.finish(run.run_id, "cancelled")
    assert not registry.mark_running(run.run_id)
    assert not registry.mark_running("unknown")


# --- snapshots and immutability ---------------------------------------------------


def test_snapshots_and_events_cannot_change_registry_state(registry):
    run = new_run(registry)
    payload = {"nested": {"items": [1, 2]}}
    registry.append(run.run_id, "info", "x", payload)
    payload["nested"]["items"].append(3)  # the producer's later changes do not leak in

    # Subscribers get the event as bytes, encoded once at append: nothing to change.
    assert read(registry, run.run_id, 0, timeout=0).events[0].data == {"nested": {"items": [1, 2]}}

    info = registry.get(run.run_id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.status = "succeeded"
    assert registry.get(run.run_id).status == "queued"


def test_result_is_read_only_but_equal_to_plain_data(registry):
    run = new_run(registry)
    registry.finish(run.run_id, "succeeded", result={"steps": [{"ok": True}]})
    result = registry.get(run.run_id).result
    assert result == {"steps": [{"ok": True}]}
    with pytest.raises(TypeError):
        result["steps"][0]["ok"] = False


# --- read ---------------------------------------------------------------------------


def test_read_returns_backlog_after_seq(registry):
    run = new_run(registry)
    seqs = [registry.append(run.run_id, "info", f"m{i}", {"i": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]

    result = read(registry, run.run_id, 2, timeout=WAIT)  # must not wait: events exist
    assert [e.seq for e in result.events] == [3, 4, 5]
    assert [e.message for e in result.events] == ["m2", "m3", "m4"]
    assert result.events[0].to_dict() == {
        "seq": 3, "ts": 1_000_000.0, "level": "info", "message": "m2", "data": {"i": 2},
    }
    assert result.done is None
    assert read(registry, run.run_id, -5, timeout=0).events[0].seq == 1  # negative = from start


def test_read_times_out_empty(registry):
    run = new_run(registry)
    started = time.monotonic()
    result = read(registry, run.run_id, 0, timeout=0.05)
    elapsed = time.monotonic() - started
    assert result == StreamRead(events=[], done=None)
    assert 0.04 <= elapsed < 2


def test_read_unknown_run_raises(registry):
    with pytest.raises(RunNotFound):
        read(registry, "nope", 0, timeout=0)


def test_read_of_finished_run_returns_done_at_once(registry):
    run = new_run(registry)
    registry.append(run.run_id, "info", "a")
    registry.finish(run.run_id, "succeeded")

    result = read(registry, run.run_id, 0, timeout=WAIT)
    assert [e.seq for e in result.events] == [1]
    assert result.done.status == "succeeded" and result.done.done_seq == 2

    # Already past the last event (e.g. a reconnect): only `done`.
    result = read(registry, run.run_id, 2, timeout=WAIT)
    assert result.events == [] and result.done.done_seq == 2


def blocked_reader(registry, run_id: str) -> tuple[threading.Thread, dict]:
    """A thread blocked in ``read(run_id, 0)``; its ReadResult lands in ``outcome["r"]``."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(r=read(registry, run_id, 0, timeout=10)))
    thread.start()
    wait_for_waiters(registry, run_id, 1)
    return thread, outcome


def test_blocked_reader_wakes_on_append_within_milliseconds(registry):
    run = new_run(registry)
    outcome = {}

    def reader():
        result = read(registry, run.run_id, 0, timeout=10)
        outcome["woke_at"] = time.monotonic()
        outcome["result"] = result

    thread = threading.Thread(target=reader)
    thread.start()
    wait_for_waiters(registry, run.run_id, 1)  # the reader is really blocked in read()
    appended_at = time.monotonic()
    registry.append(run.run_id, "info", "hello")
    thread.join(WAIT)
    assert not thread.is_alive()

    assert [e.message for e in outcome["result"].events] == ["hello"]
    assert outcome["woke_at"] - appended_at < 0.2


def test_blocked_reader_wakes_on_finish(registry):
    run = new_run(registry)
    thread, outcome = blocked_reader(registry, run.run_id)
    registry.finish(run.run_id, "cancelled")
    thread.join(WAIT)
    assert not thread.is_alive()
    assert outcome["r"].events == [] and outcome["r"].done.status == "cancelled"


def test_concurrent_producers_and_readers_see_every_event_once_in_order(make_registry):
    producers, per_producer, readers = 8, 500, 20
    total = producers * per_producer
    registry = make_registry()
    run = new_run(registry)
    start = threading.Barrier(producers + readers)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def produce(p: int) -> None:
        start.wait()
        for i in range(per_producer):
            registry.append(run.run_id, "info", "tick", {"producer": p, "i": i})

    def consume(r: int) -> None:
        try:
            start.wait()
            events, done = read_until_done(registry, run.run_id)
            results[r] = [(e.seq, e.data["producer"], e.data["i"]) for e in events]
            assert done.done_seq == total + 1
        except BaseException as exc:  # surfaced below: a thread's assert would be lost
            errors.append(exc)

    consumer_threads = [threading.Thread(target=consume, args=(r,)) for r in range(readers)]
    producer_threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in consumer_threads + producer_threads:
        thread.start()
    for thread in producer_threads:
        thread.join(30)
    registry.finish(run.run_id, "succeeded")
    for thread in consumer_threads:
        thread.join(30)

    assert not any(t.is_alive() for t in producer_threads + consumer_threads)
    assert errors == []
    assert len(results) == readers
    expected = results[0]
    assert [seq for seq, _, _ in expected] == list(range(1, total + 1))
    for p in range(producers):  # each producer's events keep their order
        assert [i for _, prod, i in expected if prod == p] == list(range(per_producer))
    for seen in results.values():
        assert seen == expected  # every reader saw the same events, exactly once each


# --- limits ----------------------------------------------------------------------------


def test_event_limit_truncates_once_but_keeps_errors_and_done(make_registry):
    registry = make_registry(max_events_per_run=3)
    run = new_run(registry)
    assert [registry.append(run.run_id, "info", f"m{i}") for i in range(3)] == [1, 2, 3]
    assert registry.append(run.run_id, "info", "dropped") is None
    assert registry.append(run.run_id, "warn", "dropped too") is None
    assert registry.append(run.run_id, "error", "kept") == 5
    assert registry.append(run.run_id, "info", "still dropped") is None
    assert registry.finish(run.run_id, "failed")

    events, done = read_until_done(registry, run.run_id)
    assert [(e.seq, e.level, e.message) for e in events] == [
        (1, "info", "m0"), (2, "info", "m1"), (3, "info", "m2"),
        (4, "warn", "events_truncated"), (5, "error", "kept"),
    ]
    assert events[3].data == {"limit": 3}
    assert done.done_seq == 6 and done.event_count == 5


def test_registry_full_counts_only_unfinished_runs(make_registry):
    registry = make_registry(max_live_runs=2)
    first = new_run(registry)
    new_run(registry)
    with pytest.raises(RegistryFull) as raised:
        new_run(registry)
    assert raised.value.retry_after > 0
    registry.finish(first.run_id, "succeeded")
    new_run(registry)  # a slot was freed


# --- cancel ----------------------------------------------------------------------------


def test_cancel_flags(registry):
    run = new_run(registry)
    assert not registry.is_cancel_requested(run.run_id)
    assert registry.request_cancel(run.run_id)
    assert registry.is_cancel_requested(run.run_id)
    assert registry.get(run.run_id).cancel_requested
    assert registry.request_cancel(run.run_id)  # asking twice is fine

    registry.finish(run.run_id, "cancelled")
    assert not registry.request_cancel(run.run_id)  # 409 territory: already finished
    assert not registry.request_cancel("unknown")
    assert not registry.is_cancel_requested("unknown")


# --- gc: TTL and run timeout --------------------------------------------------------------


def test_gc_deletes_runs_ttl_after_they_finish(clock):
    registry = MemoryRunRegistry(ttl_seconds=60, run_timeout_seconds=1000, clock=clock)
    old, recent, live = new_run(registry), new_run(registry), new_run(registry)
    registry.finish(old.run_id, "succeeded")
    clock.now += 10
    registry.finish(recent.run_id, "failed")
    clock.now += 50  # old finished exactly 60 s (the TTL) ago: kept
    assert registry.gc() == 0

    clock.now += 0.5
    assert registry.gc() == 1
    assert registry.get(old.run_id) is None
    with pytest.raises(RunNotFound):
        read(registry, old.run_id, 0, timeout=0)
    assert {r.run_id for r in registry.list_runs()} == {recent.run_id, live.run_id}

    clock.now += 10
    assert registry.gc() == 1
    assert registry.get(recent.run_id) is None
    assert registry.get(live.run_id).status == "queued"  # unfinished runs are never deleted


def test_gc_fails_runs_that_exceed_the_run_timeout(memory_registry, clock):  # time travel
    registry = memory_registry
    run = new_run(registry)
    registry.mark_running(run.run_id)
    registry.append(run.run_id, "info", "working")
    clock.now += 30
    assert registry.gc() == 0 and registry.get(run.run_id).status == "running"

    clock.now += 1
    assert registry.gc() == 0  # failed now, deleted only after the TTL
    info = registry.get(run.run_id)
    assert info.status == "failed" and info.finished_at == clock.now
    assert info.error["type"] == "RunTimeout" and "30" in info.error["message"]

    events, done = read_until_done(registry, run.run_id)
    assert (events[-1].level, events[-1].message) == ("error", "run_timeout")
    assert done.done_seq == 3

    clock.now += 61
    assert registry.gc() == 1


def test_reader_waiting_on_a_timed_out_run_gets_done(memory_registry, clock):  # time travel
    registry = memory_registry
    run = new_run(registry)
    thread, outcome = blocked_reader(registry, run.run_id)
    registry.gc(now=clock.now + 31)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert outcome["r"].done.status == "failed"
    assert [e.message for e in outcome["r"].events] == ["run_timeout"]


def test_timeout_still_reports_error_when_event_limit_reached(clock):
    registry = MemoryRunRegistry(max_events_per_run=1, run_timeout_seconds=5, clock=clock)
    run = new_run(registry)
    registry.append(run.run_id, "info", "a")
    registry.append(run.run_id, "info", "b")  # truncation marker
    registry.gc(now=clock.now + 6)
    events, done = read_until_done(registry, run.run_id)
    assert [e.message for e in events] == ["a", "events_truncated", "run_timeout"]
    assert done.status == "failed"


# --- gc thread ----------------------------------------------------------------------------


def test_gc_thread_runs_and_survives_exceptions(registry, monkeypatch, caplog):
    calls = []
    second_call = threading.Event()
    real_gc = registry.gc

    def flaky_gc(now=None):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("boom")
        second_call.set()
        return real_gc(now)

    monkeypatch.setattr(registry, "gc", flaky_gc)
    with caplog.at_level(logging.ERROR, logger="chatsvc.runs"):
        registry.start_gc(interval=0.01)
        assert second_call.wait(WAIT), "gc thread did not keep running after an exception"
    assert any("gc failed" in r.getMessage() and r.exc_info for r in caplog.records)

    registry.close()
    assert not registry._gc.running


def test_gc_thread_deletes_expired_runs(memory_registry, clock):  # time travel
    registry = memory_registry
    run = new_run(registry)
    registry.finish(run.run_id, "succeeded")
    clock.now += 61
    registry.start_gc(interval=0.01)
    deadline = time.monotonic() + WAIT
    while registry.get(run.run_id) is not None:
        assert time.monotonic() < deadline, "gc thread never deleted the expired run"
        time.sleep(0.005)


def test_start_gc_is_idempotent_per_process(registry, monkeypatch):
    registry.start_gc(interval=60)
    thread = registry._gc._thread
    registry.start_gc(interval=60)
    assert registry._gc._thread is thread and thread.is_alive()

    # A forked gunicorn worker has a new pid and none of the parent's threads.
    monkeypatch.setattr(concurrency.os, "getpid", lambda: -1)
    registry.start_gc(interval=60)
    assert registry._gc._thread is not thread
    monkeypatch.undo()
    registry.close()


def test_terminal_statuses():
    assert TERMINAL_STATUSES == {"succeeded", "failed", "cancelled"}


def test_held_events_give_the_garbage_collector_nothing_to_walk(memory_registry):
    """A worker holds thousands of runs' events for their TTL; as Python objects each event
    added several to every full collection (about half a second a collection for 1,000 runs
    of 300 events, with every stream of the worker stalled). Stored as bytes: none."""
    run = memory_registry.create(kind="workflow", target_id=1, team_id=1, owner="user:1")
    payload = {"node_key": "n", "output": {"items": [1, {"a": "b"}], "text": "x"}}
    memory_registry.append(run.run_id, "info", "warm-up", payload)
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(1000):
        memory_registry.append(run.run_id, "info", "node_output", payload)
    gc.collect()
    assert len(gc.get_objects()) - before < 20  # not ~3 per event
    event = read(memory_registry, run.run_id, 1000, timeout=0).events[0]
    assert (event.seq, event.message, event.data) == (1001, "node_output", payload)

"""RunFeed: the per-process fan-out of encoded events, without Flask or sockets."""

from __future__ import annotations

import threading
import time

import pytest

from chatsvc.runs.feed import RunFeed
from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.model import RunNotFound
from chatsvc.runs.sse import encode_done
from tests.helpers.runs import encode_log_event, read

WAIT = 5.0


def wire(seq: int) -> bytes:
    return f"id: {seq}\nevent: log\ndata: {seq}\n\n".encode()


def read_all(feed: RunFeed, after_seq: int = 0) -> bytes:
    received = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = feed.read(after_seq, timeout=WAIT)
        received += found.data
        after_seq = found.last_seq
        if found.finished:
            return received
    raise AssertionError("reader never got done")


def test_read_returns_backlog_then_done_once_finished():
    feed = RunFeed()
    for seq in (1, 2, 3):
        feed.publish(seq, wire(seq))
    assert feed.read(0, 0) == (wire(1) + wire(2) + wire(3), 3, False)
    assert feed.read(2, 0) == (wire(3), 3, False)
    assert feed.read(3, 0) == (b"", 3, False)  # nothing new: the caller sends a heartbeat
    feed.close(b"done\n\n")
    assert feed.read(3, 0) == (b"done\n\n", 3, True)
    assert feed.read(1, 0) == (wire(2) + wire(3) + b"done\n\n", 3, True)


def test_one_new_event_is_the_stored_bytes_object_itself():
    """Every subscriber writes the same bytes: no per-subscriber encoding or copy."""
    feed = RunFeed()
    feed.publish(1, wire(1))
    assert feed.read(0, 0).data is feed.read(0, 0).data


def test_publish_out_of_order_is_refused():
    feed = RunFeed()
    with pytest.raises(ValueError):
        feed.publish(2, wire(2))


def test_held_events_reach_readers_together_at_the_wake_up():
    """publish(wake=False) (the Redis follower gathering): readers see nothing until wake(),
    then every held event in one chunk; closing shows held events before `done`."""
    feed = RunFeed()
    woken = feed.signal()
    feed.publish(1, wire(1), wake=False)
    feed.publish(2, wire(2), wake=False)
    assert feed.last_seq == 2  # the writer's view: the next seq it may publish is 3
    assert feed.read(0, 0) == (b"", 0, False) and not woken.is_set()
    feed.wake()
    assert woken.is_set() and feed.read(0, 0) == (wire(1) + wire(2), 2, False)
    feed.publish(3, wire(3), wake=False)
    feed.close(b"done\n\n")
    assert feed.read(2, 0) == (wire(3) + b"done\n\n", 3, True)


def test_idle_read_waits_for_the_timeout():
    feed = RunFeed()
    started = time.monotonic()
    assert feed.read(0, 0.2) == (b"", 0, False)
    assert time.monotonic() - started >= 0.19


def test_a_waiting_reader_wakes_on_publish_not_on_its_timeout():
    feed = RunFeed()
    got: list = []
    reader = threading.Thread(target=lambda: got.append(feed.read(0, WAIT)))
    reader.start()
    while not feed.signal()._cond._waiters:  # parked (CPython's threading.Event internals)
        time.sleep(0.001)
    started = time.monotonic()
    feed.publish(1, wire(1))
    reader.join(WAIT)
    assert got == [(wire(1), 1, False)]
    assert time.monotonic() - started < 1


def test_many_reader_threads_each_get_every_event_once_in_order():
    feed = RunFeed()
    results: list[bytes] = []
    lock = threading.Lock()

    def reader() -> None:
        data = read_all(feed)
        with lock:
            results.append(data)

    readers = [threading.Thread(target=reader) for _ in range(50)]
    for thread in readers:
        thread.start()
    for seq in range(1, 2001):  # bursts and pauses: readers see batches of every size
        feed.publish(seq, wire(seq))
        if seq % 97 == 0:
            time.sleep(0.001)
    feed.close(b"event: done\n\n")
    for thread in readers:
        thread.join(30)
    expected = b"".join(wire(seq) for seq in range(1, 2001)) + b"event: done\n\n"
    assert len(results) == 50 and all(data == expected for data in results)


def test_memory_registry_publishes_exactly_the_sse_encoding():
    registry = MemoryRunRegistry()
    run = registry.create(kind="workflow", target_id=1, team_id=2, owner="user:3")
    registry.append(run.run_id, "info", "node_start", {"node_key": "a", "text": "two\nlines"})
    registry.append(run.run_id, "warn", "input_conflict", {"keys": ["x"]})
    registry.finish(run.run_id, "succeeded", result={"steps": []})
    events = read(registry, run.run_id, 0, 0).events
    expected = "".join(map(encode_log_event, events)) + encode_done(registry.get(run.run_id))
    with registry.subscribe(run.run_id) as feed:
        assert read_all(feed).decode() == expected
    registry.close()


def test_subscribe_counts_local_subscribers_and_unknown_runs_raise():
    registry = MemoryRunRegistry()
    run = registry.create(kind="expert", target_id=1, team_id=2, owner="user:3")
    with registry.subscribe(run.run_id) as first, registry.subscribe(run.run_id) as second:
        assert first is second and first.subscribers == 2
    assert first.subscribers == 0
    with pytest.raises(RunNotFound):
        with registry.subscribe("nope"):
            pass
    registry.close()

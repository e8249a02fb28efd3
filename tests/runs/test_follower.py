"""The Redis registry's follower: one reader per process feeding every local subscriber (SPEC §12).

The race these tests pin down was found by a soak (issue 20): subscribers dropping and
resuming while runs stream killed the reader thread with ``feed expected seq 1, got 16``,
and every open stream of that process then got no live events. The interleavings are
made deterministic by calling the reader's step (``_publish``) while a subscriber is held
in its backlog load.
"""

from __future__ import annotations

import logging
import threading

import pytest

from tests.helpers.redis_support import delete_prefix, redis_url, unique_prefix
from tests.helpers.runs import parse_sse

WAIT = 5.0


@pytest.fixture
def reg():
    from chatsvc.runs.redis import RedisRunRegistry

    url, prefix = redis_url(), unique_prefix()
    registry = RedisRunRegistry(url, prefix=prefix)
    yield registry
    registry.close()
    delete_prefix(url, prefix)


def running_run(reg, events: int = 0) -> str:
    run_id = reg.create(kind="workflow", target_id=1, team_id=2, owner="user:3").run_id
    reg.mark_running(run_id)
    for n in range(1, events + 1):
        reg.append(run_id, "info", f"e{n}")
    return run_id


def stream_entries(reg, run_id: str, first: int, last: int) -> list:
    """What the reader's XREAD returns for these seqs: [(entry id, fields)]."""
    client = reg.dedicated_client(read_timeout=3)
    try:
        return client.xrange(reg.stream_key(run_id), f"0-{first}", f"0-{last}")
    finally:
        client.close()


def read_to_done(feed) -> list:
    data, after = b"", 0
    while True:
        found = feed.read(after, WAIT)
        assert found.data, "no event within WAIT"
        data, after = data + found.data, found.last_seq
        if found.finished:
            return parse_sse(data.decode())


def test_a_read_for_a_replaced_feed_is_not_published_into_the_new_one_still_loading(reg, monkeypatch):
    run_id = running_run(reg, events=15)
    with reg.subscribe(run_id) as first:  # subscriber A: its feed is loaded up to 15, then A leaves
        assert first.last_seq == 15
    reg.append(run_id, "info", "e16")
    late_read = stream_entries(reg, run_id, 16, 16)  # the reader's XREAD for A's feed, handled late

    loading, go_on = threading.Event(), threading.Event()
    backlog = reg.backlog

    def slow_backlog(*args, **kwargs):
        loading.set()
        assert go_on.wait(WAIT)
        return backlog(*args, **kwargs)

    monkeypatch.setattr(reg, "backlog", slow_backlog)
    seen = {}

    def subscriber_b():
        with reg.subscribe(run_id) as feed:
            seen["seqs"] = [event.id for event in parse_sse(feed.read(0, 0).data.decode())]

    thread = threading.Thread(target=subscriber_b)
    thread.start()
    assert loading.wait(WAIT)  # B's feed is in the follower's table, empty, loading its backlog
    assert reg._follower._publish(reg.stream_key(run_id), late_read) is None  # was: ValueError
    go_on.set()
    thread.join(WAIT)
    assert seen["seqs"] == list(range(1, 17))  # every event once, in order


def test_a_read_that_starts_past_a_feeds_end_leaves_the_gap_to_the_next_read(reg):
    run_id = running_run(reg, events=3)
    with reg.subscribe(run_id) as feed:
        for n in (4, 5, 6):
            reg.append(run_id, "info", f"e{n}")
        beyond_a_gap = stream_entries(reg, run_id, 5, 6)  # seq 4 missing from this read
        reg._follower._publish(reg.stream_key(run_id), beyond_a_gap)
        assert feed.last_seq in (3, 4, 5, 6)  # the live reader may have published in between...
        reg.finish(run_id, "succeeded")
        events = read_to_done(feed)
    assert [e.id for e in events] == [1, 2, 3, 4, 5, 6, 7]  # ...but nothing is lost or repeated


@pytest.mark.parametrize("fault", ["_publish", "_read"])
def test_a_follower_that_fails_mid_stream_restarts_and_its_streams_lose_and_repeat_nothing(
        reg, monkeypatch, caplog, fault):
    run_id = running_run(reg)
    follower = reg._follower
    step = getattr(follower, fault)
    armed, fired = threading.Event(), threading.Event()

    def failing_once(*args, **kwargs):
        if armed.is_set() and not fired.is_set():
            fired.set()
            raise RuntimeError("injected fault")
        return step(*args, **kwargs)

    monkeypatch.setattr(follower, fault, failing_once)
    caplog.set_level(logging.ERROR, logger="chatsvc.runs")
    with reg.subscribe(run_id) as feed:
        data, after = b"", 0
        for n in range(1, 21):
            if n == 10:
                armed.set()
            reg.append(run_id, "info", f"e{n}")
            found = feed.read(after, WAIT) if n in (5, 15) else None
            if found is not None:
                data, after = data + found.data, found.last_seq
        assert fired.wait(WAIT)
        reg.finish(run_id, "succeeded")
        while True:
            found = feed.read(after, WAIT)
            assert found.data, "the stream stalled after the fault"
            data, after = data + found.data, found.last_seq
            if found.finished:
                break
    events = parse_sse(data.decode())
    assert [e.id for e in events] == list(range(1, 22)) and events[-1].event == "done"
    assert "run follower failed; restarting it" in caplog.text
    assert follower._reader.running  # the same supervised thread, still reading


def test_a_wake_that_fails_leaves_no_feed_behind(reg, monkeypatch):
    """A soak found feeds kept for the life of the process: the wake-up of a new subscription
    failed (Redis slow or away) after the feed was registered, before anything could release it."""
    from chatsvc.runs.model import RegistryUnavailable

    def unavailable(*args, **kwargs):
        raise RegistryUnavailable()

    monkeypatch.setattr(reg, "wake_follower", unavailable)
    run_id = running_run(reg, events=2)
    with reg.subscribe(run_id) as feed:
        reg.append(run_id, "info", "e3")  # still followed: the reader takes it in by itself
        assert feed.read(2, WAIT).last_seq == 3
    assert reg._follower.followed == 0


def test_a_subscription_that_fails_after_its_backlog_leaves_no_feed_behind(reg, monkeypatch):
    run_id = running_run(reg, events=2)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot start the reader")

    monkeypatch.setattr(reg._follower._reader, "ensure_started", broken)
    with pytest.raises(RuntimeError):
        with reg.subscribe(run_id):
            pass
    assert reg._follower.followed == 0

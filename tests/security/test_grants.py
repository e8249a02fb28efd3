"""StreamGrants: recent answers of stream opens, reused for a moment and then forgotten."""

from __future__ import annotations

from chatsvc.security.grants import StreamGrants
from tests.helpers.runs import FakeClock


def test_answers_past_their_time_are_dropped_as_new_ones_come():
    clock = FakeClock(100.0)
    grants = StreamGrants(seconds=1.0, clock=clock)
    for n in range(1000):  # a stream opened every 10 ms, each for a run of its own
        assert grants.allowed("user:1", f"run-{n}", lambda: True)
        clock.now += 0.01
    # Only what the last second brought is held, not all 1,000 (the cap is 10,000).
    assert 95 <= len(grants._items) <= 101


def test_a_yes_is_reused_within_its_time_and_asked_again_after():
    clock = FakeClock(100.0)
    grants = StreamGrants(seconds=1.0, clock=clock)
    asked = []

    def ask() -> bool:
        asked.append(1)
        return True

    assert grants.allowed("user:1", "run", ask) and grants.allowed("user:1", "run", ask)
    assert len(asked) == 1
    clock.now += 1.5
    assert grants.allowed("user:1", "run", ask)
    assert len(asked) == 2


def test_a_refusal_is_never_kept():
    grants = StreamGrants(seconds=1.0, clock=FakeClock())
    assert not grants.allowed("user:1", "run", lambda: False)
    assert grants._items == {}

"""Password hashing: a few at a time per process, 503 for a request that gets no turn."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatsvc.errors import ServiceUnavailable
from chatsvc.passwords import PasswordHasher


def test_a_hash_checks_its_own_password_only():
    hasher = PasswordHasher()
    stored = hasher.hash("correct horse")
    assert stored.startswith("scrypt:") and "correct horse" not in stored
    assert hasher.check(stored, "correct horse")
    assert not hasher.check(stored, "correct horsE")


class Slow:
    """Runs the work after a pause, counting how many run at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = self.most = 0
        self._lock = threading.Lock()

    def __call__(self, work):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.seconds)
            return work()
        finally:
            with self._lock:
                self.running -= 1


def test_at_most_at_once_run_together_and_the_rest_wait_their_turn():
    slow = Slow(0.05)
    hasher = PasswordHasher(at_once=2, wait_seconds=5, run=slow)
    stored = PasswordHasher().hash("pw")
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: hasher.check(stored, "pw"), range(6)))
    assert answers == [True] * 6
    assert slow.most == 2


def test_a_request_that_gets_no_turn_in_time_is_503_with_retry_after():
    hasher = PasswordHasher(at_once=1, wait_seconds=0.1, run=Slow(1.0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        holding = pool.submit(hasher.hash, "first")
        time.sleep(0.2)  # the first one has the only turn
        with pytest.raises(ServiceUnavailable) as refused:
            hasher.hash("second")
        assert holding.result().startswith("scrypt:")
    assert refused.value.retry_after == 1
    assert "Too many sign-ins" in str(refused.value)

"""Hashing and checking passwords without stalling the process.

werkzeug's scrypt hash costs about 0.12 s of CPU and 32 MiB of memory on this project's
machine, for a hash and for a check alike. Under gevent every request and every open
stream of a worker share one OS thread, so a check made in the request would stop all of
them for that long: eight clients sending wrong passwords to ``/auth/login`` (no
credentials needed) held ``/healthz`` at 1.1 s. So a hash runs in a native thread
(hashlib releases the GIL while it works), and at most ``at_once`` run at once in a
process, which bounds their CPU and memory; a request that gets no turn within
``wait_seconds`` is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

from werkzeug.security import check_password_hash, generate_password_hash

from chatsvc.concurrency import under_gevent
from chatsvc.errors import ServiceUnavailable

T = TypeVar("T")

AT_ONCE = 2  # per process: each uses a core and 32 MiB while it runs
WAIT_SECONDS = 5.0
RETRY_AFTER_SECONDS = 1


def _off_the_event_loop(work: Callable[[], T]) -> T:
    """``work()`` in a native thread when gevent has patched threading (the other greenlets
    go on meanwhile); else right here (a threaded server: this request's own thread)."""
    if not under_gevent():
        return work()
    from gevent import get_hub

    return get_hub().threadpool.apply(work)


class PasswordHasher:
    """Hashes and checks passwords a few at a time, off the event loop."""

    def __init__(self, at_once: int = AT_ONCE, wait_seconds: float = WAIT_SECONDS,
                 run: Callable[[Callable[[], T]], T] = _off_the_event_loop) -> None:
        self._turns = threading.BoundedSemaphore(at_once)
        self._wait_seconds = wait_seconds
        self._run = run

    def hash(self, password: str) -> str:
        return self._take_turn(lambda: generate_password_hash(password))

    def check(self, password_hash: str, password: str) -> bool:
        return self._take_turn(lambda: check_password_hash(password_hash, password))

    def _take_turn(self, work: Callable[[], T]) -> T:
        if not self._turns.acquire(timeout=self._wait_seconds):
            raise ServiceUnavailable("Too many sign-ins at once; try again shortly",
                                     retry_after=RETRY_AFTER_SECONDS)
        try:
            return self._run(work)
        finally:
            self._turns.release()


@functools.cache
def hasher() -> PasswordHasher:
    """The process's hasher, made at first use: under gunicorn that is in the worker, after
    gevent has patched threading, so its semaphore is gevent's."""
    return PasswordHasher()


def hash_password(password: str) -> str:
    return hasher().hash(password)


def check_password(password_hash: str, password: str) -> bool:
    return hasher().check(password_hash, password)

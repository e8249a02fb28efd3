"""The leases a process holds on the runs it executes (SPEC §12, "Leases").

Each live run's hash carries a lease (Redis time, ms) and the global ``leases`` index
mirrors it. The executing process renews every lease it holds three times per lease
period, in one round trip; when the process dies the lease runs out and any other
process's gc fails the run ``WorkerLost`` (``registry.RedisRunRegistry.gc``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import redis

from chatsvc.concurrency import ProcessThread
from chatsvc.runs.redis import scripts

log = logging.getLogger("chatsvc.runs")

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ReadOnlyError)


class Leases:
    """The runs this process executes, and the daemon thread that keeps their leases."""

    def __init__(self, client: redis.Redis, run_key: Callable[[str], str], index_key: str,
                 seconds: float) -> None:
        self._redis = client
        self._run_key = run_key
        self._index_key = index_key
        self.seconds = seconds
        self.ms = max(1, int(seconds * 1000))
        self._renew = client.register_script(scripts.RENEW)
        self._renew_index = client.register_script(scripts.RENEW_INDEX)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._renewer = ProcessThread("chatsvc-run-leases", self._renew_loop)

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def hold(self, run_id: str) -> None:
        """This process executes the run: keep its lease from now on."""
        with self._lock:
            self._held.add(run_id)
        self._renewer.ensure_started()

    def release(self, run_id: str) -> None:
        with self._lock:
            self._held.discard(run_id)

    def renew(self) -> None:
        """Extends the lease of every run this process executes: one round trip."""
        with self._lock:
            held = list(self._held)
        if not held:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in held:
                self._renew(keys=[self._run_key(run_id)], args=[self.ms], client=pipe)
            self._renew_index(keys=[self._index_key], args=[self.ms, *held], client=pipe)
            results = pipe.execute()
        for run_id, lease in zip(held, results):
            if not lease:  # ended elsewhere (timeout, lease sweep) or expired
                self.release(run_id)

    def close(self) -> None:
        self._renewer.stop()

    def _renew_loop(self, stop: threading.Event) -> None:
        # Three renewals per lease: one late or failed renewal does not lose it.
        while not stop.wait(self.seconds / 3):
            try:
                self.renew()
            except _UNAVAILABLE as exc:
                log.warning("cannot renew run leases (Redis unavailable: %s); retrying", exc)
            except Exception:
                log.exception("renewing run leases failed; retrying in %gs", self.seconds / 3)

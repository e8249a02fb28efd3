"""Redis backend of the run registry (SPEC §10, §12): runs shared by every worker and host.

Keys (``P`` = ``CHATSVC_REDIS_PREFIX``; every key of one run shares the hash tag
``{<run_id>}``, so a per-run script touches one Redis Cluster slot):

- ``P run:{id}`` HASH: kind, target_id, team_id, owner, status, created_at,
  started_at, finished_at, result, error (JSON), cancel, n (events so far),
  truncated, done_seq, deadline and lease (Redis server time, ms).
- ``P events:{id}`` STREAM: event ``seq`` is entry id ``0-<seq>`` with field
  ``e`` = the event's compact JSON (byte-identical to the memory backend's SSE
  ``data:``); the run's end is entry ``0-<done_seq>`` with field ``d`` = the
  ``done`` JSON. A follower (``XREAD BLOCK``) therefore sees events and ``done``
  in one order from one key.
- Global keys under ``P {global}:``: ``runs`` (ZSET, newest-first listing),
  ``live`` (ZSET run → deadline: live-run limit and run timeout), ``leases``
  (ZSET run → lease expiry), ``owners`` (HASH run → owner) and ``owner_counts``
  (HASH owner → live runs), ``finished`` (ZSET run → when its keys expire, for
  pruning ``runs``).

Every change that checks something and then writes is one Lua script (``scripts``), so
it is atomic across processes. A finished run's two keys ``PEXPIRE`` after
``CHATSVC_RUN_TTL_SECONDS``; the global indexes are pruned by ``gc``. Lease and
timeout decisions use Redis's own clock (``TIME``), so hosts' clocks do not
matter; the timestamps users see come from the writing process's clock, like
the memory backend's.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from typing import Any, Callable, ContextManager, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatsvc.runs.feed import RunFeed
from chatsvc.runs.model import RegistryUnavailable, RunInfo, RunNotFound, freeze
from chatsvc.runs.redis import scripts
from chatsvc.runs.redis.follower import RedisFollower
from chatsvc.runs.redis.leases import Leases
from chatsvc.runs.registry import RunRegistry
from chatsvc.runs.sse import compact_json, done_json

log = logging.getLogger("chatsvc.runs")

# Connection and timeout errors (BusyLoadingError is a ConnectionError); a
# read-only replica after a failover is "unavailable" too, not a bug.
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ReadOnlyError)
CANCEL_CACHE_SECONDS = 0.2  # how long a "not cancelled" answer is reused
SWEEP_BATCH = 200  # runs ended per gc pass and kind (leases, timeouts)

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """Turns "Redis cannot be reached" into RegistryUnavailable (503 + Retry-After)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise RegistryUnavailable() from exc

    return wrapper  # type: ignore[return-value]


def _event_tail(ts: float, level: str, message: str, data: dict) -> str:
    """An event's JSON without its opening ``{"seq":N,`` (Lua prepends it)."""
    return compact_json({"ts": ts, "level": level, "message": message, "data": data})[1:]


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


class RedisRunRegistry(RunRegistry):
    """Runs in Redis: shared by every process and host that uses the same Redis and prefix."""

    cancel_poll_seconds = 0.5  # a cancel from another host reaches a sleeping job within this

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "chatsvc:",
        lease_seconds: float = 15,
        pool_size: int = 3,
        connect_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        **limits: Any,
    ) -> None:
        super().__init__(clock=clock, **limits)
        self._url = url
        self._connect_timeout = connect_timeout
        self._prefix = prefix
        self._ttl_ms = max(1, int(self.limits.ttl_seconds * 1000))
        # The `events_truncated` event after its ts (the same for every event of every run).
        self._truncated_rest = _event_tail(0, "warn", "events_truncated",
                                           self.limits.truncated_event())[len('"ts":0'):]
        # A small fixed pool: a worker never opens more command connections than
        # this, however many greenlets call in (they wait up to `timeout` for one).
        # One retry without backoff: a connection broken by a Redis restart is
        # replaced at once; a Redis that is down fails fast (never a hang).
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=connect_timeout + 1,
            socket_connect_timeout=connect_timeout,
            socket_timeout=connect_timeout + 2,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
            decode_responses=True,
            client_name=f"{prefix}registry",
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        g = f"{prefix}{{global}}:"
        self._k_runs, self._k_live, self._k_leases = g + "runs", g + "live", g + "leases"
        self._k_owners, self._k_counts, self._k_finished = g + "owners", g + "owner_counts", g + "finished"
        script = self._redis.register_script
        self._s_create, self._s_admit = script(scripts.CREATE), script(scripts.ADMIT)
        self._s_release, self._s_append = script(scripts.RELEASE), script(scripts.APPEND)
        self._s_finish, self._s_mark_running = script(scripts.FINISH), script(scripts.MARK_RUNNING)
        self._s_cancel, self._s_expire = script(scripts.CANCEL), script(scripts.EXPIRE)
        self._s_sweep, self._s_prune = script(scripts.SWEEP), script(scripts.PRUNE)
        self.leases = Leases(self._redis, self.run_key, self._k_leases, lease_seconds)
        self._follower = RedisFollower(self)  # live delivery to this process's subscribers
        self._cancel_checked: dict[str, float] = {}  # run → monotonic time of a "no"
        self._cancelled: set[str] = set()

    # --- keys ---------------------------------------------------------------------

    def run_key(self, run_id: str) -> str:
        return f"{self._prefix}run:{{{run_id}}}"

    def stream_key(self, run_id: str) -> str:
        """The run's event stream (what the follower ``XREAD``s)."""
        return f"{self._prefix}events:{{{run_id}}}"

    def run_id_of_stream(self, stream_key: str) -> str:
        return stream_key[len(self._prefix) + len("events:{"):-1]

    def follower_wake_key(self, token: str) -> str:
        """A follower's own stream: an entry there ends its XREAD BLOCK (see follower.py)."""
        return f"{self._prefix}follower:{{{token}}}"

    @_guarded
    def wake_follower(self, key: str, ttl_seconds: int) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(key, ttl_seconds)
            pipe.execute()

    def dedicated_client(self, *, read_timeout: float, name: str = "follower") -> redis.Redis:
        """A client with one connection of its own (e.g. the follower's ``XREAD BLOCK``).

        Same URL, connect timeout and retry policy as the pool; ``read_timeout``
        must exceed the longest BLOCK it will send. Named ``<prefix><name>``.
        """
        return redis.Redis.from_url(
            self._url, single_connection_client=True,
            socket_connect_timeout=self._connect_timeout, socket_timeout=read_timeout,
            retry=Retry(NoBackoff(), 1), health_check_interval=30, decode_responses=True,
            client_name=f"{self._prefix}{name}")

    def _release_keys(self) -> list[str]:
        return [self._k_live, self._k_leases, self._k_owners, self._k_counts,
                self._k_finished, self._k_runs]

    # --- RunRegistry ------------------------------------------------------------------

    @_guarded
    def create(self, *, kind: str, target_id: int, team_id: int, owner: str) -> RunInfo:
        run_id = uuid.uuid4().hex
        created_at = self._clock()
        key = self.run_key(run_id)
        # The hash exists before the run is listed, so a listing never mistakes
        # a run being created for an expired one.
        limits, timeout_ms = self.limits, int(self.limits.run_timeout_seconds * 1000)
        safety_ms = 2 * timeout_ms + self._ttl_ms + 4 * self.leases.ms
        now_ms, order = self._s_create(keys=[key], args=[
            kind, target_id, team_id, owner, repr(created_at),
            timeout_ms, self.leases.ms, safety_ms])
        admitted = self._s_admit(
            keys=[self._k_runs, self._k_live, self._k_leases, self._k_owners, self._k_counts],
            args=[run_id, owner, limits.max_live_runs,
                  -1 if limits.max_active_per_owner is None else limits.max_active_per_owner,
                  int(now_ms) + timeout_ms, int(now_ms) + self.leases.ms, order])
        if admitted != 1:
            self._redis.delete(key)
            if admitted == -2:
                raise limits.owner_full()
            raise limits.full()
        self.leases.hold(run_id)  # this process executes the run
        return RunInfo(run_id=run_id, kind=kind, target_id=target_id, team_id=team_id,
                       owner=owner, status="queued", created_at=created_at, started_at=None,
                       finished_at=None, event_count=0)

    @_guarded
    def get(self, run_id: str) -> RunInfo | None:
        return self._info(run_id, self._redis.hgetall(self.run_key(run_id)))

    @_guarded
    def list_runs(self) -> list[RunInfo]:
        run_ids = self._redis.zrevrange(self._k_runs, 0, -1)
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(self.run_key(run_id))
            fields = pipe.execute()
        runs, gone = [], []
        for run_id, values in zip(run_ids, fields):
            info = self._info(run_id, values)
            if info is None:
                gone.append(run_id)  # expired since gc last pruned the listing
            else:
                runs.append(info)
        if gone:
            self._forget(gone)
        return runs

    @_guarded
    def mark_running(self, run_id: str) -> bool:
        if not self._s_mark_running(keys=[self.run_key(run_id)],
                                    args=[repr(self._clock()), self.leases.ms]):
            return False
        self.leases.hold(run_id)
        return True

    @_guarded
    def _append(self, run_id: str, level: str, message: str, data: dict) -> int | None:
        ts = self._clock()
        seq = self._s_append(
            keys=[self.run_key(run_id), self.stream_key(run_id)],
            args=[level, _event_tail(ts, level, message, data), self.limits.max_events_per_run,
                  '"ts":' + compact_json(ts) + self._truncated_rest])
        return seq if seq > 0 else None

    @_guarded
    def _finish(self, run_id: str, status: str, result: Any, error: dict | None) -> bool:
        self._cancel_checked.pop(run_id, None)
        self._cancelled.discard(run_id)
        # Dropped first: should this call fail (Redis away), the lease runs out and
        # another process fails the run, instead of it staying `running` until its timeout.
        self.leases.release(run_id)
        done_seq = self._s_finish(
            keys=[self.run_key(run_id), self.stream_key(run_id)],
            args=[status, repr(self._clock()),
                  "" if result is None else compact_json(result), "" if error is None else compact_json(error),
                  done_json(run_id, status, result, error), self._ttl_ms])
        if not done_seq:
            return False
        try:
            self._release([run_id])
        except _UNAVAILABLE:
            # The run is finished; its lease entry makes gc release it later.
            log.warning("run %s finished but not yet released from the global indexes", run_id)
        return True

    def subscribe(self, run_id: str) -> ContextManager[RunFeed]:
        """This process's feed of the run, kept live by its one follower connection."""
        return self._follower.subscribe(run_id)

    @_guarded
    def backlog(self, run_id: str, after_seq: int = 0) -> tuple[list[tuple[int, str]], str | None]:
        """The run's events after ``after_seq`` as ``(seq, event_json)``, and its ``done`` JSON if it ended.

        ``done`` is returned even when ``after_seq`` is already past it (a resume
        after the end). Raises RunNotFound if the run does not exist.
        """
        stream = self.stream_key(run_id)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.run_key(run_id))
            pipe.xrange(stream, f"(0-{max(0, after_seq)}", "+")
            pipe.xrevrange(stream, "+", "-", count=1)
            exists, entries, last = pipe.execute()
        if not exists:
            raise RunNotFound(run_id)
        events = [(int(entry_id[2:]), fields["e"]) for entry_id, fields in entries if "e" in fields]
        done = last[0][1].get("d") if last else None
        return events, done

    @_guarded
    def request_cancel(self, run_id: str) -> bool:
        self._cancel_checked.pop(run_id, None)  # this process knows better than its cache
        return bool(self._s_cancel(keys=[self.run_key(run_id)]))

    def is_cancel_requested(self, run_id: str) -> bool:
        """Polled by the executing job; a "no" is reused for CANCEL_CACHE_SECONDS.

        While Redis is unreachable this answers "no" rather than failing the
        run: a cancel request could not have been recorded meanwhile anyway.
        """
        if run_id in self._cancelled:
            return True
        now = time.monotonic()
        checked = self._cancel_checked.get(run_id)
        if checked is not None and now - checked < CANCEL_CACHE_SECONDS:
            return False
        try:
            flag = self._redis.hget(self.run_key(run_id), "cancel")
        except _UNAVAILABLE:
            log.warning("run %s: cannot read its cancel flag (Redis unavailable)", run_id)
            return False
        if flag == "1":
            self._cancelled.add(run_id)
            self._cancel_checked.pop(run_id, None)
            return True
        self._cancel_checked[run_id] = now
        return False

    @_guarded
    def gc(self, now: float | None = None) -> int:
        """Ends runs whose lease or deadline passed (Redis time; ``now`` is ignored), prunes the listing."""
        orphaned, overdue = self._s_sweep(keys=[self._k_leases, self._k_live], args=[SWEEP_BATCH])
        ended = []
        if orphaned:
            lease = self.leases.seconds
            ended += self._expire(orphaned, "lease", "run_orphaned", {"lease_seconds": lease},
                                  {"type": "WorkerLost",
                                   "message": f"the process executing this run stopped "
                                              f"(its lease of {lease:g} seconds expired)"})
        if overdue:
            ended += self._expire(overdue, "deadline", "run_timeout",
                                  self.limits.timeout_event(), self.limits.timeout_error())
        if ended:
            self._release(ended)
        return int(self._s_prune(keys=[self._k_runs, self._k_finished], args=[1000]))

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except _UNAVAILABLE:
            return False

    def close_streams(self) -> None:
        self._follower.close()

    def close(self) -> None:
        """Stops this process's gc, lease and follower threads and closes its connections."""
        super().close()
        self._follower.close()
        self.leases.close()
        self._pool.disconnect()

    # --- ending runs from any process -------------------------------------------------

    def _expire(self, run_ids: list[str], field: str, message: str, data: dict,
                error: dict) -> list[str]:
        """Fails each run whose `field` (lease or deadline) passed; returns those now over."""
        now = self._clock()
        tail, error_json = _event_tail(now, "error", message, data), compact_json(error)
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                self._s_expire(keys=[self.run_key(run_id), self.stream_key(run_id)],
                               args=[field, tail, repr(now), error_json,
                                     done_json(run_id, "failed", None, error), self._ttl_ms],
                               client=pipe)
            results = pipe.execute()
        for run_id, outcome in zip(run_ids, results):
            if outcome == 1:
                log.warning("run %s failed: %s", run_id, error["type"])
        # 0: already over (its release was lost, or it expired): release it too.
        return [run_id for run_id, outcome in zip(run_ids, results) if outcome != -1]

    def _release(self, run_ids: list[str]) -> None:
        keys = self._release_keys()
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                self._s_release(keys=keys, args=[run_id, self._ttl_ms], client=pipe)
            pipe.execute()

    def _forget(self, run_ids: list[str]) -> None:
        """Runs whose keys expired: out of the listing and every count."""
        self._release(run_ids)
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._k_runs, *run_ids)
            pipe.zrem(self._k_finished, *run_ids)
            pipe.execute()

    # --- decoding ---------------------------------------------------------------------

    @staticmethod
    def _info(run_id: str, values: dict[str, str]) -> RunInfo | None:
        if not values or "status" not in values:
            return None
        result, error = values.get("result"), values.get("error")
        done_seq = values.get("done_seq")
        return RunInfo(
            run_id=run_id, kind=values["kind"], target_id=int(values["target_id"]),
            team_id=int(values["team_id"]), owner=values["owner"], status=values["status"],
            created_at=float(values["created_at"]), started_at=_float(values.get("started_at")),
            finished_at=_float(values.get("finished_at")), event_count=int(values.get("n", 0)),
            result=None if result is None else freeze(json.loads(result)),
            error=None if error is None else freeze(json.loads(error)),
            cancel_requested=values.get("cancel") == "1",
            done_seq=None if done_seq is None else int(done_seq),
        )

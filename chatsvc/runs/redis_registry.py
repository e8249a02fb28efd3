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

Every change that checks something and then writes is one Lua script, so it is
atomic across processes. A finished run's two keys ``PEXPIRE`` after
``CHATSVC_RUN_TTL_SECONDS``; the global indexes are pruned by ``gc``. Lease and
timeout decisions use Redis's own clock (``TIME``), so hosts' clocks do not
matter; the timestamps users see come from the writing process's clock, like
the memory backend's.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, ContextManager, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatsvc.runs.feed import RunFeed
from chatsvc.runs.follower import RedisFollower
from chatsvc.runs.registry import (
    LEVELS,
    TERMINAL_STATUSES,
    Event,
    ReadResult,
    RegistryFull,
    RegistryUnavailable,
    RunInfo,
    RunNotFound,
    RunRegistry,
    TooManyActiveRuns,
    _freeze,
)
from chatsvc.runs.shape import done_body
from chatsvc.runs.sse import _compact_json

log = logging.getLogger("chatsvc.runs")

# Connection and timeout errors (BusyLoadingError is a ConnectionError); a
# read-only replica after a failover is "unavailable" too, not a bug.
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ReadOnlyError)
CANCEL_CACHE_SECONDS = 0.2  # how long a "not cancelled" answer is reused
READ_BLOCK_MS = 1000  # longest XREAD BLOCK in read(): it holds a pooled connection
SWEEP_BATCH = 200  # runs ended per gc pass and kind (leases, timeouts)

# --- Lua ------------------------------------------------------------------------
# Shared functions, prepended to each per-run script: one definition of "store
# an event", "apply the events limit" and "finish", used by append, finish,
# lease expiry and run timeout alike.
_PRELUDE = r"""
local TERMINAL = {succeeded = true, failed = true, cancelled = true}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function is_live(run)
  local status = redis.call('HGET', run, 'status')
  return status and not TERMINAL[status]
end
-- Stores the next event; `tail` is its JSON after the seq: "ts":...,"data":...}
local function store(run, stream, tail)
  local n = redis.call('HINCRBY', run, 'n', 1)
  redis.call('XADD', stream, '0-' .. n, 'e', '{"seq":' .. n .. ',' .. tail)
  if n == 1 then  -- the stream is new: it expires with the run hash
    local ttl = redis.call('PTTL', run)
    if ttl > 0 then redis.call('PEXPIRE', stream, ttl) end
  end
  return n
end
-- The events limit: errors always pass; the first refused event adds one
-- `events_truncated` warning. Returns the seq, or 0 when dropped.
local function append(run, stream, level, tail, max_events, truncated_tail)
  local n = tonumber(redis.call('HGET', run, 'n'))
  if level ~= 'error' and n >= tonumber(max_events) then
    if redis.call('HSETNX', run, 'truncated', '1') == 1 then
      store(run, stream, truncated_tail)
    end
    return 0
  end
  return store(run, stream, tail)
end
-- Ends a live run: state, the `done` stream entry, and both keys' TTL.
local function finish(run, stream, status, finished_at, result, err, done_json, ttl_ms)
  local done_seq = tonumber(redis.call('HGET', run, 'n')) + 1
  redis.call('HSET', run, 'status', status, 'finished_at', finished_at, 'done_seq', done_seq)
  if result ~= '' then redis.call('HSET', run, 'result', result) end
  if err ~= '' then redis.call('HSET', run, 'error', err) end
  redis.call('XADD', stream, '0-' .. done_seq, 'd', done_json)
  redis.call('PEXPIRE', run, ttl_ms)
  redis.call('PEXPIRE', stream, ttl_ms)
  return done_seq
end
"""

# KEYS run; ARGV kind, target_id, team_id, owner, created_at, timeout_ms, lease_ms, safety_ms
# -> {now_ms, order}: the run's deadline and lease start now (server time).
_CREATE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'target_id', ARGV[2], 'team_id', ARGV[3],
  'owner', ARGV[4], 'status', 'queued', 'created_at', ARGV[5], 'n', 0,
  'deadline', now + tonumber(ARGV[6]), 'lease', now + tonumber(ARGV[7]))
-- A safety net: even if no process ever finishes the run, its keys go away.
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {now, t[1] .. string.format('%06d', tonumber(t[2]))}
"""

# KEYS runs, live, leases, owners, owner_counts
# ARGV run_id, owner, max_live, max_per_owner (-1: none), deadline_ms, lease_until_ms, order
# -> 1 admitted, -1 registry full, -2 owner's limit
_ADMIT = r"""
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
local owned = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0')
if tonumber(ARGV[4]) >= 0 and owned >= tonumber(ARGV[4]) then return -2 end
redis.call('ZADD', KEYS[1], ARGV[7], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[5], ARGV[2], 1)
return 1
"""

# KEYS live, leases, owners, owner_counts, finished, runs; ARGV run_id, ttl_ms
# The run no longer counts anywhere; idempotent (a second call changes nothing).
_RELEASE = r"""
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner then
  redis.call('HDEL', KEYS[3], ARGV[1])
  if redis.call('HINCRBY', KEYS[4], owner, -1) <= 0 then redis.call('HDEL', KEYS[4], owner) end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZSCORE', KEYS[6], ARGV[1]) then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[5], tonumber(t[1]) * 1000 + tonumber(ARGV[2]), ARGV[1])
end
return 1
"""

# KEYS run, stream; ARGV level, tail, max_events, truncated_tail -> seq, 0 dropped, -1 refused
_APPEND = _PRELUDE + r"""
if not is_live(KEYS[1]) then return -1 end
return append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""

# KEYS run, stream; ARGV status, finished_at, result, error, done_json, ttl_ms -> done_seq or 0
_FINISH = _PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
return finish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""

# KEYS run; ARGV started_at, lease_ms -> 1 if queued → running
_MARK_RUNNING = _PRELUDE + r"""
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1],
  'lease', now_ms() + tonumber(ARGV[2]))
return 1
"""

# KEYS run -> 1 if the live run's cancel flag is now set
_CANCEL = _PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
return 1
"""

# KEYS run; ARGV lease_ms -> the new lease expiry, or 0 when the run is over
_RENEW = _PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
local lease = now_ms() + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'lease', lease)
return lease
"""

# KEYS run, stream; ARGV field ('lease' | 'deadline'), event_tail, finished_at, error, done_json, ttl_ms
# -> 1 ended now, 0 already over (or unknown), -1 not expired (e.g. renewed meanwhile)
# Whichever process sweeps first ends the run; the others find it finished.
_EXPIRE = _PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], ARGV[1])) >= now_ms() then return -1 end
store(KEYS[1], KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'cancel', '1')  -- if the job still runs somewhere, it stops
finish(KEYS[1], KEYS[2], 'failed', ARGV[3], '', ARGV[4], ARGV[5], ARGV[6])
return 1
"""

# KEYS leases, live; ARGV limit -> {expired leases, overdue runs}
_SWEEP = _PRELUDE + r"""
local now = now_ms()
return {redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, ARGV[1]),
        redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, ARGV[1])}
"""

# KEYS leases; ARGV lease_ms, run ids... : the index follows the renewed leases
_RENEW_INDEX = _PRELUDE + r"""
local lease = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', lease, ARGV[i]) end
return #ARGV - 1
"""

# KEYS runs, finished; ARGV limit -> how many expired runs left the listing
_PRUNE = _PRELUDE + r"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms(), 'LIMIT', 0, ARGV[1])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return #ids
"""

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


def _json(value: Any) -> str:
    return _compact_json(value)


def _event_tail(ts: float, level: str, message: str, data: dict) -> str:
    """An event's JSON without its opening ``{"seq":N,`` (Lua prepends it)."""
    return _json({"ts": ts, "level": level, "message": message, "data": data})[1:]


def _done_json(run_id: str, status: str, result: Any, error: dict | None) -> str:
    """The ``done`` event's data, exactly as ``sse.encode_done`` writes it."""
    return _json(done_body(run_id, status, result, error))


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
        ttl_seconds: float = 900,
        run_timeout_seconds: float = 600,
        max_events_per_run: int = 10_000,
        max_live_runs: int = 1_000,
        max_active_per_owner: int | None = None,
        lease_seconds: float = 15,
        pool_size: int = 3,
        connect_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._url = url
        self._connect_timeout = connect_timeout
        self._prefix = prefix
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._run_timeout = run_timeout_seconds
        self._max_events = max_events_per_run
        self._max_live = max_live_runs
        self._max_per_owner = max_active_per_owner
        # The `events_truncated` event after its ts (the same for every event of every run).
        self._truncated_rest = _event_tail(0, "warn", "events_truncated",
                                           {"limit": max_events_per_run})[len('"ts":0'):]
        self._lease = lease_seconds
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._clock = clock
        # A small fixed pool: a worker never opens more command connections than
        # this, however many greenlets call in (they wait up to `timeout` for one).
        # One retry without backoff: a connection broken by a Redis restart is
        # replaced at once; a Redis that is down fails fast (never a hang).
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=connect_timeout + 1,
            socket_connect_timeout=connect_timeout,
            socket_timeout=connect_timeout + READ_BLOCK_MS / 1000 + 1,
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
        self._s_create, self._s_admit, self._s_release = script(_CREATE), script(_ADMIT), script(_RELEASE)
        self._s_append, self._s_finish = script(_APPEND), script(_FINISH)
        self._s_mark_running, self._s_cancel = script(_MARK_RUNNING), script(_CANCEL)
        self._s_renew, self._s_expire, self._s_sweep = script(_RENEW), script(_EXPIRE), script(_SWEEP)
        self._s_renew_index, self._s_prune = script(_RENEW_INDEX), script(_PRUNE)
        # Leases this process holds (the runs it executes), renewed by a daemon
        # thread that, like the gc thread, belongs to the process that started it.
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_stop: threading.Event | None = None
        self._renewer_pid: int | None = None
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
        safety_ms = int((2 * self._run_timeout + self._ttl_ms / 1000 + 4 * self._lease) * 1000)
        now_ms, order = self._s_create(keys=[key], args=[
            kind, target_id, team_id, owner, repr(created_at),
            int(self._run_timeout * 1000), self._lease_ms, safety_ms])
        admitted = self._s_admit(
            keys=[self._k_runs, self._k_live, self._k_leases, self._k_owners, self._k_counts],
            args=[run_id, owner, self._max_live,
                  -1 if self._max_per_owner is None else self._max_per_owner,
                  int(now_ms) + int(self._run_timeout * 1000), int(now_ms) + self._lease_ms, order])
        if admitted != 1:
            self._redis.delete(key)
            if admitted == -2:
                raise TooManyActiveRuns(f"too many active runs for this caller (limit {self._max_per_owner})")
            raise RegistryFull(f"too many live runs (limit {self._max_live})")
        self._hold(run_id)  # this process executes the run
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
                                    args=[repr(self._clock()), self._lease_ms]):
            return False
        self._hold(run_id)
        return True

    @_guarded
    def append(self, run_id: str, level: str, message: str, data: dict | None = None) -> int | None:
        if level not in LEVELS:
            raise ValueError(f"unknown event level {level!r}; expected one of {sorted(LEVELS)}")
        if data is not None and not isinstance(data, dict):
            raise TypeError(f"event data must be a dict, not {type(data).__name__}")
        ts = self._clock()
        seq = self._s_append(
            keys=[self.run_key(run_id), self.stream_key(run_id)],
            args=[level, _event_tail(ts, level, message, data or {}), self._max_events,
                  '"ts":' + _json(ts) + self._truncated_rest])
        return seq if seq > 0 else None

    @_guarded
    def finish(self, run_id: str, status: str, *, result: Any = None,
               error: dict | None = None) -> bool:
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is not a terminal status; "
                             f"expected one of {sorted(TERMINAL_STATUSES)}")
        self._cancel_checked.pop(run_id, None)
        self._cancelled.discard(run_id)
        # Dropped first: should this call fail (Redis away), the lease runs out and
        # another process fails the run, instead of it staying `running` until its timeout.
        self._unhold(run_id)
        done_seq = self._s_finish(
            keys=[self.run_key(run_id), self.stream_key(run_id)],
            args=[status, repr(self._clock()),
                  "" if result is None else _json(result), "" if error is None else _json(error),
                  _done_json(run_id, status, result, error), self._ttl_ms])
        if not done_seq:
            return False
        try:
            self._release([run_id])
        except _UNAVAILABLE:
            # The run is finished; its lease entry makes gc release it later.
            log.warning("run %s finished but not yet released from the global indexes", run_id)
        return True

    @_guarded
    def read(self, run_id: str, after_seq: int, timeout: float) -> ReadResult:
        """Like the memory backend's; waits in ``XREAD BLOCK`` slices on a pooled connection.

        Live SSE delivery goes through ``subscribe`` (one follower per process);
        this is for callers that want one run's events in a plain loop.
        """
        after_seq = max(0, after_seq)
        deadline = time.monotonic() + max(0.0, timeout)
        key, stream = self.run_key(run_id), self.stream_key(run_id)
        while True:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(key)
                pipe.xrange(stream, f"(0-{after_seq}", "+")
                values, entries = pipe.execute()
            info = self._info(run_id, values)
            if info is None:
                raise RunNotFound(run_id)
            events = [Event.from_json(fields["e"]) for _, fields in entries if "e" in fields]
            if events or info.finished:
                return ReadResult(events=events, done=info if info.finished else None)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ReadResult(events=[], done=None)
            block = max(1, min(READ_BLOCK_MS, int(remaining * 1000)))
            self._redis.xread({stream: f"0-{after_seq}"}, count=1, block=block)

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
            ended += self._expire(orphaned, "lease", "run_orphaned", {"lease_seconds": self._lease},
                                  {"type": "WorkerLost",
                                   "message": f"the process executing this run stopped "
                                              f"(its lease of {self._lease:g} seconds expired)"})
        if overdue:
            ended += self._expire(overdue, "deadline", "run_timeout",
                                  {"timeout_seconds": self._run_timeout},
                                  {"type": "RunTimeout",
                                   "message": f"run did not finish within {self._run_timeout:g} seconds"})
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
        stop, thread, pid = self._renewer_stop, self._renewer, self._renewer_pid
        self._renewer = self._renewer_stop = self._renewer_pid = None
        if stop is not None:
            stop.set()
        if thread is not None and pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._pool.disconnect()

    # --- leases -----------------------------------------------------------------------

    def _hold(self, run_id: str) -> None:
        with self._held_lock:
            self._held.add(run_id)
            pid = os.getpid()
            if self._renewer is None or self._renewer_pid != pid or not self._renewer.is_alive():
                stop = threading.Event()
                self._renewer = threading.Thread(target=self._renew_loop, args=(stop,),
                                                 name="chatsvc-run-leases", daemon=True)
                self._renewer_stop, self._renewer_pid = stop, pid
                self._renewer.start()

    def _unhold(self, run_id: str) -> None:
        with self._held_lock:
            self._held.discard(run_id)

    def _renew_loop(self, stop: threading.Event) -> None:
        # Three renewals per lease: one late or failed renewal does not lose it.
        while not stop.wait(self._lease / 3):
            try:
                self.renew_leases()
            except _UNAVAILABLE as exc:
                log.warning("cannot renew run leases (Redis unavailable: %s); retrying", exc)
            except Exception:
                log.exception("renewing run leases failed; retrying in %gs", self._lease / 3)

    def renew_leases(self) -> None:
        """Extends the lease of every run this process executes: one round trip."""
        with self._held_lock:
            held = list(self._held)
        if not held:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in held:
                self._s_renew(keys=[self.run_key(run_id)], args=[self._lease_ms], client=pipe)
            self._s_renew_index(keys=[self._k_leases], args=[self._lease_ms, *held], client=pipe)
            results = pipe.execute()
        for run_id, lease in zip(held, results):
            if not lease:  # ended elsewhere (timeout, lease sweep) or expired
                self._unhold(run_id)

    def _expire(self, run_ids: list[str], field: str, message: str, data: dict,
                error: dict) -> list[str]:
        """Fails each run whose `field` (lease or deadline) passed; returns those now over."""
        now = self._clock()
        tail, error_json = _event_tail(now, "error", message, data), _json(error)
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                self._s_expire(keys=[self.run_key(run_id), self.stream_key(run_id)],
                               args=[field, tail, repr(now), error_json,
                                     _done_json(run_id, "failed", None, error), self._ttl_ms],
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
            result=None if result is None else _freeze(json.loads(result)),
            error=None if error is None else _freeze(json.loads(error)),
            cancel_requested=values.get("cancel") == "1",
            done_seq=None if done_seq is None else int(done_seq),
        )

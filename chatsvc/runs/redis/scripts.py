"""The Redis backend's Lua scripts: every change that checks something and then writes (SPEC §12).

Each runs atomically in Redis, so two processes (or hosts) can never both admit the
last run, both finish a run, or both fail an orphaned one. Lease and timeout decisions
use Redis's own clock (``TIME``), so hosts' clocks do not matter.
"""

# Shared functions, prepended to each per-run script: one definition of "store
# an event", "apply the events limit" and "finish", used by append, finish,
# lease expiry and run timeout alike.
PRELUDE = r"""
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
CREATE = r"""
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
ADMIT = r"""
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
RELEASE = r"""
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
APPEND = PRELUDE + r"""
if not is_live(KEYS[1]) then return -1 end
return append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""

# KEYS run, stream; ARGV status, finished_at, result, error, done_json, ttl_ms -> done_seq or 0
FINISH = PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
return finish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""

# KEYS run; ARGV started_at, lease_ms -> 1 if queued → running
MARK_RUNNING = PRELUDE + r"""
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1],
  'lease', now_ms() + tonumber(ARGV[2]))
return 1
"""

# KEYS run -> 1 if the live run's cancel flag is now set
CANCEL = PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
return 1
"""

# KEYS run; ARGV lease_ms -> the new lease expiry, or 0 when the run is over
RENEW = PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
local lease = now_ms() + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'lease', lease)
return lease
"""

# KEYS run, stream; ARGV field ('lease' | 'deadline'), event_tail, finished_at, error, done_json, ttl_ms
# -> 1 ended now, 0 already over (or unknown), -1 not expired (e.g. renewed meanwhile)
# Whichever process sweeps first ends the run; the others find it finished.
EXPIRE = PRELUDE + r"""
if not is_live(KEYS[1]) then return 0 end
if tonumber(redis.call('HGET', KEYS[1], ARGV[1])) >= now_ms() then return -1 end
store(KEYS[1], KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'cancel', '1')  -- if the job still runs somewhere, it stops
finish(KEYS[1], KEYS[2], 'failed', ARGV[3], '', ARGV[4], ARGV[5], ARGV[6])
return 1
"""

# KEYS leases, live; ARGV limit -> {expired leases, overdue runs}
SWEEP = PRELUDE + r"""
local now = now_ms()
return {redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, ARGV[1]),
        redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, ARGV[1])}
"""

# KEYS leases; ARGV lease_ms, run ids... : the index follows the renewed leases
RENEW_INDEX = PRELUDE + r"""
local lease = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', lease, ARGV[i]) end
return #ARGV - 1
"""

# KEYS runs, finished; ARGV limit -> how many expired runs left the listing
PRUNE = PRELUDE + r"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms(), 'LIMIT', 0, ARGV[1])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return #ids
"""

"""What only the Redis registry does (SPEC §12): several processes sharing one Redis.

Two ``RedisRunRegistry`` objects on one key prefix stand for two processes (or
hosts) of one deployment. TTLs, timeouts and leases are decided by Redis's clock,
so these tests use short real ones instead of a FakeClock.
"""

from __future__ import annotations

import threading
import time

import pytest

from chatsvc.config import Config, ConfigError
from chatsvc.runs.backends import create_registry
from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.redis import RedisRunRegistry, follower
from chatsvc.runs.model import RegistryFull, RegistryUnavailable, RunNotFound, TooManyActiveRuns
from chatsvc.runs.sse import encode_done, encode_event
from tests.helpers.redis_support import RedisServer, delete_prefix, prefix_keys, redis_url, unique_prefix
from tests.helpers.runs import FakeClock, encode_log_event, read

WAIT = 5.0


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def prefix(url):
    prefix = unique_prefix()
    yield prefix
    delete_prefix(url, prefix)


@pytest.fixture
def make(url, prefix):
    """Registries ("processes") sharing one Redis and one prefix."""
    made = []

    def factory(**options) -> RedisRunRegistry:
        reg = RedisRunRegistry(url, prefix=prefix, **options)
        made.append(reg)
        return reg

    yield factory
    for reg in made:
        reg.close()


def new_run(reg, owner: str = "user:3"):
    return reg.create(kind="workflow", target_id=1, team_id=2, owner=owner)


def wait_until(predicate, timeout: float = WAIT, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(step)
    return value


# --- one order, everywhere --------------------------------------------------------------


def test_a_run_created_in_one_process_is_seen_and_changed_from_another(make):
    a, b = make(), make()
    run = new_run(a)
    assert b.get(run.run_id) == a.get(run.run_id)
    assert [r.run_id for r in b.list_runs()] == [run.run_id]
    assert a.mark_running(run.run_id) and not b.mark_running(run.run_id)
    assert [a.append(run.run_id, "info", "x"), b.append(run.run_id, "info", "y")] == [1, 2]
    assert b.request_cancel(run.run_id) and a.is_cancel_requested(run.run_id)
    assert b.finish(run.run_id, "cancelled") and not a.finish(run.run_id, "succeeded")
    assert a.append(run.run_id, "info", "late") is None  # refused after finish, in any process
    assert b.append(run.run_id, "error", "late error") is None
    assert a.get(run.run_id).status == "cancelled" and a.get(run.run_id).done_seq == 3


def test_events_limit_holds_across_processes(make):
    a, b = make(max_events_per_run=3), make(max_events_per_run=3)
    run = new_run(a)
    seqs = [(a if i % 2 else b).append(run.run_id, "info", f"m{i}") for i in range(6)]
    assert seqs == [1, 2, 3, None, None, None]
    assert a.append(run.run_id, "error", "kept") == 5
    events = read(b, run.run_id, 0, timeout=0).events
    assert [e.message for e in events] == ["m0", "m1", "m2", "events_truncated", "kept"]


def test_seq_allocation_is_atomic_across_processes(make):
    regs = [make(), make(), make()]
    run = new_run(regs[0])
    seqs: list[int] = []
    lock = threading.Lock()

    def produce(reg):
        for i in range(100):
            seq = reg.append(run.run_id, "info", "tick", {"i": i})
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=produce, args=(reg,)) for reg in regs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seqs) == list(range(1, 601))
    assert regs[1].get(run.run_id).event_count == 600


def test_backlog_is_the_streams_layout(make, url):
    reg = make(clock=FakeClock(1_763_700_000.5))
    run = new_run(reg)
    reg.append(run.run_id, "info", "a", {"k": "é"})
    reg.append(run.run_id, "warn", "b")
    assert reg.backlog(run.run_id) == ([
        (1, '{"seq":1,"ts":1763700000.5,"level":"info","message":"a","data":{"k":"é"}}'),
        (2, '{"seq":2,"ts":1763700000.5,"level":"warn","message":"b","data":{}}'),
    ], None)
    events, done = reg.backlog(run.run_id, after_seq=1)
    assert [seq for seq, _ in events] == [2] and done is None
    reg.finish(run.run_id, "failed", error={"type": "X", "message": "y"})
    done_json = '{"run_id":"%s","status":"failed","error":{"type":"X","message":"y"}}' % run.run_id
    assert reg.backlog(run.run_id, after_seq=2) == ([], done_json)
    assert reg.backlog(run.run_id, after_seq=3) == ([], done_json)  # resumed after done

    # The follower reads the same stream: entry 0-<seq>, field e (event) or d (done).
    follower = reg.dedicated_client(read_timeout=3)
    entries = follower.xread({reg.stream_key(run.run_id): "0-0"}, block=100)[0][1]
    follower.close()
    assert [(entry_id, list(fields)) for entry_id, fields in entries] == [
        ("0-1", ["e"]), ("0-2", ["e"]), ("0-3", ["d"])]
    assert entries[2][1]["d"] == done_json
    with pytest.raises(RunNotFound):
        reg.backlog("0" * 32)


def test_sse_wire_is_byte_identical_to_the_memory_backend(make):
    """The same run on both backends gives the same SSE bytes (events and done)."""
    clock = FakeClock()
    memory = MemoryRunRegistry(clock=clock, max_events_per_run=4)
    redis_reg = make(clock=clock, max_events_per_run=4)
    wires = []
    for reg in (memory, redis_reg):
        clock.now = 1_763_700_000.25
        run = new_run(reg)
        reg.mark_running(run.run_id)
        reg.append(run.run_id, "info", "run_started", {"kind": "workflow", "target_id": 1})
        clock.now += 0.125
        reg.append(run.run_id, "warn", "multi\nline «ünï» \u2028 \"q\"", {"nested": {"l": [1, 2.5, None, True]}})
        reg.append(run.run_id, "info", "x", {})
        reg.append(run.run_id, "info", "y", {"big": 10 ** 20, "f": 1e-7})
        reg.append(run.run_id, "info", "dropped")  # → events_truncated
        reg.append(run.run_id, "error", "node_error", {"exception": {"type": "E", "message": "m"}})
        clock.now += 1
        reg.finish(run.run_id, "failed", result={"partial": ["é", 1]},
                   error={"type": "E", "message": "m\nx"})
        if reg is memory:
            with reg.subscribe(run.run_id) as feed:
                wire = feed.read(0, 0).data
        else:
            events, done_json = reg.backlog(run.run_id)
            info = reg.get(run.run_id)
            wire = ("".join(encode_event(data, event="log", id=seq) for seq, data in events)
                    + encode_event(done_json, event="done", id=info.done_seq)).encode()
            # read() decodes the same events: encoding them again gives the same bytes.
            result = read(reg, run.run_id, 0, timeout=0)
            assert ("".join(map(encode_log_event, result.events))
                    + encode_done(result.done)).encode() == wire
        wires.append(wire.replace(run.run_id.encode(), b"RUN"))
    assert wires[0] == wires[1]
    assert wires[0].count(b"event: log") == 6 and b"events_truncated" in wires[0]


def test_events_appended_close_together_reach_subscribers_in_one_wake_up(make, monkeypatch):
    """The follower holds what it reads for a run GATHER_MS before the run's subscribers see it,
    so a job's `node_output` and the `node_start` that follows a round trip later go out in
    one write (as with the memory registry, which appends them back to back)."""
    monkeypatch.setattr(follower, "GATHER_MS", 1000)  # wide, so this machine's timing cannot matter
    reg = make()
    run = new_run(reg)
    reg.mark_running(run.run_id)
    with reg.subscribe(run.run_id) as feed:
        woken = feed.signal()
        reg.append(run.run_id, "info", "node_output")
        wait_until(lambda: feed.last_seq == 1)  # the follower has read it...
        assert feed.read(0, 0).last_seq == 0 and not woken.is_set()  # ...and holds it
        reg.append(run.run_id, "info", "node_start")
        assert woken.wait(WAIT)
        found = feed.read(0, 0)
        assert found.last_seq == 2 and found.data.count(b"event: log") == 2
        # A run's end is not held: `done` goes out with what was held before it.
        reg.append(run.run_id, "info", "last")
        wait_until(lambda: feed.last_seq == 3)
        reg.finish(run.run_id, "succeeded")
        found = feed.read(2, WAIT)
        assert found.finished and found.last_seq == 3 and b"event: done" in found.data


def test_a_process_never_opens_more_than_its_pool_of_connections(make):
    reg = make(pool_size=2)
    run = new_run(reg)
    seen: list[int] = []

    def busy():
        for _ in range(20):
            reg.append(run.run_id, "info", "x")
            reg.get(run.run_id)

    threads = [threading.Thread(target=busy) for _ in range(20)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen.append(sum(1 for c in reg._redis.client_list() if c["name"] == f"{reg._prefix}registry"))
    for t in threads:
        t.join(WAIT)
    assert reg.get(run.run_id).event_count == 400
    assert 0 < max(seen) <= 2


# --- global limits -------------------------------------------------------------------------


def test_live_and_per_owner_limits_are_global(make):
    a = make(max_live_runs=3, max_active_per_owner=2)
    b = make(max_live_runs=3, max_active_per_owner=2)
    first, _ = new_run(a, "user:1"), new_run(b, "user:1")
    with pytest.raises(TooManyActiveRuns):
        new_run(a, "user:1")
    new_run(b, "user:2")
    with pytest.raises(RegistryFull) as raised:
        new_run(a, "user:3")
    assert not isinstance(raised.value, TooManyActiveRuns) and raised.value.retry_after > 0
    assert b.finish(first.run_id, "succeeded")  # finished elsewhere: both limits free a slot
    new_run(a, "user:1")
    assert len(a.list_runs()) == 4  # refused runs are nowhere


# --- leases ------------------------------------------------------------------------------


def test_dead_process_runs_fail_by_lease_exactly_once(make, url, prefix):
    dead = make(lease_seconds=0.5)
    run = new_run(dead)
    dead.mark_running(run.run_id)
    dead.append(run.run_id, "info", "working")
    dead.close()  # its lease renewer stops: the process "died"

    sweepers = [make(lease_seconds=0.5) for _ in range(3)]
    wait_until(lambda: sweepers[0].get(run.run_id).status == "failed" or _sweep_all(sweepers))
    for _ in range(3):
        _sweep_all(sweepers)  # more passes change nothing

    info = sweepers[1].get(run.run_id)
    assert info.status == "failed" and info.cancel_requested
    assert info.error == {"type": "WorkerLost", "message": info.error["message"]}
    assert "lease" in info.error["message"]
    events = read(sweepers[2], run.run_id, 0, timeout=0).events
    assert [(e.seq, e.level, e.message) for e in events] == [
        (1, "info", "working"), (2, "error", "run_orphaned")]
    assert info.done_seq == 3
    # Released everywhere: its owner's slot and the live count are free again.
    assert not sweepers[0]._redis.zcard(sweepers[0]._k_live)
    assert not sweepers[0]._redis.hgetall(sweepers[0]._k_counts)


def _sweep_all(regs) -> bool:
    threads = [threading.Thread(target=reg.gc) for reg in regs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    return False


def test_a_live_process_keeps_its_leases(make):
    owner = make(lease_seconds=0.3)
    sweeper = make(lease_seconds=0.3)
    run = new_run(owner)
    owner.mark_running(run.run_id)
    deadline = time.monotonic() + 1.5  # five lease lengths
    while time.monotonic() < deadline:
        sweeper.gc()
        time.sleep(0.05)
    assert sweeper.get(run.run_id).status == "running"
    assert owner.finish(run.run_id, "succeeded")
    assert owner.leases.held == frozenset()


# --- run timeout and TTL ----------------------------------------------------------------------


def test_run_timeout_is_enforced_by_any_process(make):
    executing = make(run_timeout_seconds=0.3, max_events_per_run=1)
    other = make(run_timeout_seconds=0.3, max_events_per_run=1)
    run = new_run(executing)
    executing.mark_running(run.run_id)
    executing.append(run.run_id, "info", "a")
    executing.append(run.run_id, "info", "b")  # truncation marker
    other.gc()
    assert other.get(run.run_id).status == "running"  # not yet
    time.sleep(0.4)
    other.gc()
    info = executing.get(run.run_id)
    assert info.status == "failed" and info.error["type"] == "RunTimeout"
    assert "0.3 seconds" in info.error["message"]
    assert executing.is_cancel_requested(run.run_id)  # the job, still running, stops
    events = read(executing, run.run_id, 0, timeout=0).events
    assert [e.message for e in events] == ["a", "events_truncated", "run_timeout"]
    assert events[-1].data == {"timeout_seconds": 0.3}
    assert executing.append(run.run_id, "info", "late") is None


def test_nothing_of_a_run_is_left_after_its_ttl(make, url, prefix):
    reg = make(ttl_seconds=0.5)
    run = new_run(reg)
    reg.mark_running(run.run_id)
    reg.append(run.run_id, "info", "x")
    reg.request_cancel(run.run_id)
    reg.finish(run.run_id, "cancelled", result={"a": 1})
    assert prefix_keys(url, prefix)  # kept for the TTL
    assert reg.get(run.run_id).status == "cancelled"
    time.sleep(0.6)
    assert reg.get(run.run_id) is None
    with pytest.raises(RunNotFound):
        read(reg, run.run_id, 0, timeout=0)
    assert reg.gc() == 1  # the listing forgets it too
    assert reg.list_runs() == []
    assert prefix_keys(url, prefix) == []


def test_listing_prunes_expired_runs_lazily(make, url, prefix):
    reg = make(ttl_seconds=0.2)
    run = new_run(reg)
    reg.finish(run.run_id, "succeeded")
    time.sleep(0.3)
    assert reg.list_runs() == []  # before any gc pass
    assert prefix_keys(url, prefix) == []


# --- Redis unavailable ----------------------------------------------------------------------


def test_redis_down_gives_registry_unavailable_within_seconds_then_recovers():
    server = RedisServer()
    server.start()
    reg = RedisRunRegistry(server.url, prefix="t:")
    try:
        run = new_run(reg)
        assert reg.ping()
        server.stop()
        for call in (lambda: new_run(reg), lambda: reg.get(run.run_id), reg.list_runs,
                     lambda: reg.append(run.run_id, "info", "x"), reg.gc,
                     lambda: read(reg, run.run_id, 0, timeout=1), lambda: reg.request_cancel(run.run_id)):
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as raised:
                call()
            assert time.monotonic() - started < 5
            assert raised.value.code == 503 and raised.value.retry_after > 0
        assert not reg.ping()
        assert not reg.is_cancel_requested(run.run_id)  # the job keeps running meanwhile

        server.start()  # same port, empty data set, no scripts loaded
        wait_until(reg.ping)
        again = new_run(reg)  # the same registry object: reconnected, scripts reloaded
        assert reg.append(again.run_id, "info", "back") == 1
        assert reg.finish(again.run_id, "succeeded")
    finally:
        reg.close()
        server.stop()


# --- configuration -----------------------------------------------------------------------------


def test_config_selects_the_backend(url):
    base = dict(jwt_secret="x" * 40)
    memory = create_registry(Config(**base))
    assert isinstance(memory, MemoryRunRegistry)
    config = Config.from_env({"CHATSVC_REGISTRY_URL": url, "CHATSVC_REDIS_PREFIX": "p:",
                              "CHATSVC_RUN_LEASE_SECONDS": "7", "CHATSVC_REDIS_POOL_SIZE": "2"},
                             **base)
    config.validate()
    reg = create_registry(config)
    try:
        assert isinstance(reg, RedisRunRegistry) and reg.ping()
        assert (reg._prefix, reg.leases.seconds, reg._pool.max_connections) == ("p:", 7.0, 2)
    finally:
        reg.close()
    Config(registry_url="rediss://h:6380/1", **base).validate()
    for bad in ({"registry_url": "http://x"}, {"registry_url": "redis://x", "redis_prefix": "{a}"},
                {"registry_url": "redis://x", "run_lease_seconds": 0}):
        with pytest.raises(ConfigError):
            Config(**base, **bad).validate()


def test_gunicorn_runs_a_worker_per_cpu_with_redis(monkeypatch):
    import os
    import runpy

    path = "chatsvc/gunicorn_config.py"
    monkeypatch.delenv("CHATSVC_WORKERS", raising=False)
    monkeypatch.setenv("CHATSVC_REGISTRY_URL", "redis://127.0.0.1:6379/0")
    assert runpy.run_path(path)["workers"] == (os.cpu_count() or 1)
    monkeypatch.setenv("CHATSVC_WORKERS", "3")
    assert runpy.run_path(path)["workers"] == 3
    monkeypatch.setenv("CHATSVC_REGISTRY_URL", "memory://")
    assert runpy.run_path(path)["workers"] == 1  # the one-worker rule stays
    monkeypatch.setenv("CHATSVC_WORKERS", "three")
    with pytest.raises(Exception, match="CHATSVC_WORKERS must be an integer, got 'three'"):
        runpy.run_path(path)  # parsed as the app parses its own settings


# --- through the API ----------------------------------------------------------------------------


@pytest.fixture
def own_redis():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config_overrides(own_redis):
    return {"registry_url": own_redis.url}


def test_api_answers_503_with_retry_after_while_redis_is_down_then_recovers(
        own_redis, client, world):
    chat = "/api/v1/chat"
    run = client.post(f"{chat}/experts:run", headers=world.headers["member"], json={
        "expert_id": world.expert.id, "input_params": {"name": "Ada"}, "mode": "sync"})
    assert run.status_code == 200, run.get_json()
    run_id = run.get_json()["run_id"]
    assert client.get("/readyz").status_code == 200

    own_redis.stop()
    for method, path, body in (
            ("get", "/readyz", None),
            ("get", "/metrics", None),
            ("get", f"{chat}/runs", None),
            ("get", f"{chat}/runs/{run_id}", None),
            ("post", f"{chat}/runs/{run_id}:cancel", None),
            ("post", f"{chat}/experts:run", {"expert_id": world.expert.id,
                                            "input_params": {"name": "Ada"}, "mode": "async"})):
        started = time.monotonic()
        rv = getattr(client, method)(path, headers=world.headers["member"], json=body)
        assert time.monotonic() - started < 5, path
        assert rv.status_code == 503, (path, rv.get_json())
        assert int(rv.headers["Retry-After"]) > 0
        assert rv.get_json()["code"] == 503

    own_redis.start()  # empty, as after a restart without persistence
    wait_until(lambda: client.get("/readyz").status_code == 200)
    again = client.post(f"{chat}/experts:run", headers=world.headers["member"], json={
        "expert_id": world.expert.id, "input_params": {"name": "Ada"}, "mode": "sync"})
    assert again.status_code == 200 and again.get_json()["status"] == "succeeded"
    assert client.get(f"{chat}/runs/{run_id}", headers=world.headers["member"]).status_code == 404

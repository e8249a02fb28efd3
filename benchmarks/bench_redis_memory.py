"""Redis memory one run costs with the Redis registry: its hash and its event stream.

Run: python benchmarks/bench_redis_memory.py [--url redis://127.0.0.1:6379/0] [--events 300]

Creates runs through RedisRunRegistry (so the layout is the real one), appends
events of a typical workflow's size (node_started / node_finished with a few small
fields, ~130 bytes of JSON) and of a chattier size (~1.1 KB each), finishes
them, and prints ``MEMORY USAGE <key> SAMPLES 0`` (exact) of each key, plus the
global indexes' share per live run. Keys go under a throw-away prefix, deleted after.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from chatsvc.runs.redis import RedisRunRegistry  # noqa: E402


def typical(i: int) -> tuple[str, dict]:
    if i % 2:
        return "node_finished", {"node_key": f"step_{i // 2}", "duration_ms": 120 + i, "status": "ok"}
    return "node_started", {"node_key": f"step_{i // 2}", "kind": "llm", "index": i // 2}


def chatty(i: int) -> tuple[str, dict]:
    return "llm_chunk", {"node_key": "answer", "text": ("lorem ipsum dolor sit amet " * 37)[:1000]}


def measure(reg: RedisRunRegistry, raw: redis.Redis, events: int, make) -> tuple[int, int, int]:
    run = reg.create(kind="workflow", target_id=1, team_id=1, owner="user:1")
    reg.mark_running(run.run_id)
    for i in range(events):
        reg.append(run.run_id, "info", *make(i))
    reg.finish(run.run_id, "succeeded", result={"answer": "x" * 200})
    hash_bytes = raw.memory_usage(reg.run_key(run.run_id), samples=0) or 0
    stream_bytes = raw.memory_usage(reg.stream_key(run.run_id), samples=0) or 0
    wire = sum(len(data.encode()) for _, data in reg.backlog(run.run_id)[0])
    return hash_bytes, stream_bytes, wire


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    reg = RedisRunRegistry(args.url, prefix=prefix, max_events_per_run=100_000, max_live_runs=100_000)
    raw = redis.Redis.from_url(args.url)
    try:
        print("| events | event size | run hash | event stream | total | event JSON bytes |")
        print("|---:|---|---:|---:|---:|---:|")
        for name, make in (("typical (~130 B)", typical), ("chatty (~1.1 KB)", chatty)):
            for count in (0, args.events) if name.startswith("typical") else (args.events,):
                h, s, wire = measure(reg, raw, count, make)
                print(f"| {count} | {name} | {h / 1024:.1f} KiB | {s / 1024:.1f} KiB "
                      f"| {(h + s) / 1024:.1f} KiB | {wire / 1024:.1f} KiB |")
        # What a live run adds to the global indexes (live, leases, owners, listing).
        before = sum(raw.memory_usage(k, samples=0) or 0 for k in raw.scan_iter(f"{prefix}{{global}}:*"))
        for _ in range(1000):
            reg.create(kind="workflow", target_id=1, team_id=1, owner="user:2")
        after = sum(raw.memory_usage(k, samples=0) or 0 for k in raw.scan_iter(f"{prefix}{{global}}:*"))
        print(f"\nglobal indexes: {(after - before) / 1000:.0f} bytes per live run (1,000 runs)")
    finally:
        reg.close()
        keys = list(raw.scan_iter(f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            raw.delete(*keys[i:i + 500])
        raw.close()


if __name__ == "__main__":
    main()

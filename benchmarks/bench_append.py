"""Cost of appending one event to a run: the logger's coercion, the registry, the wire bytes.

Run: python benchmarks/bench_append.py [--events 200000]

In process, under gevent's monkey-patching (as in a gunicorn + gevent worker), with the
memory registry and no subscriber: what every run pays per event before any stream
writes it. Prints microseconds per call of the logger's coercion (``to_jsonable``) and of
the whole ``log_info`` (coercion, registry, wire bytes), with a small flat event
(``node_start``) and one carrying a node's output.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsvc.runs.logger import RunLogger, to_jsonable  # noqa: E402
from chatsvc.runs.memory import MemoryRunRegistry  # noqa: E402

SMALL = {"node_id": 17, "node_key": "n17", "node_type": "sleep"}
OUTPUT = {"node_id": 17, "node_key": "n17", "duration_ms": 20,
          "output": {"slept": 0.02, "input": {"city": "Lisbon", "days": 3}}}


def per_call_us(fn, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    registry = MemoryRunRegistry(max_events_per_run=10 * args.events)
    logger = RunLogger(registry)
    run_id = registry.create(kind="workflow", target_id=1, team_id=1, owner="user:1").run_id
    parts = [
        ("to_jsonable, node_start", lambda: to_jsonable(SMALL)),
        ("to_jsonable, node_output", lambda: to_jsonable(OUTPUT)),
        ("log_info, node_start", lambda: logger.log_info(run_id, "node_start", **SMALL)),
        ("log_info, node_output", lambda: logger.log_info(run_id, "node_output", **OUTPUT)),
    ]
    for name, fn in parts:
        print(f"{name:26s} {per_call_us(fn, args.events):6.2f} us", flush=True)


if __name__ == "__main__":
    main()

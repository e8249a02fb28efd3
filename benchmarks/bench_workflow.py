"""Per-node overhead of a whole workflow run: the runner, node services, events and registry.

Run: python benchmarks/bench_workflow.py [--quick]

Builds chains and wide fan-ins of `echo` nodes fed by one `input` node, and runs them
through `WorkflowJob` with a real `MemoryRunRegistry` and `RunLogger`, exactly as the
executor does (minus the thread hop). Each node costs: resolving its inputs, `node_start`,
the node service, `node_output` (JSON-safe copy of the output) and the registry appends.
The starting inputs are small and fixed, so µs/node should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsvc.runs.executor import RunContext  # noqa: E402
from chatsvc.runs.logger import RunLogger  # noqa: E402
from chatsvc.runs.memory import MemoryRunRegistry  # noqa: E402
from chatsvc.services.dag import EdgeSpec, Graph, NodeSpec  # noqa: E402
from chatsvc.services.llm import StubProvider  # noqa: E402
from chatsvc.services.workflow_runner import WorkflowJob  # noqa: E402

STARTING_INPUTS = {"city": "Lisbon", "days": 3, "tags": ["a", "b", "c"]}


def graph(shape: str, n: int) -> Graph:
    nodes = [NodeSpec(1, "n0", "input", {})] + [NodeSpec(i + 1, f"n{i}", "echo", {}) for i in range(1, n)]
    if shape == "chain":
        pairs = [(i, i + 1) for i in range(n - 1)]
    else:  # fan-in: root -> n-2 middle nodes -> sink
        sink = n - 1
        pairs = [(0, i) for i in range(1, sink)] + [(i, sink) for i in range(1, sink)]
    return Graph.build(nodes, [EdgeSpec(f"n{a}", f"n{b}") for a, b in pairs])


def run_once(g: Graph) -> float:
    registry = MemoryRunRegistry(max_events_per_run=10 * len(g) + 10)
    logger = RunLogger(registry)
    info = registry.create(kind="workflow", target_id=1, team_id=1, owner="user:1")
    registry.mark_running(info.run_id)
    job = WorkflowJob(graph=g, starting_inputs=STARTING_INPUTS, experts={}, provider=StubProvider())
    started = time.perf_counter()
    outcome = job(RunContext(info.run_id, registry, logger))
    elapsed = time.perf_counter() - started
    assert outcome.status == "succeeded", outcome.error
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000 only")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [100, 1_000] if args.quick else [100, 1_000, 10_000]
    print(f"Python {sys.version.split()[0]}; best of {args.repeats}; peak = tracemalloc during one run")
    print("| shape | N | total ms | µs/node | peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for shape in ("chain", "fan-in"):
        for n in sizes:
            g = graph(shape, n)
            best = min(run_once(g) for _ in range(args.repeats))
            tracemalloc.start()
            run_once(g)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"| {shape} | {n:,} | {best * 1000:.1f} | {best / n * 1e6:.1f} | {peak / 2**20:.2f} |")


if __name__ == "__main__":
    main()

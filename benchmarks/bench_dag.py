"""Per-node overhead of the DAG engine: validate, order, and resolve inputs for every node.

Run: python benchmarks/bench_dag.py [--quick]

Each node outputs a trivial dict. Two key patterns show what is the engine and what is data:
- "distinct": node i writes {"k<i>": i}, so a node receives one key per ancestor; on a chain
  node N gets N keys, and handing them over is the data itself (see the keys/node column);
- "bounded": node i writes {"k<i % 8>": i}, so inputs stay small and µs/node should stay flat
  as N grows if the engine is linear.
Time is the best of a few runs without tracing; peak memory is a separate run under tracemalloc,
counting what the engine allocates (validation, Graph, live maps, the current node's inputs),
not the workload's own node and edge lists (which are also frozen out of the cyclic GC while
timing). What growth remains at 10,000 nodes is mostly CPU caches: dicts no longer fit.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsvc.services.dag import (  # noqa: E402  (needs the path set above)
    EdgeSpec,
    Graph,
    InputResolver,
    NodeSpec,
    validate_graph,
)

Pairs = list[tuple[int, int]]


def chain(n: int) -> Pairs:
    return [(i, i + 1) for i in range(n - 1)]


def fan_in(n: int) -> Pairs:
    """One root -> n - 2 middle nodes -> one sink."""
    sink = n - 1
    return [(0, i) for i in range(1, sink)] + [(i, sink) for i in range(1, sink)]


def random_sparse(n: int) -> Pairs:
    """Every node but the first has 1-3 parents chosen among all earlier nodes (about 2n edges)."""
    rng = random.Random(n)
    return [
        (parent, child)
        for child in range(1, n)
        for parent in sorted(set(rng.choices(range(child), k=rng.randint(1, 3))))
    ]


SHAPES: dict[str, Callable[[int], Pairs]] = {
    "chain": chain,
    "fan-in": fan_in,
    "random": random_sparse,
}


@dataclass
class Workload:
    """One graph in both shapes the engine takes: API documents and specs. Built untimed."""

    n: int
    edge_count: int
    documents: list[dict]
    edge_documents: list[dict]
    specs: list[NodeSpec]
    edges: list[EdgeSpec]
    index_of: dict[int, int]  # node id -> i, for the output {"k<i>": i}


def make_workload(n: int, pairs: Pairs) -> Workload:
    # Ids are shuffled so the heap's tie-breaking does real work instead of following the listing.
    ids = random.Random(0).sample(range(1, n + 1), n)
    return Workload(
        n=n,
        edge_count=len(pairs),
        documents=[{"key": f"n{i}", "node_type": "echo", "metadata": {}} for i in range(n)],
        edge_documents=[{"source": f"n{a}", "target": f"n{b}"} for a, b in pairs],
        specs=[NodeSpec(id=ids[i], key=f"n{i}", node_type="echo", metadata={}) for i in range(n)],
        edges=[EdgeSpec(f"n{a}", f"n{b}") for a, b in pairs],
        index_of={ids[i]: i for i in range(n)},
    )


def run_engine(work: Workload, key_of: Callable[[int], str]) -> tuple[float, float, float, int]:
    """Validate, build and resolve every node; return seconds per phase and total input keys."""
    started = time.perf_counter()
    validate_graph(work.documents, work.edge_documents, {"echo"})
    validated = time.perf_counter()
    graph = Graph.build(work.specs, work.edges)
    order = graph.topological_order()
    built = time.perf_counter()
    resolver = InputResolver(graph, {"start": 0})
    delivered = 0
    for node in order:
        inputs = resolver.resolve(node.id).inputs  # dropped at once, as a finished node's are
        delivered += len(inputs)
        index = work.index_of[node.id]
        resolver.record_output(node.id, {key_of(index): index})
    finished = time.perf_counter()
    return validated - started, built - validated, finished - built, delivered


def measure(work: Workload, key_of: Callable[[int], str], repeats: int) -> dict:
    # Freeze the workload out of the cyclic GC: otherwise every full collection rescans the
    # untimed node and edge lists and charges their size to the engine.
    gc.collect()
    gc.freeze()
    try:
        runs = [run_engine(work, key_of) for _ in range(repeats)]
    finally:
        gc.unfreeze()
    # Best of several per phase: this is a shared machine, and noise only ever adds time.
    validate_s, build_s, resolve_s = (min(run[phase] for run in runs) for phase in range(3))
    delivered = runs[0][3]

    gc.collect()
    tracemalloc.start()  # after the workload exists, so only the engine's own memory counts
    run_engine(work, key_of)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    per_node = 1e6 / work.n
    return {
        "validate": validate_s * per_node,
        "build": build_s * per_node,
        "resolve": resolve_s * per_node,
        "total": (validate_s + build_s + resolve_s) * per_node,
        "keys": delivered / work.n,
        "peak_kib_per_node": peak / 1024 / work.n,
        "peak_mib": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000 only")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (best kept)")
    args = parser.parse_args()
    sizes = [100, 1_000] if args.quick else [100, 1_000, 10_000]
    patterns: dict[str, Callable[[int], str]] = {
        "distinct": lambda i: f"k{i}",
        "bounded": lambda i: f"k{i % 8}",
    }

    header = (
        "| shape | keys | N | edges | validate µs/node | build µs/node | resolve µs/node "
        "| total µs/node | input keys/node | peak MiB | peak KiB/node |"
    )
    print(
        f"Python {sys.version.split()[0]}; time: best of {args.repeats} per phase; "
        "peak: engine allocations in one run under tracemalloc\n"
    )
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, make_pairs in SHAPES.items():
        for pattern, key_of in patterns.items():
            for n in sizes:
                work = make_workload(n, make_pairs(n))
                row = measure(work, key_of, repeats=args.repeats)
                print(
                    f"| {shape} | {pattern} | {n:,} | {work.edge_count:,} | {row['validate']:.1f} "
                    f"| {row['build']:.1f} | {row['resolve']:.1f} | {row['total']:.1f} "
                    f"| {row['keys']:,.0f} | {row['peak_mib']:.2f} "
                    f"| {row['peak_kib_per_node']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

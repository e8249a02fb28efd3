"""Workflow graphs: validation, deterministic topological order, and the data each node sees.

Validation (`validate_graph`) is O(nodes + edges): cycles are found with Kahn's algorithm and
then one cycle is traced by walking parents, so nothing recurses and 10,000-node chains are fine.
`Graph.build` orders nodes with Kahn's algorithm and a heap (ties broken by node id):
O((N + E) log N).

Inputs (SPEC §8): a node receives `starting_inputs` merged with the outputs of all its transitive
ancestors, in topological order (later wins), plus the keys two ancestors wrote with different
values. Outputs that are not mappings (e.g. a transform returning a number) contribute nothing.

How `InputResolver` stays near-linear: instead of collecting each node's ancestors (O(N²) on a
chain), it builds each node's *available data* from its parents' maps. A map records per key the
winning value, the topological position of the ancestor that wrote it, and whether ancestors
disagreed on it. Merging two maps per key: same writer → the same ancestor reached along two
paths, never a conflict with itself; different writers → later position wins, and the key is
conflicted if either side already was or the two winning values differ (each side's writers
agree with its winner, so comparing winners is enough). A node starts from its largest parent's
map, taking it over without a copy when it is that parent's last child to read it (copying it
otherwise), merges the smaller ones in, and a map is released once no child needs it. So a chain
does O(output) work per step, Python-level merging is bounded by the smaller parents' maps,
and memory is bounded by the maps of the live frontier, not N × keys. Handing each node its own
`inputs` dict is a C-level copy of its map: that is the size of the data it receives.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeSpec:
    """One node of a workflow, as the engine needs it."""

    id: int
    key: str
    node_type: str
    metadata: dict


@dataclass(frozen=True)
class EdgeSpec:
    """A directed edge between two nodes, by node key."""

    source: str
    target: str


class GraphError(ValueError):
    """Invalid workflow graph: `message` names the offending nodes, `errors` feeds the 422 body.

    `errors` has up to three keys: "nodes" and "edges" (lists of messages) and "cycle"
    (one cycle as a closed path of node keys, e.g. ["a", "b", "c", "a"]).
    """

    def __init__(self, message: str, errors: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


# --------------------------------------------------------------------------- validation


def validate_graph(
    nodes: Sequence[Mapping], edges: Sequence[Mapping], node_types: Collection[str]
) -> None:
    """Raise GraphError listing every problem in a workflow document's graph.

    `nodes` are {"key", "node_type", ...} and `edges` {"source", "target"} (node keys), already
    shape-checked by the schema. Every kind of problem is reported at once, in this order:
    unknown node type, duplicate key (under "nodes"), dangling edge, self-loop (under "edges"),
    then one cycle, looked for among the known keys and the edges that are otherwise valid.
    Repeated identical edges are harmless and reported once at most.
    """
    known_types = set(node_types)
    key_counts: dict[Hashable, int] = {}  # insertion-ordered, so messages follow the document
    unknown_types: list[str] = []
    for node in nodes:
        key, node_type = node["key"], node["node_type"]
        if node_type not in known_types:
            unknown_types.append(f"Unknown node type {node_type!r} for node {key!r}.")
        key_counts[key] = key_counts.get(key, 0) + 1
    duplicates = [
        f"Duplicate node key {key!r} ({count} nodes)."
        for key, count in key_counts.items()
        if count > 1
    ]

    dangling: list[str] = []
    self_loops: list[str] = []
    usable_edges: list[tuple[Hashable, Hashable]] = []
    seen_edges: set[tuple[Hashable, Hashable]] = set()
    for edge in edges:
        source, target = edge["source"], edge["target"]
        if (source, target) in seen_edges:
            continue
        seen_edges.add((source, target))
        missing = [key for key in dict.fromkeys((source, target)) if key not in key_counts]
        if missing:
            names = " and ".join(repr(key) for key in missing)
            noun = "node" if len(missing) == 1 else "nodes"
            dangling.append(f"Edge {source!r} -> {target!r} refers to unknown {noun} {names}.")
        elif source == target:
            self_loops.append(f"Edge {source!r} -> {target!r} is a self-loop on node {source!r}.")
        else:
            usable_edges.append((source, target))

    errors: dict[str, list[str]] = {}
    if unknown_types or duplicates:
        errors["nodes"] = unknown_types + duplicates
    if dangling or self_loops:
        errors["edges"] = dangling + self_loops
    cycle = _find_cycle(list(key_counts), usable_edges)
    if cycle:
        errors["cycle"] = cycle
    if errors:
        raise GraphError(_describe(errors), errors)


def _describe(errors: dict[str, list[str]]) -> str:
    """One human-readable message for a GraphError's errors."""
    parts = errors.get("nodes", []) + errors.get("edges", [])
    if "cycle" in errors:
        parts.append("Cycle: " + " -> ".join(repr(key) for key in errors["cycle"]) + ".")
    return "Invalid workflow graph: " + " ".join(parts)


def _find_cycle(
    keys: Sequence[Hashable], edges: Iterable[tuple[Hashable, Hashable]]
) -> list[Hashable] | None:
    """Return one cycle as a closed path [a, b, ..., a], or None; O(nodes + edges), no recursion.

    Expects distinct keys and edges between them without self-loops or repeats.
    """
    in_degree = dict.fromkeys(keys, 0)
    children: dict[Hashable, list[Hashable]] = {key: [] for key in keys}
    parents: dict[Hashable, list[Hashable]] = {key: [] for key in keys}
    for source, target in edges:
        children[source].append(target)
        parents[target].append(source)
        in_degree[target] += 1

    ready = deque(key for key in keys if in_degree[key] == 0)
    removed = 0
    while ready:
        key = ready.popleft()
        removed += 1
        for child in children[key]:
            in_degree[child] -= 1
            if in_degree[child] == 0:
                ready.append(child)
    if removed == len(keys):
        return None

    # Kahn's algorithm stalled: every leftover node still has a leftover parent (that is why its
    # in-degree never reached zero), so walking leftover parents must come back to a node it
    # has already visited, and the walk from there is a cycle, seen backwards.
    def is_leftover(key: Hashable) -> bool:
        return in_degree[key] > 0

    walked: list[Hashable] = []
    step_of: dict[Hashable, int] = {}
    key = next(key for key in keys if is_leftover(key))
    while key not in step_of:
        step_of[key] = len(walked)
        walked.append(key)
        key = next(parent for parent in parents[key] if is_leftover(parent))
    loop = walked[step_of[key] :][::-1]  # now each node is followed by one of its children

    # Start the path at the node listed first in the document, so the report reads naturally.
    document_order = {key: index for index, key in enumerate(keys)}
    first = min(range(len(loop)), key=lambda index: document_order[loop[index]])
    loop = loop[first:] + loop[:first]
    return loop + [loop[0]]


# --------------------------------------------------------------------------- graph


class Graph:
    """A validated workflow DAG with its topological order computed once.

    Internally nodes are addressed by their position in the topological order, which is also
    the order in which the runner executes them.
    """

    def __init__(
        self, order: list[NodeSpec], parents: list[list[int]], children: list[list[int]]
    ) -> None:
        self._order = order
        self._parents = parents  # position -> parent positions, ascending
        self._children = children  # position -> child positions, ascending
        self._position = {node.id: position for position, node in enumerate(order)}

    @classmethod
    def build(cls, nodes: Sequence[NodeSpec], edges: Sequence[EdgeSpec]) -> Graph:
        """Order a validated graph with Kahn's algorithm, breaking ties by node id.

        Repeated edges count once. Raises GraphError if the graph is not a DAG after all.
        """
        by_key = {node.key: node for node in nodes}
        by_id = {node.id: node for node in nodes}
        if len(by_key) != len(nodes) or len(by_id) != len(nodes):
            raise GraphError(
                "Invalid workflow graph: node keys and ids must be unique.",
                {"nodes": ["Node keys and ids must be unique."]},
            )
        children_of: dict[int, list[int]] = {node.id: [] for node in nodes}
        in_degree = dict.fromkeys(by_id, 0)
        pairs: list[tuple[int, int]] = []  # distinct (source id, target id), in document order
        seen: set[tuple[int, int]] = set()
        for edge in edges:
            if edge.source not in by_key or edge.target not in by_key:
                missing = edge.source if edge.source not in by_key else edge.target
                message = (
                    f"Edge {edge.source!r} -> {edge.target!r} refers to unknown node {missing!r}."
                )
                raise GraphError("Invalid workflow graph: " + message, {"edges": [message]})
            pair = (by_key[edge.source].id, by_key[edge.target].id)
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
                children_of[pair[0]].append(pair[1])
                in_degree[pair[1]] += 1

        # The heap holds ids of nodes whose parents are all placed; popping the smallest id
        # makes the order independent of the order nodes and edges were listed in.
        ready = [node_id for node_id, degree in in_degree.items() if degree == 0]
        heapq.heapify(ready)
        order: list[NodeSpec] = []
        while ready:
            node_id = heapq.heappop(ready)
            order.append(by_id[node_id])
            for child in children_of[node_id]:
                in_degree[child] -= 1
                if in_degree[child] == 0:
                    heapq.heappush(ready, child)
        if len(order) != len(nodes):
            cycle = _find_cycle(
                [node.key for node in nodes],
                [(by_id[source].key, by_id[target].key) for source, target in pairs],
            )
            errors = {"cycle": cycle or []}
            raise GraphError(_describe(errors), errors)

        # Filling parents while walking the order keeps every list sorted without sorting.
        position = {node.id: index for index, node in enumerate(order)}
        parents: list[list[int]] = [[] for _ in order]
        children: list[list[int]] = [[] for _ in order]
        for index, node in enumerate(order):
            for child in children_of[node.id]:
                parents[position[child]].append(index)
        for index in range(len(order)):
            for parent in parents[index]:
                children[parent].append(index)
        return cls(order, parents, children)

    def __len__(self) -> int:
        return len(self._order)

    def topological_order(self) -> list[NodeSpec]:
        """Nodes in execution order (a fresh list; the order itself is computed once)."""
        return list(self._order)

    def node(self, node_id: int) -> NodeSpec:
        return self._order[self._position_of(node_id)]

    def predecessors(self, node_id: int) -> list[NodeSpec]:
        """Direct parents, in topological order."""
        return [self._order[parent] for parent in self._parents[self._position_of(node_id)]]

    def ancestors(self, node_id: int) -> list[NodeSpec]:
        """All transitive parents, in topological order; O(ancestors + their edges)."""
        found: set[int] = set()
        pending = [self._position_of(node_id)]
        while pending:
            for parent in self._parents[pending.pop()]:
                if parent not in found:
                    found.add(parent)
                    pending.append(parent)
        return [self._order[position] for position in sorted(found)]

    def _position_of(self, node_id: int) -> int:
        try:
            return self._position[node_id]
        except KeyError:
            raise KeyError(f"Node id {node_id} is not in this graph.") from None


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ResolvedInputs:
    """What a node receives: its merged inputs and the keys its ancestors disagreed on."""

    inputs: dict
    conflicts: dict[str, str]  # key -> key of the ancestor whose value won


class _Available:
    """Data visible below a node: per key the winning value, its writer, and any disagreement."""

    __slots__ = ("values", "writers", "conflicted")

    def __init__(self) -> None:
        self.values: dict[Any, Any] = {}  # kept apart from writers so inputs are one C-level copy
        self.writers: dict[Any, int] = {}  # key -> topological position of the winning ancestor
        self.conflicted: set[Any] = set()

    def __len__(self) -> int:
        return len(self.writers)

    def copy(self) -> _Available:
        clone = _Available()
        clone.values = self.values.copy()
        clone.writers = self.writers.copy()
        clone.conflicted = self.conflicted.copy()
        return clone

    def merge(self, other: _Available) -> None:
        """Add another parent's map to this one (this one is owned by the node being resolved)."""
        values, writers = self.values, self.writers
        other_values = other.values
        for key, writer in other.writers.items():
            mine = writers.get(key)
            if mine is None:
                writers[key] = writer
                values[key] = other_values[key]
            elif mine != writer:
                # Two different ancestors: a conflict only if their values differ. (The same
                # ancestor reached along two paths is never in conflict with itself.)
                if not _same_value(values[key], other_values[key]):
                    self.conflicted.add(key)
                if writer > mine:
                    writers[key] = writer
                    values[key] = other_values[key]
        # Every key the other side saw disagree on is in this map now, and still disputed.
        self.conflicted |= other.conflicted

    def write(self, writer: int, output: Mapping) -> None:
        """Apply a node's own output; it comes after all its ancestors, so it wins every key."""
        values, writers = self.values, self.writers
        for key, value in output.items():
            if key in writers and not _same_value(values[key], value):
                self.conflicted.add(key)
            writers[key] = writer
            values[key] = value


def _same_value(left: Any, right: Any) -> bool:
    """Python equality (so 1 and 1.0 agree), with an identity shortcut for pass-through values."""
    return left is right or left == right


class InputResolver:
    """Resolves inputs for every node of one run, in topological order, in near-linear time.

    Protocol, per node in topological order: `resolve(node_id)`, run the node, then
    `record_output(node_id, output)` (None for a node that produced nothing) before any of its
    children is resolved. One resolver per run; it is not thread-safe. Values are not copied,
    so node services must treat their inputs as read-only.
    """

    def __init__(
        self,
        graph: Graph,
        starting_inputs: Mapping,
        *,
        scope: Collection[int] | None = None,
    ) -> None:
        """`scope` limits the run to these node ids (default: all); it must hold every
        ancestor of each node resolved, and maps are only kept for children inside it."""
        self._graph = graph
        self._starting = dict(starting_inputs)
        # How many children still have to read each node's map; at zero the map is released.
        if scope is None:
            self._readers_left = {p: len(children) for p, children in enumerate(graph._children)}
        else:
            inside = {graph._position_of(node_id) for node_id in scope}
            self._readers_left = {
                p: sum(1 for child in graph._children[p] if child in inside) for p in inside
            }
        self._live: dict[int, _Available] = {}  # maps some child still has to read
        self._resolved: set[int] = set()
        self._recorded: set[int] = set()

    def resolve(self, node_id: int) -> ResolvedInputs:
        """The node's inputs: starting inputs, then its ancestors' outputs (later wins)."""
        available = self._advance(node_id)
        # Materialising is one C-level merge: the node gets its own dict to keep or change.
        inputs = {**self._starting, **available.values}
        order = self._graph._order
        # Sorted so the input_conflict event reads the same on every run.
        conflicts = {
            key: order[available.writers[key]].key
            for key in sorted(available.conflicted, key=str)
        }
        return ResolvedInputs(inputs=inputs, conflicts=conflicts)

    def record_output(self, node_id: int, output: Any) -> None:
        """Make a node's output visible to its descendants; non-mapping outputs add nothing."""
        position = self._graph._position_of(node_id)
        if position not in self._resolved:
            raise RuntimeError(f"Node {self._graph.node(node_id).key!r} was not resolved yet.")
        if position in self._recorded:
            raise RuntimeError(
                f"Output of node {self._graph.node(node_id).key!r} was already recorded."
            )
        self._recorded.add(position)
        available = self._live.get(position)
        if available is not None and isinstance(output, Mapping):
            available.write(position, output)

    def _advance(self, node_id: int) -> _Available:
        """Build the node's map from its parents' maps, releasing those no other child needs."""
        graph = self._graph
        position = graph._position_of(node_id)
        if position not in self._readers_left:
            raise RuntimeError(
                f"Node {graph.node(node_id).key!r} is outside this resolver's scope."
            )
        if position in self._resolved:
            raise RuntimeError(f"Node {graph.node(node_id).key!r} was already resolved.")
        parents = graph._parents[position]
        for parent in parents:
            if parent not in self._recorded:
                raise RuntimeError(
                    f"Cannot resolve node {graph.node(node_id).key!r}: the output of its parent "
                    f"{graph._order[parent].key!r} has not been recorded."
                )

        available: _Available | None = None
        if parents:
            # Start from the largest parent map so the Python-level merging only walks the
            # smaller ones; take it over if this node is the last child reading it.
            largest = max(parents, key=lambda parent: len(self._live[parent]))
            for parent in parents:
                self._readers_left[parent] -= 1
            if self._readers_left[largest] == 0:
                available = self._live.pop(largest)
            else:
                available = self._live[largest].copy()
            for parent in parents:
                if parent != largest:
                    available.merge(self._live[parent])
                    if self._readers_left[parent] == 0:
                        del self._live[parent]
        if available is None:
            available = _Available()

        self._resolved.add(position)
        if self._readers_left[position] > 0:
            self._live[position] = available
        return available


def resolve_inputs_for_node(
    node_id: int,
    outputs_by_node: Mapping[int, Any],
    graph: Graph,
    starting_inputs: Mapping,
) -> ResolvedInputs:
    """Inputs for one node from the outputs of its ancestors (SPEC §8); O(ancestors + their data).

    Outputs of nodes that are not ancestors are ignored, as are non-mapping outputs. To resolve
    every node of a run, use one InputResolver instead: it reuses each parent's work.
    """
    ancestors = graph.ancestors(node_id)
    resolver = InputResolver(
        graph, starting_inputs, scope=[node.id for node in ancestors] + [node_id]
    )
    for ancestor in ancestors:
        resolver._advance(ancestor.id)  # ancestors' own inputs are not needed, only their maps
        resolver.record_output(ancestor.id, outputs_by_node.get(ancestor.id))
    return resolver.resolve(node_id)

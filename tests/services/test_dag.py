"""The DAG engine: validation, topological order, and each node's inputs (SPEC §5, §6.2, §8)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from typing import Any

import pytest

from chatsvc.services.dag import (
    EdgeSpec,
    Graph,
    GraphError,
    InputResolver,
    NodeSpec,
    ResolvedInputs,
    resolve_inputs_for_node,
    validate_graph,
)

NODE_TYPES = {"input", "echo", "transform", "template", "expert", "sleep"}


# --------------------------------------------------------------------------- helpers


def doc_nodes(*keys: str, node_type: str = "echo") -> list[dict]:
    return [{"key": key, "node_type": node_type, "metadata": {}} for key in keys]


def doc_edges(*pairs: str) -> list[dict]:
    """Edges written as "a>b"."""
    return [dict(zip(("source", "target"), pair.split(">"))) for pair in pairs]


def make_graph(keys: list[str], pairs: list[str], ids: list[int] | None = None) -> Graph:
    """A graph whose node ids default to 1, 2, 3... in the order keys are listed."""
    ids = ids or list(range(1, len(keys) + 1))
    nodes = [NodeSpec(id=i, key=key, node_type="echo", metadata={}) for i, key in zip(ids, keys)]
    edges = [EdgeSpec(*pair.split(">")) for pair in pairs]
    return Graph.build(nodes, edges)


def id_of(graph: Graph, key: str) -> int:
    return next(node.id for node in graph.topological_order() if node.key == key)


def run_all(
    graph: Graph, outputs: Mapping[str, Any], starting: Mapping | None = None
) -> dict[str, ResolvedInputs]:
    """Resolve every node the way the runner does; `outputs` by node key (missing → None)."""
    resolver = InputResolver(graph, starting or {})
    resolved = {}
    for node in graph.topological_order():
        resolved[node.key] = resolver.resolve(node.id)
        resolver.record_output(node.id, outputs.get(node.key))
    return resolved


def raises_graph_error(nodes: list[dict], edges: list[dict]) -> GraphError:
    with pytest.raises(GraphError) as info:
        validate_graph(nodes, edges, NODE_TYPES)
    return info.value


# --------------------------------------------------------------------------- validation


def test_valid_graph_passes():
    validate_graph(doc_nodes("a", "b", "c"), doc_edges("a>b", "b>c", "a>c"), NODE_TYPES)


def test_empty_graph_is_valid():
    validate_graph([], [], NODE_TYPES)


def test_unknown_node_type_names_node():
    nodes = doc_nodes("a") + [{"key": "b", "node_type": "foo", "metadata": {}}]
    error = raises_graph_error(nodes, [])
    assert error.errors == {"nodes": ["Unknown node type 'foo' for node 'b'."]}
    assert "'b'" in error.message and "'foo'" in error.message
    assert str(error) == error.message


def test_duplicate_key_names_node():
    error = raises_graph_error(doc_nodes("a", "b", "a", "a"), [])
    assert error.errors == {"nodes": ["Duplicate node key 'a' (3 nodes)."]}


def test_dangling_edges_name_missing_nodes():
    error = raises_graph_error(doc_nodes("a"), doc_edges("a>x", "y>a", "p>q"))
    assert error.errors == {
        "edges": [
            "Edge 'a' -> 'x' refers to unknown node 'x'.",
            "Edge 'y' -> 'a' refers to unknown node 'y'.",
            "Edge 'p' -> 'q' refers to unknown nodes 'p' and 'q'.",
        ]
    }


def test_self_loop_names_node():
    error = raises_graph_error(doc_nodes("a", "b"), doc_edges("a>b", "b>b"))
    assert error.errors == {"edges": ["Edge 'b' -> 'b' is a self-loop on node 'b'."]}


def test_repeated_edge_is_reported_once():
    error = raises_graph_error(doc_nodes("a"), doc_edges("a>a", "a>a"))
    assert error.errors == {"edges": ["Edge 'a' -> 'a' is a self-loop on node 'a'."]}


def test_repeated_valid_edge_is_harmless():
    validate_graph(doc_nodes("a", "b"), doc_edges("a>b", "a>b"), NODE_TYPES)


@pytest.mark.parametrize(
    "keys, pairs, cycle",
    [
        (["a", "b", "c"], ["a>b", "b>c", "c>a"], ["a", "b", "c", "a"]),
        # Listed edges in another order, the path still starts at the first node of the document.
        (["a", "b", "c"], ["c>a", "b>c", "a>b"], ["a", "b", "c", "a"]),
        (["a", "b"], ["a>b", "b>a"], ["a", "b", "a"]),
        # Only the cycle is reported, not the nodes leading into or out of it.
        (
            ["in", "x", "y", "z", "out"],
            ["in>x", "x>y", "y>z", "z>x", "z>out"],
            ["x", "y", "z", "x"],
        ),
        # Reversed direction: the path follows the edges.
        (["a", "b", "c"], ["a>c", "c>b", "b>a"], ["a", "c", "b", "a"]),
    ],
)
def test_cycle_is_reported_as_its_path(keys, pairs, cycle):
    error = raises_graph_error(doc_nodes(*keys), doc_edges(*pairs))
    assert error.errors == {"cycle": cycle}
    assert "Cycle: " + " -> ".join(repr(key) for key in cycle) in error.message


def test_reported_cycle_is_a_real_cycle_among_several():
    keys = [f"n{i}" for i in range(8)]
    pairs = ["n0>n1", "n1>n2", "n2>n0", "n3>n4", "n4>n5", "n5>n3", "n2>n3", "n6>n7"]
    error = raises_graph_error(doc_nodes(*keys), doc_edges(*pairs))
    path = error.errors["cycle"]
    assert path[0] == path[-1] and len(set(path[:-1])) == len(path) - 1
    assert all(f"{a}>{b}" in pairs for a, b in zip(path, path[1:]))


def test_every_kind_of_problem_is_reported_at_once():
    nodes = doc_nodes("a", "b", "c", "a") + [{"key": "d", "node_type": "nope", "metadata": {}}]
    edges = doc_edges("a>b", "b>c", "c>a", "c>ghost", "d>d")
    error = raises_graph_error(nodes, edges)
    assert error.errors == {
        "nodes": ["Unknown node type 'nope' for node 'd'.", "Duplicate node key 'a' (2 nodes)."],
        "edges": [
            "Edge 'c' -> 'ghost' refers to unknown node 'ghost'.",
            "Edge 'd' -> 'd' is a self-loop on node 'd'.",
        ],
        "cycle": ["a", "b", "c", "a"],
    }
    for name in ("'d'", "'a'", "'ghost'", "'nope'"):
        assert name in error.message


def test_long_chain_validates_without_recursion():
    keys = [f"n{i}" for i in range(10_000)]
    edges = [{"source": a, "target": b} for a, b in zip(keys, keys[1:])]
    validate_graph(doc_nodes(*keys), edges, NODE_TYPES)
    graph = Graph.build(
        [NodeSpec(i, key, "echo", {}) for i, key in enumerate(keys)],
        [EdgeSpec(a, b) for a, b in zip(keys, keys[1:])],
    )
    assert [node.key for node in graph.topological_order()] == keys
    assert len(graph.ancestors(9_999)) == 9_999


def test_long_cycle_is_found_without_recursion():
    keys = [f"n{i}" for i in range(10_000)]
    edges = [{"source": a, "target": b} for a, b in zip(keys, keys[1:] + keys[:1])]
    error = raises_graph_error(doc_nodes(*keys), edges)
    assert error.errors["cycle"] == keys + ["n0"]


# --------------------------------------------------------------------------- graph


def test_topological_order_breaks_ties_by_node_id():
    # Ids deliberately disagree with the listing order: c=1, b=2, a=3, d=4.
    graph = make_graph(["a", "b", "c", "d"], ["a>d", "c>d"], ids=[3, 2, 1, 4])
    assert [node.key for node in graph.topological_order()] == ["c", "b", "a", "d"]


def test_topological_order_respects_edges_over_ids():
    graph = make_graph(["late", "early"], ["late>early"], ids=[9, 1])
    assert [node.id for node in graph.topological_order()] == [9, 1]


def test_topological_order_ignores_listing_order():
    keys, pairs = ["a", "b", "c", "d", "e"], ["a>c", "b>c", "c>d", "c>e"]
    ids = [5, 4, 3, 2, 1]
    first = make_graph(keys, pairs, ids)
    second = make_graph(keys[::-1], pairs[::-1], ids[::-1])
    assert first.topological_order() == second.topological_order()
    assert [node.key for node in first.topological_order()] == ["b", "a", "c", "e", "d"]


def test_topological_order_returns_a_fresh_list():
    graph = make_graph(["a", "b"], ["a>b"])
    graph.topological_order().clear()
    assert len(graph.topological_order()) == 2


def test_predecessors_are_direct_parents_in_topological_order():
    graph = make_graph(["x", "y", "z", "sink"], ["z>sink", "x>sink", "y>z"], ids=[3, 1, 2, 4])
    # Order: y(1), z(2), x(3), sink(4).
    assert [node.key for node in graph.predecessors(4)] == ["z", "x"]
    assert graph.predecessors(1) == []
    assert graph.node(2).key == "z"


def test_repeated_edges_count_once():
    graph = make_graph(["a", "b"], ["a>b", "a>b"])
    assert [node.key for node in graph.predecessors(2)] == ["a"]


def test_ancestors_are_transitive_and_ordered():
    graph = make_graph(["a", "b", "c", "d", "other"], ["a>b", "b>d", "c>d", "other>c"])
    assert [node.key for node in graph.ancestors(id_of(graph, "d"))] == ["a", "b", "other", "c"]


def test_unknown_node_id_raises_key_error():
    graph = make_graph(["a"], [])
    with pytest.raises(KeyError, match="42"):
        graph.node(42)


def test_build_refuses_a_cycle():
    with pytest.raises(GraphError) as info:
        make_graph(["a", "b"], ["a>b", "b>a"])
    assert info.value.errors == {"cycle": ["a", "b", "a"]}


def test_build_refuses_a_dangling_edge():
    with pytest.raises(GraphError, match="'x'"):
        make_graph(["a"], ["a>x"])


# --------------------------------------------------------------------------- inputs


def test_root_gets_starting_inputs():
    graph = make_graph(["a"], [])
    result = resolve_inputs_for_node(1, {}, graph, {"q": 1})
    assert result == ResolvedInputs(inputs={"q": 1}, conflicts={})


def test_diamond_receives_union_of_all_ancestors():
    graph = make_graph(["A", "B", "C", "D"], ["A>B", "A>C", "B>D", "C>D"])
    outputs = {"A": {"a": 1}, "B": {"b": 2}, "C": {"c": 3}}
    resolved = run_all(graph, outputs, {"start": 0})
    assert resolved["D"].inputs == {"start": 0, "a": 1, "b": 2, "c": 3}
    assert resolved["D"].conflicts == {}
    by_id = {1: outputs["A"], 2: outputs["B"], 3: outputs["C"]}
    assert resolve_inputs_for_node(4, by_id, graph, {"start": 0}) == resolved["D"]


def test_diamond_same_ancestor_twice_is_not_a_conflict():
    # A's value reaches D through B and C; NaN is not even equal to itself.
    nan = float("nan")
    graph = make_graph(["A", "B", "C", "D"], ["A>B", "A>C", "B>D", "C>D"])
    resolved = run_all(graph, {"A": {"x": nan, "y": [1]}})
    assert resolved["D"].conflicts == {}
    assert resolved["D"].inputs["y"] == [1]


def test_grandparent_outputs_reach_grandchild():
    graph = make_graph(["a", "b", "c"], ["a>b", "b>c"])
    resolved = run_all(graph, {"a": {"from_a": 1}, "b": {"from_b": 2}})
    assert resolved["c"].inputs == {"from_a": 1, "from_b": 2}


def test_only_ancestors_contribute():
    # "side" runs before "c" but is not its ancestor.
    graph = make_graph(["a", "side", "c"], ["a>c"])
    resolved = run_all(graph, {"a": {"x": 1}, "side": {"y": 2}})
    assert [node.key for node in graph.topological_order()] == ["a", "side", "c"]
    assert resolved["c"].inputs == {"x": 1}
    assert resolve_inputs_for_node(3, {1: {"x": 1}, 2: {"y": 2}}, graph, {}).inputs == {"x": 1}


def test_later_ancestor_wins_and_conflict_names_winner():
    graph = make_graph(["a", "b", "c"], ["a>b", "b>c"])
    resolved = run_all(graph, {"a": {"x": 1, "keep": "a"}, "b": {"x": 2}}, {"x": 0})
    assert resolved["c"].inputs == {"x": 2, "keep": "a"}
    assert resolved["c"].conflicts == {"x": "b"}


def test_later_wins_across_branches_by_topological_order():
    # Ids order the independent branches: right (id 2) runs before left (id 3), so left wins.
    graph = make_graph(
        ["root", "left", "right", "sink"],
        ["root>left", "root>right", "left>sink", "right>sink"],
        ids=[1, 3, 2, 4],
    )
    resolved = run_all(graph, {"left": {"x": "L"}, "right": {"x": "R"}})
    assert resolved["sink"].inputs == {"x": "L"}
    assert resolved["sink"].conflicts == {"x": "left"}


def test_ancestor_outputs_override_starting_inputs_without_conflict():
    graph = make_graph(["a", "b"], ["a>b"])
    resolved = run_all(graph, {"a": {"q": "from a"}}, {"q": "start"})
    assert resolved["b"].inputs == {"q": "from a"}
    assert resolved["b"].conflicts == {}


def test_equal_values_are_not_conflicts():
    graph = make_graph(["A", "B", "C", "D"], ["A>B", "A>C", "B>D", "C>D"])
    resolved = run_all(graph, {"B": {"x": {"deep": [1, 2]}}, "C": {"x": {"deep": [1, 2]}}})
    assert resolved["D"].inputs == {"x": {"deep": [1, 2]}}
    assert resolved["D"].conflicts == {}


def test_echo_pass_through_is_not_a_conflict():
    graph = make_graph(
        ["src", "echo1", "echo2", "sink"],
        ["src>echo1", "src>echo2", "echo1>sink", "echo2>sink"],
    )
    resolver = InputResolver(graph, {"q": 1})
    seen = {}
    for node in graph.topological_order():
        seen[node.key] = resolver.resolve(node.id)
        output = {"x": 7} if node.key == "src" else dict(seen[node.key].inputs)  # echo
        resolver.record_output(node.id, output)
    assert seen["sink"].inputs == {"q": 1, "x": 7}
    assert seen["sink"].conflicts == {}


def test_conflict_persists_once_ancestors_disagreed():
    # a and b disagree; c repeats b's value: c wins, and the disagreement is still reported.
    graph = make_graph(["a", "b", "c", "d"], ["a>b", "b>c", "c>d"])
    resolved = run_all(graph, {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 2}})
    assert resolved["d"].conflicts == {"x": "c"}


def test_conflicts_from_two_branches_merge():
    graph = make_graph(
        ["r", "p", "q", "s", "t", "sink"],
        ["r>p", "p>s", "r>q", "q>t", "s>sink", "t>sink"],
    )
    outputs = {"r": {"x": 1, "y": 1}, "p": {"x": 2}, "q": {"y": 2}, "s": {}, "t": {}}
    resolved = run_all(graph, outputs)
    assert resolved["sink"].inputs == {"x": 2, "y": 2}
    assert resolved["sink"].conflicts == {"x": "p", "y": "q"}
    assert list(resolved["sink"].conflicts) == ["x", "y"]


@pytest.mark.parametrize("output", [42, "text", [1, 2], None, True])
def test_non_mapping_outputs_contribute_nothing(output):
    graph = make_graph(["a", "b", "c"], ["a>b", "b>c"])
    resolved = run_all(graph, {"a": {"x": 1}, "b": output})
    assert resolved["c"].inputs == {"x": 1}
    assert resolved["c"].conflicts == {}


def test_inputs_are_a_private_dict():
    graph = make_graph(["a", "b", "c"], ["a>b", "a>c"])
    resolver = InputResolver(graph, {"s": 1})
    first = resolver.resolve(1)
    first.inputs["s"] = "changed by node a"
    resolver.record_output(1, {"x": 1})
    second = resolver.resolve(2)
    second.inputs["x"] = "changed by node b"
    resolver.record_output(2, None)
    assert resolver.resolve(3).inputs == {"s": 1, "x": 1}


def test_resolver_enforces_the_run_protocol():
    graph = make_graph(["a", "b"], ["a>b"])
    resolver = InputResolver(graph, {})
    with pytest.raises(RuntimeError, match="not resolved"):
        resolver.record_output(1, {})
    resolver.resolve(1)
    with pytest.raises(RuntimeError, match="'a'.*not been recorded"):
        resolver.resolve(2)
    resolver.record_output(1, {"x": 1})
    with pytest.raises(RuntimeError, match="already recorded"):
        resolver.record_output(1, {"x": 2})
    with pytest.raises(RuntimeError, match="already resolved"):
        resolver.resolve(1)
    assert resolver.resolve(2).inputs == {"x": 1}


def test_resolver_releases_maps_nobody_needs():
    keys = [f"n{i}" for i in range(50)]
    graph = make_graph(keys, [f"{a}>{b}" for a, b in zip(keys, keys[1:])])
    resolver = InputResolver(graph, {})
    for node in graph.topological_order():
        resolver.resolve(node.id)
        resolver.record_output(node.id, {node.key: node.id})
        assert len(resolver._live) <= 1  # a chain keeps only its tip


def test_chain_of_1000_resolves_fully():
    n = 1_000
    keys = [f"n{i}" for i in range(n)]
    graph = make_graph(keys, [f"{a}>{b}" for a, b in zip(keys, keys[1:])])
    resolved = run_all(graph, {key: {f"k{i}": i, "shared": i} for i, key in enumerate(keys)})
    last = resolved[keys[-1]]
    assert last.inputs == {**{f"k{i}": i for i in range(n - 1)}, "shared": n - 2}
    assert last.conflicts == {"shared": keys[-2]}
    outputs_by_id = {i + 1: {f"k{i}": i} for i in range(n)}
    assert len(resolve_inputs_for_node(n, outputs_by_id, graph, {}).inputs) == n - 1


def test_fan_in_of_1000_resolves_fully():
    n = 1_000
    middle = [f"m{i}" for i in range(n)]
    pairs = [f"root>{m}" for m in middle] + [f"{m}>sink" for m in middle]
    graph = make_graph(["root", *middle, "sink"], pairs)
    outputs = {"root": {"root": True}, **{m: {m: i} for i, m in enumerate(middle)}}
    resolved = run_all(graph, outputs, {"q": "start"})
    expected = {"q": "start", "root": True, **{m: i for i, m in enumerate(middle)}}
    assert resolved["sink"].inputs == expected
    assert resolved["m500"].inputs == {"q": "start", "root": True}
    assert resolved["sink"].conflicts == {}


# --------------------------------------------------------------------------- against a reference


def naive_resolve(
    graph: Graph, node_id: int, outputs_by_node: Mapping[int, Any], starting: Mapping
) -> ResolvedInputs:
    """The SPEC's definition, written plainly: ancestors by BFS, merged in topological order."""
    order = graph.topological_order()
    position = {node.id: index for index, node in enumerate(order)}
    ancestors: set[int] = set()
    queue = deque([node_id])
    while queue:
        for parent in graph.predecessors(queue.popleft()):
            if parent.id not in ancestors:
                ancestors.add(parent.id)
                queue.append(parent.id)
    inputs = dict(starting)
    written: dict[str, list[Any]] = {}
    winner: dict[str, str] = {}
    for ancestor in sorted(ancestors, key=position.__getitem__):
        output = outputs_by_node.get(ancestor)
        if isinstance(output, dict):
            for key, value in output.items():
                inputs[key] = value
                written.setdefault(key, []).append(value)
                winner[key] = graph.node(ancestor).key
    conflicts = {
        key: winner[key]
        for key, values in written.items()
        if any(value != values[0] for value in values[1:])
    }
    return ResolvedInputs(inputs=inputs, conflicts=dict(sorted(conflicts.items())))


def random_dag(rng: random.Random) -> Graph:
    size = rng.randint(1, 9)
    keys = [f"n{i}" for i in range(size)]
    pairs = [
        f"{keys[i]}>{keys[j]}"
        for i in range(size)
        for j in range(i + 1, size)
        if rng.random() < rng.choice([0.2, 0.4, 0.7])
    ]
    ids = rng.sample(range(1, 100), size)  # ids unrelated to the edge direction
    listing = list(zip(keys, ids))
    rng.shuffle(listing)
    return make_graph([key for key, _ in listing], pairs, [node_id for _, node_id in listing])


def random_output(rng: random.Random, inputs: dict) -> Any:
    kind = rng.random()
    if kind < 0.15:
        return dict(inputs)  # echo: repeats what it received
    if kind < 0.25:
        return rng.choice([None, 3, "text", [1]])
    # A tiny key and value space, so keys collide and values both clash and agree.
    return {rng.choice("xyz"): rng.choice([0, 1, [0]]) for _ in range(rng.randint(0, 3))}


@pytest.mark.parametrize("seed", range(200))
def test_resolver_matches_reference_on_random_dags(seed):
    rng = random.Random(seed)
    graph = random_dag(rng)
    starting = {rng.choice("xyzs"): "start" for _ in range(rng.randint(0, 2))}
    resolver = InputResolver(graph, starting)
    outputs: dict[int, Any] = {}
    for node in graph.topological_order():
        expected = naive_resolve(graph, node.id, outputs, starting)
        got = resolver.resolve(node.id)
        assert got == expected
        assert list(got.conflicts) == list(expected.conflicts)
        assert resolve_inputs_for_node(node.id, outputs, graph, starting) == expected
        outputs[node.id] = random_output(rng, got.inputs)
        resolver.record_output(node.id, outputs[node.id])


def test_random_dags_do_produce_conflicts():
    """Guard the property test above: it must exercise conflicts, not only clean merges."""
    conflicted = 0
    for seed in range(200):
        rng = random.Random(seed)
        graph = random_dag(rng)
        starting = {rng.choice("xyzs"): "start" for _ in range(rng.randint(0, 2))}
        resolver = InputResolver(graph, starting)
        for node in graph.topological_order():
            got = resolver.resolve(node.id)
            conflicted += bool(got.conflicts)
            resolver.record_output(node.id, random_output(rng, got.inputs))
    assert conflicted > 50

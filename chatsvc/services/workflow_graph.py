"""A workflow's graph: validated on save and again before each run."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from chatsvc.errors import Unprocessable
from chatsvc.services.dag import EdgeSpec, Graph, GraphError, NodeSpec, validate_graph
from chatsvc.services.nodes import get_service, node_types


def check_graph(
    nodes: Sequence[Mapping[str, Any]],
    edges: Sequence[Mapping[str, Any]],
    more_problems: Mapping[str, list[str]] | None = None,
) -> None:
    """Raise 422 naming the offending nodes if the graph or a node's metadata is invalid.

    ``nodes`` are ``{"key", "node_type", "metadata"}``; ``edges`` ``{"source", "target"}``.
    ``more_problems`` are problems found elsewhere, by node key, reported with the
    metadata's own (``security.permissions.check_workflow_graph`` adds the experts').
    """
    try:
        validate_graph(nodes, edges, node_types())
    except GraphError as exc:
        raise Unprocessable(exc.message, errors={"json": exc.errors}) from None
    more_problems = more_problems or {}
    problems = {}
    for node in nodes:
        found = get_service(node["node_type"]).validate_metadata(node.get("metadata") or {})
        found += more_problems.get(node["key"], [])
        if found:
            problems[node["key"]] = found
    if problems:
        names = ", ".join(f"'{key}'" for key in problems)
        raise Unprocessable(
            f"Invalid metadata for node(s) {names}", errors={"json": {"metadata": problems}}
        )


def build_graph(workflow: Any) -> Graph:
    """The run-time graph of a stored workflow (nodes keep their database ids).

    ``workflow``: anything with ``nodes`` (id, key, node_type, meta) and ``edges``
    (source_id, target_id): a ``Workflow`` or the plain rows a run reads.
    """
    nodes = [NodeSpec(id=n.id, key=n.key, node_type=n.node_type, metadata=dict(n.meta or {})) for n in workflow.nodes]
    by_id = {n.id: n.key for n in workflow.nodes}
    edges = [EdgeSpec(source=by_id[e.source_id], target=by_id[e.target_id]) for e in workflow.edges]
    return Graph.build(nodes, edges)


def graph_documents(workflow: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The stored graph as plain node and edge documents, for re-validation."""
    keys = {n.id: n.key for n in workflow.nodes}
    nodes = [{"key": n.key, "node_type": n.node_type, "metadata": n.meta or {}} for n in workflow.nodes]
    edges = [{"source": keys[e.source_id], "target": keys[e.target_id]} for e in workflow.edges]
    return nodes, edges

"""What a run needs, loaded once under the rules of ``permissions`` (SPEC §4, §6).

Runs start here, so these read plain rows with a few statements (not ORM objects): the
target and, for a service, whether it is linked to it; for a workflow, its graph and
every expert its nodes use, in one query. The views that read and change experts and
workflows load them here too (``expert_for_use``, ``workflow_for_use``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from sqlalchemy import Select, bindparam, exists, select
from sqlalchemy.orm import Session

from chatsvc.errors import NotFound
from chatsvc.extensions import db
from chatsvc.models import Edge, Expert, Node, Workflow, is_possible_id
from chatsvc.security.caller import Caller
from chatsvc.security.permissions import (
    LINKS,
    check_workflow_graph,
    get_or_404,
    linked,
    require_linked,
    require_use,
)
from chatsvc.services.dag import Graph
from chatsvc.services.expert_runner import ExpertSnapshot
from chatsvc.services.nodes import ExpertNode
from chatsvc.services.workflow_graph import build_graph, graph_documents

T = TypeVar("T")


def service_linked_target(session: Session, model: type[T], service_id: int, target_id: int) -> T:
    """The expert or workflow, if the service is linked to it: 404 if it does not exist,
    403 if it is not linked (the guardrails of SPEC §4)."""
    target = get_or_404(model, target_id, session=session)
    require_linked(model, target_id, linked(session, model, service_id, target_id))
    return target


def _for_use(caller: Caller, model: type[T], target_id: int) -> T:
    target = get_or_404(model, target_id)
    require_use(caller, model, target_id, target.team_id, lambda: linked(db.session, model, caller.id, target_id))
    return target


def expert_for_use(caller: Caller, expert_id: int) -> Expert:
    """Load an expert the caller may read and run (404 before 403)."""
    return _for_use(caller, Expert, expert_id)


def _rows_for_run(model: type, *columns: Any) -> Select:
    """Targets' rows: their ``team_id``, ``columns`` and whether the service ``service_id``
    is linked to each (``linked``)."""
    table = model.__table__.c
    link, target_column = LINKS[model]
    links = link.__table__.c
    is_linked = exists().where(links[target_column.key] == table.id, links.service_id == bindparam("service_id"))
    return select(table.team_id, *columns, is_linked.label("linked"))


def _select_for_run(model: type, *columns: Any) -> Select:
    """One target's row (``_rows_for_run``) by ``target_id``."""
    return _rows_for_run(model, *columns).where(model.__table__.c.id == bindparam("target_id"))


def _row_for_run(caller: Caller, model: type, query: Select, target_id: int) -> Any:
    """The target's row (``_select_for_run``) if the caller may run it: the rule of ``_for_use``."""
    row = None
    if is_possible_id(target_id):
        service_id = caller.id if caller.is_service else None
        row = db.session.connection().execute(query, {"target_id": target_id, "service_id": service_id}).first()
    if row is None:
        raise NotFound(f"{model.__name__} {target_id} not found")
    require_use(caller, model, target_id, row.team_id, lambda: row.linked)
    return row


_experts = Expert.__table__.c
_EXPERT_COLUMNS = (_experts.id, _experts.name, _experts.prompt_template, _experts.model_name, _experts.base)
_EXPERT_FOR_RUN = _select_for_run(Expert, *_EXPERT_COLUMNS)
# Every expert a workflow's nodes name, in one query (the same columns and `linked`).
_EXPERTS_FOR_RUN = _rows_for_run(Expert, *_EXPERT_COLUMNS).where(_experts.id.in_(bindparam("expert_ids", expanding=True)))


def expert_for_run(caller: Caller, expert_id: int) -> ExpertSnapshot:
    """What a run of the expert needs, under the same rule as ``expert_for_use``.

    Runs start here, so it is one query for plain rows (the expert and, for a
    service, its link), not ORM objects.
    """
    return _snapshot(_row_for_run(caller, Expert, _EXPERT_FOR_RUN, expert_id))


def _snapshot(row: Any) -> ExpertSnapshot:
    return ExpertSnapshot(id=row.id, team_id=row.team_id, name=row.name, prompt_template=row.prompt_template,
                          model_name=row.model_name, base=dict(row.base or {}))


@dataclass(frozen=True)
class StoredWorkflow:
    """A workflow as a run reads it: plain rows, as ``services.workflow_graph`` takes them.

    ``nodes``: id, key, node_type, meta (by id); ``edges``: source_id, target_id (by id).
    """

    id: int
    team_id: int
    name: str
    nodes: Sequence[Any]
    edges: Sequence[Any]


_workflows, _nodes, _edges = Workflow.__table__.c, Node.__table__.c, Edge.__table__.c
_WORKFLOW_FOR_RUN = _select_for_run(Workflow, _workflows.id, _workflows.name)
_NODES_OF = (select(_nodes.id, _nodes.key, _nodes.node_type, _nodes["metadata"].label("meta"))
             .where(_nodes.workflow_id == bindparam("workflow_id")).order_by(_nodes.id))
_EDGES_OF = (select(_edges.source_id, _edges.target_id)
             .where(_edges.workflow_id == bindparam("workflow_id")).order_by(_edges.id))


def workflow_for_run(caller: Caller, workflow_id: int) -> StoredWorkflow:
    """The workflow and its graph, under the same rule as ``workflow_for_use``.

    Plain rows, not ORM objects: a run start reads a large graph in a fraction of the
    time the ORM takes (docs/performance.md, "Starting a workflow run").
    """
    row = _row_for_run(caller, Workflow, _WORKFLOW_FOR_RUN, workflow_id)
    connection = db.session.connection()
    return StoredWorkflow(id=row.id, team_id=row.team_id, name=row.name,
                          nodes=connection.execute(_NODES_OF, {"workflow_id": row.id}).all(),
                          edges=connection.execute(_EDGES_OF, {"workflow_id": row.id}).all())


def workflow_for_use(caller: Caller, workflow_id: int) -> Workflow:
    """Load a workflow the caller may read and run (404 before 403)."""
    return _for_use(caller, Workflow, workflow_id)


@dataclass(frozen=True)
class RunnableWorkflow:
    """A workflow the caller may run: its checked graph and the experts its nodes use."""

    id: int
    team_id: int
    name: str
    graph: Graph
    experts: dict[int, ExpertSnapshot]


def runnable_workflow(caller: Caller, workflow_id: int) -> RunnableWorkflow:
    """The workflow, if the caller may run it (404 before 403), ready to run.

    Its graph is checked again (it may have changed since it was saved, and so may the
    experts it names), and the caller must be allowed to run each expert its ``expert``
    nodes use, as if it ran them directly: a service must be linked to each (SPEC §6.2);
    for a user who may run the workflow this holds already, as they are of the
    workflow's own team (``check_workflow_graph``).
    """
    stored = workflow_for_run(caller, workflow_id)
    nodes, edges = graph_documents(stored)
    check_workflow_graph(stored.team_id, nodes, edges)
    return RunnableWorkflow(id=stored.id, team_id=stored.team_id, name=stored.name,
                            graph=build_graph(stored), experts=_experts_of(caller, stored))


def _experts_of(caller: Caller, workflow: StoredWorkflow) -> dict[int, ExpertSnapshot]:
    """Each expert the workflow's nodes name, once, in one query, under the rule of ``expert_for_run``."""
    wanted = list(dict.fromkeys(node.meta["expert_id"] for node in workflow.nodes
                                if node.node_type == ExpertNode.node_type))
    if not wanted:
        return {}
    service_id = caller.id if caller.is_service else None
    rows = {row.id: row for row in db.session.connection().execute(
        _EXPERTS_FOR_RUN, {"expert_ids": wanted, "service_id": service_id})}
    experts = {}
    for expert_id in wanted:
        row = rows.get(expert_id)
        if row is None:
            raise NotFound(f"Expert {expert_id} not found")
        require_use(caller, Expert, expert_id, row.team_id, lambda row=row: row.linked)
        experts[expert_id] = _snapshot(row)
    return experts

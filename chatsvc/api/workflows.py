"""Workflows: DAGs of node services, saved with their graph."""

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import delete, insert

from chatsvc.extensions import db
from chatsvc.models import Edge, Node, Workflow, WorkflowService
from chatsvc.security.caller import authenticate, get_caller
from chatsvc.security.permissions import (
    check_workflow_graph,
    get_or_404,
    manageable,
    require_team_admin,
    visible_workflows,
)
from chatsvc.security.targets import workflow_for_use
from chatsvc.services.workflow_graph import graph_documents

from .links import register_link_routes
from .pagination import paginate
from .schemas import PaginationArgs, WorkflowOutSchema, WorkflowSchema, WorkflowUpdateSchema
from .teams_check import existing_team_id

blp = Blueprint("workflows", __name__, url_prefix="/api/v1/workflows", description="Workflows")
blp.before_request(authenticate)


def _node_docs(nodes: list[dict]) -> list[dict]:
    """Loaded nodes (schema attribute ``meta``) as graph documents (API name ``metadata``)."""
    return [{"key": n["key"], "node_type": n["node_type"], "metadata": n["meta"]} for n in nodes]


_nodes, _edges = Node.__table__, Edge.__table__


def _replace_graph(workflow: Workflow, nodes: list[dict], edges: list[dict]) -> None:
    """Swap in a new, already validated graph; node ids follow the document's order.

    Bulk statements, not ORM objects: the unit of work spent 5 s of the worker's one
    thread on a graph of 10,000 nodes and edges, stalling every other request and stream.
    """
    db.session.flush()  # the workflow's own row (a new one gets its id)
    connection = db.session.connection()
    for table in (_edges, _nodes):  # old rows first: keys must stay unique per workflow
        connection.execute(delete(table).where(table.c.workflow_id == workflow.id))
    node_ids = {}
    if nodes:
        added = connection.execute(
            insert(_nodes).returning(_nodes.c.id, _nodes.c.key, sort_by_parameter_order=True),
            [{"workflow_id": workflow.id, "key": doc["key"], "node_type": doc["node_type"],
              "metadata": doc["metadata"]} for doc in nodes])
        node_ids = {key: node_id for node_id, key in added}
    if edges:
        connection.execute(insert(_edges), [
            {"workflow_id": workflow.id, "source_id": node_ids[doc["source"]], "target_id": node_ids[doc["target"]]}
            for doc in edges])
    # Whatever this session loaded of the old graph is stale, and the new rows may reuse its
    # ids (SQLite): everything is read again from the database when next used.
    db.session.expire_all()


@blp.route("")
class Workflows(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, WorkflowOutSchema(many=True))
    def get(self, args):
        """List the workflows the caller may use."""
        return paginate(visible_workflows(get_caller()), args)

    @blp.arguments(WorkflowSchema)
    @blp.response(201, WorkflowOutSchema)
    def post(self, body):
        """Create a workflow with its graph (validated: 422 names the offending nodes)."""
        team_id = existing_team_id(body["team_id"])
        require_team_admin(get_caller(), team_id)
        nodes = _node_docs(body["nodes"])
        check_workflow_graph(team_id, nodes, body["edges"])
        workflow = Workflow(team_id=team_id, name=body["name"], description=body["description"],
                            example_input=body["example_input"])
        db.session.add(workflow)
        _replace_graph(workflow, nodes, body["edges"])
        db.session.commit()
        return workflow, 201, {"Location": url_for("workflows.WorkflowItem", workflow_id=workflow.id)}


@blp.route("/<int:workflow_id>")
class WorkflowItem(MethodView):
    @blp.response(200, WorkflowOutSchema)
    def get(self, workflow_id):
        """Get a workflow with its graph."""
        return workflow_for_use(get_caller(), workflow_id)

    @blp.arguments(WorkflowUpdateSchema)
    @blp.response(200, WorkflowOutSchema)
    def patch(self, body, workflow_id):
        """Change a workflow; `nodes` and `edges` replace the graph (send both, or one to keep the other)."""
        workflow = manageable(get_caller(), get_or_404(Workflow, workflow_id))
        for name in ("name", "description", "example_input"):
            if name in body:
                setattr(workflow, name, body[name])
        if "nodes" in body or "edges" in body:
            stored_nodes, stored_edges = graph_documents(workflow)
            nodes = _node_docs(body["nodes"]) if "nodes" in body else stored_nodes
            edges = body.get("edges", stored_edges)
            check_workflow_graph(workflow.team_id, nodes, edges)
            _replace_graph(workflow, nodes, edges)
        db.session.commit()
        return workflow

    @blp.response(204)
    def delete(self, workflow_id):
        """Delete a workflow."""
        workflow = manageable(get_caller(), get_or_404(Workflow, workflow_id))
        db.session.delete(workflow)
        db.session.commit()


register_link_routes(blp, Workflow, WorkflowService, "workflow_id")

"""The Chat API: run experts and workflows, see and cancel runs (SPEC §6)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from chatsvc.errors import Conflict, NotFound
from chatsvc.extensions import db
from chatsvc.models import Expert, Workflow
from chatsvc.runs.executor import RunContext, RunOutcome
from chatsvc.runs.registry import RunInfo
from chatsvc.runtime import current_runtime
from chatsvc.security.caller import Caller, authenticate, get_caller
from chatsvc.security.guardrails import ensure_service_can_use_expert
from chatsvc.security.permissions import can_see_run, expert_for_use, workflow_for_use
from chatsvc.services.expert_runner import ExpertSnapshot, run_expert
from chatsvc.services.nodes import ExpertNode
from chatsvc.services.workflow_graph import build_graph, check_graph, graph_documents
from chatsvc.services.workflow_runner import WorkflowJob

from .pagination import clamp_page
from .schemas import (
    ErrorSchema,
    ExpertRunResultSchema,
    ExpertRunSchema,
    PaginationArgs,
    RunAcceptedSchema,
    RunSchema,
    WorkflowRunResultSchema,
    WorkflowRunSchema,
)
from .workflows import expert_team_id

blp = Blueprint("chat", __name__, url_prefix="/api/v1/chat", description="Run experts and workflows")
blp.before_request(authenticate)

AUTH_ERRORS = [(400, "Both Authorization and X-API-Key sent"), (401, "Missing, invalid or expired credentials")]
RUN_ERRORS = [(404, "Target not found"), (403, "Not allowed"), (429, "Too many active runs"),
              (503, "Run queue or registry full")]


def document_auth_errors(view):
    """Every chat endpoint authenticates (blp.before_request), so each documents these."""
    for code, description in AUTH_ERRORS:
        view = blp.alt_response(code, schema=ErrorSchema, description=description)(view)
    return view


def document_errors(view):
    for code, description in RUN_ERRORS:
        view = blp.alt_response(code, schema=ErrorSchema, description=description)(view)
    return document_auth_errors(view)


def events_url(run_id: str) -> str:
    """The stream URL with a signed token bound to this run, usable by EventSource."""
    token = current_runtime().tokens.issue(run_id, get_caller().key)
    return url_for("streams.RunEvents", run_id=run_id, token=token)


def status_url(run_id: str) -> str:
    return url_for("chat.RunItem", run_id=run_id)


def run_body(info: RunInfo) -> dict[str, Any]:
    return {**info.to_dict(), "events_url": events_url(info.run_id), "status_url": status_url(info.run_id)}


def visible_run(caller: Caller, run_id: str) -> RunInfo:
    """The run, or 404 when it is unknown, expired or not the caller's to see."""
    info = current_runtime().registry.get(run_id)
    if info is None or not can_see_run(caller, info):
        raise NotFound(f"Run {run_id} not found")
    return info


def start_run(caller: Caller, kind: str, target: Any, job, mode: str) -> Response:
    """Queue the run; answer with its result (sync, when it ends in time) or 202."""
    runtime = current_runtime()
    info = runtime.executor.submit(kind=kind, target_id=target.id, team_id=target.team_id, owner=caller.key, job=job)
    if mode == "sync":
        final = runtime.executor.wait(info.run_id, runtime.config.sync_timeout_seconds)
        if final is not None:
            body = {"run_id": final.run_id, "status": final.status, **(final.result or {})}
            if final.error is not None:
                body["error"] = final.error
            body["events_url"] = events_url(final.run_id)
            body["status_url"] = status_url(final.run_id)  # every run response links both
            return jsonify(body)
        info = runtime.registry.get(info.run_id) or info
    accepted = {
        "run_id": info.run_id,
        "status": info.status,
        "events_url": events_url(info.run_id),
        "status_url": status_url(info.run_id),
    }
    response = jsonify(accepted)
    response.status_code = 202
    response.headers["Location"] = accepted["status_url"]
    return response


@blp.route("/experts:run")
class RunExpert(MethodView):
    @blp.arguments(ExpertRunSchema())  # an instance: webargs would build a Schema per request
    @blp.alt_response(200, schema=ExpertRunResultSchema, description="Sync run finished", success=True)
    @blp.alt_response(202, schema=RunAcceptedSchema, description="Run accepted (async, or sync past the timeout)")
    @document_errors
    def post(self, body):
        """Run an expert: render its prompt and call the LLM."""
        caller = get_caller()
        expert = ExpertSnapshot.of(expert_for_use(caller, body["expert_id"]))
        runtime = current_runtime()
        input_params, request_base = body["input_params"], body["base"]
        timeout_ms = runtime.config.jsonata_timeout_ms

        def job(ctx: RunContext) -> RunOutcome:
            reply = run_expert(ctx, expert, input_params, request_base, runtime.provider, jsonata_timeout_ms=timeout_ms)
            return RunOutcome(result=reply.as_result())

        return start_run(caller, "expert", expert, job, body["mode"])


def _experts_of(caller: Caller, workflow: Workflow) -> dict[int, ExpertSnapshot]:
    """Snapshots of the experts the workflow's expert nodes use; a service must be linked to each."""
    snapshots = {}
    for node in workflow.nodes:
        if node.node_type != ExpertNode.node_type:
            continue
        expert_id = node.meta["expert_id"]
        if caller.is_service:
            expert = ensure_service_can_use_expert(db.session, caller.id, expert_id)
        else:
            expert = db.session.get(Expert, expert_id)  # same team: checked by check_graph
        snapshots[expert_id] = ExpertSnapshot.of(expert)
    return snapshots


@blp.route("/workflows:run")
class RunWorkflow(MethodView):
    @blp.arguments(WorkflowRunSchema())
    @blp.alt_response(200, schema=WorkflowRunResultSchema, description="Sync run finished", success=True)
    @blp.alt_response(202, schema=RunAcceptedSchema, description="Run accepted (async, or sync past the timeout)")
    @blp.alt_response(422, schema=ErrorSchema, description="The stored graph is no longer valid")
    @document_errors
    def post(self, body):
        """Run a workflow: its nodes in topological order."""
        caller = get_caller()
        workflow = workflow_for_use(caller, body["workflow_id"])
        nodes, edges = graph_documents(workflow)
        check_graph(workflow.team_id, nodes, edges, expert_team_id)  # it may have changed since it was saved
        runtime = current_runtime()
        job = WorkflowJob(
            graph=build_graph(workflow),
            starting_inputs=body["starting_inputs"],
            experts=_experts_of(caller, workflow),
            provider=runtime.provider,
            jsonata_timeout_ms=runtime.config.jsonata_timeout_ms,
        )
        return start_run(caller, "workflow", workflow, job, body["mode"])


@blp.route("/runs")
class Runs(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, RunSchema(many=True))
    @document_auth_errors
    def get(self, args):
        """List the runs the caller may see, newest first."""
        caller = get_caller()
        runs = [r for r in current_runtime().registry.list_runs() if can_see_run(caller, r)]
        start, stop = clamp_page(args)
        return [run_body(r) for r in runs[start:stop]], {"X-Total-Count": str(len(runs))}


@blp.route("/runs/<run_id:run_id>")
class RunItem(MethodView):
    @blp.response(200, RunSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown, expired or not visible")
    @document_auth_errors
    def get(self, run_id):
        """A run's status, timestamps and, once finished, its result or error."""
        return run_body(visible_run(get_caller(), run_id))


@blp.route("/runs/<run_id:run_id>:cancel")
class CancelRun(MethodView):
    @blp.response(202, RunSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown, expired or not visible")
    @blp.alt_response(409, schema=ErrorSchema, description="Already finished")
    @document_auth_errors
    def post(self, run_id):
        """Ask a run to stop; it ends as `cancelled` at its next checkpoint."""
        info = visible_run(get_caller(), run_id)
        runtime = current_runtime()
        if info.finished or not runtime.executor.cancel(run_id):
            raise Conflict(f"Run {run_id} has already finished")
        return run_body(runtime.registry.get(run_id) or info)

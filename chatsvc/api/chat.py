"""The Chat API: run experts and workflows, see and cancel runs (SPEC §6)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema

from chatsvc.errors import Conflict
from chatsvc.extensions import db
from chatsvc.runs.executor import RunContext, RunOutcome
from chatsvc.runs.model import RunInfo
from chatsvc.runs.shape import (
    ExpertRunResultSchema,
    RunAcceptedSchema,
    RunSchema,
    WorkflowRunResultSchema,
    run_fields,
)
from chatsvc.runtime import current_runtime
from chatsvc.security.caller import Caller, authenticate, get_caller
from chatsvc.security.permissions import visible_run, visible_runs
from chatsvc.security.targets import expert_for_run, runnable_workflow
from chatsvc.services.expert_runner import run_expert
from chatsvc.services.workflow_runner import WorkflowJob

from .pagination import clamp_page
from .schemas import ErrorSchema, ExpertRunSchema, PaginationArgs, WorkflowRunSchema

blp = Blueprint("chat", __name__, url_prefix="/api/v1/chat", description="Run experts and workflows")
blp.before_request(authenticate)

AUTH_ERRORS = [(400, "Both Authorization and X-API-Key sent"), (401, "Missing, invalid or expired credentials")]
RUN_ERRORS = [(404, "Target not found"), (403, "Not allowed"), (429, "Too many active runs"),
              (503, "Run queue or registry full")]

RUN_ACCEPTED = RunAcceptedSchema()
EXPERT_RESULT = ExpertRunResultSchema()
WORKFLOW_RESULT = WorkflowRunResultSchema()


def document_auth_errors(view):
    """Every chat endpoint authenticates (blp.before_request), so each documents these."""
    for code, description in AUTH_ERRORS:
        view = blp.alt_response(code, schema=ErrorSchema, description=description)(view)
    return view


def document_errors(view):
    for code, description in RUN_ERRORS:
        view = blp.alt_response(code, schema=ErrorSchema, description=description)(view)
    return document_auth_errors(view)


def run_data(info: RunInfo) -> dict[str, Any]:
    """What a run schema dumps: the run, and its two links (the stream URL carries a signed token
    bound to this run and caller, so a browser's EventSource can use it)."""
    token = current_runtime().tokens.issue(info.run_id, get_caller().key)
    return run_fields(
        info,
        events_url=url_for("streams.RunEvents", run_id=info.run_id, token=token),
        status_url=url_for("chat.RunItem", run_id=info.run_id),
    )


def start_run(caller: Caller, kind: str, target: Any, job, mode: str, result_schema: Schema) -> Response:
    """Queue the run; answer with its result (sync, when it ends in time) or 202."""
    runtime = current_runtime()
    info = runtime.executor.submit(kind=kind, target_id=target.id, team_id=target.team_id, owner=caller.key, job=job)
    if mode == "sync":
        # The run takes up to the sync timeout and everything it needs was read: end the
        # request's transaction (reads only) so its connection goes back to the pool, or a
        # team's sync runs would hold every pooled connection and stall every other request
        # of the process. (Not commit: a commit tells StreamGrants that access may have changed.)
        db.session.rollback()
        final = runtime.executor.wait(info.run_id, runtime.config.sync_timeout_seconds)
        if final is not None:
            return jsonify(result_schema.dump(run_data(final)))
        info = runtime.registry.get(info.run_id) or info
    accepted = RUN_ACCEPTED.dump(run_data(info))
    response = jsonify(accepted)
    response.status_code = 202
    response.headers["Location"] = accepted["status_url"]
    return response


@blp.route("/experts:run")
class RunExpert(MethodView):
    @blp.arguments(ExpertRunSchema())  # an instance: webargs would build a Schema per request
    @blp.alt_response(200, schema=EXPERT_RESULT, description="Sync run finished", success=True)
    @blp.alt_response(202, schema=RUN_ACCEPTED, description="Run accepted (async, or sync past the timeout)")
    @document_errors
    def post(self, body):
        """Run an expert: render its prompt and call the LLM."""
        caller = get_caller()
        expert = expert_for_run(caller, body["expert_id"])
        runtime = current_runtime()
        input_params, request_base = body["input_params"], body["base"]
        timeout_ms = runtime.config.jsonata_timeout_ms

        def job(ctx: RunContext) -> RunOutcome:
            reply = run_expert(ctx, expert, input_params, request_base, runtime.provider, jsonata_timeout_ms=timeout_ms)
            return RunOutcome(result=reply.as_result())

        return start_run(caller, "expert", expert, job, body["mode"], EXPERT_RESULT)


@blp.route("/workflows:run")
class RunWorkflow(MethodView):
    @blp.arguments(WorkflowRunSchema())
    @blp.alt_response(200, schema=WORKFLOW_RESULT, description="Sync run finished", success=True)
    @blp.alt_response(202, schema=RUN_ACCEPTED, description="Run accepted (async, or sync past the timeout)")
    @blp.alt_response(422, schema=ErrorSchema, description="The stored graph is no longer valid")
    @document_errors
    def post(self, body):
        """Run a workflow: its nodes in topological order."""
        caller = get_caller()
        workflow = runnable_workflow(caller, body["workflow_id"])
        runtime = current_runtime()
        job = WorkflowJob(
            graph=workflow.graph,
            starting_inputs=body["starting_inputs"],
            experts=workflow.experts,
            provider=runtime.provider,
            jsonata_timeout_ms=runtime.config.jsonata_timeout_ms,
            max_output_bytes=runtime.config.max_run_output_bytes,
        )
        return start_run(caller, "workflow", workflow, job, body["mode"], WORKFLOW_RESULT)


@blp.route("/runs")
class Runs(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, RunSchema(many=True))
    @document_auth_errors
    def get(self, args):
        """List the runs the caller may see, newest first."""
        runs = visible_runs(get_caller(), current_runtime().registry)
        start, stop = clamp_page(args)
        return [run_data(r) for r in runs[start:stop]], {"X-Total-Count": str(len(runs))}


@blp.route("/runs/<run_id:run_id>")
class RunItem(MethodView):
    @blp.response(200, RunSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown, expired or not visible")
    @document_auth_errors
    def get(self, run_id):
        """A run's status, timestamps and, once finished, its result or error."""
        return run_data(visible_run(get_caller(), current_runtime().registry, run_id))


@blp.route("/runs/<run_id:run_id>:cancel")
class CancelRun(MethodView):
    @blp.response(202, RunSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown, expired or not visible")
    @blp.alt_response(409, schema=ErrorSchema, description="Already finished")
    @document_auth_errors
    def post(self, run_id):
        """Ask a run to stop; it ends as `cancelled` at its next checkpoint."""
        runtime = current_runtime()
        info = visible_run(get_caller(), runtime.registry, run_id)
        if info.finished or not runtime.executor.cancel(run_id):
            raise Conflict(f"Run {run_id} has already finished")
        return run_data(runtime.registry.get(run_id) or info)

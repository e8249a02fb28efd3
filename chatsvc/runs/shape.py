"""The one shape of a run, in every response and in the ``done`` event (SPEC §6.1–6.4).

``RunSchema`` is the whole of it: what ``GET /chat/runs/{id}`` returns. Every other
body is that schema restricted to some of its fields: the 202 of a started run, the
``done`` event, and the sync results, which also show their result's fields
(``messages``/``warnings``, ``steps``) at the top level. The API dumps its bodies
with these schemas and documents them with the same ones, so the OpenAPI document
and the wire cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from marshmallow import Schema, fields, post_dump

from chatsvc.runs.model import RunInfo


class EpochTimestamp(fields.DateTime):
    """Seconds since the epoch, written as ISO 8601 in UTC (``null`` while unset)."""

    def _serialize(self, value: float | None, attr, obj, **kwargs) -> str | None:
        return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc).isoformat()


class StepSchema(Schema):
    node_id = fields.Integer()
    node_key = fields.String()
    node_type = fields.String()
    status = fields.String()
    output = fields.Raw()
    error = fields.Dict()
    duration_ms = fields.Integer()


class RunSchema(Schema):
    """A run: its status, timestamps and, once finished, its result or error."""

    run_id = fields.String()
    kind = fields.String(metadata={"description": "`expert` or `workflow`"})
    target_id = fields.Integer()
    team_id = fields.Integer()
    status = fields.String(metadata={"description": "queued, running, succeeded, failed or cancelled"})
    created_at = EpochTimestamp()
    started_at = EpochTimestamp(allow_none=True)
    finished_at = EpochTimestamp(allow_none=True)
    event_count = fields.Integer()
    result = fields.Raw(metadata={"description": "Present once the run succeeded"})
    error = fields.Dict(metadata={"description": "Present when the run failed or was cancelled"})
    cancel_requested = fields.Boolean(metadata={"description": "Present (true) while a requested cancel is under way"})
    events_url = fields.String(metadata={"description": "The live log (SSE), with a signed stream token"})
    status_url = fields.String()

    @post_dump
    def _drop_unset(self, body: dict, **kwargs) -> dict:
        """``result`` and ``error`` appear only when set, ``cancel_requested`` only while true."""
        for name in ("result", "error"):
            if body.get(name, ...) is None:
                del body[name]
        if body.get("cancel_requested") is False:
            del body["cancel_requested"]
        return body


class RunAcceptedSchema(RunSchema):
    """The 202 of a started run (async, or sync past its timeout)."""

    class Meta:
        fields = ("run_id", "status", "events_url", "status_url")


class RunDoneSchema(RunSchema):
    """The data of the stream's last event, ``done``."""

    class Meta:
        fields = ("run_id", "status", "result", "error")


class ExpertRunResultSchema(RunSchema):
    """A sync expert run that ended in time: the conversation at the top level."""

    messages = fields.List(fields.Dict())
    warnings = fields.List(fields.Dict())

    class Meta:
        fields = ("run_id", "status", "messages", "warnings", "error", "events_url", "status_url")


class WorkflowRunResultSchema(RunSchema):
    """A sync workflow run that ended in time: every node's step at the top level."""

    steps = fields.List(fields.Nested(StepSchema))

    class Meta:
        fields = ("run_id", "status", "steps", "error", "events_url", "status_url")


def run_fields(info: RunInfo, **links: str) -> dict[str, Any]:
    """What the schemas read from a run: its own fields, its result's fields (which the
    sync bodies show at the top level) and the links the API adds."""
    result = info.result if isinstance(info.result, dict) else {}
    cancelling = info.cancel_requested and not info.finished
    return {**result, **vars(info), "cancel_requested": cancelling, **links}


DONE = RunDoneSchema()


def done_body(run_id: str, status: str, result: Any, error: dict | None) -> dict[str, Any]:
    """The ``done`` event's data: ``{run_id, status, result?, error?}``."""
    return DONE.dump({"run_id": run_id, "status": status, "result": result, "error": error})

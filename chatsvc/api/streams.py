"""The live log stream of a run: Server-Sent Events (SPEC §6.4)."""

from __future__ import annotations

from typing import Iterator

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from chatsvc.errors import NotFound, Unauthorized
from chatsvc.runs.registry import RunNotFound, RunRegistry
from chatsvc.runs.runtime import current_runtime
from chatsvc.runs.sse import HEARTBEAT, RETRY_PREAMBLE, encode_done, encode_log_event, parse_last_event_id
from chatsvc.security.caller import get_caller, has_credentials
from chatsvc.security.permissions import can_see_run

from .schemas import ErrorSchema, EventStreamArgs

blp = Blueprint("streams", __name__, url_prefix="/api/v1/chat", description="Live run logs (SSE)")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def stream_events(
    registry: RunRegistry, run_id: str, after_seq: int, heartbeat: float, on_open=None, on_close=None
) -> Iterator[str]:
    """Backlog, then live events as they are appended, then ``done``; a ping while idle.

    Blocks in ``registry.read`` (woken by appends, no polling). When the client
    goes away the server closes this generator at its next write, and the
    ``finally`` releases the subscriber.
    """
    if on_open:
        on_open()
    try:
        yield RETRY_PREAMBLE
        while True:
            try:
                batch = registry.read(run_id, after_seq, timeout=heartbeat)
            except RunNotFound:
                return  # expired while we streamed: nothing more will come
            if batch.events:
                after_seq = batch.events[-1].seq
                yield "".join(encode_log_event(event) for event in batch.events)
            if batch.done is not None:
                yield encode_done(batch.done)
                return
            if not batch.events:
                yield HEARTBEAT
    finally:
        if on_close:
            on_close()


@blp.route("/runs/<run_id:run_id>/events")
class RunEvents(MethodView):
    @blp.arguments(EventStreamArgs, location="query")
    @blp.alt_response(200, description="`text/event-stream`: log events, pings, then `done`", success=True)
    @blp.alt_response(204, description="Already sent `done` (Last-Event-ID): stop reconnecting")
    @blp.alt_response(401, schema=ErrorSchema, description="No, invalid or expired credentials or token")
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown, expired or not visible")
    def get(self, args, run_id):
        """Stream a run's log. Auth: the usual headers, or the signed `token` in `events_url`."""
        runtime = current_runtime()
        token = args.get("token")
        if token and not has_credentials():
            if not runtime.tokens.is_valid_for(token, run_id):
                raise Unauthorized("Invalid or expired stream token for this run")
            info = runtime.registry.get(run_id)
        else:
            caller = get_caller()
            info = runtime.registry.get(run_id)
            if info is not None and not can_see_run(caller, info.owner, info.team_id):
                info = None
        if info is None:
            raise NotFound(f"Run {run_id} not found")
        after_seq = parse_last_event_id(request.headers.get("Last-Event-ID") or args.get("last_event_id"))
        if info.finished and info.done_seq is not None and after_seq >= info.done_seq:
            return Response(status=204)  # tells EventSource to stop reconnecting
        metrics = runtime.metrics
        stream = stream_events(
            runtime.registry,
            run_id,
            after_seq,
            runtime.config.sse_heartbeat_seconds,
            on_open=metrics.sse_connections.inc,
            on_close=metrics.sse_connections.dec,
        )
        return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)

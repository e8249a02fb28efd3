"""The live log stream of a run: Server-Sent Events (SPEC §6.4)."""

from __future__ import annotations

import time
from typing import Iterator

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from chatsvc.errors import BadRequest
from chatsvc.runs.model import RegistryUnavailable, RunNotFound
from chatsvc.runs.registry import RunRegistry
from chatsvc.runs.sse import HEARTBEAT_BYTES, RETRY_PREAMBLE_BYTES, parse_last_event_id
from chatsvc.runtime import current_runtime
from chatsvc.security.caller import get_caller, has_credentials, stream_token_caller_key
from chatsvc.security.grants import run_for_stream_token
from chatsvc.security.permissions import visible_run

from .schemas import ErrorSchema
from .security_schemes import DEFAULT_SECURITY

blp = Blueprint("streams", __name__, url_prefix="/api/v1/chat", description="Live run logs (SSE)")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def stream_events(
    registry: RunRegistry, run_id: str, after_seq: int, heartbeat: float, on_open=None, on_close=None
) -> Iterator[bytes]:
    """Backlog, then live events as they are appended, then ``done``; a ping while idle.

    Reads the run's ``RunFeed``: the bytes it yields were encoded once for every
    subscriber of this process, and a read blocks until the feed is woken by an
    append (no polling). When the client goes away the server closes this
    generator at its next write, and the ``with``/``finally`` release it.
    """
    if on_open:
        on_open()
    try:
        with registry.subscribe(run_id) as feed:
            found = feed.read(after_seq, 0)  # the backlog, without waiting
            chunk = RETRY_PREAMBLE_BYTES + found.data  # one write for both
            while True:
                yield chunk
                # Let the run's other subscribers take their turn before this one
                # writes again or ends its response (under gevent they all run on
                # one thread): a wave reaches every subscriber first, and what
                # arrives meanwhile is batched into each one's next write.
                time.sleep(0)
                if found.finished:
                    return
                after_seq = found.last_seq
                found = feed.read(after_seq, heartbeat)
                chunk = found.data or HEARTBEAT_BYTES
    except RunNotFound:
        return  # expired before we subscribed: nothing more will come
    except RegistryUnavailable:
        return  # Redis went away: EventSource reconnects (503 until it is back) and resumes
    finally:
        if on_close:
            on_close()


# The query is read straight from request.args: this view is opened by every
# subscriber, and schema-based parsing was a sixth of the cost of an open.
STREAM_QUERY_PARAMETERS = [  # `token` is documented as the streamToken security scheme
    {"in": "query", "name": "last_event_id", "required": False, "schema": {"type": "string"},
     "description": "Resume after this seq (or send the `Last-Event-ID` header)"},
]


@blp.route("/runs/<run_id:run_id>/events")
class RunEvents(MethodView):
    @blp.doc(parameters=STREAM_QUERY_PARAMETERS, security=[*DEFAULT_SECURITY, {"streamToken": []}])
    @blp.alt_response(200, description="`text/event-stream`: log events, pings, then `done`", success=True)
    @blp.alt_response(204, description="Already sent `done` (Last-Event-ID): stop reconnecting")
    @blp.alt_response(400, schema=ErrorSchema, description="Last-Event-ID is not a non-negative integer")
    @blp.alt_response(401, schema=ErrorSchema, description="No, invalid or expired credentials or token")
    @blp.alt_response(404, schema=ErrorSchema, description="Unknown, expired or not visible")
    def get(self, run_id):
        """Stream a run's log. Auth: the usual headers, or the signed `token` in `events_url`."""
        runtime = current_runtime()
        args = request.args
        token = args.get("token")
        if token and not has_credentials():
            caller_key = stream_token_caller_key(runtime.tokens, token, run_id)
            info = run_for_stream_token(caller_key, runtime.registry, run_id, runtime.stream_grants)
        else:
            info = visible_run(get_caller(), runtime.registry, run_id)
        try:
            after_seq = parse_last_event_id(request.headers.get("Last-Event-ID") or args.get("last_event_id"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if info.finished and info.done_seq is not None and after_seq >= info.done_seq:
            done = Response(status=204)  # tells EventSource to stop reconnecting
            del done.headers["Content-Type"]  # no body, so no type (werkzeug would say text/html)
            return done
        # Beyond the last event: as if at the end, so the client gets what comes next
        # (and `done`), rather than waiting for seqs that a run may never reach.
        after_seq = min(after_seq, info.event_count)
        timer = runtime.metrics.stream_timer()
        stream = stream_events(
            runtime.registry,
            run_id,
            after_seq,
            runtime.config.sse_heartbeat_seconds,
            on_open=timer.open,
            on_close=timer.close,
        )
        # direct_passthrough: the server iterates our generator itself, without
        # werkzeug's two wrapping iterators (a cost on every write of every stream).
        return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS, direct_passthrough=True)

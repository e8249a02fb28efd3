"""The runs API through the Flask test client: status, list, cancel, the SSE stream, limits (SPEC §6.3, §6.4, §10)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from urllib.parse import quote

import itsdangerous.timed
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, event

from chatsvc.extensions import db
from chatsvc.models import Membership
from chatsvc.runtime import EXTENSION_KEY
from chatsvc.runs.sse import RETRY_PREAMBLE, encode_done
from chatsvc.security.grants import StreamGrants
from tests.helpers.api import assert_error
from tests.helpers.runs import FakeClock, encode_log_event, parse_sse, poll, read, read_events

CHAT = "/api/v1/chat"
RUN_FIELDS = {"run_id", "kind", "target_id", "team_id", "status", "created_at", "started_at",
              "finished_at", "event_count", "events_url", "status_url"}


def settings(**overrides):
    """Per-test settings: parametrizing `config_overrides` replaces the conftest fixture's value."""
    return pytest.mark.parametrize("config_overrides", [overrides], ids=["settings"])


def runtime_of(app):
    return app.extensions[EXTENSION_KEY]


@pytest.fixture
def nap_workflow(world, make_workflow):
    """A workflow that sleeps 30 s: it stays running until cancelled (or timed out)."""
    return make_workflow(world.team, nodes=(("start", "input", {}), ("nap", "sleep", {"seconds": 30})),
                         edges=(("start", "nap"),))


def run_expert(client, world, caller="member", *, expert_id=None, mode="sync"):
    return client.post(f"{CHAT}/experts:run", headers=world.headers[caller], json={
        "expert_id": expert_id or world.expert.id, "input_params": {"name": "Ada"}, "mode": mode})


def run_workflow(client, world, workflow, caller="member", *, mode="sync"):
    return client.post(f"{CHAT}/workflows:run", headers=world.headers[caller],
                       json={"workflow_id": workflow.id, "starting_inputs": {"x": 1}, "mode": mode})


def accepted(rv) -> dict:
    """The 202 body of an async run, after checking its shape and Location."""
    assert rv.status_code == 202, rv.get_json()
    body = rv.get_json()
    assert set(body) == {"run_id", "status", "events_url", "status_url"}
    assert body["status"] in ("queued", "running")
    assert body["status_url"] == f"{CHAT}/runs/{body['run_id']}"
    assert rv.headers["Location"].endswith(body["status_url"])
    assert body["events_url"].startswith(f"{CHAT}/runs/{body['run_id']}/events?token=")
    return body


def status_of(client, world, run_id, caller="member"):
    rv = client.get(f"{CHAT}/runs/{run_id}", headers=world.headers[caller])
    assert rv.status_code == 200, rv.get_json()
    return rv.get_json()


def wait_status(client, world, run_id, predicate, caller="member", timeout=5.0):
    return poll(lambda: status_of(client, world, run_id, caller), lambda body: predicate(body["status"]),
                timeout=timeout)


def cancel(client, world, run_id, caller="member"):
    return client.post(f"{CHAT}/runs/{run_id}:cancel", headers=world.headers[caller])


def assert_envelope(rv, code: int) -> dict:
    assert rv.status_code == code, rv.get_data(as_text=True)
    body = rv.get_json()
    assert body["code"] == code and body["message"] and body["status"]
    return body


def metric(client, name: str, **labels: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


# --- GET /runs/{id} -------------------------------------------------------------


def test_run_status_shape(client, world):
    rv = run_expert(client, world)
    assert rv.status_code == 200, rv.get_json()
    run_id = rv.get_json()["run_id"]

    body = status_of(client, world, run_id)
    assert set(body) == RUN_FIELDS | {"result"}  # no owner, no internal flags
    assert body["run_id"] == run_id and body["kind"] == "expert"
    assert body["target_id"] == world.expert.id and body["team_id"] == world.team.id
    assert body["status"] == "succeeded"
    created, started, finished = (datetime.fromisoformat(body[k]) for k in ("created_at", "started_at",
                                                                              "finished_at"))
    assert created.tzinfo is not None and created <= started <= finished
    assert body["result"]["messages"][1] == {"role": "assistant", "content": "(stubbed)"}
    events, done = read_events(client, body["events_url"])
    assert body["event_count"] == len(events)
    assert done == {"run_id": run_id, "status": "succeeded", "result": body["result"]}
    assert body["status_url"] == f"{CHAT}/runs/{run_id}"


def test_failed_run_status_has_the_error(client, world, make_workflow):
    workflow = make_workflow(world.team, nodes=(("a", "input", {}), ("b", "transform", {"expression": "$error('boom')"})),
                             edges=(("a", "b"),))
    rv = run_workflow(client, world, workflow)
    assert rv.status_code == 200 and rv.get_json()["status"] == "failed", rv.get_json()
    body = status_of(client, world, rv.get_json()["run_id"])
    assert body["status"] == "failed"
    assert body["error"]["type"] == "ExpressionError" and "boom" in body["error"]["message"]
    assert body["error"]["node_key"] == "b"
    assert [s["status"] for s in body["result"]["steps"]] == ["succeeded", "failed"]


def test_unknown_run_is_404(client, world):
    assert_envelope(client.get(f"{CHAT}/runs/0123456789abcdef", headers=world.headers["member"]), 404)
    assert_envelope(cancel(client, world, "0123456789abcdef"), 404)
    assert_envelope(client.get(f"{CHAT}/runs/0123456789abcdef/events", headers=world.headers["member"]), 404)


def test_runs_need_credentials(client, world):
    assert_envelope(client.get(f"{CHAT}/runs"), 401)
    assert_envelope(client.get(f"{CHAT}/runs/0123456789abcdef"), 401)


# --- visibility: GET /runs, GET /runs/{id}, cancel ------------------------------------

CREATORS = ("member", "team_admin", "linked_service", "outsider", "member")  # in creation order
VISIBLE = {  # caller -> indexes into CREATORS (SPEC §4: see / stream / cancel a run)
    "platform_admin": [0, 1, 2, 3, 4],
    "team_admin": [0, 1, 2, 4],  # the team's runs, not the outsider's (other team)
    "member": [0, 4],
    "linked_service": [2],
    "unlinked_service": [],
    "outsider": [3],
}


@pytest.fixture
def made_runs(client, world, make_expert) -> list[str]:
    other_expert = make_expert(world.other_team)
    run_ids = []
    for creator in CREATORS:
        rv = run_expert(client, world, creator, expert_id=other_expert.id if creator == "outsider" else None)
        assert rv.status_code == 200, (creator, rv.get_json())
        run_ids.append(rv.get_json()["run_id"])
    return run_ids


@pytest.mark.parametrize("caller", sorted(VISIBLE))
def test_list_runs_newest_first_and_only_visible(client, world, made_runs, caller):
    rv = client.get(f"{CHAT}/runs", headers=world.headers[caller])
    assert rv.status_code == 200
    expected = [made_runs[i] for i in reversed(VISIBLE[caller])]
    assert [run["run_id"] for run in rv.get_json()] == expected
    assert rv.headers["X-Total-Count"] == str(len(expected))
    for run in rv.get_json():
        assert set(run) >= RUN_FIELDS and "owner" not in run


def test_list_runs_paginates(client, world, made_runs):
    rv = client.get(f"{CHAT}/runs?page=2&per_page=2", headers=world.headers["platform_admin"])
    assert [run["run_id"] for run in rv.get_json()] == [made_runs[2], made_runs[1]]
    assert rv.headers["X-Total-Count"] == "5"


@pytest.mark.parametrize("caller", sorted(VISIBLE))
def test_run_item_visibility(client, world, made_runs, caller):
    for index, run_id in enumerate(made_runs):
        visible = index in VISIBLE[caller]
        rv = client.get(f"{CHAT}/runs/{run_id}", headers=world.headers[caller])
        assert rv.status_code == (200 if visible else 404), (caller, CREATORS[index])
        # Finished: 409 for those who may see it, 404 (not 409) for everyone else.
        assert cancel(client, world, run_id, caller).status_code == (409 if visible else 404)
        rv = client.get(f"{CHAT}/runs/{run_id}/events", headers=world.headers[caller])
        assert rv.status_code == (200 if visible else 404), (caller, CREATORS[index])


# --- one shape: the wire is what the OpenAPI document says ---------------------------


def documented(client, name: str) -> set[str]:
    """The properties the OpenAPI document gives the schema ``name``."""
    spec = client.get("/api/v1/openapi.json").get_json()
    return set(spec["components"]["schemas"][name]["properties"])


def test_every_run_response_has_the_documented_shape(client, world, nap_workflow):
    run, result, error, cancelling = "Run", {"result"}, {"error"}, {"cancel_requested"}
    expert_sync = run_expert(client, world).get_json()
    assert set(expert_sync) == documented(client, "ExpertRunResult") - error
    assert set(run_workflow(client, world, world.workflow).get_json()) == documented(client, "WorkflowRunResult") - error
    assert set(status_of(client, world, expert_sync["run_id"])) == documented(client, run) - error - cancelling

    queued = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    assert set(queued) == documented(client, "RunAccepted")
    wait_status(client, world, queued["run_id"], lambda s: s == "running")
    cancel_body = cancel(client, world, queued["run_id"]).get_json()
    assert set(cancel_body) == documented(client, run) - result - error
    final = wait_status(client, world, queued["run_id"], lambda s: s == "cancelled")
    assert set(final) == documented(client, run) - cancelling
    listed = client.get(f"{CHAT}/runs", headers=world.headers["member"]).get_json()
    assert {frozenset(body) for body in listed} == {frozenset(final), frozenset(status_of(client, world, expert_sync["run_id"]))}


# --- cancel -----------------------------------------------------------------------


def test_cancel_running_run(client, world, nap_workflow):
    body = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    run_id = body["run_id"]
    wait_status(client, world, run_id, lambda s: s == "running")

    rv = cancel(client, world, run_id)
    assert rv.status_code == 202
    assert rv.get_json()["run_id"] == run_id and set(rv.get_json()) >= RUN_FIELDS
    assert rv.get_json()["cancel_requested"] is True  # the status changes at the next checkpoint
    final = wait_status(client, world, run_id, lambda s: s != "running")
    assert final["status"] == "cancelled"
    assert final["error"] == {"type": "RunCancelled", "message": "Run cancelled"}
    steps = final["result"]["steps"]
    assert [(s["node_key"], s["status"]) for s in steps] == [("start", "succeeded"), ("nap", "cancelled")]

    events, done = read_events(client, body["events_url"])
    assert [e["message"] for e in events][-2:] == ["node_cancelled", "run_finished"]
    assert done["status"] == "cancelled"
    assert_envelope(cancel(client, world, run_id), 409)


def test_team_admin_may_cancel_a_members_run(client, world, nap_workflow):
    run_id = accepted(run_workflow(client, world, nap_workflow, mode="async"))["run_id"]
    assert_envelope(cancel(client, world, run_id, "outsider"), 404)
    assert cancel(client, world, run_id, "team_admin").status_code == 202
    assert wait_status(client, world, run_id, lambda s: s in ("cancelled",))["status"] == "cancelled"


# --- sync / async -------------------------------------------------------------------


def test_async_run_is_202_with_location(client, world):
    body = accepted(run_expert(client, world, mode="async"))
    final = wait_status(client, world, body["run_id"], lambda s: s == "succeeded")
    assert final["result"]["messages"][1]["content"] == "(stubbed)"


@settings(sync_timeout_seconds=0.3)
def test_sync_run_past_the_sync_timeout_is_202(client, world, nap_workflow):
    started = time.monotonic()
    body = accepted(run_workflow(client, world, nap_workflow, mode="sync"))
    assert time.monotonic() - started < 5  # answered after the sync timeout, not after the run
    assert status_of(client, world, body["run_id"])["status"] == "running"
    assert cancel(client, world, body["run_id"]).status_code == 202
    assert wait_status(client, world, body["run_id"], lambda s: s != "running")["status"] == "cancelled"


# --- the stream, through the test client ---------------------------------------------------


@pytest.fixture
def finished_run(client, world, app) -> dict:
    """A finished workflow run (one input node): 4 events, `done` id 5."""
    rv = run_workflow(client, world, world.workflow)
    assert rv.status_code == 200 and rv.get_json()["status"] == "succeeded", rv.get_json()
    body = status_of(client, world, rv.get_json()["run_id"])
    assert body["event_count"] == 4
    return body


def stream_text(rv) -> str:
    assert rv.status_code == 200, rv.get_data(as_text=True)
    return rv.get_data(as_text=True)


def test_stream_of_finished_run_wire_text(client, app, finished_run):
    rv = client.get(finished_run["events_url"])  # the token in events_url: no headers
    assert rv.status_code == 200
    assert rv.mimetype == "text/event-stream"
    assert rv.headers["Cache-Control"] == "no-cache"
    assert rv.headers["X-Accel-Buffering"] == "no"
    text = rv.get_data(as_text=True)
    assert text.startswith("retry: 3000\n\n")

    registry = runtime_of(app).registry
    info = registry.get(finished_run["run_id"])
    events = read(registry, info.run_id, 0, timeout=0).events
    assert text == RETRY_PREAMBLE + "".join(map(encode_log_event, events)) + encode_done(info)

    blocks = text.split("\n\n")
    first = blocks[1].split("\n")
    assert first[:2] == ["id: 1", "event: log"] and first[2].startswith("data: ")
    data = json.loads(first[2].removeprefix("data: "))
    assert set(data) == {"seq", "ts", "level", "message", "data"}
    assert (data["seq"], data["level"], data["message"]) == (1, "info", "run_started")
    done = blocks[-2].split("\n")
    assert done[:2] == ["id: 5", "event: done"]
    assert json.loads(done[2].removeprefix("data: "))["status"] == "succeeded"
    assert blocks[-1] == ""  # the response ends right after `done`


def test_resume_with_last_event_id_header(client, world, finished_run):
    rv = client.get(finished_run["events_url"], headers={"Last-Event-ID": "2"})
    parsed = parse_sse(stream_text(rv))
    assert [(e.id, e.event) for e in parsed] == [(3, "log"), (4, "log"), (5, "done")]
    assert stream_text(rv).startswith("retry: 3000\n\n")


def test_resume_with_last_event_id_query(client, world, finished_run):
    rv = client.get(f"{finished_run['events_url']}&last_event_id=3")
    assert [(e.id, e.event) for e in parse_sse(stream_text(rv))] == [(4, "log"), (5, "done")]
    # With headers auth too.
    rv = client.get(f"{CHAT}/runs/{finished_run['run_id']}/events?last_event_id=4", headers=world.headers["member"])
    assert [(e.id, e.event) for e in parse_sse(stream_text(rv))] == [(5, "done")]


@pytest.mark.parametrize("last_event_id", ["nonsense", "-1", "1.5", "\u0663"])
def test_a_last_event_id_that_is_not_a_non_negative_integer_is_400(client, finished_run, last_event_id):
    rv = client.get(finished_run["events_url"], headers={"Last-Event-ID": last_event_id.encode("utf-8")})
    assert_error(rv, 400, contains="non-negative integer")
    rv = client.get(f"{finished_run['events_url']}&last_event_id={quote(last_event_id)}")
    assert_error(rv, 400, contains="non-negative integer")


def test_a_last_event_id_beyond_a_live_runs_end_streams_from_its_end(client, world, nap_workflow):
    """Not the whole log again, and not a wait for seqs the run may never reach: what comes next."""
    started = run_workflow(client, world, nap_workflow, mode="async").get_json()
    status_url = f"{CHAT}/runs/{started['run_id']}"
    running = poll(lambda: client.get(status_url, headers=world.headers["member"]).get_json(),
                   lambda body: body["event_count"] >= 4)  # ... node_start of the nap
    rv = client.get(started["events_url"], headers={"Last-Event-ID": "99"}, buffered=False)
    assert rv.status_code == 200
    chunks = iter(rv.response)
    assert next(chunks) == b"retry: 3000\n\n"  # no backlog: the client is at the end
    assert client.post(f"{status_url}:cancel", headers=world.headers["member"]).status_code == 202
    events = parse_sse(b"".join(chunks).decode())
    rv.close()
    assert events[0].id == running["event_count"] + 1 and events[-1].event == "done", events


@pytest.mark.parametrize("last_event_id", ["5", "6", "99", "9" * 30])
def test_reconnect_after_done_is_204(client, finished_run, last_event_id):
    rv = client.get(finished_run["events_url"], headers={"Last-Event-ID": last_event_id})
    assert rv.status_code == 204 and rv.data == b""
    assert "Content-Type" not in rv.headers  # no body, no type
    rv = client.get(f"{finished_run['events_url']}&last_event_id={last_event_id}")
    assert rv.status_code == 204


# --- stream auth -------------------------------------------------------------------


def test_stream_token_is_bound_to_its_run(client, world, finished_run):
    other = run_workflow(client, world, world.workflow).get_json()
    token_of_other = other["events_url"].split("token=", 1)[1]
    rv = client.get(f"{CHAT}/runs/{finished_run['run_id']}/events?token={token_of_other}")
    assert_envelope(rv, 401)
    assert_envelope(client.get(f"{CHAT}/runs/{finished_run['run_id']}/events?token=garbage"), 401)
    assert_envelope(client.get(f"{CHAT}/runs/{finished_run['run_id']}/events"), 401)  # no token, no headers


@pytest.mark.parametrize("caller, revoke", [
    ("member", "leave the team"),
    ("member", "delete the user"),
    ("linked_service", "disable the service"),
    ("linked_service", "delete the service"),
    ("linked_service", "unlink the workflow"),
])
def test_stream_token_is_refused_once_its_caller_could_not_see_the_run(client, world, caller, revoke):
    body = run_workflow(client, world, world.workflow, caller).get_json()
    # The token works while access lasts; that "yes" may be reused for a second
    # (StreamGrants), but the change below is committed by this process: it applies at once.
    assert client.get(body["events_url"]).status_code == 200
    admin = world.headers["platform_admin"]
    user, service = world.users["member"], world.services["linked_service"]
    rv = {
        "leave the team": lambda: client.delete(f"/api/v1/teams/{world.team.id}/members/{user.id}", headers=admin),
        "delete the user": lambda: client.delete(f"/api/v1/users/{user.id}", headers=admin),
        "disable the service": lambda: client.patch(f"/api/v1/services/{service.id}", json={"disabled": True},
                                                    headers=admin),
        "delete the service": lambda: client.delete(f"/api/v1/services/{service.id}", headers=admin),
        "unlink the workflow": lambda: client.delete(
            f"/api/v1/workflows/{world.workflow.id}/services/{service.id}", headers=admin),
    }[revoke]()
    assert rv.status_code in (200, 204), rv.get_data(as_text=True)
    body401 = assert_envelope(client.get(body["events_url"]), 401)
    assert "can no longer see" in body401["message"]
    if revoke in ("leave the team", "unlink the workflow"):  # its credentials still work: the run is gone
        assert_envelope(client.get(f"{CHAT}/runs/{body['run_id']}", headers=world.headers[caller]), 404)


def statements_during(app, action) -> int:
    """How many SQL statements ``action()`` sent to the database."""
    with app.app_context():
        engine = db.engine
    sent = []

    def count(*args) -> None:
        sent.append(1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(sent)


def remove_member_elsewhere(app, world) -> None:
    """Take the member out of the team as another worker, host or the CLI would: not through
    this process's session, so no commit of this process tells it."""
    memberships = Membership.__table__
    with app.app_context(), db.engine.begin() as connection:
        connection.execute(delete(memberships).where(memberships.c.user_id == world.users["member"].id))


def reusing_grants(app, seconds: float = 1.0) -> FakeClock:
    """Give the app stream grants on a clock the test moves; that clock."""
    clock = FakeClock()
    app.extensions[EXTENSION_KEY].stream_grants = StreamGrants(seconds, clock=clock)
    return clock


def test_stream_opens_reuse_a_recent_access_check(client, app, finished_run):
    """Many EventSources (re)connecting to one run ask the database once, not once each."""
    reusing_grants(app)

    def open_stream() -> None:
        stream_text(client.get(finished_run["events_url"]))

    assert statements_during(app, open_stream) > 0
    assert statements_during(app, open_stream) == 0


def test_stream_opens_of_many_runs_look_their_caller_up_once(client, app, world, finished_run):
    """One person's Chat page opens a stream per run: the caller is read once, not once per run."""
    reusing_grants(app)
    second = run_workflow(client, world, world.workflow).get_json()

    def open_stream(run: dict):
        return lambda: stream_text(client.get(run["events_url"]))

    assert statements_during(app, open_stream(finished_run)) > 0
    assert statements_during(app, open_stream(second)) == 0


def test_a_service_is_looked_up_once_and_its_link_once_per_run(client, app, world):
    reusing_grants(app)
    first, second = (run_workflow(client, world, world.workflow, "linked_service").get_json() for _ in range(2))
    stream_text(client.get(first["events_url"]))
    assert statements_during(app, lambda: stream_text(client.get(second["events_url"]))) == 1  # the link


def test_access_removed_elsewhere_refuses_stream_opens_once_the_setting_has_passed(client, app, world, finished_run):
    clock = reusing_grants(app, seconds=1.0)
    assert client.get(finished_run["events_url"]).status_code == 200
    remove_member_elsewhere(app, world)
    assert client.get(finished_run["events_url"]).status_code == 200  # the answer of a moment ago
    clock.now += 1.0
    body = assert_envelope(client.get(finished_run["events_url"]), 401)
    assert "can no longer see" in body["message"]


@settings(stream_access_cache_seconds=0)
def test_without_reuse_access_removed_elsewhere_refuses_the_next_open(client, app, world, finished_run):
    assert client.get(finished_run["events_url"]).status_code == 200
    remove_member_elsewhere(app, world)
    assert_envelope(client.get(finished_run["events_url"]), 401)


def test_expired_stream_token_is_refused(client, finished_run, monkeypatch):
    real = itsdangerous.timed.TimestampSigner.get_timestamp
    max_age = 3600  # the default CHATSVC_STREAM_TOKEN_MAX_AGE_SECONDS
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                        lambda self: real(self) + max_age - 2)
    assert client.get(finished_run["events_url"]).status_code == 200  # not yet expired
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                        lambda self: real(self) + max_age + 2)
    assert_envelope(client.get(finished_run["events_url"]), 401)


@settings(stream_token_max_age_seconds=1)
def test_stream_token_max_age_is_a_setting(client, finished_run, monkeypatch):
    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: real(self) + 3)
    assert_envelope(client.get(finished_run["events_url"]), 401)


@pytest.mark.parametrize("caller, expected", [
    ("member", 200), ("team_admin", 200), ("platform_admin", 200),
    ("outsider", 404), ("unlinked_service", 404), ("linked_service", 404),
])
def test_stream_with_headers_applies_visibility(client, world, finished_run, caller, expected):
    rv = client.get(f"{CHAT}/runs/{finished_run['run_id']}/events", headers=world.headers[caller])
    assert rv.status_code == expected
    if expected == 200:
        assert [e.id for e in parse_sse(rv.get_data(as_text=True))] == [1, 2, 3, 4, 5]


# --- a live stream through the test client ---------------------------------------------


def test_live_stream_then_done_and_a_closed_stream_unsubscribes(client, world, nap_workflow):
    body = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    wait_status(client, world, body["run_id"], lambda s: s == "running")

    rv = client.get(body["events_url"])
    assert rv.status_code == 200
    chunks = iter(rv.response)
    received = next(chunks)  # the preamble, with the backlog in the same write
    assert received.startswith(b"retry: 3000\n\n")
    assert metric(client, "chatsvc_sse_connections") == 1
    while b"node_start" not in received or b'"nap"' not in received:  # backlog up to the sleeping node
        received += next(chunks)
    # The run is asleep now; a cancel arrives live on the open stream.
    assert cancel(client, world, body["run_id"]).status_code == 202
    for chunk in chunks:
        received += chunk
    parsed = parse_sse(received.decode())
    assert parsed[-1].event == "done" and parsed[-1].data["status"] == "cancelled"
    assert [e.id for e in parsed] == list(range(1, len(parsed) + 1))
    rv.close()
    assert metric(client, "chatsvc_sse_connections") == 0

    # A client that goes away mid-stream: closing the response closes the generator.
    other = accepted(run_workflow(client, world, nap_workflow, "team_admin", mode="async"))
    rv = client.get(other["events_url"])
    assert next(iter(rv.response)).startswith(b"retry: 3000\n\n")  # preamble and backlog: one write
    assert metric(client, "chatsvc_sse_connections") == 1
    rv.close()
    assert metric(client, "chatsvc_sse_connections") == 0
    cancel(client, world, other["run_id"], "team_admin")


def test_heartbeat_while_idle(client, world, nap_workflow, app):
    assert runtime_of(app).config.sse_heartbeat_seconds == 1.0
    body = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    wait_status(client, world, body["run_id"], lambda s: s == "running")
    rv = client.get(body["events_url"])
    chunks = iter(rv.response)
    received = b""
    deadline = time.monotonic() + 5
    while b": ping\n\n" not in received:
        assert time.monotonic() < deadline, received
        received += next(chunks)
    rv.close()
    cancel(client, world, body["run_id"])


# --- limits ---------------------------------------------------------------------------


@settings(max_active_runs_per_caller=1)
def test_active_runs_per_caller_limit_is_429(client, world, nap_workflow):
    first = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    rv = run_workflow(client, world, nap_workflow, mode="async")
    body = assert_envelope(rv, 429)
    assert body["status"] == "Too Many Requests" and "limit 1" in body["message"]
    assert int(rv.headers["Retry-After"]) > 0
    assert run_expert(client, world, "team_admin").status_code == 200  # another caller is not limited

    assert cancel(client, world, first["run_id"]).status_code == 202
    # Once the run ends, its slot is free again.
    rv = poll(lambda: run_expert(client, world), lambda rv: rv.status_code != 429)
    assert rv.status_code == 200


@settings(executor_workers=1, max_queued_runs=1)
def test_full_queue_is_503(client, world, nap_workflow):
    running = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    wait_status(client, world, running["run_id"], lambda s: s == "running")
    queued = accepted(run_workflow(client, world, nap_workflow, "team_admin", mode="async"))
    assert status_of(client, world, queued["run_id"], "team_admin")["status"] == "queued"

    rv = run_expert(client, world, "linked_service", mode="async")
    body = assert_envelope(rv, 503)
    assert body["status"] == "Service Unavailable" and "queued" in body["message"]
    assert int(rv.headers["Retry-After"]) > 0

    # Cancelling the queued run ends it at once, though the only worker is busy.
    assert cancel(client, world, queued["run_id"], "team_admin").status_code == 202
    assert status_of(client, world, queued["run_id"], "team_admin")["status"] == "cancelled"
    assert cancel(client, world, running["run_id"]).status_code == 202
    assert wait_status(client, world, running["run_id"], lambda s: s != "running")["status"] == "cancelled"


@settings(max_live_runs=1)
def test_full_registry_is_503(client, world, nap_workflow):
    running = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    rv = run_expert(client, world, "team_admin")
    body = assert_envelope(rv, 503)
    assert "live runs" in body["message"] and int(rv.headers["Retry-After"]) > 0
    assert cancel(client, world, running["run_id"]).status_code == 202
    wait_status(client, world, running["run_id"], lambda s: s == "cancelled")
    assert run_expert(client, world, "team_admin").status_code == 200


# --- TTL, run timeout, events limit -------------------------------------------------------


@settings(run_ttl_seconds=0.5)
def test_finished_run_is_garbage_collected_after_its_ttl(client, world):
    rv = run_expert(client, world)
    assert rv.status_code == 200
    run_id, events_url = rv.get_json()["run_id"], rv.get_json()["events_url"]
    poll(lambda: client.get(f"{CHAT}/runs/{run_id}", headers=world.headers["member"]).status_code,
         lambda code: code == 404, timeout=5)
    assert client.get(f"{CHAT}/runs", headers=world.headers["member"]).get_json() == []
    assert_envelope(client.get(events_url), 404)


@settings(run_timeout_seconds=0.5, max_active_runs_per_caller=1)
def test_run_timeout_fails_the_run_and_the_stream_ends_with_done(client, world, nap_workflow):
    body = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    started = time.monotonic()
    events, done = read_events(client, body["events_url"])  # blocks until the run is timed out
    assert time.monotonic() - started < 10
    timeout_event = next(e for e in events if e["message"] == "run_timeout")
    assert timeout_event["level"] == "error" and timeout_event["data"] == {"timeout_seconds": 0.5}
    assert done["status"] == "failed" and done["error"]["type"] == "RunTimeout"
    status = status_of(client, world, body["run_id"])
    assert status["status"] == "failed" and status["error"]["type"] == "RunTimeout"
    # The sleeping job was stopped, so the caller's only slot comes back quickly.
    rv = poll(lambda: run_expert(client, world), lambda rv: rv.status_code != 429, timeout=3)
    assert rv.status_code == 200


@settings(max_events_per_run=3)
def test_events_limit_truncates_once_and_done_still_comes(client, world, make_workflow):
    workflow = make_workflow(world.team, nodes=(("a", "input", {}), ("b", "echo", {}), ("c", "echo", {})),
                             edges=(("a", "b"), ("b", "c")))
    rv = run_workflow(client, world, workflow)
    assert rv.status_code == 200 and rv.get_json()["status"] == "succeeded"
    events, done = read_events(client, rv.get_json()["events_url"])
    assert [e["message"] for e in events] == ["run_started", "node_start", "node_output", "events_truncated"]
    assert events[-1]["level"] == "warn" and events[-1]["data"] == {"limit": 3}
    assert done["status"] == "succeeded"


@settings(max_events_per_run=3)
def test_events_limit_keeps_errors(client, world, make_workflow):
    workflow = make_workflow(world.team, nodes=(("a", "input", {}), ("b", "echo", {}),
                                                ("c", "transform", {"expression": "$error('boom')"})),
                             edges=(("a", "b"), ("b", "c")))
    rv = run_workflow(client, world, workflow)
    assert rv.status_code == 200 and rv.get_json()["status"] == "failed"
    events, done = read_events(client, rv.get_json()["events_url"])
    messages = [e["message"] for e in events]
    assert messages.count("events_truncated") == 1
    assert messages[-2:] == ["node_error", "run_finished"]
    assert events[-1]["level"] == "error" and events[-2]["data"]["exception"]["message"].endswith("boom")
    assert done["status"] == "failed"


# --- metrics ---------------------------------------------------------------------


def test_metrics_count_runs_and_sse_connections(client, world, nap_workflow):
    assert run_expert(client, world).status_code == 200
    running = accepted(run_workflow(client, world, nap_workflow, mode="async"))
    wait_status(client, world, running["run_id"], lambda s: s == "running")
    assert metric(client, "chatsvc_runs", kind="expert", status="succeeded") == 1
    assert metric(client, "chatsvc_runs", kind="workflow", status="running") == 1
    assert metric(client, "chatsvc_runs_finished_total", kind="expert", status="succeeded") == 1
    assert metric(client, "chatsvc_sse_connections") == 0

    cancel(client, world, running["run_id"])
    wait_status(client, world, running["run_id"], lambda s: s == "cancelled")
    poll(lambda: metric(client, "chatsvc_runs_finished_total", kind="workflow", status="cancelled"),
         lambda value: value == 1)
    rv = client.get(running["events_url"])
    next(iter(rv.response))
    assert metric(client, "chatsvc_sse_connections") == 1
    rv.get_data()
    rv.close()
    assert metric(client, "chatsvc_sse_connections") == 0

"""`POST /api/v1/chat/experts:run` through the HTTP API (SPEC §4, §6.1, §7, §9)."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from chatsvc.services.jsonata import pool as jsonata_pool
from chatsvc.services.prompt_render import server_timezone
from tests.helpers.fake_openai import FakeOpenAI
from tests.helpers.runs import messages, only, poll, read_events, wait_finished
from tests.helpers.support import RUN_PERMISSIONS

RUN_URL = "/api/v1/chat/experts:run"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def run(client, headers, **body):
    return client.post(RUN_URL, json=body, headers=headers)


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("caller, expected", RUN_PERMISSIONS)
def test_run_expert_permissions(client, world, caller, expected):
    rv = run(client, world.headers[caller], expert_id=world.expert.id)
    assert rv.status_code == expected, rv.get_json()
    body = rv.get_json()
    if expected == 200:
        assert body["status"] == "succeeded"
    else:
        assert body["code"] == 403 and body["status"] == "Forbidden"


@pytest.mark.parametrize("caller", [
    "platform_admin", "team_admin", "member", "outsider", "linked_service", "unlinked_service",
])
def test_missing_expert_is_404_for_everyone(client, world, caller):
    rv = run(client, world.headers[caller], expert_id=world.expert.id + 1000)
    assert rv.status_code == 404
    assert rv.get_json()["code"] == 404


def test_ids_no_row_can_have_are_404_not_500(client, world):
    for caller in ("member", "linked_service"):
        for expert_id in (0, -1, 2**31, 2**63, -2**63 - 1, 10**30):
            rv = run(client, world.headers[caller], expert_id=expert_id)
            assert rv.status_code == 404, (caller, expert_id, rv.get_json())


def test_unauthenticated_is_401(client, world):
    rv = run(client, {}, expert_id=world.expert.id)
    assert rv.status_code == 401
    assert rv.get_json()["code"] == 401


@pytest.mark.parametrize("body, field", [
    ({"expert_id": 1, "surprise": True}, "surprise"),
    ({"expert_id": "1"}, "expert_id"),
    ({"expert_id": 1.5}, "expert_id"),
    ({"expert_id": None}, "expert_id"),
    ({"expert_id": True}, "expert_id"),
    ({}, "expert_id"),
    ({"expert_id": 1, "mode": "later"}, "mode"),
    ({"expert_id": 1, "input_params": [1, 2]}, "input_params"),
    ({"expert_id": 1, "input_params": "text"}, "input_params"),
    ({"expert_id": 1, "base": [1]}, "base"),
])
def test_invalid_body_is_422(client, world, body, field):
    rv = client.post(RUN_URL, json=body, headers=world.headers["member"])
    assert rv.status_code == 422, rv.get_json()
    payload = rv.get_json()
    assert payload["code"] == 422
    assert field in json.dumps(payload["errors"])


# --------------------------------------------------------------------------- sync response


def test_sync_response_shape(client, world, make_expert):
    expert = make_expert(world.team, prompt_template="Hello {{ input.name }}!", model_name="m-1")
    rv = run(client, world.headers["member"], expert_id=expert.id, input_params={"name": "Ada"})
    assert rv.status_code == 200
    body = rv.get_json()
    assert set(body) == {"run_id", "status", "messages", "warnings", "events_url", "status_url"}
    assert body["status"] == "succeeded"
    assert body["messages"] == [
        {"role": "user", "content": "Hello Ada!"},
        {"role": "assistant", "content": "(stubbed)"},
    ]
    assert body["warnings"] == []
    assert f"/runs/{body['run_id']}/events?token=" in body["events_url"]
    assert body["status_url"] == f"/api/v1/chat/runs/{body['run_id']}"


def test_base_precedence_defaults_then_expert_then_body(client, world, make_expert):
    expert = make_expert(
        world.team,
        prompt_template="{{ base.a }}|{{ base.b }}|{{ base.c }}|{{ base.now }}|{{ base.timezone }}",
        base={"a": "expert-a", "b": "expert-b", "now": "expert-now"},
    )
    rv = run(client, world.headers["member"], expert_id=expert.id, base={"b": "body-b", "c": "body-c"})
    prompt = rv.get_json()["messages"][0]["content"]
    assert prompt == f"expert-a|body-b|body-c|expert-now|{server_timezone()}"

    rv = run(client, world.headers["member"], expert_id=expert.id, base={"now": "body-now", "timezone": "Mars/Olympus"})
    assert rv.get_json()["messages"][0]["content"] == "expert-a|expert-b|{{ base.c }}|body-now|Mars/Olympus"


def test_default_base_now_and_timezone(client, world, make_expert):
    expert = make_expert(world.team, prompt_template="{{ base.now }} {{ base.timezone }}")
    rv = run(client, world.headers["member"], expert_id=expert.id)
    body = rv.get_json()
    now, zone = body["messages"][0]["content"].split(" ")
    assert ISO_UTC.fullmatch(now)
    assert zone == server_timezone()
    assert body["warnings"] == []


def test_warnings_leave_placeholders_as_written(client, world, make_expert):
    template = "Hi {{ input.missing }}, {{ 1 + }} and {{ input.name }}."
    expert = make_expert(world.team, prompt_template=template)
    rv = run(client, world.headers["member"], expert_id=expert.id, input_params={"name": "Bo"})
    assert rv.status_code == 200
    body = rv.get_json()
    assert body["status"] == "succeeded"
    assert body["messages"][0]["content"] == "Hi {{ input.missing }}, {{ 1 + }} and Bo."
    warnings = body["warnings"]
    assert [w["placeholder"] for w in warnings] == ["{{ input.missing }}", "{{ 1 + }}"]
    assert warnings[0]["reason"] == "undefined"
    assert warnings[1]["reason"].startswith("syntax error")


def runaway_template() -> str:
    """Catastrophic backtracking on the input below; new text each time, so no evaluator
    process has seen it time out yet (the pool's suspects outlive a test)."""
    return f"{{{{ $contains(input.s, /(a+)+$/) or {uuid.uuid4().int} = 0 }}}}"


def test_a_team_flooding_the_evaluators_with_runaways_does_not_stall_another_teams_prompts(
        client, world, make_expert):
    flooding = make_expert(world.team, prompt_template=runaway_template() * 4)
    evaluators = jsonata_pool.pool()
    for _ in range(6):  # more runaways in flight than there are evaluators
        rv = run(client, world.headers["member"], expert_id=flooding.id, mode="async",
                 input_params={"s": "a" * 29 + "!"})
        assert rv.status_code == 202
    # In flight: at the team's share, or (once one timed out) in the team's one suspect slot.
    poll(evaluators.held, lambda held: held.get(world.team.id) == evaluators.share
         or held.get(("suspect", world.team.id)))

    other_team = make_expert(world.other_team, prompt_template="Hi {{ input.name }}, {{ $sum([1, 2]) }}")
    rv = run(client, world.headers["outsider"], expert_id=other_team.id, input_params={"name": "Bo"})
    body = rv.get_json()
    # Waiting for the flood's evaluators would have timed the placeholders out (0.5 s): warnings.
    assert body["status"] == "succeeded" and body["warnings"] == []
    assert body["messages"][0]["content"] == "Hi Bo, 3"


# --------------------------------------------------------------------------- events


def test_events_of_a_stub_run_in_order(client, world, make_expert):
    expert = make_expert(world.team, prompt_template="Q: {{ input.q }} {{ input.nope }}", model_name="tiny")
    input_params = {"q": "¿qué?", "list": [1, 2, {"x": None}]}
    body = run(client, world.headers["member"], expert_id=expert.id, input_params=input_params).get_json()

    events, done = read_events(client, body["events_url"])
    assert messages(events) == ["run_started", "prompt_rendered", "assistant_stub_sent", "run_finished"]
    assert all(ev["level"] == "info" for ev in events)
    assert events[0]["data"] == {"kind": "expert", "target_id": expert.id}

    rendered = events[1]["data"]
    prompt = body["messages"][0]["content"]
    assert prompt == "Q: ¿qué? {{ input.nope }}"
    compact = json.dumps(input_params, separators=(",", ":"), ensure_ascii=False).encode()
    assert rendered == {
        "expert_id": expert.id,
        "model_name": "tiny",
        "input_size": len(compact),
        "prompt_chars": len(prompt),
        "warnings": [{"placeholder": "{{ input.nope }}", "reason": "undefined"}],
    }
    assert events[2]["data"]["content"] == "(stubbed)"
    assert events[3]["data"]["status"] == "succeeded"
    assert isinstance(events[3]["data"]["duration_ms"], int)

    assert done["run_id"] == body["run_id"]
    assert done["status"] == "succeeded"
    assert done["result"]["messages"] == body["messages"]


def test_events_url_token_is_bound_to_its_run(client, world):
    first = run(client, world.headers["member"], expert_id=world.expert.id).get_json()
    second = run(client, world.headers["member"], expert_id=world.expert.id).get_json()
    token = first["events_url"].split("token=", 1)[1]
    rv = client.get(f"/api/v1/chat/runs/{second['run_id']}/events?token={token}")
    assert rv.status_code == 401


# --------------------------------------------------------------------------- async


def test_async_run_is_accepted_then_finishes(client, world):
    headers = world.headers["linked_service"]
    rv = run(client, headers, expert_id=world.expert.id, mode="async", input_params={"name": "Async"})
    assert rv.status_code == 202
    body = rv.get_json()
    assert set(body) == {"run_id", "status", "events_url", "status_url"}
    assert body["status"] in ("queued", "running", "succeeded")
    assert body["status_url"] == f"/api/v1/chat/runs/{body['run_id']}"
    assert rv.headers["Location"].endswith(body["status_url"])

    final = wait_finished(client, body["status_url"], headers)
    assert final["status"] == "succeeded"
    assert final["kind"] == "expert" and final["target_id"] == world.expert.id
    assert final["result"]["messages"][0]["content"] == "Hello Async"
    assert final["result"]["messages"][1] == {"role": "assistant", "content": "(stubbed)"}
    events, done = read_events(client, body["events_url"])
    assert messages(events)[-1] == "run_finished"
    assert done["status"] == "succeeded"


# --------------------------------------------------------------------------- the openai provider


LLM_TIMEOUT = 1.0


@pytest.fixture
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


class TestOpenAIProvider:
    @pytest.fixture
    def more_settings(self):
        """Further settings for one test (parametrize it)."""
        return {}

    @pytest.fixture
    def config_overrides(self, fake_openai, more_settings):
        return {
            "llm_provider": "openai",
            "llm_base_url": fake_openai.base_url,
            "llm_timeout_seconds": LLM_TIMEOUT,
            **more_settings,
        }

    @pytest.fixture
    def expert(self, world, make_expert):
        return make_expert(world.team, prompt_template="Tell {{ input.who }} a joke", model_name="fake-gpt")

    def test_streamed_reply(self, client, world, expert, fake_openai):
        fake_openai.stream(["Why ", "did ", "the ", "chicken…"], delay=0.05)  # apart: one delta each
        rv = run(client, world.headers["member"], expert_id=expert.id, input_params={"who": "Ann"})
        assert rv.status_code == 200
        body = rv.get_json()
        assert body["status"] == "succeeded", body
        assert body["messages"] == [
            {"role": "user", "content": "Tell Ann a joke"},
            {"role": "assistant", "content": "Why did the chicken…"},
        ]

        request = fake_openai.last_request
        assert request.model == "fake-gpt"
        assert request.messages == [{"role": "user", "content": "Tell Ann a joke"}]
        assert request.body["stream"] is True

        events, done = read_events(client, body["events_url"])
        assert messages(events) == (
            ["run_started", "prompt_rendered"] + ["assistant_delta"] * 4 + ["assistant_reply", "run_finished"]
        )
        assert [ev["data"] for ev in events if ev["message"] == "assistant_delta"] == [
            {"text": "Why "}, {"text": "did "}, {"text": "the "}, {"text": "chicken…"},
        ]
        assert only(events, "assistant_reply")["data"]["content"] == "Why did the chicken…"
        assert "assistant_stub_sent" not in messages(events)
        assert done["status"] == "succeeded"

    def test_a_reply_holding_a_lone_surrogate_reaches_the_stream_as_a_replacement_character(
            self, client, world, expert, fake_openai):
        # "\\ud800" is valid JSON from the model's server but cannot be sent as UTF-8.
        fake_openai.stream(["ok ", "\ud800!"])
        rv = run(client, world.headers["member"], expert_id=expert.id, input_params={"who": "Ann"})
        body = rv.get_json()
        assert rv.status_code == 200 and body["status"] == "succeeded", body
        assert body["messages"][-1] == {"role": "assistant", "content": "ok \ufffd!"}
        events, done = read_events(client, body["events_url"])  # decodes the stream as UTF-8
        assert "".join(ev["data"]["text"] for ev in events if ev["message"] == "assistant_delta") == "ok \ufffd!"
        assert done["status"] == "succeeded" and done["result"]["messages"][-1]["content"] == "ok \ufffd!"

    def test_server_error_fails_the_run(self, client, world, expert, fake_openai):
        fake_openai.fail(500, "the model is on fire")
        rv = run(client, world.headers["member"], expert_id=expert.id, input_params={"who": "Ann"})
        assert rv.status_code == 200
        body = rv.get_json()
        assert body["status"] == "failed"
        assert "HTTP 500" in body["error"]["message"]
        assert "the model is on fire" in body["error"]["message"]

        events, done = read_events(client, body["events_url"])
        errors = [ev for ev in events if ev["level"] == "error" and ev["message"] != "run_finished"]
        assert len(errors) == 1
        assert "HTTP 500" in errors[0]["data"]["exception"]["message"]
        assert events[-1]["message"] == "run_finished"
        assert events[-1]["data"]["status"] == "failed"
        assert done["status"] == "failed" and "HTTP 500" in done["error"]["message"]

    @pytest.mark.parametrize("more_settings", [{"llm_max_reply_chars": 12}])
    def test_a_reply_past_its_limit_fails_the_run(self, client, world, expert, fake_openai):
        fake_openai.stream(["Why ", "did ", "the ", "chicken…"], delay=0.05)
        body = run(client, world.headers["member"], expert_id=expert.id, input_params={"who": "Ann"}).get_json()
        assert body["status"] == "failed", body
        assert body["error"]["type"] == "LLMError"
        assert "longer than 12 characters (CHATSVC_LLM_MAX_REPLY_CHARS)" in body["error"]["message"]
        events, done = read_events(client, body["events_url"])
        assert [ev["data"]["text"] for ev in events if ev["message"] == "assistant_delta"] == ["Why ", "did ", "the "]
        assert "assistant_reply" not in messages(events)
        assert done["status"] == "failed"

    def test_silent_server_fails_within_the_timeout(self, client, world, expert, fake_openai):
        fake_openai.hang()
        started = time.monotonic()
        rv = run(client, world.headers["member"], expert_id=expert.id)
        elapsed = time.monotonic() - started
        assert rv.status_code == 200
        body = rv.get_json()
        assert body["status"] == "failed"
        assert "timeout" in body["error"]["message"]
        assert elapsed < LLM_TIMEOUT + 2

    def test_cancel_while_streaming(self, client, world, expert, fake_openai):
        headers = world.headers["member"]
        fake_openai.stream([f"piece {i} " for i in range(50)], delay=0.1)
        rv = run(client, headers, expert_id=expert.id, mode="async")
        assert rv.status_code == 202
        status_url = rv.get_json()["status_url"]
        run_id = rv.get_json()["run_id"]

        def fetch():
            return client.get(status_url, headers=headers).get_json()

        # run_started, prompt_rendered and at least one assistant_delta: it is streaming.
        poll(fetch, lambda b: b["event_count"] >= 3, timeout=5)
        started = time.monotonic()
        rv = client.post(f"/api/v1/chat/runs/{run_id}:cancel", headers=headers)
        assert rv.status_code == 202
        final = wait_finished(client, status_url, headers, timeout=3)
        assert final["status"] == "cancelled"
        assert time.monotonic() - started < 2.0
        assert fake_openai.wait_for_disconnect(timeout=2)  # the HTTP stream was closed
        assert fake_openai.chunks_sent < 50

        events, done = read_events(client, rv.get_json()["events_url"])
        assert "assistant_delta" in messages(events)
        assert "assistant_reply" not in messages(events)
        assert events[-1]["message"] == "run_finished"
        assert events[-1]["data"]["status"] == "cancelled"
        assert done["status"] == "cancelled"

        rv = client.post(f"/api/v1/chat/runs/{run_id}:cancel", headers=headers)
        assert rv.status_code == 409

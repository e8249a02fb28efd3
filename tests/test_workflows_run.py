"""`POST /api/v1/chat/workflows:run` through the HTTP API (SPEC §4, §6.2, §8); the runner itself
where only it can set up the case (a cancel seen between nodes, gevent)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chatsvc.runs.executor import RunContext, RunExecutor
from chatsvc.runs.logger import RunLogger
from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.services.dag import EdgeSpec, Graph, NodeSpec
from chatsvc.services.llm import StubProvider
from chatsvc.services.workflow_runner import WorkflowJob
from tests.helpers.fake_openai import FakeOpenAI
from tests.helpers.runs import messages, only, poll, read_events, wait_finished
from tests.helpers.support import RUN_PERMISSIONS, api_key_headers

RUN_URL = "/api/v1/chat/workflows:run"
CALLERS = ["platform_admin", "team_admin", "member", "outsider", "linked_service", "unlinked_service"]


def run(client, headers, workflow_id, **body):
    return client.post(RUN_URL, json={"workflow_id": workflow_id, **body}, headers=headers)


def run_sync(client, headers, workflow, starting_inputs=None):
    """Run a workflow in sync mode: (response body, log events, done data)."""
    rv = run(client, headers, workflow.id, starting_inputs=starting_inputs or {})
    assert rv.status_code == 200, rv.get_json()
    body = rv.get_json()
    events, done = read_events(client, body["events_url"])
    return body, events, done


def outputs(body) -> dict:
    return {step["node_key"]: step["output"] for step in body["steps"]}


def of(events, message):
    return [ev for ev in events if ev["message"] == message]


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("caller, expected", RUN_PERMISSIONS)
def test_run_workflow_permissions(client, world, caller, expected):
    rv = run(client, world.headers[caller], world.workflow.id, starting_inputs={"x": 1})
    assert rv.status_code == expected, rv.get_json()
    body = rv.get_json()
    if expected == 200:
        assert body["status"] == "succeeded"
        assert outputs(body) == {"a": {"x": 1}}
    else:
        assert body["code"] == 403


@pytest.mark.parametrize("caller", CALLERS)
def test_missing_workflow_is_404_for_everyone(client, world, caller):
    rv = run(client, world.headers[caller], world.workflow.id + 1000)
    assert rv.status_code == 404
    assert rv.get_json()["code"] == 404


def test_ids_no_row_can_have_are_404_not_500(client, world):
    for caller in ("member", "linked_service"):
        for workflow_id in (0, -1, 2**31, 2**63, -2**63 - 1, 10**30):
            rv = run(client, world.headers[caller], workflow_id)
            assert rv.status_code == 404, (caller, workflow_id, rv.get_json())


def test_unauthenticated_is_401(client, world):
    assert run(client, {}, world.workflow.id).status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"workflow_id": 1, "extra": 1}, "extra"),
    ({"workflow_id": "1"}, "workflow_id"),
    ({"workflow_id": True}, "workflow_id"),
    ({}, "workflow_id"),
    ({"workflow_id": 1, "mode": "eventually"}, "mode"),
    ({"workflow_id": 1, "starting_inputs": [1]}, "starting_inputs"),
])
def test_invalid_body_is_422(client, world, body, field):
    rv = client.post(RUN_URL, json=body, headers=world.headers["member"])
    assert rv.status_code == 422
    assert field in json.dumps(rv.get_json()["errors"])


@pytest.fixture
def expert_workflow(world, make_expert, make_workflow):
    """A workflow whose expert node uses an expert no service is linked to."""
    expert = make_expert(world.team, prompt_template="Hello {{ input.name }}")
    workflow = make_workflow(
        world.team,
        nodes=(("in", "input", {}), ("ask", "expert", {"expert_id": expert.id})),
        edges=(("in", "ask"),),
    )
    return workflow, expert


def test_service_needs_a_link_to_every_expert_it_uses(client, world, make_service, expert_workflow):
    workflow, expert = expert_workflow
    only_workflow = make_service(world.team, workflows=(workflow,))
    rv = run(client, api_key_headers(only_workflow), workflow.id)
    assert rv.status_code == 403
    assert str(expert.id) in rv.get_json()["message"]

    both = make_service(world.team, experts=(expert,), workflows=(workflow,))
    rv = run(client, api_key_headers(both), workflow.id, starting_inputs={"name": "Svc"})
    assert rv.status_code == 200
    assert outputs(rv.get_json())["ask"] == {"reply": "(stubbed)"}


def test_users_need_no_expert_link(client, world, expert_workflow):
    workflow, _ = expert_workflow
    rv = run(client, world.headers["member"], workflow.id)
    assert rv.status_code == 200
    assert rv.get_json()["status"] == "succeeded"


def test_deleted_expert_makes_the_stored_graph_invalid(client, world, expert_workflow):
    workflow, expert = expert_workflow
    rv = client.delete(f"/api/v1/experts/{expert.id}", headers=world.headers["team_admin"])
    assert rv.status_code == 204
    rv = run(client, world.headers["member"], workflow.id)
    assert rv.status_code == 422
    body = rv.get_json()
    assert "'ask'" in body["message"]
    assert body["errors"]["json"]["metadata"]["ask"] == [f"expert {expert.id} does not exist"]


def test_stored_expert_id_no_row_can_have_is_422(client, world, make_workflow):
    for expert_id in (2**63, 10**30):
        workflow = make_workflow(
            world.team,
            nodes=(("in", "input", {}), ("ask", "expert", {"expert_id": expert_id})),
            edges=(("in", "ask"),),
        )
        rv = run(client, world.headers["member"], workflow.id)
        assert rv.status_code == 422, rv.get_json()
        assert rv.get_json()["errors"]["json"]["metadata"]["ask"] == [f"expert {expert_id} does not exist"]


def test_stored_cycle_is_422_with_its_path(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(("a", "input", {}), ("b", "echo", {}), ("c", "echo", {})),
        edges=(("a", "b"), ("b", "c"), ("c", "b")),
    )
    rv = run(client, world.headers["member"], workflow.id)
    assert rv.status_code == 422
    assert rv.get_json()["errors"]["json"]["cycle"] == ["b", "c", "b"]


# --------------------------------------------------------------------------- available data (§8)


def transform(expression, output_key=None):
    meta = {"expression": expression}
    if output_key is not None:
        meta["output_key"] = output_key
    return meta


def test_diamond_node_gets_the_union_of_its_ancestors(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(
            ("a", "transform", transform('{"a": "A"}')),
            ("b", "transform", transform('{"b": a & "B"}')),
            ("c", "transform", transform('{"c": a & "C"}')),
            ("d", "echo", {}),
        ),
        edges=(("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")),
    )
    body, events, _ = run_sync(client, world.headers["member"], workflow, {"start": 0})
    assert body["status"] == "succeeded"
    assert outputs(body) == {
        "a": {"a": "A"},
        "b": {"b": "AB"},
        "c": {"c": "AC"},
        "d": {"start": 0, "a": "A", "b": "AB", "c": "AC"},
    }
    assert of(events, "input_conflict") == []
    start_d = [ev for ev in of(events, "node_start") if ev["data"]["node_key"] == "d"][0]
    assert start_d["data"]["predecessors"] == ["b", "c"]


def test_grandparent_output_reaches_a_grandchild(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(
            ("g", "transform", transform('{"g": 1}')),
            ("p", "transform", transform("g + 1", output_key="p")),
            ("c", "echo", {}),
        ),
        edges=(("g", "p"), ("p", "c")),
    )
    body, _, _ = run_sync(client, world.headers["member"], workflow)
    assert outputs(body)["c"] == {"g": 1, "p": 2}


def test_input_conflict_lists_keys_and_the_winner(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(
            ("a", "input", {}),
            ("b", "transform", transform('{"k": "from-b", "same": 1, "only_b": true}')),
            ("c", "transform", transform('{"k": "from-c", "same": 1}')),
            ("d", "echo", {}),
        ),
        edges=(("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")),
    )
    body, events, _ = run_sync(client, world.headers["member"], workflow)
    assert outputs(body)["d"] == {"k": "from-c", "same": 1, "only_b": True}
    [conflict] = of(events, "input_conflict")
    assert conflict["level"] == "warn"
    assert conflict["data"]["node_key"] == "d"
    assert conflict["data"]["keys"] == ["k"]
    assert conflict["data"]["winners"] == {"k": "c"}
    # It is reported between the node's start and its output.
    seq = {(ev["message"], ev["data"].get("node_key")): ev["seq"] for ev in events}
    assert seq[("node_start", "d")] < conflict["seq"] < seq[("node_output", "d")]


def test_echo_pass_through_is_no_conflict(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(
            ("a", "transform", transform('{"k": 1, "deep": {"x": [1, 2]}}')),
            ("b", "echo", {}),
            ("c", "echo", {}),
            ("d", "echo", {}),
        ),
        edges=(("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")),
    )
    body, events, _ = run_sync(client, world.headers["member"], workflow, {"s": "x"})
    assert outputs(body)["d"] == {"s": "x", "k": 1, "deep": {"x": [1, 2]}}
    assert of(events, "input_conflict") == []


# --------------------------------------------------------------------------- order and event shapes


def test_order_is_topological_with_ties_broken_by_node_id(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(("end", "echo", {}), ("start", "input", {}), ("x", "echo", {}), ("y", "echo", {})),
        edges=(("start", "y"), ("start", "x"), ("x", "end"), ("y", "end")),
    )
    ids = {node.key: node.id for node in workflow.nodes}
    assert ids["end"] < ids["start"] < ids["x"] < ids["y"]  # ids follow the document order

    for _ in range(2):  # the same order on every run
        body, events, _ = run_sync(client, world.headers["member"], workflow, {"v": 1})
        assert [s["node_key"] for s in body["steps"]] == ["start", "x", "y", "end"]
        starts = [ev["data"] for ev in of(events, "node_start")]
        assert starts == [
            {"node_id": ids["start"], "node_key": "start", "node_type": "input", "index": 1, "predecessors": []},
            {"node_id": ids["x"], "node_key": "x", "node_type": "echo", "index": 2, "predecessors": ["start"]},
            {"node_id": ids["y"], "node_key": "y", "node_type": "echo", "index": 3, "predecessors": ["start"]},
            {"node_id": ids["end"], "node_key": "end", "node_type": "echo", "index": 4, "predecessors": ["x", "y"]},
        ]


def test_events_and_steps_of_a_successful_run(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(("in", "input", {}), ("out", "echo", {})),
        edges=(("in", "out"),),
    )
    body, events, done = run_sync(client, world.headers["member"], workflow, {"q": [1, 2]})
    ids = {node.key: node.id for node in workflow.nodes}
    assert set(body) == {"run_id", "status", "steps", "events_url", "status_url"}
    assert body["status"] == "succeeded"
    for step, key, node_type in zip(body["steps"], ["in", "out"], ["input", "echo"]):
        assert step == {
            "node_id": ids[key], "node_key": key, "node_type": node_type, "status": "succeeded",
            "output": {"q": [1, 2]}, "duration_ms": step["duration_ms"],
        }
        assert isinstance(step["duration_ms"], int) and step["duration_ms"] >= 0

    assert messages(events) == [
        "run_started", "node_start", "node_output", "node_start", "node_output", "run_finished",
    ]
    assert events[0]["data"] == {"kind": "workflow", "target_id": workflow.id}
    output = events[2]
    assert output["level"] == "info"
    assert set(output["data"]) == {"node_id", "node_key", "output", "duration_ms"}
    assert output["data"]["node_id"] == ids["in"] and output["data"]["output"] == {"q": [1, 2]}
    finished = events[-1]["data"]
    assert finished["status"] == "succeeded"
    assert isinstance(finished["duration_ms"], int)
    assert [s["node_key"] for s in finished["steps"]] == ["in", "out"]
    assert done == {"run_id": body["run_id"], "status": "succeeded", "result": {"steps": body["steps"]}}


def test_each_node_type(client, world, make_expert, make_workflow):
    expert = make_expert(world.team, prompt_template="Hi {{ input.name }}", model_name="m")
    workflow = make_workflow(
        world.team,
        nodes=(
            ("in", "input", {}),
            ("echo", "echo", {}),
            ("total", "transform", transform("$sum(nums)", output_key="total")),
            ("number", "transform", transform("$count(nums)")),
            ("object", "transform", transform('{"doubled": nums.($ * 2)}')),
            ("tpl", "template", {"template": "Dear {{ input.name }} ({{ input.total }}) {{ input.nope }}"}),
            ("ask", "expert", {"expert_id": expert.id}),
            ("ask2", "expert", {"expert_id": expert.id, "output_key": "answer"}),
            ("nap", "sleep", {"seconds": 0.05}),
        ),
        edges=(
            ("in", "echo"), ("echo", "total"), ("echo", "number"), ("echo", "object"),
            ("total", "tpl"), ("in", "ask"), ("in", "ask2"), ("tpl", "nap"),
        ),
    )
    start = {"name": "Eve", "nums": [1, 2, 3]}
    body, events, _ = run_sync(client, world.headers["member"], workflow, start)
    assert body["status"] == "succeeded", body
    out = outputs(body)
    assert out["in"] == start
    assert out["echo"] == start
    assert out["total"] == {"total": 6}
    assert out["number"] == 3
    assert out["object"] == {"doubled": [2, 4, 6]}
    assert out["tpl"] == {"text": "Dear Eve (6) {{ input.nope }}"}
    assert out["ask"] == {"reply": "(stubbed)"}
    assert out["ask2"] == {"answer": "(stubbed)"}
    # sleep outputs its inputs: everything its ancestors wrote (a non-mapping output adds nothing)
    assert out["nap"] == {**start, "total": 6, "text": "Dear Eve (6) {{ input.nope }}"}
    assert [ev["data"]["warnings"] for ev in of(events, "template_warnings")] == [
        [{"placeholder": "{{ input.nope }}", "reason": "undefined"}]
    ]
    rendered = of(events, "prompt_rendered")
    assert [ev["data"]["expert_id"] for ev in rendered] == [expert.id, expert.id]
    assert rendered[0]["data"]["prompt_chars"] == len("Hi Eve")
    assert len(of(events, "assistant_stub_sent")) == 2


# --------------------------------------------------------------------------- failure and cancellation


def test_failure_in_the_middle_skips_the_rest(client, world, make_workflow):
    workflow = make_workflow(
        world.team,
        nodes=(
            ("in", "input", {}),
            ("bad", "transform", transform('$error("boom")')),
            ("after", "echo", {}),
            ("other", "echo", {}),
        ),
        edges=(("in", "bad"), ("bad", "after"), ("in", "other")),
    )
    ids = {node.key: node.id for node in workflow.nodes}
    rv = run(client, world.headers["member"], workflow.id, starting_inputs={"v": 1})
    assert rv.status_code == 200
    body = rv.get_json()
    assert body["status"] == "failed"
    assert [(s["node_key"], s["status"]) for s in body["steps"]] == [
        ("in", "succeeded"), ("bad", "failed"), ("after", "skipped"), ("other", "skipped"),
    ]
    failed = body["steps"][1]
    assert failed["error"]["type"] == "ExpressionError"
    assert "boom" in failed["error"]["message"]
    assert body["error"]["node_key"] == "bad" and "boom" in body["error"]["message"]
    assert body["steps"][2]["output"] is None

    events, done = read_events(client, body["events_url"])
    assert messages(events) == [
        "run_started", "node_start", "node_output", "node_start", "node_error",
        "node_skipped", "node_skipped", "run_finished",
    ]
    error = only(events, "node_error")
    assert error["level"] == "error"
    assert error["data"]["node_id"] == ids["bad"] and error["data"]["node_key"] == "bad"
    assert error["data"]["exception"]["type"] == "ExpressionError"
    assert "boom" in error["data"]["exception"]["message"]
    assert "Traceback" not in json.dumps(error)
    skipped = [ev["data"] for ev in of(events, "node_skipped")]
    assert skipped == [
        {"node_id": ids["after"], "node_key": "after", "reason": "failed"},
        {"node_id": ids["other"], "node_key": "other", "reason": "failed"},
    ]
    assert events[-1]["level"] == "error" and events[-1]["data"]["status"] == "failed"
    assert done["status"] == "failed" and "boom" in done["error"]["message"]


def test_cancel_a_sleeping_workflow(client, world, make_workflow):
    headers = world.headers["member"]
    workflow = make_workflow(
        world.team,
        nodes=(("in", "input", {}), ("nap", "sleep", {"seconds": 10}), ("after", "echo", {})),
        edges=(("in", "nap"), ("nap", "after")),
    )
    rv = run(client, headers, workflow.id, mode="async")
    assert rv.status_code == 202
    run_id, status_url = rv.get_json()["run_id"], rv.get_json()["status_url"]

    # run_started, node_start in, node_output in, node_start nap: it is sleeping.
    poll(lambda: client.get(status_url, headers=headers).get_json(), lambda b: b["event_count"] >= 4)
    started = time.monotonic()
    rv = client.post(f"/api/v1/chat/runs/{run_id}:cancel", headers=headers)
    assert rv.status_code == 202
    final = wait_finished(client, status_url, headers, timeout=3)
    assert time.monotonic() - started < 2.0
    assert final["status"] == "cancelled"
    assert [(s["node_key"], s["status"]) for s in final["result"]["steps"]] == [
        ("in", "succeeded"), ("nap", "cancelled"), ("after", "skipped"),
    ]

    events, done = read_events(client, rv.get_json()["events_url"])
    assert messages(events)[-3:] == ["node_cancelled", "node_skipped", "run_finished"]
    assert only(events, "node_skipped")["data"]["reason"] == "cancelled"
    assert events[-1]["data"]["status"] == "cancelled"
    assert done["status"] == "cancelled"


# --------------------------------------------------------------------------- scale


@pytest.mark.timeout(120)
def test_a_thousand_node_chain_runs_in_sync_mode(client, world, make_workflow):
    nodes = [("n0", "input", {})]
    for i in range(1, 1000):
        if i % 100 == 0:
            nodes.append((f"n{i}", "transform", transform(f'{{"k{i}": {i}}}')))
        else:
            nodes.append((f"n{i}", "echo", {}))
    edges = [(f"n{i - 1}", f"n{i}") for i in range(1, 1000)]
    workflow = make_workflow(world.team, nodes=nodes, edges=edges)

    rv = run(client, world.headers["member"], workflow.id, starting_inputs={"start": True})
    assert rv.status_code == 200
    body = rv.get_json()
    assert body["status"] == "succeeded"
    assert len(body["steps"]) == 1000
    assert [s["node_key"] for s in body["steps"]] == [f"n{i}" for i in range(1000)]
    assert body["steps"][-1]["output"] == {"start": True, **{f"k{i}": i for i in range(100, 1000, 100)}}
    status = client.get(f"/api/v1/chat/runs/{body['run_id']}", headers=world.headers["member"]).get_json()
    assert status["event_count"] == 1 + 2 * 1000 + 1  # run_started, start + output per node, run_finished


# --------------------------------------------------------------------------- sync and async shapes


def test_async_run_shape(client, world):
    headers = world.headers["linked_service"]
    rv = run(client, headers, world.workflow.id, mode="async", starting_inputs={"z": 26})
    assert rv.status_code == 202
    body = rv.get_json()
    assert set(body) == {"run_id", "status", "events_url", "status_url"}
    assert rv.headers["Location"].endswith(body["status_url"])
    final = wait_finished(client, body["status_url"], headers)
    assert final["status"] == "succeeded"
    assert final["kind"] == "workflow" and final["target_id"] == world.workflow.id
    assert final["team_id"] == world.team.id
    assert final["result"]["steps"][0]["output"] == {"z": 26}
    _, done = read_events(client, body["events_url"])
    assert done["status"] == "succeeded"


class TestSyncPastItsTimeout:
    @pytest.fixture
    def config_overrides(self):
        return {"sync_timeout_seconds": 0.3}

    def test_a_sync_run_that_outlives_the_timeout_is_accepted(self, client, world, make_workflow):
        headers = world.headers["member"]
        workflow = make_workflow(
            world.team, nodes=(("in", "input", {}), ("nap", "sleep", {"seconds": 5})), edges=(("in", "nap"),)
        )
        rv = run(client, headers, workflow.id)
        assert rv.status_code == 202
        body = rv.get_json()
        assert set(body) == {"run_id", "status", "events_url", "status_url"}
        assert body["status"] == "running"
        assert rv.headers["Location"].endswith(body["status_url"])
        assert client.post(f"/api/v1/chat/runs/{body['run_id']}:cancel", headers=headers).status_code == 202
        assert wait_finished(client, body["status_url"], headers)["status"] == "cancelled"


class TestNodeOutputsTogetherAreBounded:
    @pytest.fixture
    def config_overrides(self):
        return {"max_run_output_bytes": 100_000}

    def test_the_node_that_crosses_the_bound_fails_and_the_rest_are_skipped(self, client, world, make_workflow,
                                                                             caplog):
        # Each node passes 30 KB on: a small workflow, outputs that add up (30, 60, 90, 120 KB).
        workflow = make_workflow(
            world.team,
            nodes=(("in", "input", {}), ("a", "echo", {}), ("b", "echo", {}), ("c", "echo", {}), ("d", "echo", {})),
            edges=(("in", "a"), ("a", "b"), ("b", "c"), ("c", "d")),
        )
        rv = run(client, world.headers["member"], workflow.id, starting_inputs={"text": "x" * 30_000})
        body = rv.get_json()
        assert rv.status_code == 200 and body["status"] == "failed"
        assert [(s["node_key"], s["status"]) for s in body["steps"]] == [
            ("in", "succeeded"), ("a", "succeeded"), ("b", "succeeded"), ("c", "failed"), ("d", "skipped"),
        ]
        assert body["error"] == {"type": "OutputLimitExceeded", "node_key": "c", "message":
                                 "the run's node outputs exceed 100000 bytes together (CHATSVC_MAX_RUN_OUTPUT_BYTES)"}
        assert body["steps"][3]["output"] is None
        events, done = read_events(client, body["events_url"])
        assert only(events, "node_error")["data"]["exception"]["type"] == "OutputLimitExceeded"
        assert done["status"] == "failed"
        assert "Traceback" not in caplog.text  # the run's own input, not a server fault

    def test_outputs_within_the_bound_run(self, client, world, make_workflow):
        workflow = make_workflow(world.team, nodes=(("in", "input", {}), ("a", "echo", {})), edges=(("in", "a"),))
        rv = run(client, world.headers["member"], workflow.id, starting_inputs={"text": "x" * 45_000})
        assert rv.get_json()["status"] == "succeeded"


# --------------------------------------------------------------------------- expert nodes on a real LLM server


class TestExpertNodeOnTheOpenAIProvider:
    @pytest.fixture
    def fake_openai(self):
        with FakeOpenAI() as fake:
            yield fake

    @pytest.fixture
    def config_overrides(self, fake_openai):
        return {"llm_provider": "openai", "llm_base_url": fake_openai.base_url, "llm_timeout_seconds": 1.0}

    @pytest.fixture
    def workflow(self, world, make_expert, make_workflow):
        expert = make_expert(world.team, prompt_template="Summarise {{ input.topic }}", model_name="fake-m")
        return make_workflow(
            world.team,
            nodes=(
                ("in", "input", {}),
                ("ask", "expert", {"expert_id": expert.id, "output_key": "summary"}),
                ("after", "echo", {}),
            ),
            edges=(("in", "ask"), ("ask", "after")),
        )

    def test_streams_deltas_inside_the_node(self, client, world, workflow, fake_openai):
        fake_openai.stream(["Short", " and", " sweet"], delay=0.05)  # apart: one delta each
        body, events, _ = run_sync(client, world.headers["member"], workflow, {"topic": "DAGs"})
        assert body["status"] == "succeeded"
        assert outputs(body)["ask"] == {"summary": "Short and sweet"}
        assert outputs(body)["after"] == {"topic": "DAGs", "summary": "Short and sweet"}
        assert fake_openai.last_request.model == "fake-m"
        assert fake_openai.last_request.messages == [{"role": "user", "content": "Summarise DAGs"}]
        node_events = messages(events)[messages(events).index("node_start", 3):]
        assert node_events[:7] == [
            "node_start", "prompt_rendered", "assistant_delta", "assistant_delta", "assistant_delta",
            "assistant_reply", "node_output",
        ]

    def test_llm_failure_is_a_node_error(self, client, world, workflow, fake_openai):
        fake_openai.fail(503, "overloaded")
        rv = run(client, world.headers["member"], workflow.id)
        assert rv.status_code == 200
        body = rv.get_json()
        assert body["status"] == "failed"
        assert [s["status"] for s in body["steps"]] == ["succeeded", "failed", "skipped"]
        events, _ = read_events(client, body["events_url"])
        exception = only(events, "node_error")["data"]["exception"]
        assert exception["type"] == "LLMError" and "HTTP 503" in exception["message"]

    def test_cancel_while_the_node_streams(self, client, world, workflow, fake_openai):
        headers = world.headers["member"]
        fake_openai.stream([f"w{i} " for i in range(50)], delay=0.1)
        rv = run(client, headers, workflow.id, mode="async")
        run_id, status_url = rv.get_json()["run_id"], rv.get_json()["status_url"]
        poll(lambda: fake_openai.chunks_sent, lambda sent: sent >= 1)
        started = time.monotonic()
        assert client.post(f"/api/v1/chat/runs/{run_id}:cancel", headers=headers).status_code == 202
        final = wait_finished(client, status_url, headers, timeout=3)
        assert time.monotonic() - started < 2.0
        assert final["status"] == "cancelled"
        assert [s["status"] for s in final["result"]["steps"]] == ["succeeded", "cancelled", "skipped"]
        assert fake_openai.wait_for_disconnect(timeout=2)


def test_a_long_workflow_gives_way_to_the_rest_of_the_process_under_gevent():
    """Under gevent a run that never waits (thousands of `echo` nodes) would hold the worker's
    one thread from start to end: every stream and request of the process stalled for it."""
    script = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import json, time
        import gevent
        from chatsvc.runs.executor import RunContext, RunExecutor
        from chatsvc.runs.logger import RunLogger
        from chatsvc.runs.memory import MemoryRunRegistry
        from chatsvc.services.dag import EdgeSpec, Graph, NodeSpec
        from chatsvc.services.llm import StubProvider
        from chatsvc.services.workflow_runner import WorkflowJob

        n = 10_000
        nodes = [NodeSpec(1, "n0", "input", {})] + [NodeSpec(i + 1, f"n{i}", "echo", {}) for i in range(1, n)]
        graph = Graph.build(nodes, [EdgeSpec(f"n{i}", f"n{i + 1}") for i in range(n - 1)])
        registry = MemoryRunRegistry(max_events_per_run=3 * n)
        info = registry.create(kind="workflow", target_id=1, team_id=1, owner="user:1")
        registry.mark_running(info.run_id)
        job = WorkflowJob(graph=graph, starting_inputs={"x": 1}, experts={}, provider=StubProvider())
        run = gevent.spawn(job, RunContext(info.run_id, registry, RunLogger(registry)))
        gaps, last = [], time.monotonic()
        while not run.ready():
            gevent.sleep(0.001)  # another greenlet: how long does it wait for its turn?
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        print(json.dumps({"status": run.get().status, "longest_wait": max(gaps), "turns": len(gaps)}))
        registry.close()
    """)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded"
    assert out["turns"] > 10, out
    assert out["longest_wait"] < 0.2, out  # about 0.02 s here; 1 s and more without turns


def test_a_run_cancelled_between_nodes_ends_with_the_cancel_error_like_any_cancelled_run():
    registry = MemoryRunRegistry()
    executor = RunExecutor(registry, RunLogger(registry), workers=1, max_queued=1)
    graph = Graph.build([NodeSpec(1, "a", "input", {}), NodeSpec(2, "b", "echo", {})], [EdgeSpec("a", "b")])
    workflow = WorkflowJob(graph=graph, starting_inputs={}, experts={}, provider=StubProvider())

    def job(ctx: RunContext):
        registry.request_cancel(ctx.run_id)  # seen at the first node: every node is skipped
        return workflow(ctx)

    info = executor.submit(kind="workflow", target_id=1, team_id=1, owner="user:1", job=job)
    outcome = executor.wait(info.run_id, 10)
    assert outcome.status == "cancelled"
    assert [step["status"] for step in outcome.result["steps"]] == ["skipped", "skipped"]
    assert outcome.error == {"type": "RunCancelled", "message": "Run cancelled"}
    executor.shutdown()
    registry.close()

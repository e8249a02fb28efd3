"""Runaway JSONata on a real gunicorn + gevent server cannot stall anyone else (issue: hostile input §1).

A team admin's template with a catastrophic regex, a transform summing a huge range, an
evaluator killed from outside mid-evaluation: the runs end with the usual timeout warning
or node error, the server keeps answering other clients meanwhile, and nothing is lost.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.live_server import LiveServer
from tests.helpers.runs import poll

CHAT = "/api/v1/chat"
CATASTROPHIC_TEMPLATE = "Check: {{ $contains(input.s, /(a+)+$/) }} for {{ input.who }}"
EVIL = {"s": "a" * 29 + "!", "who": "Ada"}

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("jsonata-isolation")) as live:
        seed = live.seed()
        headers = live.admin_headers(seed)
        expert = httpx.post(live.url + "/api/v1/experts", headers=headers, json={
            "team_id": seed["team_id"], "name": "Backtracker", "prompt_template": CATASTROPHIC_TEMPLATE,
            "model_name": "stub"}).json()
        workflow = httpx.post(live.url + "/api/v1/workflows", headers=headers, json={
            "team_id": seed["team_id"], "name": "Big sum",
            "nodes": [{"key": "start", "node_type": "input", "metadata": {}},
                      {"key": "sum", "node_type": "transform", "metadata": {"expression": "$sum([1..10000000])"}}],
            "edges": [{"source": "start", "target": "sum"}]}).json()
        yield live, headers, expert["id"], workflow["id"]


def start(live, headers, path, body):
    rv = httpx.post(live.url + CHAT + path, headers=headers, json={**body, "mode": "async"}, timeout=10)
    assert rv.status_code == 202, rv.text
    return rv.json()["run_id"]


def final(live, headers, run_id):
    return poll(lambda: httpx.get(f"{live.url}{CHAT}/runs/{run_id}", headers=headers, timeout=10).json(),
                lambda run: run["status"] not in ("queued", "running"), timeout=30, interval=0.1)


def healthz_latencies(live, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            assert client.get(live.url + "/healthz").status_code == 200
            out.append(time.monotonic() - started)
            time.sleep(0.01)


def evaluator_pids(live) -> list[int]:
    """The server's evaluator processes (children of its gunicorn worker)."""
    worker = int(Path(f"/proc/{live.process.pid}/task/{live.process.pid}/children").read_text().split()[0])
    children = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
    return [int(pid) for pid in children if b"jsonata/worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_three_runaway_evaluations_do_not_stall_other_clients(server):
    live, headers, expert_id, workflow_id = server
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=healthz_latencies, args=(live, stop, latencies))
    prober.start()
    try:
        time.sleep(0.3)
        runs = [start(live, headers, "/experts:run", {"expert_id": expert_id, "input_params": EVIL}),
                start(live, headers, "/experts:run", {"expert_id": expert_id, "input_params": EVIL}),
                start(live, headers, "/workflows:run", {"workflow_id": workflow_id})]
        results = [final(live, headers, run_id) for run_id in runs]
        time.sleep(0.3)
    finally:
        stop.set()
        prober.join(10)
    assert len(latencies) > 20
    assert max(latencies) < 0.3, f"/healthz stalled: max {max(latencies):.3f} s, median {statistics.median(latencies):.4f} s"

    for expert_run in results[:2]:
        assert expert_run["status"] == "succeeded"
        [warning] = expert_run["result"]["warnings"]
        assert warning["reason"] == "timeout: expression exceeded 0.5 s"
        assert expert_run["result"]["messages"][0]["content"].endswith("for Ada")  # the rest rendered
    workflow_run = results[2]
    assert workflow_run["status"] == "failed" and workflow_run["error"]["node_key"] == "sum"
    assert "timeout" in workflow_run["error"]["message"]


def test_an_evaluator_killed_mid_evaluation_fails_only_that_evaluation(server):
    live, headers, expert_id, _ = server
    run_id = start(live, headers, "/experts:run", {"expert_id": expert_id, "input_params": EVIL})
    busy = poll(lambda: [pid for pid in evaluator_pids(live)
                         if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R"],
                bool, timeout=5, interval=0.02)
    os.kill(busy[0], signal.SIGKILL)
    run = final(live, headers, run_id)
    assert run["status"] == "succeeded"
    [warning] = run["result"]["warnings"]
    assert warning["reason"].startswith(("evaluation error: the evaluator stopped", "timeout"))
    # The pool is whole again: a normal template renders.
    rv = httpx.post(live.url + CHAT + "/experts:run", headers=headers, timeout=10, json={
        "expert_id": expert_id, "input_params": {"s": "aaa", "who": "Grace"}, "mode": "sync"})
    assert rv.status_code == 200 and rv.json()["warnings"] == []


def test_the_same_under_a_threaded_server(threaded_server, world, make_expert):
    expert = make_expert(world.team, prompt_template=CATASTROPHIC_TEMPLATE)
    started = time.monotonic()
    rv = httpx.post(threaded_server + CHAT + "/experts:run", headers=world.headers["member"], timeout=10,
                    json={"expert_id": expert.id, "input_params": EVIL, "mode": "sync"})
    assert rv.status_code == 200, rv.text
    assert time.monotonic() - started < 3
    [warning] = rv.json()["warnings"]
    assert warning["reason"] == "timeout: expression exceeded 0.5 s"
    assert rv.json()["messages"][0]["content"].endswith("for Ada")

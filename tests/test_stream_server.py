"""The log stream under real servers, read with httpx + httpx-sse as a client would (SPEC §6.4, §10).

Most tests share one gunicorn + gevent server (the production setup) with a 1 s
heartbeat; the last one serves the app from werkzeug's threaded WSGI server,
because the stream must also work without gevent.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.live_server import LiveServer
from tests.helpers.runs import poll

pytestmark = [pytest.mark.server, pytest.mark.timeout(60)]

CHAT = "/api/v1/chat"
TIMEOUT = httpx.Timeout(15.0)


@dataclass
class Live:
    server: LiveServer
    seed: dict[str, Any]
    service: dict[str, str]  # X-API-Key of the demo service (linked to the demo workflow)
    admin: dict[str, str]  # Bearer JWT of the demo admin
    nap_workflow_id: int  # input -> sleep 30 s: stays running until cancelled

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    with LiveServer(tmp_path_factory.mktemp("stream-server"),
                    env={"CHATSVC_SSE_HEARTBEAT_SECONDS": "1"}) as server:
        seed = server.seed()
        admin = server.admin_headers(seed)
        nap_id = server.nap_workflow(admin, seed["team_id"], 30)
        yield Live(server, seed, {"X-API-Key": seed["service_api_key"]}, admin, nap_id)


def start_demo(live: Live) -> dict:
    """The demo workflow (with its 1 s sleep node), started async by the demo service."""
    rv = httpx.post(live.url + f"{CHAT}/workflows:run", headers=live.service, json={
        "workflow_id": live.seed["workflow_id"], "starting_inputs": live.seed["starting_inputs"], "mode": "async"})
    assert rv.status_code == 202, rv.text
    return rv.json()


def start_nap(live: Live) -> dict:
    rv = httpx.post(live.url + f"{CHAT}/workflows:run", headers=live.admin,
                    json={"workflow_id": live.nap_workflow_id, "mode": "async"})
    assert rv.status_code == 202, rv.text
    return rv.json()


def cancel(live: Live, run_id: str) -> None:
    rv = httpx.post(live.url + f"{CHAT}/runs/{run_id}:cancel", headers=live.admin)
    assert rv.status_code in (202, 409), rv.text


def metric(url: str, name: str, **labels: str) -> float:
    """A sample of the server's /metrics; 0 for a labelled sample not there (none counted yet)."""
    text = httpx.get(url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    if labels:
        return 0.0
    raise AssertionError(f"{name} missing from /metrics:\n{text}")


def sse_connections(live: Live) -> float:
    return metric(live.url, "chatsvc_sse_connections")


def wait_no_streams(live: Live, timeout: float = 8.0) -> None:
    """Streams of earlier tests whose client left are released at their next heartbeat."""
    poll(lambda: sse_connections(live), lambda n: n == 0, timeout=timeout, interval=0.1)


@dataclass(frozen=True)
class Received:
    at: float  # wall clock when the client got it (same host as the server's `ts`)
    sse: ServerSentEvent


def read_stream(url: str, headers: dict[str, str] | None = None) -> list[Received]:
    """Every SSE item of one connection until the server closes it."""
    received = []
    with httpx.Client(timeout=TIMEOUT) as client, connect_sse(client, "GET", url, headers=dict(headers or {})) as source:
        response = source.response
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        for sse in source.iter_sse():
            received.append(Received(time.time(), sse))
    return received


def check_complete(received: list[Received], run_id: str) -> tuple[list[ServerSentEvent], ServerSentEvent]:
    """Asserts `retry`, log events with seqs 1..n, then `done` with id n+1; returns (logs, done)."""
    items = [r.sse for r in received]
    assert items[0].retry == 3000 and items[0].data == ""  # the `retry: 3000` preamble
    logs, done = items[1:-1], items[-1]
    assert all(sse.event == "log" for sse in logs), [sse.event for sse in logs]
    seqs = [sse.json()["seq"] for sse in logs]
    assert seqs == [int(sse.id) for sse in logs] == list(range(1, len(logs) + 1))
    assert done.event == "done" and done.id == str(len(logs) + 1)
    assert done.json()["run_id"] == run_id
    return logs, done


def signature(received: list[Received]) -> list[tuple]:
    return [(r.sse.id, r.sse.event, r.sse.data) for r in received]


@pytest.fixture(scope="module")
def demo_run(live) -> tuple[dict, list[Received]]:
    """One demo run, read from its start to `done`."""
    body = start_demo(live)
    return body, read_stream(live.url + body["events_url"])


def test_backlog_then_live_events_then_done(live, demo_run):
    body, received = demo_run
    logs, done = check_complete(received, body["run_id"])
    messages = [(sse.json()["message"], sse.json()["data"].get("node_key")) for sse in logs]
    assert messages[0] == ("run_started", None) and messages[-1] == ("run_finished", None)
    assert ("node_output", "advice") in messages
    assert done.json()["status"] == "succeeded"
    assert [s["status"] for s in done.json()["result"]["steps"]] == ["succeeded"] * 6

    # Live, not a replay at the end: the client had the sleep node's node_start
    # before the node finished sleeping (both clocks are this host's).
    by_message = {(r.sse.json()["message"], r.sse.json()["data"].get("node_key")): r
                  for r in received[1:-1]}
    pause_started = by_message[("node_start", "pause")]
    pause_done = by_message[("node_output", "pause")].sse.json()
    assert pause_started.at < pause_done["ts"]
    assert by_message[("run_started", None)].at < by_message[("run_finished", None)].sse.json()["ts"]


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_from_the_middle_gets_exactly_the_rest(live, demo_run, how):
    body, full = demo_run
    middle = (len(full) - 2) // 2
    url = live.url + body["events_url"]
    if how == "header":
        rest = read_stream(url, headers={"Last-Event-ID": str(middle)})
    else:
        rest = read_stream(f"{url}&last_event_id={middle}")
    assert rest[0].sse.retry == 3000
    assert signature(rest[1:]) == signature(full[1 + middle:])
    assert rest[1].sse.id == str(middle + 1)


def test_reconnect_after_done_is_204(live, demo_run):
    body, full = demo_run
    done_id = full[-1].sse.id
    rv = httpx.get(live.url + body["events_url"], headers={"Last-Event-ID": done_id})
    assert rv.status_code == 204 and rv.content == b""


def test_access_log_shows_each_stream_without_its_token(live, demo_run):
    body, _ = demo_run
    path = body["events_url"].split("?", 1)[0]
    log = live.server.log_path.read_text()
    assert re.search(rf'^127\.0\.0\.1 "GET {re.escape(path)} HTTP/1\.1" 200 \d+ \d+ms$', log, re.MULTILINE), log
    assert "token=" not in log


def raw_request(live: Live, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("request_bytes, code", [
    (b"GET /api/v1/experts?" + b"a" * 5_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"BROKEN\r\n\r\n", 400),
], ids=["long URI", "long header", "too many headers", "malformed request line"])
def test_errors_answered_by_gunicorn_itself_are_the_json_envelope(live, request_bytes, code):
    status, headers, body = raw_request(live, request_bytes)
    assert status == code
    assert headers["content-type"] == "application/json"
    envelope = json.loads(body)
    assert envelope["code"] == code and envelope["status"] and envelope["message"]


def test_stream_token_of_one_run_is_refused_for_another(live, demo_run):
    body_a, _ = demo_run
    body_b = start_demo(live)
    token_a = body_a["events_url"].split("token=", 1)[1]
    rv = httpx.get(live.url + f"{CHAT}/runs/{body_b['run_id']}/events?token={token_a}")
    assert rv.status_code == 401
    assert rv.json()["code"] == 401 and rv.headers["content-type"].startswith("application/json")
    check_complete(read_stream(live.url + body_b["events_url"]), body_b["run_id"])  # B's own token works


def test_fifty_concurrent_subscribers_get_identical_complete_streams(live):
    body = start_demo(live)
    url = live.url + body["events_url"]
    subscribers = 50
    ready = threading.Barrier(subscribers, timeout=20)

    def subscribe(_: int) -> list[Received]:
        ready.wait()  # all connect at once, while the run is going
        return read_stream(url)

    with ThreadPoolExecutor(max_workers=subscribers) as pool:
        results = list(pool.map(subscribe, range(subscribers)))
    first = signature(results[0])
    logs, done = check_complete(results[0], body["run_id"])
    assert done.json()["status"] == "succeeded"
    for result in results:
        assert signature(result) == first  # same events, same order, each once
    wait_no_streams(live)


def test_client_that_disconnects_is_unsubscribed(live):
    wait_no_streams(live)
    body = start_nap(live)
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            with client.stream("GET", live.url + body["events_url"]) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line == "id: 1":  # the run's first event arrived: the stream is open
                        break
                assert sse_connections(live) == 1
            # The client went away in the middle of the stream (the run sleeps on).
        started = time.monotonic()
        wait_no_streams(live, timeout=8)
        assert time.monotonic() - started < 8
        rv = httpx.get(live.url + body["status_url"], headers=live.admin)
        assert rv.json()["status"] == "running"  # freed by the disconnect, not by the run ending
    finally:
        cancel(live, body["run_id"])


def test_heartbeat_ping_every_second_while_idle(live):
    body = start_nap(live)
    pings: list[float] = []
    lines: list[str] = []
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            with client.stream("GET", live.url + body["events_url"]) as response:
                opened = time.monotonic()
                lines_iter = response.iter_lines()
                for line in lines_iter:
                    lines.append(line)
                    if line == ": ping":
                        pings.append(time.monotonic())
                        if len(pings) == 3:
                            break
                assert pings[0] - opened < 3
                gaps = [b - a for a, b in zip(pings, pings[1:])]
                assert all(0.5 < gap < 2.5 for gap in gaps), gaps
                cancel(live, body["run_id"])
                rest = list(lines_iter)  # the stream ends after `done`
        assert "event: done" in rest and lines[0] == "retry: 3000"
        done_data = json.loads(rest[rest.index("event: done") + 1].removeprefix("data: "))
        assert done_data["status"] == "cancelled"
    finally:
        cancel(live, body["run_id"])


def test_many_idle_streams_on_one_gevent_worker(live):
    """A smoke check of the gevent setup: 200 open streams, and the API still answers."""
    streams = 200
    wait_no_streams(live)
    body = start_nap(live)
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    try:
        with httpx.Client(timeout=TIMEOUT, limits=limits) as client, ExitStack() as stack:
            responses = [stack.enter_context(client.stream("GET", live.url + body["events_url"]))
                         for _ in range(streams)]
            assert all(r.status_code == 200 for r in responses)
            poll(lambda: sse_connections(live), lambda n: n == streams, timeout=10, interval=0.1)

            for path, headers in [("/healthz", None), (body["status_url"], live.admin),
                                  (f"{CHAT}/runs", live.admin), ("/api/v1/workflows", live.service)]:
                started = time.monotonic()
                rv = httpx.get(live.url + path, headers=headers, timeout=5)
                assert rv.status_code == 200, (path, rv.text)
                assert time.monotonic() - started < 2, path

            cancel(live, body["run_id"])
            for response in responses:  # every subscriber gets the end of the run
                lines = list(response.iter_lines())
                assert "event: done" in lines, lines[-6:]
        wait_no_streams(live)
    finally:
        cancel(live, body["run_id"])


# --- a plain threaded WSGI server (no gevent) -------------------------------------------------


def test_stream_under_a_threaded_wsgi_server(threaded_server, world, make_workflow):
    workflow = make_workflow(world.team, nodes=(("a", "input", {}), ("pause", "sleep", {"seconds": 0.5}),
                                                ("b", "echo", {})),
                             edges=(("a", "pause"), ("pause", "b")))
    rv = httpx.post(threaded_server + f"{CHAT}/workflows:run", headers=world.headers["member"],
                    json={"workflow_id": workflow.id, "starting_inputs": {"x": 1}, "mode": "async"})
    assert rv.status_code == 202, rv.text
    body = rv.json()

    received = read_stream(threaded_server + body["events_url"])
    logs, done = check_complete(received, body["run_id"])
    assert done.json()["status"] == "succeeded"
    by_message = {(r.sse.json()["message"], r.sse.json()["data"].get("node_key")): r for r in received[1:-1]}
    assert by_message[("node_start", "pause")].at < by_message[("node_output", "pause")].sse.json()["ts"]

    rest = read_stream(threaded_server + body["events_url"], headers={"Last-Event-ID": "3"})
    assert signature(rest[1:]) == signature(received[4:])
    rv = httpx.get(threaded_server + body["events_url"], headers={"Last-Event-ID": done.id})
    assert rv.status_code == 204


# --- fan-out under load ------------------------------------------------------------------------


def test_a_slow_subscriber_does_not_delay_the_others(live):
    """A client that stops reading blocks only its own socket: the run and the other streams go on."""
    blob = "x" * 200_000  # each node_output carries it: far more than the socket buffers hold
    nodes = [{"key": "start", "node_type": "input", "metadata": {}},
             {"key": "pause", "node_type": "sleep", "metadata": {"seconds": 0.5}}]
    nodes += [{"key": f"e{i}", "node_type": "echo", "metadata": {}} for i in range(4)]
    keys = [node["key"] for node in nodes]
    rv = httpx.post(live.url + "/api/v1/workflows", headers=live.admin, json={
        "team_id": live.seed["team_id"], "name": "Big outputs", "nodes": nodes,
        "edges": [{"source": a, "target": b} for a, b in zip(keys, keys[1:])]})
    assert rv.status_code == 201, rv.text
    rv = httpx.post(live.url + f"{CHAT}/workflows:run", headers=live.admin, json={
        "workflow_id": rv.json()["id"], "starting_inputs": {"blob": blob}, "mode": "async"})
    body = rv.json()

    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", live.server.port))
    slow.sendall(f"GET {body['events_url']} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda _: read_stream(live.url + body["events_url"]), range(3)))
        assert time.monotonic() - started < 10
        logs, done = check_complete(results[0], body["run_id"])
        assert done.json()["status"] == "succeeded" and len(logs) > 10
        assert all(signature(result) == signature(results[0]) for result in results)

        # The slow client, still stuck on its first buffers, finally reads everything, in order.
        slow.settimeout(15)
        raw = b""
        while chunk := slow.recv(1 << 16):
            raw += chunk
        text = raw.decode()
        assert text.count(blob) == sum(r.sse.data.count(blob) for r in results[0]) > 0
        assert text.rindex("event: done") > text.rindex(f"id: {len(logs)}\n")
    finally:
        slow.close()
    wait_no_streams(live)


def test_a_flood_of_sign_ins_does_not_stall_the_worker(live):
    """A password check costs ~0.12 s of CPU (scrypt). Made on the worker's one event loop,
    eight clients sending wrong passwords held every other request at ~1 s."""
    stop = threading.Event()

    def sign_in_wrongly() -> None:
        with httpx.Client(base_url=live.url, timeout=TIMEOUT) as client:
            while not stop.is_set():
                rv = client.post("/api/v1/auth/login",
                                 json={"email": live.seed["admin_email"], "password": "not-the-password"})
                assert rv.status_code == 401, rv.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        flood = [pool.submit(sign_in_wrongly) for _ in range(8)]
        try:
            time.sleep(1)
            latencies = []
            with httpx.Client(base_url=live.url, timeout=TIMEOUT) as client:
                for _ in range(20):
                    started = time.monotonic()
                    assert client.get("/healthz").status_code == 200
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.05)
        finally:
            stop.set()
        for future in flood:
            future.result()
    assert sorted(latencies)[len(latencies) // 2] < 0.2, latencies


def test_sync_requests_wait_for_their_runs_without_holding_the_database(tmp_path):
    """A process has 15 pooled database connections. Twenty sync requests waiting for their
    runs must leave them free: another team's next request is not held up by them."""
    waiting, nap_seconds = 20, 10
    with LiveServer(tmp_path, env={"CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER": "100"}) as server:
        seed = server.seed()
        admin = server.admin_headers(seed)
        nap_id = server.nap_workflow(admin, seed["team_id"], nap_seconds)

        def run_sync(_: int) -> dict:
            rv = httpx.post(f"{server.url}{CHAT}/workflows:run", headers=admin, timeout=nap_seconds + 20,
                            json={"workflow_id": nap_id, "mode": "sync"})
            assert rv.status_code == 200, rv.text
            return rv.json()

        with ThreadPoolExecutor(max_workers=waiting) as pool:
            runs = pool.map(run_sync, range(waiting))
            # (Were the waiting requests holding their connections, only 15 runs would start.)
            poll(lambda: metric(server.url, "chatsvc_runs", kind="workflow", status="running"),
                 lambda running: running == waiting, timeout=nap_seconds / 2, interval=0.1)
            started = time.monotonic()
            rv = httpx.get(server.url + "/api/v1/teams", headers={"X-API-Key": seed["service_api_key"]},
                           timeout=TIMEOUT)
            assert rv.status_code == 200, rv.text
            assert time.monotonic() - started < 3, "the request waited for a database connection"
            assert {run["status"] for run in runs} == {"succeeded"}


@pytest.mark.timeout(300)
def test_a_thousand_sleeping_runs_all_run_at_once_with_default_settings(tmp_path):
    """Runs waiting in a sleep node cost a greenlet each: one worker runs 1,000 at once.

    Proven by the registry's own count of running runs reaching 1,000, not by waiting for
    them to end (the server is stopped after that: ending runs is tested elsewhere).
    """
    runs = 1000
    # Only the per-caller fairness limit is raised (all runs here have one caller);
    # the executor, queue and live-run limits are the defaults.
    with LiveServer(tmp_path, env={"CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER": "100000"}) as server:
        seed = server.seed()
        admin = server.admin_headers(seed)
        # Long enough for every run to start before the first one ends, with room for a
        # slow machine (1,000 starts take 15-50 s here).
        workflow_id = server.nap_workflow(admin, seed["team_id"], 60, name="Long nap")
        local = threading.local()

        def start(_: int) -> str:
            if not hasattr(local, "client"):  # one keep-alive connection per thread
                local.client = httpx.Client(base_url=server.url, headers=admin, timeout=TIMEOUT)
            rv = local.client.post(f"{CHAT}/workflows:run", json={"workflow_id": workflow_id, "mode": "async"})
            assert rv.status_code == 202, rv.text
            return rv.json()["run_id"]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            run_ids = list(pool.map(start, range(runs)))
        assert len(set(run_ids)) == runs
        assert time.monotonic() - started < 60, "starting the runs took longer than they sleep"

        def runs_by_status() -> dict[str, float]:
            text = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
            return {sample.labels["status"]: sample.value for family in text_string_to_metric_families(text)
                    if family.name == "chatsvc_runs" for sample in family.samples}

        # All 1,000 running at the same moment, none queued, none failed.
        poll(runs_by_status, lambda counts: counts == {"running": runs}, timeout=30, interval=0.5)

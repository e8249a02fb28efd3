"""`GET /metrics` is Prometheus text with chatsvc's series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

EXPECTED_FAMILIES = {
    "chatsvc_runs": "gauge",
    "chatsvc_runs_finished": "counter",  # samples are chatsvc_runs_finished_total
    "chatsvc_run_duration_seconds": "histogram",
    "chatsvc_sse_connections": "gauge",
    "chatsvc_run_events": "counter",  # samples are chatsvc_run_events_total
    "chatsvc_executor_queue_depth": "gauge",
    "chatsvc_http_requests": "counter",
    "chatsvc_http_request_duration_seconds": "histogram",
    "chatsvc_sse_streams_opened": "counter",
    "chatsvc_sse_stream_duration_seconds": "histogram",
    "chatsvc_run_feeds": "gauge",
    "chatsvc_greenlets": "gauge",
}


def test_metrics_is_prometheus_text_with_chatsvc_series(client, world):
    rv = client.post("/api/v1/chat/experts:run", json={"expert_id": world.expert.id, "input_params": {"name": "Ada"}},
                     headers=world.headers["member"])
    assert rv.status_code == 200 and rv.get_json()["status"] == "succeeded", rv.get_json()

    rv = client.get("/metrics")
    assert rv.status_code == 200
    assert rv.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"  # one charset, not two
    text = rv.get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}  # raises on malformed text
    for name, kind in EXPECTED_FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, (name, families[name].type)

    def sample(name: str, **labels: str) -> float:
        for family in families.values():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise AssertionError(f"no sample {name} {labels} in:\n{text}")

    assert sample("chatsvc_runs", kind="expert", status="succeeded") == 1
    assert sample("chatsvc_runs_finished_total", kind="expert", status="succeeded") == 1
    assert sample("chatsvc_run_duration_seconds_count", kind="expert") == 1
    assert sample("chatsvc_run_events_total", level="info") >= 3
    assert sample("chatsvc_sse_connections") == 0
    assert sample("chatsvc_executor_queue_depth") == 0
    assert sample("chatsvc_run_feeds") >= 1  # the finished run's, held until its TTL
    assert sample("chatsvc_greenlets") >= 0
    # Requests by route pattern and status; the stream is counted, and timed on its own.
    run_route = "/api/v1/chat/experts:run"
    assert sample("chatsvc_http_requests_total", method="POST", route=run_route, status="200") == 1
    assert sample("chatsvc_http_request_duration_seconds_count", method="POST", route=run_route) == 1


def test_streams_are_counted_and_timed_apart_from_request_latency(client, world):
    body = client.post("/api/v1/chat/experts:run", json={"expert_id": world.expert.id, "input_params": {}},
                       headers=world.headers["member"]).get_json()
    rv = client.get(body["events_url"])
    assert rv.status_code == 200 and b"event: done" in rv.get_data()
    client.get("/api/v1/experts/999999", headers=world.headers["member"])  # a 404 is counted too
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, **labels: str) -> float:
        return sum(s.value for f in families.values() for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    stream_route = "/api/v1/chat/runs/<run_id:run_id>/events"
    assert value("chatsvc_http_requests_total", route=stream_route, status="200") == 1
    assert value("chatsvc_http_request_duration_seconds_count", route=stream_route) == 0
    assert value("chatsvc_sse_streams_opened_total") == 1
    assert value("chatsvc_sse_stream_duration_seconds_count") == 1
    assert value("chatsvc_http_requests_total", route="/api/v1/experts/<int:expert_id>", status="404") == 1


def test_a_client_cannot_grow_the_metrics_by_inventing_methods(client):
    for n in range(20):
        client.open("/api/v1/experts", method=f"BREW{n}")
    text = client.get("/metrics").get_data(as_text=True)
    assert "BREW" not in text
    assert 'method="other"' in text

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
}


def test_metrics_is_prometheus_text_with_chatsvc_series(client, world):
    rv = client.post("/api/v1/chat/experts:run", json={"expert_id": world.expert.id, "input_params": {"name": "Ada"}},
                     headers=world.headers["member"])
    assert rv.status_code == 200 and rv.get_json()["status"] == "succeeded", rv.get_json()

    rv = client.get("/metrics")
    assert rv.status_code == 200
    assert rv.mimetype == "text/plain"
    assert "version=0.0.4" in rv.headers["Content-Type"]
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

"""Exact SSE wire text (SPEC §6.4)."""

from __future__ import annotations

import pytest

from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.model import RunInfo
from chatsvc.runs.sse import (
    HEARTBEAT,
    MAX_SEQ,
    RETRY_PREAMBLE,
    encode_done,
    encode_event,
    log_event_wire,
    parse_last_event_id,
)
from tests.helpers.runs import LogEvent as Event
from tests.helpers.runs import encode_log_event, read


def make_run_info(**overrides) -> RunInfo:
    fields = dict(run_id="abc123", kind="workflow", target_id=1, team_id=2, owner="user:3",
                  status="succeeded", created_at=1.0, started_at=2.0, finished_at=3.0,
                  event_count=6, done_seq=7) | overrides
    return RunInfo(**fields)


def test_log_event_wire_text():
    event = Event(seq=7, ts=1763700000.123, level="info", message="node_start",
                  data={"node_key": "a", "note": "café ✓", "index": 1})
    assert encode_log_event(event) == (
        "id: 7\n"
        "event: log\n"
        'data: {"seq":7,"ts":1763700000.123,"level":"info","message":"node_start",'
        '"data":{"node_key":"a","note":"café ✓","index":1}}\n'
        "\n"
    )


def test_log_event_with_newlines_in_data_stays_one_data_line():
    event = Event(seq=1, ts=0.5, level="warn", message="multi\nline", data={"text": "a\r\nb"})
    assert encode_log_event(event) == (
        'id: 1\nevent: log\ndata: {"seq":1,"ts":0.5,"level":"warn","message":"multi\\nline",'
        '"data":{"text":"a\\r\\nb"}}\n\n'
    )


@pytest.mark.parametrize("data", [
    {"text": "a\r\nb\rc\nd"}, {"sep": "\u2028\u2029\x85"}, {"nul": "\x00", "bell": "\x07"},
    {"emoji": "\U0001F600", "quote": '"\\'}, {"nested": [{"k": None, "f": 1.5, "b": True}]}, {},
], ids=["line breaks", "unicode separators", "control characters", "quotes", "nested", "empty"])
def test_the_per_append_encoder_writes_the_general_encoders_bytes(data):
    event = Event(seq=12, ts=1763700000.5, level="warn", message="multi\nline", data=data)
    assert log_event_wire(12, 1763700000.5, "warn", "multi\nline", data) == encode_log_event(event).encode()


def test_log_event_from_registry_round_trip():
    registry = MemoryRunRegistry(clock=lambda: 10.0)
    run = registry.create(kind="expert", target_id=5, team_id=1, owner="service:7")
    registry.append(run.run_id, "info", "run_started", {"expert_id": 5})
    [event] = read(registry, run.run_id, 0, timeout=0).events
    assert encode_log_event(event) == (
        'id: 1\nevent: log\ndata: {"seq":1,"ts":10.0,"level":"info","message":"run_started",'
        '"data":{"expert_id":5}}\n\n'
    )


def test_multi_line_data_is_split_into_data_lines():
    assert encode_event("first\nsecond\r\nthird\rfourth", event="note") == (
        "event: note\ndata: first\ndata: second\ndata: third\ndata: fourth\n\n"
    )


def test_data_keeps_trailing_newline_and_non_sse_line_breaks():
    # "\u2028" is not an SSE line break: it must stay inside the line.
    assert encode_event("a\u2028b\n") == "data: a\u2028b\ndata: \n\n"
    assert encode_event("") == "data: \n\n"


def test_id_and_event_are_stripped_of_line_breaks():
    assert encode_event("x", event="lo\r\ng", id="1\n2\x003", retry=1500) == (
        "id: 123\nevent: log\nretry: 1500\ndata: x\n\n"
    )


def test_negative_retry_is_rejected():
    with pytest.raises(ValueError):
        encode_event("x", retry=-1)


def test_done_event_wire_text_success():
    run = make_run_info(result={"steps": [{"node_key": "a", "status": "ok"}]})
    assert encode_done(run) == (
        "id: 7\nevent: done\n"
        'data: {"run_id":"abc123","status":"succeeded",'
        '"result":{"steps":[{"node_key":"a","status":"ok"}]}}\n'
        "\n"
    )


def test_done_event_wire_text_failure_without_result():
    run = make_run_info(status="failed", error={"type": "RunTimeout", "message": "too slow"})
    assert encode_done(run) == (
        "id: 7\nevent: done\n"
        'data: {"run_id":"abc123","status":"failed",'
        '"error":{"type":"RunTimeout","message":"too slow"}}\n'
        "\n"
    )


def test_done_requires_a_finished_run():
    with pytest.raises(ValueError):
        encode_done(make_run_info(status="running", finished_at=None, done_seq=None))


def test_heartbeat_and_retry_preamble():
    assert HEARTBEAT == ": ping\n\n"
    assert RETRY_PREAMBLE == "retry: 3000\n\n"


@pytest.mark.parametrize("value, expected", [
    (None, 0), ("", 0), (" ", 0), ("7", 7), (" 42 ", 42), ("0", 0), ("9" * 18, int("9" * 18)),
    ("9" * 19, MAX_SEQ), ("9" * 5000, MAX_SEQ),
])
def test_parse_last_event_id(value, expected):
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize("value", ["-3", "abc", "1.5", "1e3", "+5", "\u0663", "1_0", "0x10", "7 8"])
def test_a_last_event_id_that_is_not_a_non_negative_integer_is_refused(value):
    with pytest.raises(ValueError, match="non-negative integer"):
        parse_last_event_id(value)

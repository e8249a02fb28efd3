"""Helpers for tests of runs: read a run's SSE stream, poll a run with a deadline, a clock to move by hand."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable


class FakeClock:
    """A wall clock for a registry that the test moves by hand (run timeouts, TTLs)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SSEEvent:
    """One event of the wire stream: its id, event name and decoded data."""

    id: int | None
    event: str
    data: Any


def parse_sse(text: str) -> list[SSEEvent]:
    """Parse `text/event-stream` text into events; comments and `retry:` blocks are dropped."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "data" not in fields:
            continue
        ids = fields.get("id")
        events.append(SSEEvent(
            id=int(ids[0]) if ids else None,
            event=fields.get("event", ["message"])[0],
            data=json.loads("\n".join(fields["data"])),
        ))
    return events


def read_events(client, events_url: str) -> tuple[list[dict], dict]:
    """The log events (as {seq, ts, level, message, data}) and the `done` data of a finished run.

    Asserts the wire invariants on the way: ids are the seqs, 1-based and contiguous, and
    `done` is last, with the next id.
    """
    rv = client.get(events_url)
    assert rv.status_code == 200, rv.get_data(as_text=True)
    assert rv.mimetype == "text/event-stream"
    parsed = parse_sse(rv.get_data(as_text=True))
    assert parsed and parsed[-1].event == "done", parsed[-3:]
    logs, done = parsed[:-1], parsed[-1]
    assert all(ev.event == "log" for ev in logs)
    assert [ev.id for ev in logs] == [ev.data["seq"] for ev in logs] == list(range(1, len(logs) + 1))
    assert done.id == len(logs) + 1
    return [ev.data for ev in logs], done.data


def messages(events: list[dict]) -> list[str]:
    return [ev["message"] for ev in events]


def only(events: list[dict], message: str) -> dict:
    """The one event with this message."""
    found = [ev for ev in events if ev["message"] == message]
    assert len(found) == 1, f"expected one {message!r} event, got {len(found)}: {messages(events)}"
    return found[0]


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], *, timeout: float = 5.0,
         interval: float = 0.02) -> Any:
    """Call `fetch` until `until(value)` holds; fail after `timeout` seconds with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last value: {value!r}")
        time.sleep(interval)


FINISHED = ("succeeded", "failed", "cancelled")


def wait_finished(client, status_url: str, headers: dict, *, timeout: float = 5.0) -> dict:
    """Poll GET status_url until the run has finished; its final body."""
    def fetch():
        rv = client.get(status_url, headers=headers)
        assert rv.status_code == 200, rv.get_data(as_text=True)
        return rv.get_json()

    return poll(fetch, lambda body: body["status"] in FINISHED, timeout=timeout)


@dataclass(frozen=True)
class LogEvent:
    """A log event as a subscriber receives it (the ``data:`` of an ``event: log``)."""

    seq: int
    ts: float
    level: str
    message: str
    data: Any

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "level": self.level, "message": self.message, "data": self.data}


@dataclass(frozen=True)
class StreamRead:
    """What one read of a run's feed delivered: log events, and the run once ``done`` came."""

    events: list[LogEvent]
    done: Any = None  # the registry's RunInfo, when the feed delivered `done`


def log_events(wire: bytes) -> list[LogEvent]:
    """The log events in a feed's bytes (ids checked against seqs)."""
    parsed = [event for event in parse_sse(wire.decode()) if event.event == "log"]
    assert all(event.id == event.data["seq"] for event in parsed), parsed
    return [LogEvent(**event.data) for event in parsed]


def read(registry, run_id: str, after_seq: int = 0, timeout: float = 0.0) -> StreamRead:
    """Reads a run the way its SSE stream does (``subscribe`` and the run's feed): the events
    after ``after_seq``, waiting up to ``timeout`` seconds for some when there are none."""
    with registry.subscribe(run_id) as feed:
        found = feed.read(max(0, after_seq), timeout)
    parsed = parse_sse(found.data.decode())
    events = log_events(found.data)
    done = registry.get(run_id) if parsed and parsed[-1].event == "done" else None
    if done is not None:
        assert parsed[-1].id == done.done_seq
    return StreamRead(events, done)


def encode_log_event(event: LogEvent) -> str:
    """The wire text SPEC §6.4 gives a log event, built with the general encoder (the production
    path writes these bytes directly; the tests compare the two)."""
    from chatsvc.runs.sse import encode_event

    data = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)
    return encode_event(data, event="log", id=event.seq)


def new_run(reg, **overrides) -> Any:
    """A queued run in ``reg`` (a registry of either backend)."""
    fields = {"kind": "workflow", "target_id": 1, "team_id": 2, "owner": "user:3"} | overrides
    return reg.create(**fields)


def read_until_done(reg, run_id: str, after_seq: int = 0) -> tuple[list[LogEvent], Any]:
    """Reads like an SSE subscriber (one subscription, its feed): every event and the final snapshot."""
    seen = []
    deadline = time.monotonic() + 30
    with reg.subscribe(run_id) as feed:
        while time.monotonic() < deadline:
            found = feed.read(after_seq, 5.0)
            seen.extend(log_events(found.data))
            after_seq = found.last_seq
            if found.finished:
                return seen, reg.get(run_id)
    raise AssertionError("reader never got done")

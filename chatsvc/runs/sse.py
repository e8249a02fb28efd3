"""Server-Sent Events wire format (SPEC §6.4; WHATWG HTML "Server-sent events")."""

from __future__ import annotations

import json
import re
from typing import Any

from chatsvc.runs.model import RunInfo
from chatsvc.runs.shape import done_body

HEARTBEAT = ": ping\n\n"  # a comment line: keeps proxies from closing an idle stream
RETRY_PREAMBLE = "retry: 3000\n\n"  # EventSource reconnects after 3 s
HEARTBEAT_BYTES = HEARTBEAT.encode()
RETRY_PREAMBLE_BYTES = RETRY_PREAMBLE.encode()

# The only line terminators SSE knows; str.splitlines() would also split on
# \x0b, \x1c, \u2028 ... which a browser keeps inside the line.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take "٣", "+5" and "1_0"
MAX_SEQ = 10**18  # any Last-Event-ID of more digits is past every run's end: no giant ints from a header
# JSON may write a lone UTF-16 surrogate ("\ud800"); Python keeps it in a str, and UTF-8,
# the stream's encoding, cannot carry it. (In a str every surrogate is a lone one: a valid
# pair is decoded to the one character it stands for.)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_event(data: str, *, event: str | None = None, id: str | int | None = None,
                 retry: int | None = None) -> str:
    """Encodes one SSE event: optional id/event/retry fields, data split into `data:` lines."""
    lines = []
    if id is not None:
        # A line break would end the field early, and a browser ignores an id containing NUL.
        lines.append(f"id: {_one_line(str(id)).replace(chr(0), '')}")
    if event is not None:
        lines.append(f"event: {_one_line(event)}")
    if retry is not None:
        if retry < 0:
            raise ValueError("retry must be a non-negative number of milliseconds")
        lines.append(f"retry: {int(retry)}")
    # The browser joins data lines with "\n", so multi-line data survives.
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return "\n".join(lines) + "\n\n"


def event_json(seq: int, ts: float, level: str, message: str, data: dict) -> str:
    """A log event's JSON: ``{"seq", "ts", "level", "message", "data"}``, compact."""
    return compact_json({"seq": seq, "ts": ts, "level": level, "message": message, "data": data})


def log_wire(seq: int, event_json: str) -> bytes:
    """``id: <seq>``, ``event: log``, the event's JSON, without the general encoder's line
    splitting: JSON escapes every line break, so the JSON is one ``data:`` line."""
    return b"id: %d\nevent: log\ndata: %s\n\n" % (seq, event_json.encode())


def log_event_wire(seq: int, ts: float, level: str, message: str, data: dict) -> bytes:
    """The wire bytes of a log event given by its fields (once per append)."""
    return log_wire(seq, event_json(seq, ts, level, message, data))


def done_json(run_id: str, status: str, result: Any, error: dict | None) -> str:
    """The ``done`` event's data: ``{run_id, status, result?, error?}`` (both backends store this)."""
    return compact_json(done_body(run_id, status, result, error))


def done_wire(done_seq: int, data_json: str) -> bytes:
    """The wire bytes of the ``done`` event, the stream's last (its id is one past the last event)."""
    return encode_event(data_json, event="done", id=done_seq).encode()


def encode_done(run: RunInfo) -> str:
    """The ``done`` event of a finished run, as text."""
    if run.done_seq is None:
        raise ValueError(f"run {run.run_id} is not finished")
    return done_wire(run.done_seq, done_json(run.run_id, run.status, run.result, run.error)).decode()


def find_lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in JSON-like ``value`` (keys included), or None."""
    found = LONE_SURROGATE.search(json.dumps(value, ensure_ascii=False, default=str))
    return found.group() if found else None


def parse_last_event_id(value: str | None) -> int:
    """The seq a client last saw (Last-Event-ID or ?last_event_id=); 0 if absent or empty.

    Raises ValueError unless it is a non-negative integer; one beyond every seq is MAX_SEQ.
    """
    value = (value or "").strip()
    if not value:
        return 0
    if not _DIGITS.fullmatch(value):
        raise ValueError("Last-Event-ID must be a non-negative integer: the id of the last event received")
    return int(value) if len(value) <= 18 else MAX_SEQ


def _one_line(value: str) -> str:
    return value.replace("\r", "").replace("\n", "")


def compact_json(obj: Any) -> str:
    # default=str: data that bypassed the logger's coercion must not break the stream.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)

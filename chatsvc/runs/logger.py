"""The logger facade runs write through (SPEC §10): leveled events into the registry."""

from __future__ import annotations

import json
import logging
import math
from datetime import date, datetime
from datetime import time as time_of_day
from typing import Any, Callable

from chatsvc.runs.model import check_terminal
from chatsvc.runs.registry import RunRegistry
from chatsvc.runs.sse import LONE_SURROGATE, find_lone_surrogate

server_log = logging.getLogger("chatsvc.runs")

_MAX_DEPTH = 100  # deeper data is cut off rather than risking RecursionError


def to_jsonable(value: Any) -> Any:
    """Returns a copy of `value` made only of JSON types; never raises.

    Event data crosses the wire as JSON, so it is coerced once when it is
    logged rather than failing later in every subscriber's stream. The fast
    path is a json.dumps/json.loads round trip (C code, cheap next to the
    network write it precedes) with `_json_default` for datetimes, sets,
    exceptions and other objects. Data json.dumps rejects (NaN/Infinity,
    non-string keys, cycles) takes a slower, careful walk instead, and so does text
    holding a lone surrogate (from an LLM's or a service's JSON), which becomes U+FFFD.
    Most events carry a few ASCII strings and numbers: those are copied as they are.
    """
    if type(value) is dict and _flat_and_plain(value):
        return dict(value)
    try:
        text = json.dumps(value, default=_json_default, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _sanitize(value, 0, set())
    result = json.loads(text)
    # ASCII JSON writes characters beyond U+FFFF as surrogate pairs, and a lone surrogate
    # as one such escape ("\ud800"): only then is there anything to look for.
    if "\\ud" in text and find_lone_surrogate(result) is not None:
        return _sanitize(result, 0, set())
    return result


_PLAIN = frozenset({int, bool, type(None)})


def _flat_and_plain(value: dict) -> bool:
    """Whether ``value`` maps ASCII strings to ASCII strings, ints, bools, None or finite
    floats: already JSON as it is. (Non-ASCII text may hold a lone surrogate: not plain.)"""
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return False
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind not in _PLAIN:
            return False
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (datetime, date, time_of_day)):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        items = list(obj)
        try:
            return sorted(items)  # a stable order makes logs comparable
        except TypeError:
            return items
    if isinstance(obj, BaseException):
        return {"type": type(obj).__name__, "message": str(obj)}
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", errors="replace")
    try:
        return str(obj)
    except Exception:
        return object.__repr__(obj)


def _sanitize(value: Any, depth: int, active: set[int]) -> Any:
    """The slow path of to_jsonable; `active` holds ids of containers being walked (cycles)."""
    # Subclasses (an IntEnum, a str subclass) become the plain type, as after a JSON round trip.
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", str.__str__(value))
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        # Like JavaScript's JSON.stringify: NaN and ±Infinity become null.
        return float(value) if math.isfinite(value) else None
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            return "<cycle>"
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return {_key(key): _sanitize(item, depth + 1, active)
                        for key, item in value.items()}
            return [_sanitize(item, depth + 1, active) for item in value]
        finally:
            active.discard(id(value))
    return _sanitize(_json_default(value), depth + 1, active)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return LONE_SURROGATE.sub("\ufffd", key)
    if key is None or isinstance(key, (bool, int)):
        return json.dumps(key)  # as json.dumps would: True → "true", None → "null"
    return str(key)


class RunLogger:
    """log_info / log_warn / log_error / finish for one registry; data becomes JSON-safe."""

    def __init__(self, registry: RunRegistry, on_event: Callable[[str], None] | None = None) -> None:
        self._registry = registry
        self._on_event = on_event  # called with the level of each stored event (metrics)

    def _append(self, run_id: str, level: str, msg: str, data: Any) -> int | None:
        seq = self._registry.append(run_id, level, msg, data)
        if seq is not None and self._on_event is not None:
            self._on_event(level)
        return seq

    def log_info(self, run_id: str, msg: str, **data: Any) -> int | None:
        return self._append(run_id, "info", msg, to_jsonable(data))

    def log_warn(self, run_id: str, msg: str, **data: Any) -> int | None:
        return self._append(run_id, "warn", msg, to_jsonable(data))

    def log_error(self, run_id: str, msg: str, exc: BaseException | None = None,
                  **data: Any) -> int | None:
        """Logs an error event; with `exc`, adds data.exception = {type, message}.

        The traceback goes to the server log only: it can reveal code paths
        and secrets that the run's viewers must not see.
        """
        if exc is not None:
            data["exception"] = {"type": type(exc).__name__, "message": str(exc)}
            server_log.error("run %s: %s", run_id, msg, exc_info=exc)
        return self._append(run_id, "error", msg, to_jsonable(data))

    def finish(self, run_id: str, status: str, *, result: Any = None,
               error: dict | None = None, **data: Any) -> bool:
        """Appends `run_finished` {status, **data}, then finishes the run (first call wins)."""
        check_terminal(status)
        level = "error" if status == "failed" else "info"
        finished_data = to_jsonable({"status": status, **data})
        self._append(run_id, level, "run_finished", finished_data)
        return self._registry.finish(
            run_id, status,
            result=None if result is None else to_jsonable(result),
            error=None if error is None else to_jsonable(error),
        )

"""What a run is: its snapshot, statuses, event levels, limits and errors (SPEC §6.3, §10).

Every other module of ``runs/`` (both registry backends, the encoder, the executor) and
the API's run schema import this one, and it imports none of them.

Run lifecycle: ``queued`` → ``running`` → one of ``TERMINAL_STATUSES``. Once a run is
finished it accepts no more events, and its ``done_seq`` (the ``id:`` of the SSE ``done``
event) is one past its last event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatsvc.errors import ServiceUnavailable

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
LEVELS = frozenset({"info", "warn", "error"})


@dataclass(frozen=True)
class RunInfo:
    """An immutable snapshot of a run; ``owner`` is e.g. "user:3" or "service:7"."""

    run_id: str
    kind: str
    target_id: int
    team_id: int
    owner: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    event_count: int
    result: Any = None
    error: dict | None = None
    cancel_requested: bool = False
    done_seq: int | None = None  # seq of the `done` event once finished

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class RunLimits:
    """The settings every backend enforces the same way (SPEC §10)."""

    ttl_seconds: float = 900
    run_timeout_seconds: float = 600
    max_events_per_run: int = 10_000
    max_live_runs: int = 1_000
    max_active_per_owner: int | None = None

    def full(self) -> "RegistryFull":
        return RegistryFull(f"too many live runs (limit {self.max_live_runs})")

    def owner_full(self) -> "TooManyActiveRuns":
        return TooManyActiveRuns(f"too many active runs for this caller (limit {self.max_active_per_owner})")

    def timeout_error(self) -> dict[str, str]:
        """The error of a run failed for outliving ``run_timeout_seconds``."""
        return {"type": "RunTimeout",
                "message": f"run did not finish within {self.run_timeout_seconds:g} seconds"}

    def timeout_event(self) -> dict[str, float]:
        """The data of the ``run_timeout`` error event that comes before it."""
        return {"timeout_seconds": self.run_timeout_seconds}

    def truncated_event(self) -> dict[str, int]:
        """The data of the one ``events_truncated`` warning of a run past its events limit."""
        return {"limit": self.max_events_per_run}


def check_event(level: str, data: Any) -> None:
    """An event's level and data, checked before any backend stores it."""
    if level not in LEVELS:
        raise ValueError(f"unknown event level {level!r}; expected one of {sorted(LEVELS)}")
    if data is not None and not isinstance(data, dict):
        raise TypeError(f"event data must be a dict, not {type(data).__name__}")


def check_terminal(status: str) -> None:
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"{status!r} is not a terminal status; expected one of {sorted(TERMINAL_STATUSES)}")


class RunNotFound(KeyError):
    """The run does not exist, or has expired and been garbage-collected."""


class RegistryFull(Exception):
    """Too many live (unfinished) runs; try again after ``retry_after`` seconds."""

    def __init__(self, message: str = "too many live runs", *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyActiveRuns(RegistryFull):
    """This owner already has its limit of live runs (429, not 503: it is the caller's limit)."""


class RegistryUnavailable(ServiceUnavailable):
    """The registry's backend cannot be reached (Redis down): 503 + Retry-After wherever it surfaces."""

    def __init__(self, message: str = "Run registry unavailable; try again shortly", *,
                 retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)


# --- Read-only containers -----------------------------------------------------------
# Every reader of a run receives the same result and error objects (RunInfo snapshots
# share them). So that one caller cannot change what the others see, they are
# read-only subclasses of dict/list: still dicts and lists for isinstance checks, `==`,
# json.dumps and jsonify, but refusing in-place changes. `copy.deepcopy(x)` returns
# plain, mutable dicts and lists.


def _read_only(self: Any, *args: Any, **kwargs: Any) -> None:
    raise TypeError("run registry data is read-only; use copy.deepcopy() for a mutable copy")


class _FrozenDict(dict):
    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # copy / deepcopy / pickle produce a plain dict.
        return (dict, (dict(self),))


class _FrozenList(list):
    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return (list, (list(self),))


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """Deep-copies dicts, lists, tuples and sets into read-only equivalents.

    A finished workflow's result can hold thousands of values: scalars return first,
    and containers are built from a comprehension, which is faster than a generator.
    """
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return _FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return _FrozenList([freeze(item) for item in value])
    if isinstance(value, tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    return value

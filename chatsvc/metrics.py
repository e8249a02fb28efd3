"""Prometheus metrics of one app (its own CollectorRegistry, so test apps don't collide)."""

from __future__ import annotations

import gc
import time
from collections import Counter as Tally
from typing import Any, Callable

from flask import Flask, request

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from chatsvc.runs.feed import feeds_alive
from chatsvc.runs.model import RunInfo
from chatsvc.runs.registry import RunRegistry

RUN_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STREAM_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400)
STREAM_ENDPOINT = "streams.RunEvents"  # long-lived: counted and timed apart from request latency
_STARTED_KEY = "chatsvc.request_started"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _RunsInRegistry:
    """Collector: runs currently held by the registry, by kind and status (read at scrape time)."""

    def __init__(self, registry: RunRegistry) -> None:
        self._registry = registry

    def collect(self):
        family = GaugeMetricFamily(
            "chatsvc_runs", "Runs currently in the run registry, by kind and status", labels=["kind", "status"]
        )
        for (kind, status), count in sorted(Tally((r.kind, r.status) for r in self._registry.list_runs()).items()):
            family.add_metric([kind, status], count)
        yield family


def greenlets_alive() -> int:
    """Greenlets not yet dead in this process (gevent keeps no list: a walk of the GC's objects).

    A scrape pays for the walk (about 10 ms per 100,000 tracked objects); it is the one
    way to see greenlets that never end, such as a stream whose client vanished unnoticed.
    """
    try:
        from greenlet import greenlet
    except ImportError:  # pragma: no cover - gevent depends on greenlet
        return 0
    # type(), not isinstance(): isinstance asks a proxy (werkzeug's LocalProxy) for its __class__.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), greenlet) and not obj.dead)


class Metrics:
    def __init__(self, run_registry: RunRegistry) -> None:
        self.registry = CollectorRegistry()
        self.runs_finished = Counter(
            "chatsvc_runs_finished", "Finished runs, by kind and status", ["kind", "status"], registry=self.registry
        )
        self.run_duration = Histogram(
            "chatsvc_run_duration_seconds",
            "Run duration from start to finish, by kind",
            ["kind"],
            buckets=RUN_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.sse_connections = Gauge(
            "chatsvc_sse_connections", "Open SSE log streams", registry=self.registry
        )
        self.events = Counter(
            "chatsvc_run_events", "Run events appended, by level", ["level"], registry=self.registry
        )
        self._children: dict[tuple, Any] = {}  # (metric, *labels) -> its labelled child
        self._queue = Gauge(
            "chatsvc_executor_queue_depth", "Runs waiting for an executor thread", registry=self.registry
        )
        self.http_requests = Counter(
            "chatsvc_http_requests", "HTTP requests answered, by method, route and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.http_latency = Histogram(
            "chatsvc_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route (log streams: chatsvc_sse_stream_duration_seconds)",
            ["method", "route"], buckets=REQUEST_BUCKETS, registry=self.registry,
        )
        self.streams_opened = Counter("chatsvc_sse_streams_opened", "SSE log streams opened", registry=self.registry)
        self.stream_duration = Histogram(
            "chatsvc_sse_stream_duration_seconds", "How long SSE log streams stayed open",
            buckets=STREAM_BUCKETS, registry=self.registry,
        )
        self.registry.register(_RunsInRegistry(run_registry))
        Gauge("chatsvc_run_feeds", "Run feeds (encoded event logs) alive in this process",
              registry=self.registry).set_function(feeds_alive)
        Gauge("chatsvc_greenlets", "Greenlets alive in this process (soak and leak checks)",
              registry=self.registry).set_function(greenlets_alive)

    def watch_queue(self, queue_depth: Callable[[], int]) -> None:
        """Read the executor's queue depth at scrape time."""
        self._queue.set_function(queue_depth)

    def run_finished(self, info: RunInfo) -> None:
        self.runs_finished.labels(info.kind, info.status).inc()
        if info.started_at is not None and info.finished_at is not None:
            self.run_duration.labels(info.kind).observe(max(0.0, info.finished_at - info.started_at))

    def event_appended(self, level: str) -> None:
        _child(self._children, self.events, level).inc()

    def request_answered(self, method: str, route: str, status: int, seconds: float, *, stream: bool) -> None:
        _child(self._children, self.http_requests, method, route, status).inc()
        if not stream:
            _child(self._children, self.http_latency, method, route).observe(seconds)

    def stream_timer(self) -> "StreamTimer":
        return StreamTimer(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _child(children: dict[tuple, Any], metric: Any, *labels: Any) -> Any:
    """``metric.labels(*labels)``, looked up once: it is called per event and per request, and
    prometheus-client's lookup costs more than the increment. Labels come from bounded sets
    (levels, methods, route patterns, statuses), so the dict stays small."""
    key = (metric, *labels)
    child = children.get(key)
    if child is None:
        child = children[key] = metric.labels(*(str(label) for label in labels))
    return child


class StreamTimer:
    """One SSE stream's open/close: the open-streams gauge, the opened counter, the duration."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._opened: float | None = None

    def open(self) -> None:
        self._opened = time.monotonic()
        self._metrics.sse_connections.inc()
        self._metrics.streams_opened.inc()

    def close(self) -> None:
        if self._opened is not None:
            self._metrics.sse_connections.dec()
            self._metrics.stream_duration.observe(time.monotonic() - self._opened)
            self._opened = None


def instrument(app: Flask, metrics: Metrics) -> None:
    """Count and time every request of the app (the route's pattern, not the raw path)."""

    @app.before_request
    def start_clock() -> None:
        request.environ[_STARTED_KEY] = time.perf_counter()

    @app.after_request
    def count(response):
        started = request.environ.get(_STARTED_KEY)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"  # a client picks it: bound it
            metrics.request_answered(method, route, response.status_code, time.perf_counter() - started,
                                     stream=request.endpoint == STREAM_ENDPOINT and response.status_code == 200)
        return response


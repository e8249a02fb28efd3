"""Prometheus metrics of one app (its own CollectorRegistry, so test apps don't collide)."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from chatsvc.runs.registry import RunInfo, RunRegistry

RUN_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


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
        self._queue = Gauge(
            "chatsvc_executor_queue_depth", "Runs waiting for an executor thread", registry=self.registry
        )
        self.registry.register(_RunsInRegistry(run_registry))

    def watch_queue(self, queue_depth: Callable[[], int]) -> None:
        """Read the executor's queue depth at scrape time."""
        self._queue.set_function(queue_depth)

    def run_finished(self, info: RunInfo) -> None:
        self.runs_finished.labels(info.kind, info.status).inc()
        if info.started_at is not None and info.finished_at is not None:
            self.run_duration.labels(info.kind).observe(max(0.0, info.finished_at - info.started_at))

    def event_appended(self, level: str) -> None:
        self.events.labels(level).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""The per-app run runtime: registry, logger, executor, LLM provider and stream tokens.

Created once in ``create_app`` (so in each gunicorn worker, after the fork and
after gevent patched threading) and kept in ``app.extensions``.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from chatsvc.config import Config
from chatsvc.metrics import Metrics
from chatsvc.runs.executor import RunExecutor
from chatsvc.runs.logger import RunLogger
from chatsvc.runs.registry import MemoryRunRegistry, RunInfo, RunRegistry
from chatsvc.runs.tokens import StreamTokens
from chatsvc.services.llm import LLMProvider, make_provider

EXTENSION_KEY = "chatsvc.runtime"


@dataclass
class Runtime:
    config: Config
    registry: RunRegistry
    logger: RunLogger
    executor: RunExecutor
    provider: LLMProvider
    tokens: StreamTokens
    metrics: Metrics

    @classmethod
    def create(cls, config: Config) -> "Runtime":
        registry = MemoryRunRegistry(
            ttl_seconds=config.run_ttl_seconds,
            run_timeout_seconds=config.run_timeout_seconds,
            max_events_per_run=config.max_events_per_run,
            max_live_runs=config.max_live_runs,
        )
        metrics = Metrics(registry)
        logger = RunLogger(registry, on_event=metrics.event_appended)
        executor = RunExecutor(
            registry,
            logger,
            workers=config.executor_workers,
            max_queued=config.max_queued_runs,
            max_active_per_caller=config.max_active_runs_per_caller,
            on_finished=metrics.run_finished,
        )
        metrics.watch_queue(lambda: executor.queue_depth)
        provider = make_provider(
            config.llm_provider,
            base_url=config.llm_base_url,
            api_key=config.llm_api_key,
            timeout_seconds=config.llm_timeout_seconds,
        )
        tokens = StreamTokens(config.effective_jwt_secret, config.stream_token_max_age_seconds)
        return cls(config, registry, logger, executor, provider, tokens, metrics)

    def shutdown(self) -> None:
        self.executor.shutdown()
        self.registry.close()
        self.provider.close()


def init_app(app: Flask, config: Config) -> Runtime:
    runtime = Runtime.create(config)
    runtime.registry.start_gc()
    app.extensions[EXTENSION_KEY] = runtime
    app.extensions["chatsvc.shutdown"] = runtime.shutdown
    return runtime


def current_runtime() -> Runtime:
    return current_app.extensions[EXTENSION_KEY]


__all__ = ["Runtime", "RunInfo", "current_runtime", "init_app"]

"""The app-wide container: run registry, logger, executor, LLM provider, stream tokens and grants, metrics.

It wires ``runs/`` (registry, executor), ``services/`` (LLM provider, JSONata
evaluators) and ``metrics`` together, so it sits above all of them; views reach it
with ``current_runtime()``. Created once in ``create_app`` (so in each gunicorn
worker, after the fork and after gevent patched threading) and kept in
``app.extensions``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, current_app

from chatsvc.config import Config
from chatsvc.metrics import Metrics, instrument
from chatsvc.runs.backends import create_registry
from chatsvc.runs.executor import RunExecutor, default_workers
from chatsvc.runs.logger import RunLogger
from chatsvc.runs.model import RunInfo
from chatsvc.runs.registry import RunRegistry
from chatsvc.security.grants import StreamGrants
from chatsvc.security.tokens import StreamTokens
from chatsvc.services.jsonata import pool as jsonata_pool
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
    stream_grants: StreamGrants
    _shutdown_guard: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _shut_down: bool = False

    @classmethod
    def create(cls, config: Config) -> "Runtime":
        registry = create_registry(config)
        metrics = Metrics(registry)
        logger = RunLogger(registry, on_event=metrics.event_appended)
        executor = RunExecutor(
            registry,
            logger,
            workers=config.executor_workers or default_workers(config.max_live_runs),
            max_queued=config.max_queued_runs,
            on_finished=metrics.run_finished,
        )
        metrics.watch_queue(lambda: executor.queue_depth)
        provider = make_provider(
            config.llm_provider,
            base_url=config.llm_base_url,
            api_key=config.llm_api_key,
            timeout_seconds=config.llm_timeout_seconds,
            max_reply_chars=config.llm_max_reply_chars,
        )
        tokens = StreamTokens(config.effective_jwt_secret, config.stream_token_max_age_seconds)
        stream_grants = StreamGrants(config.stream_access_cache_seconds)
        return cls(config, registry, logger, executor, provider, tokens, metrics, stream_grants)

    def shutdown(self, grace_seconds: float = 0.0) -> None:
        """Stop this process's part in runs: no new ones, ``grace_seconds`` for the live ones.

        Open streams of a shared registry close at once (``EventSource``
        reconnects to another process and resumes); then runs that did not
        finish in time end as failed ``ShuttingDown``, and the registry's
        threads and connections close. Idempotent; gunicorn's hooks call it on
        SIGTERM (see gunicorn_config.py) and tests at teardown.
        """
        with self._shutdown_guard:
            if self._shut_down:
                return
            self._shut_down = True
            self.registry.close_streams()
            self.executor.shutdown(grace_seconds)
            self.registry.close()
            self.provider.close()


def init_app(app: Flask, config: Config) -> Runtime:
    runtime = Runtime.create(config)
    runtime.registry.start_gc()
    # Evaluator processes of this server process; they exit with it (their stdin closes).
    jsonata_pool.configure(size=config.jsonata_workers, memory_mb=config.jsonata_memory_mb)
    app.extensions[EXTENSION_KEY] = runtime
    instrument(app, runtime.metrics)
    app.extensions["chatsvc.shutdown"] = runtime.shutdown
    return runtime


def current_runtime() -> Runtime:
    return current_app.extensions[EXTENSION_KEY]


__all__ = ["Runtime", "RunInfo", "current_runtime", "init_app"]

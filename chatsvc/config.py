"""One configuration object, read from ``CHATSVC_*`` environment variables.

Every setting has a sane default; README.md lists them all. Tests build a
``Config`` directly (``Config.from_env({...})`` or ``dataclasses.replace``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from chatsvc import envvars
from chatsvc.envvars import ConfigError, env_float, env_int

DEV_JWT_SECRET = "chatsvc-development-secret-do-not-use-in-production"

__all__ = ["Config", "ConfigError", "DEV_JWT_SECRET", "current_config"]


_MAY_BE_ZERO = {"stream_access_cache_seconds"}  # numeric settings where 0 means "off"


@dataclass(frozen=True)
class Config:
    env: str = "production"
    jwt_secret: str | None = None
    jwt_expires_seconds: int = 3600
    database_url: str | None = None  # None: SQLite file in the instance folder
    instance_path: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 100
    registry_url: str = envvars.DEFAULT_REGISTRY_URL
    redis_prefix: str = "chatsvc:"
    run_lease_seconds: float = 15.0
    redis_pool_size: int = 3
    run_ttl_seconds: float = 900.0
    run_timeout_seconds: float = 600.0
    sync_timeout_seconds: float = 30.0
    sse_heartbeat_seconds: float = 20.0
    stream_token_max_age_seconds: int = 3600
    stream_access_cache_seconds: float = 1.0  # 0: every stream open asks the database
    max_events_per_run: int = 10_000
    max_run_output_bytes: int = 8 * 1024 * 1024  # a workflow run's node outputs together
    max_live_runs: int = 5_000
    executor_workers: int | None = None  # None: every live run at once under gevent, else 32
    max_queued_runs: int = 1_000
    max_active_runs_per_caller: int = 10
    llm_provider: str = "stub"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_timeout_seconds: float = 60.0
    llm_max_reply_chars: int = 1_000_000  # llm.DEFAULT_MAX_REPLY_CHARS
    jsonata_timeout_ms: int = 500
    jsonata_workers: int = 4
    jsonata_memory_mb: int = 512
    default_page_size: int = 20
    max_page_size: int = 100

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Read every setting from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(
            env=env.get("CHATSVC_ENV", "production"),
            jwt_secret=env.get("CHATSVC_JWT_SECRET") or None,
            jwt_expires_seconds=env_int(env, "CHATSVC_JWT_EXPIRES_SECONDS", 3600),
            database_url=env.get("CHATSVC_DATABASE_URL") or None,
            instance_path=env.get("CHATSVC_INSTANCE_PATH") or None,
            max_body_bytes=env_int(env, "CHATSVC_MAX_BODY_BYTES", 1024 * 1024),
            max_json_depth=env_int(env, "CHATSVC_MAX_JSON_DEPTH", 100),
            registry_url=envvars.registry_url(env),
            redis_prefix=env.get("CHATSVC_REDIS_PREFIX", "chatsvc:"),
            run_lease_seconds=env_float(env, "CHATSVC_RUN_LEASE_SECONDS", 15.0),
            redis_pool_size=env_int(env, "CHATSVC_REDIS_POOL_SIZE", 3),
            run_ttl_seconds=env_float(env, "CHATSVC_RUN_TTL_SECONDS", 900.0),
            run_timeout_seconds=env_float(env, "CHATSVC_RUN_TIMEOUT_SECONDS", 600.0),
            sync_timeout_seconds=env_float(env, "CHATSVC_SYNC_TIMEOUT_SECONDS", 30.0),
            sse_heartbeat_seconds=env_float(env, "CHATSVC_SSE_HEARTBEAT_SECONDS", 20.0),
            stream_token_max_age_seconds=env_int(env, "CHATSVC_STREAM_TOKEN_MAX_AGE_SECONDS", 3600),
            stream_access_cache_seconds=env_float(env, "CHATSVC_STREAM_ACCESS_CACHE_SECONDS", 1.0),
            max_events_per_run=env_int(env, "CHATSVC_MAX_EVENTS_PER_RUN", 10_000),
            max_run_output_bytes=env_int(env, "CHATSVC_MAX_RUN_OUTPUT_BYTES", 8 * 1024 * 1024),
            max_live_runs=env_int(env, "CHATSVC_MAX_LIVE_RUNS", 5_000),
            executor_workers=env_int(env, "CHATSVC_EXECUTOR_WORKERS", 0) or None,
            max_queued_runs=env_int(env, "CHATSVC_MAX_QUEUED_RUNS", 1_000),
            max_active_runs_per_caller=env_int(env, "CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER", 10),
            llm_provider=env.get("CHATSVC_LLM_PROVIDER", "stub"),
            llm_base_url=env.get("CHATSVC_LLM_BASE_URL") or None,
            llm_api_key=env.get("CHATSVC_LLM_API_KEY") or None,
            llm_timeout_seconds=env_float(env, "CHATSVC_LLM_TIMEOUT_SECONDS", 60.0),
            llm_max_reply_chars=env_int(env, "CHATSVC_LLM_MAX_REPLY_CHARS", 1_000_000),
            jsonata_timeout_ms=env_int(env, "CHATSVC_JSONATA_TIMEOUT_MS", 500),
            jsonata_workers=env_int(env, "CHATSVC_JSONATA_WORKERS", 4),
            jsonata_memory_mb=env_int(env, "CHATSVC_JSONATA_MEMORY_MB", 512),
        )
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        """Raise ConfigError for a configuration that must not serve traffic."""
        if self.env not in ("production", "development"):
            raise ConfigError("CHATSVC_ENV must be 'production' or 'development'")
        if not self.jwt_secret and not self.is_development:
            raise ConfigError(
                "CHATSVC_JWT_SECRET is required outside development "
                "(set CHATSVC_ENV=development for a local demo)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if f.name in _MAY_BE_ZERO:
                if value < 0:
                    raise ConfigError(f"CHATSVC_{f.name.upper()} must not be negative")
            elif value <= 0:
                raise ConfigError(f"CHATSVC_{f.name.upper()} must be positive")
        if self.llm_provider not in ("stub", "openai"):
            raise ConfigError("CHATSVC_LLM_PROVIDER must be 'stub' or 'openai'")
        if self.llm_provider == "openai" and not self.llm_base_url:
            raise ConfigError("CHATSVC_LLM_BASE_URL is required with CHATSVC_LLM_PROVIDER=openai")
        if not (self.registry_url.startswith("memory://") or self.uses_redis):
            raise ConfigError("CHATSVC_REGISTRY_URL must be memory://, redis://... or rediss://...")
        if "{" in self.redis_prefix or "}" in self.redis_prefix:
            # Braces would change the Redis Cluster hash tag of every key.
            raise ConfigError("CHATSVC_REDIS_PREFIX must not contain { or }")

    @property
    def uses_redis(self) -> bool:
        """True when runs live in Redis (shared by every worker and host)."""
        return self.registry_url.startswith(("redis://", "rediss://"))

    @property
    def effective_jwt_secret(self) -> str:
        return self.jwt_secret or DEV_JWT_SECRET


def current_config() -> Config:
    """The running app's Config."""
    from flask import current_app

    return current_app.config["CHATSVC"]

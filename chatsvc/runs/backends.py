"""Chooses the run registry backend from ``CHATSVC_REGISTRY_URL`` (SPEC §10, §12)."""

from __future__ import annotations

from chatsvc.config import Config
from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.registry import RunRegistry


def create_registry(config: Config) -> RunRegistry:
    """``memory://`` → this process only; ``redis://`` / ``rediss://`` → shared by every process."""
    limits = dict(
        ttl_seconds=config.run_ttl_seconds,
        run_timeout_seconds=config.run_timeout_seconds,
        max_events_per_run=config.max_events_per_run,
        max_live_runs=config.max_live_runs,
        max_active_per_owner=config.max_active_runs_per_caller,
    )
    if config.uses_redis:
        from chatsvc.runs.redis import RedisRunRegistry  # memory deployments skip redis-py

        return RedisRunRegistry(config.registry_url, prefix=config.redis_prefix,
                                lease_seconds=config.run_lease_seconds,
                                pool_size=config.redis_pool_size, **limits)
    return MemoryRunRegistry(**limits)

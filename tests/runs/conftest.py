"""Fixtures of the run registry's tests: one per backend (memory, Redis), a clock to move by hand."""

from __future__ import annotations

import pytest

from chatsvc.runs.memory import MemoryRunRegistry
from chatsvc.runs.redis import RedisRunRegistry
from tests.helpers.redis_support import delete_prefix, redis_url, unique_prefix
from tests.helpers.runs import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_registry(backend: str, clock: FakeClock):
    """Builds registries of this test's backend; Redis ones share one key prefix (one "deployment").

    ``redis_options`` go to RedisRunRegistry only (e.g. ``pool_size``).
    """
    made = []
    url = redis_url() if backend == "redis" else None
    prefix = unique_prefix()

    def make(redis_options: dict | None = None, **options):
        options.setdefault("clock", clock)
        if backend == "memory":
            reg = MemoryRunRegistry(**options)
        else:
            reg = RedisRunRegistry(url, prefix=prefix, **options, **(redis_options or {}))
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close()
    if url is not None:
        delete_prefix(url, prefix)


@pytest.fixture
def registry(make_registry):
    return make_registry(ttl_seconds=60, run_timeout_seconds=30)


@pytest.fixture
def memory_registry(clock: FakeClock):
    """For white-box and time-travel tests of the memory backend."""
    reg = MemoryRunRegistry(ttl_seconds=60, run_timeout_seconds=30, clock=clock)
    yield reg
    reg.close()

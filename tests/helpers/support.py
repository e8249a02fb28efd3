"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
from functools import cache

import pytest

STRICT = os.environ.get("CHATSVC_TEST_STRICT") == "1"
TEST_JWT_SECRET = "test-secret-for-chatsvc-tests-only-0123456789"
PASSWORD = "correct horse battery"

# SPEC §4, "run expert / workflow": who may run a team's target (world fixture's callers).
RUN_PERMISSIONS = [
    ("platform_admin", 200),
    ("team_admin", 200),
    ("member", 200),
    ("outsider", 403),
    ("linked_service", 200),
    ("unlinked_service", 403),
]


def need(available: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) when a part the test needs is missing."""
    if available:
        return
    if STRICT:
        pytest.fail(f"CHATSVC_TEST_STRICT=1 and {reason}")
    pytest.skip(reason)


def postgres_url() -> str:
    """The test PostgreSQL: CHATSVC_TEST_DATABASE_URL, or under pytest-xdist a database of this
    worker's own beside it (``<name>_gw0`` ...), created on first use: tests drop and create
    every table, so two workers must never share one."""
    url = os.environ.get("CHATSVC_TEST_DATABASE_URL")
    need(bool(url), "PostgreSQL not configured (set CHATSVC_TEST_DATABASE_URL)")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return _worker_database(url, worker) if worker else url  # type: ignore[arg-type]


@cache
def _worker_database(url: str, worker: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{worker}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}) is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def auth_headers(user) -> dict[str, str]:
    """A real JWT for the user (needs an app context)."""
    from chatsvc.security.caller import issue_token

    return {"Authorization": f"Bearer {issue_token(user)}"}


def api_key_headers(service) -> dict[str, str]:
    """The service's real key (``make_service`` keeps it on ``plain_key``)."""
    return {"X-API-Key": service.plain_key}

"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os

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
    url = os.environ.get("CHATSVC_TEST_DATABASE_URL")
    need(bool(url), "PostgreSQL not configured (set CHATSVC_TEST_DATABASE_URL)")
    return url  # type: ignore[return-value]


def auth_headers(user) -> dict[str, str]:
    """A real JWT for the user (needs an app context)."""
    from chatsvc.security.caller import issue_token

    return {"Authorization": f"Bearer {issue_token(user)}"}


def api_key_headers(service) -> dict[str, str]:
    """The service's real key (``make_service`` keeps it on ``plain_key``)."""
    return {"X-API-Key": service.plain_key}

"""tests/api: every test runs twice, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from tests.helpers.support import postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chatsvc.db'}"
    return postgres_url()  # skips (or fails under CHATSVC_TEST_STRICT=1) if unset

"""Probes, and the configuration the app refuses to start with."""

from __future__ import annotations

import pytest

from chatsvc import create_app
from chatsvc.config import DEV_JWT_SECRET, Config, ConfigError


def test_healthz(client):
    rv = client.get("/healthz")
    assert rv.status_code == 200
    assert rv.get_json() == {"status": "ok"}


def test_readyz_checks_database_and_registry(client):
    rv = client.get("/readyz")
    assert rv.status_code == 200, rv.get_json()
    assert rv.get_json() == {"status": "ok", "checks": {"database": "ok", "registry": "ok"}}


def test_readyz_is_503_when_the_database_is_gone(make_config):
    """Readiness really asks the database: an unreachable one is a 503 envelope, not a 500."""
    app = create_app(make_config(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    try:
        rv = app.test_client().get("/readyz")
        assert rv.status_code == 503
        body = rv.get_json()
        assert body["code"] == 503 and "Database" in body["message"]
        assert rv.headers["Retry-After"]
    finally:
        app.extensions["chatsvc.shutdown"]()


def test_app_refuses_to_start_without_jwt_secret(make_config):
    with pytest.raises(ConfigError, match="CHATSVC_JWT_SECRET"):
        create_app(make_config(env="production", jwt_secret=None))


def test_from_env_without_secret_refuses_too(make_config):
    """The environment's default is production."""
    with pytest.raises(ConfigError, match="CHATSVC_JWT_SECRET"):
        create_app(Config.from_env({"CHATSVC_DATABASE_URL": make_config().database_url}))


def test_development_starts_without_jwt_secret(make_config):
    app = create_app(make_config(env="development", jwt_secret=None))
    try:
        assert app.config["JWT_SECRET_KEY"] == DEV_JWT_SECRET
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions["chatsvc.shutdown"]()


@pytest.mark.parametrize("name, value, error", [
    ("CHATSVC_RUN_TTL_SECONDS", "0", "CHATSVC_RUN_TTL_SECONDS must be positive"),
    ("CHATSVC_STREAM_ACCESS_CACHE_SECONDS", "-1", "CHATSVC_STREAM_ACCESS_CACHE_SECONDS must not be negative"),
    ("CHATSVC_STREAM_ACCESS_CACHE_SECONDS", "0", None),  # 0 turns the reuse off
])
def test_numeric_settings_are_checked(name, value, error):
    config = Config.from_env({"CHATSVC_JWT_SECRET": "x" * 32, name: value})
    if error is None:
        config.validate()
    else:
        with pytest.raises(ConfigError, match=error):
            config.validate()

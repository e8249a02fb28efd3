"""chatsvc: run Experts and Workflows and stream their logs to the Chat page."""

from __future__ import annotations

import logging
import os

from flask import Flask
from flask.sessions import SessionInterface
from flask_smorest import Api
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.routing import BaseConverter

from chatsvc import errors, runtime
from chatsvc.api import request_limits, security_schemes
from chatsvc.api.schemas import ErrorSchema
from chatsvc.config import Config, current_config  # noqa: F401  (re-exported)
from chatsvc.extensions import db, jwt


class ChatsvcApi(Api):
    """flask-smorest's Api, documenting errors with our envelope's schema."""

    ERROR_SCHEMA = ErrorSchema


class NoSessions(SessionInterface):
    """chatsvc is a token API: no cookie session to open (and sign) on every request."""

    def open_session(self, app: Flask, request) -> None:
        return self.make_null_session(app)

    def save_session(self, app: Flask, session, response) -> None:
        pass


class RunIdConverter(BaseConverter):
    """Run ids are opaque tokens without ``:`` or ``/``, so ``/runs/<id>:cancel`` routes cleanly."""

    regex = r"[A-Za-z0-9_-]{1,64}"

log = logging.getLogger(__name__)


def create_app(config: Config | None = None) -> Flask:
    """Build the app: config, extensions, blueprints, run registry and executor."""
    config = config or Config.from_env()
    config.validate()
    app = Flask(__name__, instance_path=config.instance_path or None)
    app.session_interface = NoSessions()
    if not config.jwt_secret:
        log.warning("CHATSVC_JWT_SECRET is not set: using the development secret")
    os.makedirs(app.instance_path, exist_ok=True)
    database_url = config.database_url or f"sqlite:///{os.path.join(app.instance_path, 'chatsvc.db')}"
    app.config.update(
        CHATSVC=config,
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        JWT_SECRET_KEY=config.effective_jwt_secret,
        JWT_ACCESS_TOKEN_EXPIRES=config.jwt_expires_seconds,
        JWT_TOKEN_LOCATION=["headers"],
        SECRET_KEY=config.effective_jwt_secret,
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        API_TITLE="chatsvc",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        # Swagger UI at /api/v1/docs, its files served by chatsvc itself (pages.py): no CDN.
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/api/v1/docs/assets/",
        API_SPEC_OPTIONS={"security": security_schemes.DEFAULT_SECURITY},
        JSON_SORT_KEYS=False,
    )
    db.init_app(app)
    jwt.init_app(app)
    app.url_map.converters["run_id"] = RunIdConverter
    request_limits.init_app(app, max_json_depth=config.max_json_depth, max_body_bytes=config.max_body_bytes)
    runtime.init_app(app, config)
    api = ChatsvcApi(app)
    security_schemes.declare(api)
    _register_blueprints(app, api)
    from chatsvc.security import caller

    caller.init_app(app)
    errors.init_app(app)  # after Api: our envelope replaces flask-smorest's handler
    return app


def _register_blueprints(app: Flask, api: Api) -> None:
    from chatsvc.api import auth, chat, experts, health, pages, service_accounts, streams, teams, users, workflows

    for module in (health, auth, users, teams, service_accounts, experts, workflows, chat, streams):
        api.register_blueprint(module.blp)
    app.register_blueprint(pages.bp)


@event.listens_for(Engine, "connect")
def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    """SQLite enforces foreign keys (and so ON DELETE CASCADE) only when asked to."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

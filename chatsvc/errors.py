"""The one JSON error envelope, and the exceptions that produce it.

Every error leaves the app as
``{"code": 403, "status": "Forbidden", "message": "...", "errors": {...}}``
(``errors`` only for validation): our own exceptions, werkzeug's HTTP errors
(404, 405, 413, malformed JSON...), marshmallow validation through
flask-smorest, authentication (``security/caller.py`` raises ``Unauthorized`` itself:
flask-jwt-extended's decorators and callbacks are not used), integrity errors (409), an
unreachable database (503 + Retry-After) and any unexpected exception (500,
logged, no details leaked).

The exception classes carry no Flask dependency, so services and the run
engine raise them too.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status; raise a subclass from anywhere."""

    code = 400

    def __init__(
        self,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.retry_after = retry_after


class BadRequest(ApiError):
    code = 400


class Unauthorized(ApiError):
    code = 401


class Forbidden(ApiError):
    code = 403


class NotFound(ApiError):
    code = 404


class Conflict(ApiError):
    code = 409


class UnsupportedMediaType(ApiError):
    code = 415


class Unprocessable(ApiError):
    code = 422


class TooManyRequests(ApiError):
    code = 429


class ServiceUnavailable(ApiError):
    code = 503


def error_response(
    code: int,
    message: str | None = None,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build the envelope; the only place that shapes an error body."""
    body: dict[str, Any] = {
        "code": code,
        "status": HTTP_STATUS_CODES.get(code, "Error"),
        "message": message or HTTP_STATUS_CODES.get(code, "Error"),
    }
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = code
    if code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="chatsvc"'
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _handle_api_error(error: ApiError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return error_response(error.code, error.message, error.errors, headers)


def _handle_http_exception(error: HTTPException) -> Response:
    # flask-smorest's abort() (webargs) stores message/errors/headers in `data`.
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    message = data.get("message") or error.description
    if error.code == 422 and errors and not data.get("message"):
        message = "Validation failed"
    if error.code == 400 and errors and not data.get("message"):
        message = "Malformed request body"
    if error.code == 413:
        message = "Request body too large"
    response = error_response(error.code or 500, message, errors, data.get("headers"))
    if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
    return response


def _handle_integrity_error(error: IntegrityError) -> Response:
    from chatsvc.extensions import db

    db.session.rollback()
    log.info("integrity error: %s", error.orig)
    return error_response(409, "Conflicts with an existing resource (a unique value is taken)")


DATABASE_RETRY_AFTER_SECONDS = 5


def _handle_database_unavailable(error: Exception) -> Response:
    """The database cannot be reached (or is not ready): 503, and the next request tries again."""
    from chatsvc.extensions import db

    try:
        db.session.remove()  # drop the broken transaction; the pool re-checks connections (pre-ping)
    except Exception:  # noqa: BLE001 - the session may be as broken as the connection
        pass
    log.warning("database unavailable: %s", type(getattr(error, "orig", None) or error).__name__)
    return error_response(503, "The database is unavailable; try again shortly",
                          headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


def _handle_unexpected(error: Exception) -> Response:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "Internal server error")


def init_app(app: Flask) -> None:
    """Register the envelope for every error source (after flask-smorest's Api)."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(IntegrityError, _handle_integrity_error)
    for database_down in (OperationalError, InterfaceError, PoolTimeout):
        app.register_error_handler(database_down, _handle_database_unavailable)
    app.register_error_handler(Exception, _handle_unexpected)

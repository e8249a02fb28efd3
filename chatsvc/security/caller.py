"""Who is calling: a user with a JWT or a service with an API key (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, request
from flask_jwt_extended import create_access_token, decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import ExpiredSignatureError, PyJWTError
from sqlalchemy import select

from chatsvc.errors import BadRequest, Unauthorized, error_response
from chatsvc.extensions import db, jwt
from chatsvc.models import Service, User, hash_api_key, is_possible_id

API_KEY_HEADER = "X-API-Key"
_CALLER_KEY = "chatsvc.caller"


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of one request."""

    kind: str  # "user" | "service"
    id: int
    is_platform_admin: bool = False
    team_roles: dict[int, str] = field(default_factory=dict)  # users: team id -> role
    service_team_id: int | None = None  # services: the team it belongs to

    @property
    def key(self) -> str:
        """Stable owner key for runs, e.g. ``user:3`` or ``service:7``."""
        return f"{self.kind}:{self.id}"

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    @property
    def is_service(self) -> bool:
        return self.kind == "service"

    def is_member_of(self, team_id: int) -> bool:
        return self.is_user and team_id in self.team_roles

    def is_admin_of(self, team_id: int) -> bool:
        return self.is_user and self.team_roles.get(team_id) == "admin"


def issue_token(user: User) -> str:
    return create_access_token(identity=str(user.id))


def user_caller(user: User) -> Caller:
    return Caller(
        kind="user",
        id=user.id,
        is_platform_admin=user.is_admin,
        team_roles={m.team_id: m.role for m in user.memberships},
    )


def _caller_from_jwt(header: str) -> Caller:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    try:
        claims = decode_token(token.strip())
    except ExpiredSignatureError:
        raise Unauthorized("Token has expired") from None
    except (PyJWTError, JWTExtendedException):
        raise Unauthorized("Invalid token") from None
    if claims.get("type") != "access":
        raise Unauthorized("Invalid token")
    try:
        user_id = int(claims["sub"])
    except (KeyError, TypeError, ValueError):
        raise Unauthorized("Invalid token") from None
    user = db.session.get(User, user_id) if is_possible_id(user_id) else None
    if user is None:
        raise Unauthorized("Unknown user")
    return user_caller(user)


def _caller_from_api_key(key: str) -> Caller:
    # Look up by hash (indexed); the constant-time compare guards the final match.
    service = db.session.scalar(select(Service).where(Service.api_key_hash == hash_api_key(key)))
    if service is None or not service.key_matches(key):
        raise Unauthorized("Invalid API key")
    if service.disabled:
        raise Unauthorized("Service is disabled")
    return Caller(kind="service", id=service.id, service_team_id=service.team_id)


def get_caller() -> Caller:
    """Authenticate the current request once and return its caller (cached on the request)."""
    # Cached in the WSGI environ, not on ``g``: ``g`` belongs to the app context,
    # which requests share when one is already pushed (tests, CLI code), so a
    # caller cached there would answer for the next request's credentials.
    cached = request.environ.get(_CALLER_KEY)
    if cached is not None:
        return cached
    auth_header = request.headers.get("Authorization")
    api_key = request.headers.get(API_KEY_HEADER)
    if auth_header and api_key:
        raise BadRequest(f"Send either Authorization or {API_KEY_HEADER}, not both")
    if auth_header:
        caller = _caller_from_jwt(auth_header)
    elif api_key:
        caller = _caller_from_api_key(api_key.strip())
    else:
        raise Unauthorized(f"Authentication required (Bearer token or {API_KEY_HEADER})")
    request.environ[_CALLER_KEY] = caller
    return caller


def has_credentials() -> bool:
    return bool(request.headers.get("Authorization") or request.headers.get(API_KEY_HEADER))


def init_app(app: Flask) -> None:
    """Route every flask-jwt-extended error callback into the common envelope."""

    def unauthorized(message: str):
        return error_response(401, message)

    jwt.unauthorized_loader(unauthorized)
    jwt.invalid_token_loader(unauthorized)
    jwt.expired_token_loader(lambda _header, _payload: unauthorized("Token has expired"))
    jwt.revoked_token_loader(lambda _header, _payload: unauthorized("Token has been revoked"))
    jwt.needs_fresh_token_loader(lambda _header, _payload: unauthorized("Fresh token required"))
    jwt.user_lookup_error_loader(lambda _header, _payload: unauthorized("Unknown user"))
    jwt.token_verification_failed_loader(
        lambda _header, _payload: unauthorized("Token verification failed")
    )


def authenticate() -> None:
    """``before_request`` hook: authenticate before body validation runs."""
    get_caller()

"""Who is calling: a user with a JWT or a service with an API key (SPEC §3)."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from flask import Flask, current_app, request
from flask_jwt_extended import create_access_token, decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import ExpiredSignatureError, PyJWTError
from sqlalchemy import bindparam, select

from chatsvc.errors import BadRequest, Unauthorized
from chatsvc.extensions import db
from chatsvc.models import Membership, Service, User, hash_api_key, is_possible_id
from chatsvc.security.tokens import StreamTokens, Verified

API_KEY_HEADER = "X-API-Key"
_CALLER_KEY = "chatsvc.caller"
_TOKENS_KEY = "chatsvc.verified_tokens"


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


_USER_ROLES = (
    select(User.__table__.c.is_admin, Membership.__table__.c.team_id, Membership.__table__.c.role)
    .select_from(User.__table__.outerjoin(Membership.__table__))
    .where(User.__table__.c.id == bindparam("user_id"))
)


def load_user_caller(user_id: int) -> Caller | None:
    """The caller for a user id, or None if there is no such user.

    One query for the user's flag and all its team roles: this runs on every
    request a person makes, so it reads plain rows rather than ORM objects.
    """
    if not is_possible_id(user_id):
        return None
    rows = db.session.connection().execute(_USER_ROLES, {"user_id": user_id}).all()
    if not rows:
        return None
    return Caller(
        kind="user",
        id=user_id,
        is_platform_admin=rows[0].is_admin,
        team_roles={row.team_id: row.role for row in rows if row.team_id is not None},
    )


class VerifiedTokens:
    """Access tokens this process has already verified (``tokens.Verified``): a request with a
    known token skips the signature check."""

    def __init__(self, size: int = 10_000) -> None:
        self._verified: Verified[int] = Verified(size)

    def user_id(self, token: str) -> int:
        """The token's user id; raises Unauthorized if it is invalid or expired."""
        user_id = self._verified.get(token, time.time())
        if user_id is None:
            user_id, expires_at = _verify(token)  # raises Unauthorized once the token expired
            self._verified.put(token, user_id, expires_at)
        return user_id


def _verify(token: str) -> tuple[int, float]:
    try:
        claims = decode_token(token)
    except ExpiredSignatureError:
        raise Unauthorized("Token has expired") from None
    except (PyJWTError, JWTExtendedException):
        raise Unauthorized("Invalid token") from None
    if claims.get("type") != "access":
        raise Unauthorized("Invalid token")
    try:
        return int(claims["sub"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        raise Unauthorized("Invalid token") from None


def _caller_from_jwt(header: str) -> Caller:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    user_id = current_app.extensions[_TOKENS_KEY].user_id(token.strip())
    caller = load_user_caller(user_id)
    if caller is None:
        raise Unauthorized("Unknown user")
    return caller


_services = Service.__table__.c
_SERVICE_BY_KEY = select(_services.id, _services.team_id, _services.api_key_hash, _services.disabled).where(
    _services.api_key_hash == bindparam("key_hash"))


def _caller_from_api_key(key: str) -> Caller:
    # Look up by hash (indexed); the constant-time compare guards the final match. A plain
    # row, not an ORM object: every request of a service starts here.
    key_hash = hash_api_key(key)
    service = db.session.connection().execute(_SERVICE_BY_KEY, {"key_hash": key_hash}).first()
    if service is None or not hmac.compare_digest(service.api_key_hash, key_hash):
        raise Unauthorized("Invalid API key")
    if service.disabled:
        raise Unauthorized("Service is disabled")
    return _service_caller(service.id, service.team_id)


def _service_caller(service_id: int, team_id: int) -> Caller:
    return Caller(kind="service", id=service_id, service_team_id=team_id)


_SERVICE_TEAM = select(Service.__table__.c.team_id).where(
    Service.__table__.c.id == bindparam("service_id"), Service.__table__.c.disabled.is_(False)
)


def caller_for_key(key: str) -> Caller | None:
    """The caller a stored key (``user:3``, ``service:7``) names *today*; None if it is gone or disabled.

    For credentials issued earlier (stream tokens): one indexed query, no ORM objects.
    """
    kind, _, raw_id = key.partition(":")
    try:
        ident = int(raw_id)
    except ValueError:
        return None
    if kind == "user":
        return load_user_caller(ident)
    if kind != "service" or not is_possible_id(ident):
        return None
    team_id = db.session.connection().execute(_SERVICE_TEAM, {"service_id": ident}).scalar()
    return None if team_id is None else _service_caller(ident, team_id)


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


def stream_token_caller_key(tokens: StreamTokens, token: str, run_id: str) -> str:
    """The key of the caller a stream token for ``run_id`` was issued to (``user:3``).

    401 if the token is not genuine, has expired or names another run. Whether that
    caller may still see the run is ``grants.run_for_stream_token``'s question.
    """
    caller_key = tokens.caller_key(token, run_id)
    if caller_key is None:
        raise Unauthorized("Invalid or expired stream token for this run")
    return caller_key


def init_app(app: Flask) -> None:
    """Give the app its verified-token cache.

    Tokens are issued by flask-jwt-extended (``issue_token``) and decoded with its
    ``decode_token`` here, in ``get_caller``, the one path from a request to a
    Caller: its ``jwt_required`` decorators and error callbacks are not used.
    """
    app.extensions[_TOKENS_KEY] = VerifiedTokens()


def authenticate() -> None:
    """``before_request`` hook: authenticate before body validation runs."""
    get_caller()

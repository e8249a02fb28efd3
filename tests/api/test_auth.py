"""SPEC §3: login, bearer tokens, API keys, and the 401/400 envelope for bad credentials."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import jwt as pyjwt
import pytest
from flask_jwt_extended import create_access_token, create_refresh_token

from tests.helpers.api import API, assert_error
from tests.helpers.support import PASSWORD, TEST_JWT_SECRET

LOGIN = f"{API}/auth/login"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("config_overrides", [{}, {"jwt_expires_seconds": 120}], ids=["default", "120s"])
def test_login_returns_a_working_bearer_token(client, world, config_overrides):
    admin = world.users["platform_admin"]
    rv = client.post(LOGIN, json={"email": admin.email, "password": PASSWORD})
    assert rv.status_code == 200, rv.get_json()
    body = rv.get_json()
    lifetime = config_overrides.get("jwt_expires_seconds", 3600)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == lifetime
    claims = pyjwt.decode(body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(admin.id) and claims["exp"] - claims["iat"] == lifetime
    assert client.get(f"{API}/users", headers=bearer(body["access_token"])).status_code == 200


def test_login_email_is_case_insensitive(client, world):
    email = world.users["member"].email
    rv = client.post(LOGIN, json={"email": f"  {email.upper()} ", "password": PASSWORD})
    assert rv.status_code == 200, rv.get_json()


def test_bad_login_is_401(client, world, subtests):
    member = world.users["member"].email
    cases = {
        "wrong password": (member, "wrong password"),
        "password in the wrong case": (member, PASSWORD.upper()),
        "unknown email": ("nobody@example.com", PASSWORD),
    }
    for name, (email, password) in cases.items():
        with subtests.test(name):
            body = assert_error(client.post(LOGIN, json={"email": email, "password": password}), 401)
            assert body["message"] == "Wrong email or password"  # the same whether or not the email exists


def test_login_ignores_stale_credentials(client, world):
    """Signing in is how one gets credentials: an expired token in the header must not block it."""
    member = world.users["member"]
    expired = create_access_token(identity=str(member.id), expires_delta=timedelta(seconds=-1))
    rv = client.post(LOGIN, json={"email": member.email, "password": PASSWORD}, headers=bearer(expired))
    assert rv.status_code == 200, rv.get_json()


def forged_token(user_id: int, **changes) -> str:
    """A well-formed access token signed with another secret (or altered as asked)."""
    now = int(time.time())
    claims = {"sub": str(user_id), "type": "access", "fresh": False, "iat": now, "nbf": now,
              "exp": now + 600, "jti": str(uuid.uuid4())}
    secret = changes.pop("secret", "an-attacker-secret-that-is-long-enough-0123456789")
    algorithm = changes.pop("algorithm", "HS256")
    claims.update(changes)
    return pyjwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm=algorithm)


def bad_authorization_headers(world) -> dict[str, str]:
    admin_id = world.users["platform_admin"].id
    good = world.headers["platform_admin"]["Authorization"].split(" ", 1)[1]
    header, payload, signature = good.split(".")
    return {
        "other scheme": f"Token {good}",
        "basic": "Basic dXNlcjpwYXNzd29yZA==",
        "bearer without token": "Bearer",
        "bearer with blank token": "Bearer    ",
        "token without scheme": good,
        "not a JWT": "Bearer abc",
        "three garbage segments": "Bearer abc.def.ghi",
        "forged signature": f"Bearer {forged_token(admin_id)}",
        "tampered signature": f"Bearer {header}.{payload}.{signature[::-1]}",
        "alg none": f"Bearer {pyjwt.encode({'sub': str(admin_id), 'type': 'access'}, None, algorithm='none')}",
        "expired": "Bearer " + create_access_token(identity=str(admin_id), expires_delta=timedelta(seconds=-1)),
        "expired, right secret by hand": "Bearer " + forged_token(admin_id, secret=TEST_JWT_SECRET,
                                                                  exp=int(time.time()) - 5),
        "refresh token": "Bearer " + create_refresh_token(identity=str(admin_id)),
        "no subject": "Bearer " + forged_token(admin_id, secret=TEST_JWT_SECRET, sub=None),
        "subject not a user id": "Bearer " + forged_token(admin_id, secret=TEST_JWT_SECRET, sub="admin"),
        "unknown user": "Bearer " + create_access_token(identity="987654"),
    }


def test_bad_bearer_tokens_are_401(client, world, subtests):
    for name, value in bad_authorization_headers(world).items():
        for path in (f"{API}/experts", f"{API}/users/{world.users['member'].id}"):
            with subtests.test(name, path=path):
                body = assert_error(client.get(path, headers={"Authorization": value}), 401)
                assert "errors" not in body


def test_expired_token_says_so(client, world):
    token = create_access_token(identity=str(world.users["member"].id), expires_delta=timedelta(seconds=-1))
    body = assert_error(client.get(f"{API}/experts", headers=bearer(token)), 401)
    assert "expired" in body["message"].lower()


def test_a_token_used_before_still_expires(client, world):
    """A token verified once is remembered by the process, but never past its expiry."""
    token = create_access_token(identity=str(world.users["member"].id), expires_delta=timedelta(seconds=1))
    assert client.get(f"{API}/experts", headers=bearer(token)).status_code == 200
    time.sleep(1.1)
    body = assert_error(client.get(f"{API}/experts", headers=bearer(token)), 401)
    assert "expired" in body["message"].lower()


def test_token_of_a_deleted_user_is_401(client, world):
    member = world.users["member"]
    headers = world.headers["member"]
    assert client.get(f"{API}/experts", headers=headers).status_code == 200
    rv = client.delete(f"{API}/users/{member.id}", headers=world.headers["platform_admin"])
    assert rv.status_code == 204
    assert_error(client.get(f"{API}/experts", headers=headers), 401)


def test_rights_follow_the_user_not_the_token(client, world):
    """A token names a user: a demoted platform admin loses the rights at once."""
    first = world.headers["platform_admin"]
    rv = client.post(f"{API}/users", json={"email": "second@example.com", "password": "long enough",
                                           "is_admin": True}, headers=first)
    assert rv.status_code == 201
    second = client.post(LOGIN, json={"email": "second@example.com", "password": "long enough"}).get_json()
    assert client.get(f"{API}/users", headers=first).status_code == 200
    rv = client.patch(f"{API}/users/{world.users['platform_admin'].id}", json={"is_admin": False},
                      headers=bearer(second["access_token"]))
    assert rv.status_code == 200 and rv.get_json()["is_admin"] is False
    assert_error(client.get(f"{API}/users", headers=first), 403)


def test_bad_api_keys_are_401(client, world, subtests):
    admin = world.headers["platform_admin"]
    rotated = world.services["unlinked_service"]
    old_key = rotated.plain_key
    assert client.post(f"{API}/services/{rotated.id}/rotate-key", headers=admin).status_code == 200
    disabled = world.services["linked_service"]
    assert client.patch(f"{API}/services/{disabled.id}", json={"disabled": True}, headers=admin).status_code == 200
    keys = {
        "unknown": "csk_" + "x" * 43,
        "garbage": "not a key at all",
        "rotated": old_key,
        "disabled": disabled.plain_key,
        "prefix only": disabled.plain_key[:8],
    }
    for name, key in keys.items():
        with subtests.test(name):
            body = assert_error(client.get(f"{API}/experts", headers={"X-API-Key": key}), 401)
            assert "errors" not in body
            assert old_key not in body["message"]


def test_no_credentials_is_401(client, world):
    body = assert_error(client.get(f"{API}/experts"), 401)
    assert "X-API-Key" in body["message"] or "Bearer" in body["message"]
    assert_error(client.get(f"{API}/experts", headers={"Authorization": "", "X-API-Key": ""}), 401)


def test_both_credentials_at_once_are_400(client, world, subtests):
    for user, service in (("platform_admin", "linked_service"), ("member", "unlinked_service")):
        with subtests.test(user=user, service=service):
            headers = {**world.headers[user], **world.headers[service]}
            body = assert_error(client.get(f"{API}/experts/{world.expert.id}", headers=headers), 400)
            assert "X-API-Key" in body["message"]
    # even when one of them is bad: the request is ambiguous before it is unauthorized
    assert_error(client.get(f"{API}/experts", headers={"Authorization": "Bearer abc", "X-API-Key": "x"}), 400)


def test_secrets_never_appear_in_responses(client, world, subtests):
    """A tour of every endpoint that returns users or services: no hash, no password, no stored key."""
    from sqlalchemy import select

    from chatsvc.extensions import db
    from chatsvc.models import Service, User

    admin = world.headers["platform_admin"]
    responses = []

    def call(method, path, **kwargs):
        rv = client.open(API + path, method=method, headers=kwargs.pop("headers", admin), **kwargs)
        responses.append((f"{method} {path}", rv.get_data(as_text=True)))
        return rv

    new_user = call("POST", "/users", json={"email": "tour@example.com", "password": "tour password"}).get_json()
    call("GET", "/users")
    call("GET", f"/users/{new_user['id']}")
    call("PATCH", f"/users/{new_user['id']}", json={"password": "another password"})
    call("POST", "/auth/login", json={"email": "tour@example.com", "password": "another password"}, headers={})
    call("POST", "/auth/login", json={"email": "tour@example.com", "password": "wrong password"}, headers={})
    service = call("POST", "/services", json={"team_id": world.team.id, "name": "tour"}).get_json()
    issued = [service["api_key"]]
    call("GET", "/services")
    call("GET", f"/services/{service['id']}")
    call("PATCH", f"/services/{service['id']}", json={"disabled": True})
    issued.append(call("POST", f"/services/{service['id']}/rotate-key").get_json()["api_key"])
    call("PUT", f"/experts/{world.expert.id}/services/{service['id']}")
    call("GET", f"/experts/{world.expert.id}/services")
    call("GET", f"/teams/{world.team.id}/members")
    call("GET", f"/experts/{world.expert.id}", headers=world.headers["linked_service"])
    call("GET", f"/teams/{world.team.id}", headers=world.headers["linked_service"])

    db.session.expire_all()
    secrets = {"password_hash", "api_key_hash", "tour password", "another password", PASSWORD}
    secrets |= set(db.session.scalars(select(User.password_hash)))
    secrets |= set(db.session.scalars(select(Service.api_key_hash)))
    secrets |= {s.plain_key for s in world.services.values()}  # keys issued outside these responses
    for where, text in responses:
        with subtests.test(where):
            leaked = [secret for secret in secrets if secret in text]
            assert not leaked, leaked
    # each issued key appears exactly in the one response that issued it
    for key in issued:
        assert sum(key in text for _, text in responses) == 1

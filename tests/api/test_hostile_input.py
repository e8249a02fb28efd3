"""Inputs an attacker inside a team would try: never a 500, always the envelope (issue: hostile input)."""

from __future__ import annotations

import os
import re
import socket

import httpx
import pytest

from chatsvc.models import MAX_ID
from tests.helpers.api import API, assert_error, db_state, field_errors
from tests.helpers.live_server import LiveServer
from tests.helpers.support import PASSWORD

DEEP = 10_000


def deep_json(levels: int, kind: str) -> str:
    return ('{"a":' * levels + "1" + "}" * levels) if kind == "object" else ("[" * levels + "]" * levels)


def routes(app, methods: set[str]):
    """(rule, method) for every API route taking one of `methods`, with its path placeholders."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API):
            continue
        for method in sorted((rule.methods or set()) & methods):
            yield rule, method


def concrete(rule, value: str) -> str:
    """The rule's path with every placeholder filled: ids with `value`, run ids with a fake one."""
    path = re.sub(r"<int:[^>]+>", value, rule.rule)
    return re.sub(r"<run_id:[^>]+>", "no-such-run", path)


def assert_refused_on_every_json_endpoint(app, client, world, subtests, body: str, contains: str,
                                          status: int = 422) -> None:
    admin = world.headers["platform_admin"]
    for rule, method in routes(app, {"POST", "PATCH", "PUT"}):
        path = concrete(rule, str(world.team.id))
        with subtests.test(route=f"{method} {rule.rule}"):
            rv = client.open(path, method=method, data=body, content_type="application/json", headers=admin)
            assert_error(rv, status, contains=contains)


@pytest.mark.parametrize("kind", ["object", "array"])
def test_deeply_nested_json_is_422_on_every_json_endpoint(app, client, world, kind, subtests):
    body = deep_json(DEEP, kind)
    assert_refused_on_every_json_endpoint(app, client, world, subtests, body, "nested deeper")
    with subtests.test(route="login, without auth"):
        rv = client.post(f"{API}/auth/login", data=body, content_type="application/json")
        assert_error(rv, 422, contains="nested deeper")


@pytest.mark.parametrize("config_overrides", [{"max_json_depth": 5}])
def test_the_depth_limit_is_a_setting_and_bodies_within_it_pass(client, world, config_overrides):
    admin = world.headers["platform_admin"]
    ok = {"team_id": world.team.id, "name": "Within", "prompt_template": "x", "model_name": "stub",
          "base": {"a": {"b": {"c": 1}}}}  # depth 4
    assert client.post(f"{API}/experts", json=ok, headers=admin).status_code == 201
    too_deep = {**ok, "name": "Beyond", "base": {"a": {"b": {"c": {"d": {"e": 1}}}}}}  # depth 6
    assert_error(client.post(f"{API}/experts", json=too_deep, headers=admin), 422, contains="5 levels")


@pytest.mark.parametrize("body", ['{"name": "\\ud800"}', '{"\\udc00": 1}', '{"a": ["x\\uDBFF"]}'],
                         ids=["value", "key", "uppercase escape"])
def test_lone_surrogates_are_422_on_every_json_endpoint(app, client, world, body, subtests):
    assert_refused_on_every_json_endpoint(app, client, world, subtests, body, "lone surrogate")


@pytest.mark.parametrize("body, field", [('{"name": "a\\u0000"}', {"name": ["must not contain"]}),
                                         ('{"base": {"k\\u0000": 1}}', {"base": {"k\x00": ["must not contain"]}}),
                                         ('{"nodes": [{"key": "x"}, {"key": "\\u0000"}]}',
                                          {"nodes": {"1": {"key": ["must not contain"]}}})],
                         ids=["value", "key", "in a list"])
def test_nul_is_422_naming_the_field_on_every_json_endpoint(app, client, world, body, field, subtests):
    """PostgreSQL's text columns reject NUL (a 500 before): one check refuses it everywhere."""
    admin = world.headers["platform_admin"]
    for rule, method in routes(app, {"POST", "PATCH", "PUT"}):
        path = concrete(rule, str(world.team.id))
        with subtests.test(route=f"{method} {rule.rule}"):
            rv = client.open(path, method=method, data=body, content_type="application/json", headers=admin)
            if rule.rule == f"{API}/auth/login":
                assert_error(rv, 401, contains="Wrong email or password")
                continue
            errors = field_errors(assert_error(rv, 422, contains="NUL character"))

            def messages_match(got, want) -> bool:
                if isinstance(want, list):
                    return isinstance(got, list) and want[0] in got[0]
                return set(got) == set(want) and all(messages_match(got[k], want[k]) for k in want)

            assert messages_match(errors, field), errors


def test_a_sign_in_with_nul_is_the_usual_401_and_creates_nothing(client, world, ctx):
    before = db_state()
    for body in ({"email": "a\u0000@x.io", "password": "xxxxxxxxx"},
                 {"email": world.users["member"].email, "password": PASSWORD + "\u0000"}):
        rv = client.post(f"{API}/auth/login", json=body)
        assert_error(rv, 401, contains="Wrong email or password")
    assert db_state() == before


def test_nul_in_resource_updates_changes_nothing(client, world, ctx):
    admin = world.headers["platform_admin"]
    before = db_state()
    for path, body in [(f"{API}/experts/{world.expert.id}", {"prompt_template": "x\u0000"}),
                       (f"{API}/experts/{world.expert.id}", {"base": {"a": ["ok", "\u0000"]}}),
                       (f"{API}/workflows/{world.workflow.id}", {"description": "\u0000"}),
                       (f"{API}/teams/{world.team.id}", {"name": "\u0000"}),
                       (f"{API}/services/{world.services['linked_service'].id}", {"name": "n\u0000"})]:
        rv = client.patch(path, json=body, headers=admin)
        assert_error(rv, 422, contains="NUL character")
    assert db_state() == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_on_every_json_endpoint(app, client, world, constant, subtests):
    # Python's parser accepts them; a response carrying them back would not be JSON.
    assert_refused_on_every_json_endpoint(app, client, world, subtests, '{"name": %s}' % constant,
                                          f"{constant.lstrip('-')} is not JSON", status=400)


@pytest.mark.parametrize("number, reason", [("1e400", "does not fit a 64-bit float"),
                                            ("-" + "9" * 5000, "integer longer than")], ids=["float", "integer"])
def test_numbers_out_of_range_are_422_on_every_json_endpoint(app, client, world, number, reason, subtests):
    assert_refused_on_every_json_endpoint(app, client, world, subtests, '{"a": [%s]}' % number, reason)


@pytest.mark.parametrize("body", [b'{"name": "\xff\xfe"}', b'{"a": 1} trailing', b'{"a": 1,}'],
                         ids=["not UTF-8", "trailing text", "trailing comma"])
def test_malformed_bodies_are_the_usual_400(client, world, body):
    rv = client.post(f"{API}/experts", data=body, content_type="application/json",
                     headers=world.headers["platform_admin"])
    assert_error(rv, 400, contains="Malformed request body")
    assert rv.get_json()["errors"] == {"json": ["Invalid JSON body."]}


def test_large_but_representable_numbers_pass(client, world):
    body = ('{"team_id": %d, "name": "Big", "prompt_template": "x", "model_name": "stub",'
            ' "base": {"f": 1.7e308, "tiny": 5e-324, "i": %s, "z": -0.0}}' % (world.team.id, "9" * 4000))
    rv = client.post(f"{API}/experts", data=body, content_type="application/json",
                     headers=world.headers["platform_admin"])
    assert rv.status_code == 201, rv.get_json()
    base = rv.get_json()["base"]
    # JSON has one number type: PostgreSQL's jsonb gives 1.7e308 back as its digits (an int here).
    assert float(base.pop("f")) == 1.7e308
    assert base == {"tiny": 5e-324, "i": int("9" * 4000), "z": 0.0}


def test_characters_beyond_the_bmp_written_as_escaped_pairs_are_accepted(client, world):
    body = ('{"team_id": %d, "name": "Trip \\ud83d\\ude00", "prompt_template": "x", "model_name": "stub"}'
            % world.team.id)
    rv = client.post(f"{API}/experts", data=body, content_type="application/json",
                     headers=world.headers["platform_admin"])
    assert rv.status_code == 201, rv.get_json()
    assert rv.get_json()["name"] == "Trip \U0001F600"


@pytest.mark.parametrize("value", [str(MAX_ID + 1), str(2**63), str(2**64 + 7), "0"])
def test_ids_out_of_range_are_404_on_every_route(app, client, world, value, subtests):
    admin = world.headers["platform_admin"]
    methods = {"GET", "POST", "PATCH", "PUT", "DELETE"}
    for rule, method in routes(app, methods):
        if "<int:" not in rule.rule:
            continue
        with subtests.test(route=f"{method} {rule.rule}"):
            rv = client.open(concrete(rule, value), method=method, json={}, headers=admin)
            assert_error(rv, 404)


def test_the_last_platform_admin_cannot_be_demoted_or_deleted(client, world):
    admin = world.users["platform_admin"]
    headers = world.headers["platform_admin"]
    for rv in (client.patch(f"{API}/users/{admin.id}", json={"is_admin": False}, headers=headers),
               client.delete(f"{API}/users/{admin.id}", headers=headers)):
        assert_error(rv, 409, contains="last platform admin")
    assert client.get(f"{API}/users/{admin.id}", headers=headers).get_json()["is_admin"] is True
    # With a second platform admin, the first may step down.
    rv = client.post(f"{API}/users", json={"email": "second@example.com", "password": PASSWORD, "is_admin": True},
                     headers=headers)
    assert rv.status_code == 201
    rv = client.patch(f"{API}/users/{admin.id}", json={"is_admin": False}, headers=headers)
    assert rv.status_code == 200 and rv.get_json()["is_admin"] is False


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def sqlite_dir(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    return folder


def test_database_unreachable_is_503_with_retry_after_and_recovers(make_config, sqlite_dir, subtests):
    from chatsvc import create_app
    from chatsvc.extensions import db
    from tests.helpers.support import auth_headers

    app = create_app(make_config(database_url=f"sqlite:///{sqlite_dir / 'chatsvc.db'}"))
    with app.app_context():
        db.create_all()
        from chatsvc import accounts

        user = accounts.create_user("admin@example.com", PASSWORD, is_admin=True)
        headers = auth_headers(user)
    client = app.test_client()
    assert client.get(f"{API}/experts", headers=headers).status_code == 200

    moved = sqlite_dir.with_name("away")
    os.rename(sqlite_dir, moved)  # the database file is gone: every connection fails
    try:
        with app.app_context():
            db.engine.dispose()  # pooled connections would still reach the moved file
        for method, path, body in [("POST", f"{API}/auth/login", {"email": "admin@example.com", "password": PASSWORD}),
                                   ("GET", f"{API}/experts", None), ("GET", f"{API}/teams", None),
                                   ("POST", f"{API}/chat/experts:run", {"expert_id": 1}),
                                   ("POST", f"{API}/chat/workflows:run", {"workflow_id": 1})]:
            with subtests.test(route=f"{method} {path}"):
                rv = client.open(path, method=method, json=body,
                                 headers=None if path.endswith("login") else headers)
                assert_error(rv, 503, contains="database")
                assert rv.headers["Retry-After"] == "5"
    finally:
        os.rename(moved, sqlite_dir)
    assert client.get(f"{API}/experts", headers=headers).status_code == 200  # back without a restart


def test_a_postgresql_server_that_does_not_answer_is_503(make_config):
    from chatsvc import create_app

    app = create_app(make_config(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/test"))
    rv = app.test_client().post(f"{API}/auth/login", json={"email": "a@example.com", "password": PASSWORD})
    assert_error(rv, 503)
    assert rv.headers["Retry-After"]


@pytest.mark.server
def test_chunked_bodies_over_the_limit_are_413_never_cut(tmp_path):
    with LiveServer(tmp_path, env={"CHATSVC_MAX_BODY_BYTES": "2000"}) as server:
        seed = server.seed()
        login = {"email": seed["admin_email"], "password": seed["admin_password"]}

        def chunked(payload: bytes):
            return (payload[i:i + 100] for i in range(0, len(payload), 100))

        rv = httpx.post(server.url + f"{API}/auth/login", content=chunked(httpx.Request(
            "POST", "/", json=login).content), headers={"Content-Type": "application/json"})
        assert rv.status_code == 200, rv.text  # a chunked body within the limit is read whole
        token = rv.json()["access_token"]
        # Valid JSON up to the limit, more after it: acting on the first 2,000 bytes would start a run.
        body = b'{"workflow_id": %d, "mode": "async"}' % seed["workflow_id"]
        padded = body + b" " * 3000
        rv = httpx.post(server.url + f"{API}/chat/workflows:run", content=chunked(padded),
                        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert rv.status_code == 413, rv.text
        assert rv.json()["code"] == 413
        runs = httpx.get(server.url + f"{API}/chat/runs", headers={"Authorization": f"Bearer {token}"}).json()
        assert runs == []

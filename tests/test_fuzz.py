"""A bounded schemathesis run against the app's own OpenAPI document (issue: hostile input §4).

Every operation, with generated valid and invalid data, as a platform admin (JWT) and as
a service (API key): no 5xx, no response that contradicts the document, every error the
JSON envelope. Fixed seed (derandomized) and a few examples per operation, so it is
repeatable and takes well under a minute per deployment. It runs against both
deployments: the embedded one (SQLite, memory registry) and the production one
(PostgreSQL, Redis registry): SQLite accepts text PostgreSQL refuses (NUL), so a fuzz on
SQLite alone missed a 500 on every text field.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from chatsvc import accounts, create_app
from chatsvc.extensions import db
from tests.helpers.redis_support import delete_prefix, redis_url
from tests.helpers.support import PASSWORD, auth_headers

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module", params=["sqlite+memory", "postgresql+redis"])
def fuzz_target(request, tmp_path_factory, make_config_module):
    """The app, seeded, and the two callers the fuzzer acts as."""
    app = create_app(make_config_module(tmp_path_factory.mktemp("fuzz"), request.param))
    with app.app_context():
        if request.param.startswith("postgresql"):
            db.drop_all()
        db.create_all()
        # The fuzzer's admin is the only platform admin, so it cannot demote or delete
        # itself (409); what it creates and deletes otherwise is this throwaway database's.
        admin = accounts.create_user("fuzz-admin@example.com", PASSWORD, is_admin=True)
        team = accounts.create_team("Fuzz team", admin_user_id=admin.id)
        service, key = accounts.create_service(team.id, "fuzz-service")
        callers = {"admin": auth_headers(admin), "service": {"X-API-Key": key}}
        admin_id = admin.id
    yield app, callers, admin_id
    app.extensions["chatsvc.shutdown"]()
    with app.app_context():
        db.session.remove()
        if request.param.startswith("postgresql"):
            db.drop_all()
        db.engine.dispose()
    if request.param.endswith("redis"):
        delete_prefix(redis_url(), app.extensions["chatsvc.runtime"].config.redis_prefix)


@pytest.fixture(scope="module")
def make_config_module():
    from chatsvc.config import Config
    from tests.helpers.redis_support import redis_url, unique_prefix
    from tests.helpers.support import TEST_JWT_SECRET, postgres_url

    def factory(folder, deployment: str):
        production = dict(database_url=postgres_url(), registry_url=redis_url(), redis_prefix=unique_prefix())
        embedded = dict(database_url=f"sqlite:///{folder / 'fuzz.db'}")
        return Config.from_env({}, env="production", jwt_secret=TEST_JWT_SECRET,
                               **(production if deployment.startswith("postgresql") else embedded),
                               instance_path=str(folder / "instance"),
                               sync_timeout_seconds=1.0, sse_heartbeat_seconds=1.0)

    return factory


def error_is_the_envelope(ctx, response, case) -> None:
    """Every 4xx/5xx is the JSON envelope, never HTML or plain text."""
    if response.status_code < 400:
        return
    headers = {name.lower(): value for name, value in response.headers.items()}
    content_type = headers.get("content-type") or [""]
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), response.text
    body = response.json()
    assert body["code"] == response.status_code and body["status"] and body["message"], body


CHECKS = [not_a_server_error, response_schema_conformance, error_is_the_envelope]


def with_nul(case):
    """The case with a NUL added to the first string of its body (a key or a value):
    text PostgreSQL refuses, which the generator alone seldom produces."""

    def poison(value):
        if isinstance(value, str):
            return value + "\x00", True
        if isinstance(value, dict):
            for key, item in value.items():
                changed, done = poison(item)
                if done:
                    return {**value, key: changed}, True
            if value:
                first = next(iter(value))
                return {first + "\x00" if k == first else k: v for k, v in value.items()}, True
        if isinstance(value, list):
            for index, item in enumerate(value):
                changed, done = poison(item)
                if done:
                    return [*value[:index], changed, *value[index + 1:]], True
        return value, False

    if isinstance(case.body, (dict, list)):
        case.body = poison(case.body)[0]
    return case


def fuzz(fuzz_target, caller: str, subtests) -> None:
    """Every operation of the document, valid and invalid data, as `caller`."""
    app, callers, admin_id = fuzz_target
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30  # the whole API, not an empty document
    for operation in operations:
        positive = operation.as_strategy(GenerationMode.POSITIVE)
        strategy = positive | operation.as_strategy(GenerationMode.NEGATIVE) | positive.map(with_nul)

        @given(case=strategy)
        @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            if (case.path_parameters or {}).get("user_id") == admin_id and case.method in ("PATCH", "DELETE"):
                return  # never act on the fuzzer's own admin (it would only get 409 anyway)
            case.call_and_validate(headers=callers[caller], checks=CHECKS)

        with subtests.test(operation=operation.label):
            run()


@pytest.mark.timeout(600)
def test_fuzz_as_a_platform_admin(fuzz_target, subtests):
    fuzz(fuzz_target, "admin", subtests)


@pytest.mark.timeout(600)
def test_fuzz_as_a_service(fuzz_target, subtests):
    fuzz(fuzz_target, "service", subtests)

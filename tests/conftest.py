"""Shared fixtures: a fresh app and database per test, factories, real credentials.

Tests that need PostgreSQL, Redis or Chromium skip with a reason when the part
is absent, and fail instead when ``CHATSVC_TEST_STRICT=1`` (as in CI).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

from chatsvc import create_app, migrations
from chatsvc.config import Config
from chatsvc.extensions import db
from chatsvc.models import (
    Edge,
    Expert,
    ExpertService,
    Membership,
    Node,
    Service,
    Team,
    User,
    Workflow,
    WorkflowService,
)
from tests.helpers.support import PASSWORD, TEST_JWT_SECRET, api_key_headers, auth_headers


@cache
def password_hash(password: str) -> str:
    """scrypt costs ~70 ms: hash each test password once per session (login still checks it)."""
    return generate_password_hash(password)


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite by default; tests/api overrides this to run on PostgreSQL as well."""
    return f"sqlite:///{tmp_path / 'chatsvc.db'}"


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a module to change settings for its apps."""
    return {}


@pytest.fixture
def make_config(tmp_path, database_url) -> Callable[..., Config]:
    def factory(**overrides: Any) -> Config:
        values: dict[str, Any] = dict(
            env="production",
            jwt_secret=TEST_JWT_SECRET,
            database_url=database_url,
            instance_path=str(tmp_path / "instance"),
            sse_heartbeat_seconds=1.0,
            sync_timeout_seconds=10.0,
        )
        values.update(overrides)
        return Config.from_env({}, **values)

    return factory


@pytest.fixture
def app(make_config, config_overrides) -> Iterator:
    app = create_app(make_config(**config_overrides))
    with app.app_context():
        if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
            db.drop_all()
        migrations.create_current(db.engine)
    yield app
    shutdown = app.extensions.get("chatsvc.shutdown")
    if shutdown:
        shutdown()
    with app.app_context():
        db.session.remove()
        if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
            db.drop_all()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ctx(app) -> Iterator:
    """An app context for factories and direct model access."""
    with app.app_context():
        yield


_counter = itertools.count(1)


@pytest.fixture
def make_user(ctx) -> Callable[..., User]:
    def factory(email: str | None = None, *, is_admin: bool = False, password: str = PASSWORD) -> User:
        user = User(email=email or f"user{next(_counter)}@example.com", is_admin=is_admin)
        user.password_hash = password_hash(password)
        db.session.add(user)
        db.session.commit()
        return user

    return factory


@pytest.fixture
def make_team(ctx) -> Callable[..., Team]:
    def factory(name: str | None = None, *, admins: tuple = (), members: tuple = ()) -> Team:
        team = Team(name=name or f"team-{next(_counter)}")
        for user in admins:
            team.memberships.append(Membership(user=user, role="admin"))
        for user in members:
            team.memberships.append(Membership(user=user, role="member"))
        db.session.add(team)
        db.session.commit()
        return team

    return factory


@pytest.fixture
def make_service(ctx) -> Callable[..., Service]:
    """A service with its clear key kept on the object as ``plain_key`` (tests only)."""

    def factory(team: Team, name: str | None = None, *, experts: tuple = (), workflows: tuple = ()) -> Service:
        service = Service(team_id=team.id, name=name or f"svc-{next(_counter)}")
        key = service.issue_key()
        db.session.add(service)
        db.session.flush()
        for expert in experts:
            db.session.add(ExpertService(expert_id=expert.id, service_id=service.id))
        for workflow in workflows:
            db.session.add(WorkflowService(workflow_id=workflow.id, service_id=service.id))
        db.session.commit()
        service.plain_key = key
        return service

    return factory


@pytest.fixture
def make_expert(ctx) -> Callable[..., Expert]:
    def factory(team: Team, **fields: Any) -> Expert:
        fields.setdefault("name", f"expert-{next(_counter)}")
        fields.setdefault("prompt_template", "Hello {{ input.name }}")
        expert = Expert(team_id=team.id, **fields)
        db.session.add(expert)
        db.session.commit()
        return expert

    return factory


@pytest.fixture
def make_workflow(ctx) -> Callable[..., Workflow]:
    """``nodes`` as ``(key, node_type, metadata)``, ``edges`` as ``(source, target)`` keys."""

    def factory(team: Team, nodes=(("a", "input", {}),), edges=(), **fields: Any) -> Workflow:
        fields.setdefault("name", f"workflow-{next(_counter)}")
        workflow = Workflow(team_id=team.id, **fields)
        db.session.add(workflow)
        by_key = {}
        for key, node_type, meta in nodes:
            by_key[key] = Node(key=key, node_type=node_type, meta=meta)
            workflow.nodes.append(by_key[key])
        db.session.flush()
        for source, target in edges:
            workflow.edges.append(Edge(source=by_key[source], target=by_key[target]))
        db.session.commit()
        return workflow

    return factory


@dataclass
class World:
    """One team with one of each kind of caller, an expert and a workflow."""

    team: Team
    other_team: Team
    expert: Expert
    workflow: Workflow
    users: dict[str, User]
    services: dict[str, Service]
    headers: dict[str, dict[str, str]]


@pytest.fixture
def world(make_user, make_team, make_service, make_expert, make_workflow) -> World:
    users = {
        "platform_admin": make_user(is_admin=True),
        "team_admin": make_user(),
        "member": make_user(),
        "outsider": make_user(),
    }
    team = make_team(admins=(users["team_admin"],), members=(users["member"],))
    other_team = make_team(admins=(users["outsider"],))
    expert = make_expert(team)
    workflow = make_workflow(team)
    services = {
        "linked_service": make_service(team, experts=(expert,), workflows=(workflow,)),
        "unlinked_service": make_service(team),
    }
    headers = {name: auth_headers(user) for name, user in users.items()}
    headers.update({name: api_key_headers(service) for name, service in services.items()})
    return World(team, other_team, expert, workflow, users, services, headers)


@pytest.fixture
def runner(make_config, monkeypatch) -> CliRunner:
    """Click runner whose commands build their app from the test's config."""
    config = make_config()
    monkeypatch.setenv("CHATSVC_JWT_SECRET", config.jwt_secret)
    monkeypatch.setenv("CHATSVC_DATABASE_URL", config.database_url)
    monkeypatch.setenv("CHATSVC_INSTANCE_PATH", config.instance_path)
    monkeypatch.delenv("CHATSVC_ENV", raising=False)
    return CliRunner()


@pytest.fixture
def threaded_server(app):
    """The test app served by werkzeug's threaded server in a background thread (each request on an OS thread)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="threaded-wsgi", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)

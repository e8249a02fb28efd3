"""SPEC §4 for the resource API: who may read, list, change and create what.

Each test is parametrized over the six kinds of caller; the rows of its table run
as subtests against one database (creating the schema per test is what costs, so
a caller's whole row of the table shares one).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import pytest

from tests.helpers.api import API, assert_error, db_state

CALLERS = ["platform_admin", "team_admin", "member", "outsider", "linked_service", "unlinked_service"]
ANY_CALLER = pytest.mark.parametrize("caller", CALLERS)


# --- reading ------------------------------------------------------------------

READERS = {"platform_admin", "team_admin", "member", "linked_service"}

# Which items each caller sees in a list: `linked` and `unlinked` belong to the world's
# team (only `linked` is linked to linked_service), `foreign` to the outsider's team.
VISIBLE = {
    "platform_admin": {"linked", "unlinked", "foreign"},
    "team_admin": {"linked", "unlinked"},
    "member": {"linked", "unlinked"},
    "outsider": {"foreign"},
    "linked_service": {"linked"},
    "unlinked_service": set(),
}


@ANY_CALLER
def test_read_and_list(client, world, make_expert, make_workflow, subtests, caller):
    for kind in ("experts", "workflows"):
        check_read_and_list(client, world, make_expert if kind == "experts" else make_workflow, subtests,
                            kind, caller)


def check_read_and_list(client, world, make, subtests, kind, caller):
    items = {
        "linked": world.expert if kind == "experts" else world.workflow,
        "unlinked": make(world.team),
        "foreign": make(world.other_team),
    }
    headers = world.headers[caller]

    with subtests.test(f"GET one of the {kind}"):
        rv = client.get(f"{API}/{kind}/{items['linked'].id}", headers=headers)
        if caller in READERS:
            assert rv.status_code == 200, rv.get_json()
            assert rv.get_json()["id"] == items["linked"].id
            assert rv.get_json()["team_id"] == world.team.id
        else:
            assert_error(rv, 403)

    with subtests.test(f"list {kind}"):
        rv = client.get(f"{API}/{kind}", headers=headers)
        assert rv.status_code == 200, rv.get_json()
        assert {item["id"] for item in rv.get_json()} == {items[name].id for name in VISIBLE[caller]}
        assert rv.headers["X-Total-Count"] == str(len(VISIBLE[caller]))

    with subtests.test(f"GET one of another team's {kind}"):
        rv = client.get(f"{API}/{kind}/{items['foreign'].id}", headers=headers)
        if caller in ("platform_admin", "outsider"):
            assert rv.status_code == 200, rv.get_json()
        else:
            assert_error(rv, 403)


# --- changing -----------------------------------------------------------------


class Targets:
    """Fresh objects of the world's team for one row of the table, made on first use."""

    def __init__(self, world, make_user, make_expert, make_workflow, make_service) -> None:
        self.world = world
        self.team = world.team
        self._make_user, self._make_expert = make_user, make_expert
        self._make_workflow, self._make_service = make_workflow, make_service

    @cached_property
    def expert(self):
        return self._make_expert(self.team)

    @cached_property
    def workflow(self):
        return self._make_workflow(self.team)

    @cached_property
    def service(self):
        return self._make_service(self.team)

    @cached_property
    def linked_service(self):
        return self._make_service(self.team, experts=(self.expert,), workflows=(self.workflow,))

    @cached_property
    def newcomer(self):
        """Not in the team yet, but in another team with the team admin: someone they may add."""
        from chatsvc.extensions import db
        from chatsvc.models import Membership

        user = self._make_user()
        shared = self.world.other_team
        admin_id = self.world.users["team_admin"].id
        db.session.add(Membership(team_id=shared.id, user_id=user.id, role="member"))
        if not any(m.user_id == admin_id for m in shared.memberships):
            db.session.add(Membership(team_id=shared.id, user_id=admin_id, role="member"))
        db.session.commit()
        return user

    @cached_property
    def member(self):
        from chatsvc.extensions import db
        from chatsvc.models import Membership

        user = self._make_user()
        db.session.add(Membership(team_id=self.team.id, user_id=user.id, role="member"))
        db.session.commit()
        return user


@dataclass(frozen=True)
class Action:
    method: str
    path: Callable[[Targets], str]
    body: Callable[[Targets], dict] | None = None
    ok: int = 200


GRAPH = {"nodes": [{"key": "in", "node_type": "input"}, {"key": "out", "node_type": "echo"}],
         "edges": [{"source": "in", "target": "out"}]}

# What a team admin may do in their own team (and a platform admin anywhere).
TEAM_ADMIN_ACTIONS = {
    "create expert": Action("POST", lambda t: "/experts",
                            lambda t: {"team_id": t.team.id, "name": "new", "prompt_template": "Hi"}, 201),
    "update expert": Action("PATCH", lambda t: f"/experts/{t.expert.id}", lambda t: {"description": "changed"}),
    "delete expert": Action("DELETE", lambda t: f"/experts/{t.expert.id}", ok=204),
    "create workflow": Action("POST", lambda t: "/workflows",
                              lambda t: {"team_id": t.team.id, "name": "new", **GRAPH}, 201),
    "update workflow": Action("PATCH", lambda t: f"/workflows/{t.workflow.id}", lambda t: GRAPH),
    "delete workflow": Action("DELETE", lambda t: f"/workflows/{t.workflow.id}", ok=204),
    "create service": Action("POST", lambda t: "/services", lambda t: {"team_id": t.team.id, "name": "new"}, 201),
    "rename service": Action("PATCH", lambda t: f"/services/{t.service.id}", lambda t: {"name": "renamed"}),
    "disable service": Action("PATCH", lambda t: f"/services/{t.service.id}", lambda t: {"disabled": True}),
    "rotate service key": Action("POST", lambda t: f"/services/{t.service.id}/rotate-key"),
    "delete service": Action("DELETE", lambda t: f"/services/{t.service.id}", ok=204),
    "link expert": Action("PUT", lambda t: f"/experts/{t.expert.id}/services/{t.service.id}", ok=204),
    "unlink expert": Action("DELETE", lambda t: f"/experts/{t.expert.id}/services/{t.linked_service.id}", ok=204),
    "link workflow": Action("PUT", lambda t: f"/workflows/{t.workflow.id}/services/{t.service.id}", ok=204),
    "unlink workflow": Action("DELETE", lambda t: f"/workflows/{t.workflow.id}/services/{t.linked_service.id}",
                              ok=204),
    "add member by id": Action("POST", lambda t: f"/teams/{t.team.id}/members",
                               lambda t: {"user_id": t.newcomer.id}, 201),
    "add member by email": Action("POST", lambda t: f"/teams/{t.team.id}/members",
                                  lambda t: {"email": t.newcomer.email, "role": "admin"}, 201),
    "change member role": Action("PATCH", lambda t: f"/teams/{t.team.id}/members/{t.member.id}",
                                 lambda t: {"role": "admin"}),
    "remove member": Action("DELETE", lambda t: f"/teams/{t.team.id}/members/{t.member.id}", ok=204),
    "rename team": Action("PATCH", lambda t: f"/teams/{t.team.id}", lambda t: {"name": "renamed team"}),
}
PLATFORM_ADMIN_ACTIONS = {
    "create team": Action("POST", lambda t: "/teams", lambda t: {"name": "brand new team"}, 201),
    "create user": Action("POST", lambda t: "/users",
                          lambda t: {"email": "new@example.com", "password": "long enough"}, 201),
    "delete team": Action("DELETE", lambda t: f"/teams/{t.team.id}", ok=204),
}
ACTIONS = [
    (name, action, allowed)
    for actions, allowed in (
        (TEAM_ADMIN_ACTIONS, {"platform_admin", "team_admin"}),
        (PLATFORM_ADMIN_ACTIONS, {"platform_admin"}),
    )
    for name, action in actions.items()
]


@pytest.fixture
def make_targets(world, make_user, make_expert, make_workflow, make_service):
    return lambda: Targets(world, make_user, make_expert, make_workflow, make_service)


@ANY_CALLER
def test_change_permissions(client, world, make_targets, subtests, caller):
    for name, action, allowed in ACTIONS:
        if name == "delete team":
            continue  # the team holds the callers: see test_delete_team_permissions
        with subtests.test(name):
            targets = make_targets()
            path, body = action.path(targets), action.body(targets) if action.body else None
            before = db_state()
            rv = client.open(API + path, method=action.method, json=body, headers=world.headers[caller])
            if caller in allowed:
                assert rv.status_code == action.ok, rv.get_json()
                assert db_state() != before
            else:
                assert_error(rv, 403)
                assert db_state() == before, "a refused request changed something"


@ANY_CALLER
def test_delete_team_permissions(client, world, caller):
    team_id, expert_id = world.team.id, world.expert.id
    before = db_state()
    rv = client.delete(f"{API}/teams/{team_id}", headers=world.headers[caller])
    if caller == "platform_admin":
        assert rv.status_code == 204
        assert_error(client.get(f"{API}/teams/{team_id}", headers=world.headers[caller]), 404)
        assert_error(client.get(f"{API}/experts/{expert_id}", headers=world.headers[caller]), 404)
    else:
        assert_error(rv, 403)
        assert db_state() == before


@ANY_CALLER
def test_team_admin_rights_stop_at_their_team(client, world, caller):
    """In the outsider's team only its admin (the outsider) and the platform admin may create."""
    rv = client.post(f"{API}/experts", json={"team_id": world.other_team.id, "name": "x", "prompt_template": "y"},
                     headers=world.headers[caller])
    if caller in ("platform_admin", "outsider"):
        assert rv.status_code == 201, rv.get_json()
        assert rv.get_json()["team_id"] == world.other_team.id
    else:
        assert_error(rv, 403)


# --- missing targets: 404 before any permission check -------------------------

MISSING = 987654
MISSING_TARGETS = {
    "get expert": ("GET", lambda w: f"/experts/{MISSING}", None),
    "patch expert": ("PATCH", lambda w: f"/experts/{MISSING}", {"description": "x"}),
    "delete expert": ("DELETE", lambda w: f"/experts/{MISSING}", None),
    "get workflow": ("GET", lambda w: f"/workflows/{MISSING}", None),
    "patch workflow": ("PATCH", lambda w: f"/workflows/{MISSING}", {"name": "x"}),
    "delete workflow": ("DELETE", lambda w: f"/workflows/{MISSING}", None),
    "get service": ("GET", lambda w: f"/services/{MISSING}", None),
    "patch service": ("PATCH", lambda w: f"/services/{MISSING}", {"name": "x"}),
    "rotate key": ("POST", lambda w: f"/services/{MISSING}/rotate-key", None),
    "delete service": ("DELETE", lambda w: f"/services/{MISSING}", None),
    "list expert links": ("GET", lambda w: f"/experts/{MISSING}/services", None),
    "list workflow links": ("GET", lambda w: f"/workflows/{MISSING}/services", None),
    "link missing expert": ("PUT", lambda w: f"/experts/{MISSING}/services/{w.services['unlinked_service'].id}",
                            None),
    "link missing service": ("PUT", lambda w: f"/experts/{w.expert.id}/services/{MISSING}", None),
    "unlink missing service": ("DELETE", lambda w: f"/experts/{w.expert.id}/services/{MISSING}", None),
    "link workflow to missing service": ("PUT", lambda w: f"/workflows/{w.workflow.id}/services/{MISSING}", None),
    "get team": ("GET", lambda w: f"/teams/{MISSING}", None),
    "patch team": ("PATCH", lambda w: f"/teams/{MISSING}", {"name": "x"}),
    "delete team": ("DELETE", lambda w: f"/teams/{MISSING}", None),
    "list members": ("GET", lambda w: f"/teams/{MISSING}/members", None),
    "add member": ("POST", lambda w: f"/teams/{MISSING}/members", {"user_id": 1}),
    "get missing member": ("GET", lambda w: f"/teams/{w.team.id}/members/{MISSING}", None),
    "patch missing member": ("PATCH", lambda w: f"/teams/{w.team.id}/members/{MISSING}", {"role": "admin"}),
    "remove missing member": ("DELETE", lambda w: f"/teams/{w.team.id}/members/{MISSING}", None),
    "get user": ("GET", lambda w: f"/users/{MISSING}", None),
    "patch user": ("PATCH", lambda w: f"/users/{MISSING}", {"is_admin": True}),
    "delete user": ("DELETE", lambda w: f"/users/{MISSING}", None),
}


@ANY_CALLER
def test_missing_target_is_404_for_everyone(client, world, subtests, caller):
    for name, (method, path, body) in MISSING_TARGETS.items():
        with subtests.test(name):
            rv = client.open(API + path(world), method=method, json=body, headers=world.headers[caller])
            assert_error(rv, 404)


# --- no credentials ------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/experts"), ("POST", "/experts"), ("GET", "/experts/1"), ("PATCH", "/experts/1"),
    ("DELETE", "/experts/1"), ("GET", "/experts/1/services"), ("PUT", "/experts/1/services/1"),
    ("DELETE", "/experts/1/services/1"),
    ("GET", "/workflows"), ("POST", "/workflows"), ("GET", "/workflows/1"), ("PATCH", "/workflows/1"),
    ("DELETE", "/workflows/1"), ("GET", "/workflows/1/services"), ("PUT", "/workflows/1/services/1"),
    ("GET", "/services"), ("POST", "/services"), ("GET", "/services/1"), ("PATCH", "/services/1"),
    ("DELETE", "/services/1"), ("POST", "/services/1/rotate-key"),
    ("GET", "/teams"), ("POST", "/teams"), ("GET", "/teams/1"), ("PATCH", "/teams/1"), ("DELETE", "/teams/1"),
    ("GET", "/teams/1/members"), ("POST", "/teams/1/members"), ("GET", "/teams/1/members/1"),
    ("PATCH", "/teams/1/members/1"), ("DELETE", "/teams/1/members/1"),
    ("GET", "/users"), ("POST", "/users"), ("GET", "/users/1"), ("PATCH", "/users/1"), ("DELETE", "/users/1"),
]


def test_unauthenticated_is_401(client, world, subtests):
    """Authentication comes first: no credentials is 401, even with an invalid body or a missing target."""
    for method, path in ENDPOINTS:
        for target in (path, path.replace("/1", f"/{MISSING}")):
            with subtests.test(f"{method} {target}"):
                rv = client.open(API + target, method=method, json={} if method in ("POST", "PATCH") else None)
                body = assert_error(rv, 401)
                assert "errors" not in body
                assert rv.headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_each_request_authenticates_anew(client, world):
    """Several requests may share one app context (as in these tests): credentials never carry over."""
    assert client.get(f"{API}/users", headers=world.headers["platform_admin"]).status_code == 200
    assert_error(client.get(f"{API}/users"), 401)
    assert_error(client.get(f"{API}/users", headers=world.headers["member"]), 403)


@pytest.mark.parametrize("by", ["user_id", "email"])
def test_a_team_admin_cannot_learn_who_has_an_account(client, world, make_user, by):
    """Adding someone outside the admin's teams: one answer whether or not the account exists."""
    stranger = make_user()  # exists, but shares no team with the team admin
    missing = {"user_id": 987654, "email": "nobody@example.com"}[by]
    existing = {"user_id": stranger.id, "email": stranger.email}[by]
    path = f"{API}/teams/{world.team.id}/members"
    answers = []
    for value in (missing, existing):
        before = db_state()
        rv = client.post(path, json={by: value}, headers=world.headers["team_admin"])
        body = assert_error(rv, 422, contains="Unknown user")
        answers.append(body["errors"]["json"][by][0].replace(str(value), "<value>"))
        assert db_state() == before
    assert answers[0] == answers[1], answers
    # A platform admin adds anyone (and learns nothing new: it may list every user anyway).
    rv = client.post(path, json={by: existing}, headers=world.headers["platform_admin"])
    assert rv.status_code == 201, rv.get_json()

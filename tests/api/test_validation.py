"""Bad input: every error is the one JSON envelope with the right status, never HTML or a 500."""

from __future__ import annotations

import json

import pytest

from tests.helpers.api import API, assert_error, db_state, field_errors


@pytest.fixture
def admin(world):
    return world.headers["platform_admin"]


def expert_body(world, **fields):
    return {"team_id": world.team.id, "name": "an expert", "prompt_template": "Hi {{ input.name }}", **fields}


def workflow_body(world, **fields):
    return {"team_id": world.team.id, "name": "a workflow", **fields}


# --- schema validation --------------------------------------------------------

# (method, path, a valid body) for every endpoint that takes a JSON body.
BODIES = {
    "create user": ("POST", lambda w: "/users", lambda w: {"email": "new@example.com", "password": "long enough"}),
    "patch user": ("PATCH", lambda w: f"/users/{w.users['member'].id}", lambda w: {"is_admin": False}),
    "create team": ("POST", lambda w: "/teams", lambda w: {"name": "new team"}),
    "patch team": ("PATCH", lambda w: f"/teams/{w.team.id}", lambda w: {"name": "renamed"}),
    "add member": ("POST", lambda w: f"/teams/{w.team.id}/members", lambda w: {"user_id": w.users["outsider"].id}),
    "patch member": ("PATCH", lambda w: f"/teams/{w.team.id}/members/{w.users['member'].id}",
                     lambda w: {"role": "admin"}),
    "create service": ("POST", lambda w: "/services", lambda w: {"team_id": w.team.id, "name": "svc"}),
    "patch service": ("PATCH", lambda w: f"/services/{w.services['unlinked_service'].id}", lambda w: {"name": "x"}),
    "create expert": ("POST", lambda w: "/experts", lambda w: expert_body(w)),
    "patch expert": ("PATCH", lambda w: f"/experts/{w.expert.id}", lambda w: {"description": "d"}),
    "create workflow": ("POST", lambda w: "/workflows", lambda w: workflow_body(w)),
    "patch workflow": ("PATCH", lambda w: f"/workflows/{w.workflow.id}", lambda w: {"description": "d"}),
    "login": ("POST", lambda w: "/auth/login", lambda w: {"email": "a@example.com", "password": "whatever"}),
}


def test_unknown_field_is_422(client, world, admin, subtests):
    for name, (method, path, body) in BODIES.items():
        with subtests.test(name):
            before = db_state()
            rv = client.open(API + path(world), method=method, json={**body(world), "colour": "blue"}, headers=admin)
            errors = field_errors(assert_error(rv, 422))
            assert list(errors) == ["colour"], errors
            assert db_state() == before


WRONG_TYPES = [
    # (name of the BODIES row, field, wrong value)
    ("create user", "email", "not-an-email"),
    ("create user", "email", 42),
    ("create user", "is_admin", "perhaps"),
    ("create team", "name", ["a", "list"]),
    ("create team", "name", ""),
    ("create team", "admin_user_id", "one"),
    ("add member", "user_id", "seven"),
    ("add member", "role", "owner"),
    ("patch member", "role", "superuser"),
    ("create service", "team_id", "abc"),
    ("create service", "name", None),
    ("patch service", "disabled", "sometimes"),
    ("create expert", "name", 123),
    ("create expert", "team_id", {"id": 1}),
    ("create expert", "base", ["not", "an", "object"]),
    ("create expert", "prompt_template", ""),
    ("patch expert", "base", "x"),
    ("create workflow", "nodes", "a,b"),
    ("create workflow", "nodes", [{"key": "a"}]),
    ("create workflow", "nodes", [{"key": "a", "node_type": "input", "metadata": "none"}]),
    ("create workflow", "edges", [{"source": "a"}]),
    ("patch workflow", "edges", {"a": "b"}),
    ("login", "password", 12345678),
]


def test_wrong_type_is_422(client, world, admin, subtests):
    for name, field, value in WRONG_TYPES:
        with subtests.test(f"{name}: {field}={value!r}"):
            method, path, body = BODIES[name]
            rv = client.open(API + path(world), method=method, json={**body(world), field: value}, headers=admin)
            assert field in field_errors(assert_error(rv, 422), "json")


def test_body_must_be_an_object(client, world, admin, subtests):
    for body in ([1, 2], "a string", 3, None):
        with subtests.test(body=body):
            rv = client.post(f"{API}/experts", data=json.dumps(body), content_type="application/json",
                             headers=admin)
            assert_error(rv, 422)


REQUIRED = {
    "create user": ["email", "password"],
    "create team": ["name"],
    "create service": ["team_id", "name"],
    "create expert": ["team_id", "name", "prompt_template"],
    "create workflow": ["team_id", "name"],
    "patch member": ["role"],
    "login": ["email", "password"],
}


def test_missing_required_field_is_422(client, world, admin, subtests):
    for name, fields in REQUIRED.items():
        method, path, body = BODIES[name]
        for field in fields:
            with subtests.test(f"{name} without {field}"):
                data = {k: v for k, v in body(world).items() if k != field}
                errors = field_errors(assert_error(client.open(API + path(world), method=method, json=data,
                                                               headers=admin), 422))
                assert list(errors) == [field], errors


def test_member_needs_exactly_one_of_user_id_or_email(client, world, admin, subtests):
    for body in ({}, {"role": "admin"}, {"user_id": world.users["outsider"].id, "email": "a@example.com"}):
        with subtests.test(body=body):
            rv = client.post(f"{API}/teams/{world.team.id}/members", json=body, headers=admin)
            assert "_schema" in field_errors(assert_error(rv, 422))


def test_unknown_references_in_a_body_are_422(client, world, admin, subtests):
    missing = 987654
    cases = {
        "expert in a missing team": ("/experts", expert_body(world, team_id=missing), "team_id"),
        "workflow in a missing team": ("/workflows", workflow_body(world, team_id=missing), "team_id"),
        "service in a missing team": ("/services", {"team_id": missing, "name": "s"}, "team_id"),
        "team with a missing admin": ("/teams", {"name": "t", "admin_user_id": missing}, "admin_user_id"),
        "member by missing id": (f"/teams/{world.team.id}/members", {"user_id": missing}, "user_id"),
        "member by unknown email": (f"/teams/{world.team.id}/members", {"email": "nobody@example.com"}, "email"),
    }
    for name, (path, body, field) in cases.items():
        with subtests.test(name):
            before = db_state()
            assert field in field_errors(assert_error(client.post(API + path, json=body, headers=admin), 422))
            assert db_state() == before


def test_bad_pagination_is_422(client, world, admin, subtests):
    for query, field in (("page=0", "page"), ("page=-1", "page"), ("per_page=0", "per_page"),
                         ("per_page=abc", "per_page"), ("page=x", "page")):
        with subtests.test(query):
            rv = client.get(f"{API}/experts?{query}", headers=admin)
            assert field in field_errors(assert_error(rv, 422), "query")


# --- uniqueness ---------------------------------------------------------------


def test_duplicate_email_is_409_whatever_the_case(client, admin, world):
    rv = client.post(f"{API}/users", json={"email": "Ada.Lovelace@Example.com", "password": "long enough"},
                     headers=admin)
    assert rv.status_code == 201, rv.get_json()
    assert rv.get_json()["email"] == "ada.lovelace@example.com"
    for email in ("ada.lovelace@example.com", "ADA.LOVELACE@EXAMPLE.COM", "  Ada.Lovelace@example.com "):
        before = db_state()
        rv = client.post(f"{API}/users", json={"email": email, "password": "long enough"}, headers=admin)
        if rv.status_code == 422:  # surrounding spaces may be refused as an invalid email: fine too
            assert email != email.strip()
            continue
        assert_error(rv, 409, contains="already exists")
        assert db_state() == before
    # and the stored address still finds its user, whatever the case
    rv = client.post(f"{API}/teams/{world.team.id}/members", json={"email": "ADA.lovelace@example.COM"},
                     headers=admin)
    assert rv.status_code == 201, rv.get_json()


def test_short_password_is_422(client, world, admin, subtests):
    for password in ("", "short", "7chars!"):
        with subtests.test(password=password):
            before = db_state()
            rv = client.post(f"{API}/users", json={"email": "new@example.com", "password": password}, headers=admin)
            assert "password" in field_errors(assert_error(rv, 422))
            rv = client.patch(f"{API}/users/{world.users['member'].id}", json={"password": password},
                              headers=admin)
            assert "password" in field_errors(assert_error(rv, 422))
            assert db_state() == before
    assert client.post(f"{API}/users", json={"email": "new@example.com", "password": "8 chars!"},
                       headers=admin).status_code == 201


def test_conflicts_are_409(client, world, admin, subtests):
    team_name = world.team.name
    cases = {
        "duplicate team name": ("POST", "/teams", {"name": team_name}),
        "rename team to a taken name": ("PATCH", f"/teams/{world.other_team.id}", {"name": team_name}),
        "member twice": ("POST", f"/teams/{world.team.id}/members", {"user_id": world.users["member"].id}),
        "expert name taken in the team": ("POST", "/experts", expert_body(world, name=world.expert.name)),
        "workflow name taken in the team": ("POST", "/workflows", workflow_body(world, name=world.workflow.name)),
        "service name taken in the team": ("POST", "/services", {"team_id": world.team.id,
                                                                 "name": world.services["linked_service"].name}),
    }
    for name, (method, path, body) in cases.items():
        with subtests.test(name):
            before = db_state()
            assert_error(client.open(API + path, method=method, json=body, headers=admin), 409)
            assert db_state() == before
    # the same names are free in another team
    rv = client.post(f"{API}/experts", json=expert_body(world, team_id=world.other_team.id, name=world.expert.name),
                     headers=admin)
    assert rv.status_code == 201, rv.get_json()


# --- workflow graphs ----------------------------------------------------------


def node(key, node_type="echo", **metadata):
    return {"key": key, "node_type": node_type, "metadata": metadata}


def edges(*pairs):
    return [{"source": s, "target": t} for s, t in pairs]


# (nodes, edges, errors key, the node keys the message must name)
INVALID_GRAPHS = {
    "unknown node type": ([node("a", "input"), node("b", "teleport")], edges(("a", "b")), "nodes", ["b", "teleport"]),
    "duplicate key": ([node("a", "input"), node("b"), node("b")], edges(("a", "b")), "nodes", ["b"]),
    "dangling edge": ([node("a", "input"), node("b")], edges(("a", "b"), ("b", "ghost")), "edges", ["b", "ghost"]),
    "self-loop": ([node("a", "input"), node("b")], edges(("a", "b"), ("b", "b")), "edges", ["b"]),
    "cycle": ([node("a", "input"), node("b"), node("c"), node("d")],
              edges(("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")), "cycle", ["b", "c", "d"]),
}


def assert_names_nodes(body, key, names):
    for name in names:
        assert f"'{name}'" in body["message"], body["message"]
    errors = field_errors(body)
    assert key in errors, errors
    text = " ".join(map(str, errors[key]))
    for name in names:
        assert name in text, errors


def test_invalid_graph_is_422_naming_the_nodes(client, world, admin, subtests):
    for kind, (nodes, graph_edges, key, names) in INVALID_GRAPHS.items():
        with subtests.test(kind):
            before = db_state()
            rv = client.post(f"{API}/workflows", json=workflow_body(world, nodes=nodes, edges=graph_edges),
                             headers=admin)
            assert_names_nodes(assert_error(rv, 422), key, names)
            # the same graph sent as an update is refused too, and the stored graph stays
            rv = client.patch(f"{API}/workflows/{world.workflow.id}", json={"nodes": nodes, "edges": graph_edges},
                              headers=admin)
            assert_names_nodes(assert_error(rv, 422), key, names)
            assert db_state() == before


def test_cycle_lists_its_path(client, world, admin):
    nodes, graph_edges, _, _ = INVALID_GRAPHS["cycle"]
    rv = client.post(f"{API}/workflows", json=workflow_body(world, nodes=nodes, edges=graph_edges), headers=admin)
    body = assert_error(rv, 422)
    cycle = field_errors(body)["cycle"]
    assert cycle[0] == cycle[-1] and len(cycle) == 4, cycle
    assert set(cycle) == {"b", "c", "d"}, cycle
    for source, target in zip(cycle, cycle[1:]):  # a real path along the edges
        assert {"source": source, "target": target} in graph_edges
    assert " -> ".join(f"'{k}'" for k in cycle) in body["message"]


def test_patch_that_keeps_the_nodes_revalidates_new_edges(client, world, admin, make_workflow, ctx):
    workflow = make_workflow(world.team, nodes=(("a", "input", {}), ("b", "echo", {})), edges=(("a", "b"),))
    rv = client.patch(f"{API}/workflows/{workflow.id}", json={"edges": edges(("a", "b"), ("b", "a"))},
                      headers=admin)
    assert field_errors(assert_error(rv, 422))["cycle"] in (["a", "b", "a"], ["b", "a", "b"])
    rv = client.patch(f"{API}/workflows/{workflow.id}", json={"nodes": [node("a", "input")]}, headers=admin)
    assert_names_nodes(assert_error(rv, 422), "edges", ["b"])  # the kept edge a -> b now dangles


def invalid_metadata(world, other_expert_id):
    # (node, the message expected among the node's problems)
    return {
        "transform that does not compile": (node("t", "transform", expression="$sum(("), "does not compile"),
        "transform without expression": (node("t", "transform"), "expression"),
        "sleep over 60 s": (node("s", "sleep", seconds=61), "seconds"),
        "negative sleep": (node("s", "sleep", seconds=-1), "seconds"),
        "sleep as text": (node("s", "sleep", seconds="10"), "seconds"),
        "expert of another team": (node("e", "expert", expert_id=other_expert_id), "another team"),
        "missing expert": (node("e", "expert", expert_id=987654), "does not exist"),
        "expert id as text": (node("e", "expert", expert_id=str(world.expert.id)), "expert_id"),
        "unknown metadata field": (node("x", "echo", colour="blue"), "colour"),
        "template without template": (node("t", "template"), "template"),
    }


def test_invalid_node_metadata_is_422(client, world, admin, make_expert, subtests):
    other_expert = make_expert(world.other_team)
    for name, (bad, expected) in invalid_metadata(world, other_expert.id).items():
        with subtests.test(name):
            nodes = [node("in", "input"), bad]
            for method, path, body in (
                ("POST", "/workflows", workflow_body(world, nodes=nodes, edges=edges(("in", bad["key"])))),
                ("PATCH", f"/workflows/{world.workflow.id}", {"nodes": nodes, "edges": edges(("in", bad["key"]))}),
            ):
                body = assert_error(client.open(API + path, method=method, json=body, headers=admin), 422)
                assert f"'{bad['key']}'" in body["message"]
                problems = field_errors(body)["metadata"][bad["key"]]
                assert any(expected in problem for problem in problems), problems


def test_a_nodes_problems_are_reported_together(client, world, admin, make_expert):
    """The metadata's shape (node service) and the expert's team (permissions) in one list."""
    other_expert = make_expert(world.other_team)
    nodes = [node("in", "input"), node("e", "expert", expert_id=other_expert.id, colour="blue")]
    rv = client.post(f"{API}/workflows", json=workflow_body(world, nodes=nodes, edges=edges(("in", "e"))),
                     headers=admin)
    problems = field_errors(assert_error(rv, 422))["metadata"]["e"]
    assert len(problems) == 2 and "colour" in problems[0] and "another team" in problems[1], problems


def test_valid_metadata_is_accepted(client, world, admin):
    nodes = [node("in", "input"), node("t", "transform", expression="$count(travellers)", output_key="n"),
             node("s", "sleep", seconds=60), node("e", "expert", expert_id=world.expert.id, output_key="reply"),
             node("p", "template", template="Hi {{ input.name }}")]
    graph_edges = edges(("in", "t"), ("t", "s"), ("s", "e"), ("e", "p"))
    rv = client.post(f"{API}/workflows", json=workflow_body(world, nodes=nodes, edges=graph_edges), headers=admin)
    assert rv.status_code == 201, rv.get_json()


# --- links --------------------------------------------------------------------


def test_link_to_another_teams_service_is_422(client, world, admin, make_service, subtests):
    foreign = make_service(world.other_team)
    for kind, target in (("experts", world.expert), ("workflows", world.workflow)):
        with subtests.test(kind):
            before = db_state()
            rv = client.put(f"{API}/{kind}/{target.id}/services/{foreign.id}", headers=admin)
            body = assert_error(rv, 422)
            assert "service_id" in body["errors"]["path"]
            assert db_state() == before
            # the foreign service still cannot read the target
            assert_error(client.get(f"{API}/{kind}/{target.id}", headers={"X-API-Key": foreign.plain_key}), 403)


# --- transport-level errors ---------------------------------------------------


def test_malformed_json_is_400(client, world, admin, subtests):
    for method, path in (("POST", "/experts"), ("POST", "/users"), ("POST", "/auth/login"),
                         ("PATCH", f"/experts/{world.expert.id}"), ("POST", f"/teams/{world.team.id}/members")):
        with subtests.test(f"{method} {path}"):
            rv = client.open(API + path, method=method, data='{"name": "unterminated',
                             content_type="application/json", headers=admin)
            assert_error(rv, 400)


@pytest.mark.parametrize("config_overrides", [{"max_body_bytes": 512}])
def test_body_over_the_limit_is_413(client, world, admin, config_overrides):
    big = expert_body(world, description="x" * 2048)
    before = db_state()
    assert_error(client.post(f"{API}/experts", json=big, headers=admin), 413)
    assert db_state() == before
    small = expert_body(world, description="x" * 100)
    assert client.post(f"{API}/experts", json=small, headers=admin).status_code == 201
    # the limit holds where no authentication is needed too
    assert_error(client.post(f"{API}/auth/login", data=b"{" + b" " * 2048 + b"}",
                             content_type="application/json"), 413)


WRONG_METHODS = [
    ("PUT", "/experts", {"GET", "POST"}),
    ("DELETE", "/workflows", {"GET", "POST"}),
    ("POST", "/experts/1", {"GET", "PATCH", "DELETE"}),
    ("GET", "/auth/login", {"POST"}),
    ("PATCH", "/services/1/rotate-key", {"POST"}),
]


def test_wrong_method_is_405(client, world, admin, subtests):
    for method, path, allowed in WRONG_METHODS:
        with subtests.test(f"{method} {path}"):
            rv = client.open(API + path, method=method, headers=admin)
            assert_error(rv, 405)
            assert allowed <= {m.strip() for m in rv.headers["Allow"].split(",")}


def test_unknown_url_is_404_envelope(client, world, admin, subtests):
    for path in ("/api/v1/nothing-here", "/api/v1/experts/abc", "/no/such/page", "/api/v1/experts/1/nope"):
        with subtests.test(path):
            assert_error(client.get(path, headers=admin), 404)

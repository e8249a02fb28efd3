"""Resource behaviour: status codes, Location, partial updates, pagination, keys, members, graphs."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.helpers.api import API, assert_error
from tests.helpers.support import auth_headers


@pytest.fixture
def admin(world):
    return world.headers["platform_admin"]


def location_path(rv) -> str:
    """The Location header as a path the test client can follow."""
    location = rv.headers["Location"]
    parts = urlsplit(location)
    assert not parts.netloc or parts.netloc == "localhost", location
    return parts.path


def test_create_is_201_with_a_location_that_works(client, world, admin, subtests):
    creates = {
        "user": ("/users", {"email": "new@example.com", "password": "long enough"}, "id"),
        "team": ("/teams", {"name": "new team"}, "id"),
        "service": ("/services", {"team_id": world.team.id, "name": "new"}, "id"),
        "expert": ("/experts", {"team_id": world.team.id, "name": "new", "prompt_template": "Hi"}, "id"),
        "workflow": ("/workflows", {"team_id": world.team.id, "name": "new"}, "id"),
        "member": (f"/teams/{world.team.id}/members", {"user_id": world.users["outsider"].id}, "user_id"),
    }
    for name, (path, body, id_field) in creates.items():
        with subtests.test(name):
            rv = client.post(API + path, json=body, headers=admin)
            assert rv.status_code == 201, rv.get_json()
            created = rv.get_json()
            assert isinstance(created[id_field], int)
            follow = location_path(rv)
            assert follow.startswith(API + "/")
            again = client.get(follow, headers=admin)
            assert again.status_code == 200, (follow, again.get_json())
            assert again.get_json()[id_field] == created[id_field]


def test_created_items_carry_their_fields(client, world, admin):
    rv = client.post(f"{API}/experts", json={"team_id": world.team.id, "name": "e", "prompt_template": "Hi"},
                     headers=admin)
    expert = rv.get_json()
    assert expert["team_id"] == world.team.id
    assert (expert["model_name"], expert["description"], expert["base"]) == ("stub", "", {})
    assert expert["created_at"] and expert["updated_at"]
    rv = client.post(f"{API}/workflows", json={"team_id": world.team.id, "name": "w"}, headers=admin)
    assert rv.get_json()["nodes"] == [] and rv.get_json()["edges"] == []
    rv = client.post(f"{API}/users", json={"email": "n@example.com", "password": "long enough"}, headers=admin)
    assert rv.get_json()["is_admin"] is False and "password" not in rv.get_json()


def test_delete_is_204_and_the_item_is_gone(client, world, admin, make_user, subtests):
    spare = make_user()
    deletes = {
        "expert": (f"/experts/{world.expert.id}", f"/experts/{world.expert.id}"),
        "workflow": (f"/workflows/{world.workflow.id}", f"/workflows/{world.workflow.id}"),
        "service": (f"/services/{world.services['unlinked_service'].id}",
                    f"/services/{world.services['unlinked_service'].id}"),
        "member": (f"/teams/{world.team.id}/members/{world.users['member'].id}",
                   f"/teams/{world.team.id}/members/{world.users['member'].id}"),
        "user": (f"/users/{spare.id}", f"/users/{spare.id}"),
        "team": (f"/teams/{world.other_team.id}", f"/teams/{world.other_team.id}"),
    }
    for name, (path, check) in deletes.items():
        with subtests.test(name):
            rv = client.delete(API + path, headers=admin)
            assert rv.status_code == 204
            assert rv.get_data() == b""
            assert_error(client.get(API + check, headers=admin), 404)
            assert_error(client.delete(API + path, headers=admin), 404)


def test_deleting_a_service_revokes_its_key(client, world, admin):
    service = world.services["linked_service"]
    headers = world.headers["linked_service"]
    assert client.get(f"{API}/experts/{world.expert.id}", headers=headers).status_code == 200
    assert client.delete(f"{API}/services/{service.id}", headers=admin).status_code == 204
    assert_error(client.get(f"{API}/experts/{world.expert.id}", headers=headers), 401)


def test_patch_changes_only_the_given_fields(client, world, admin):
    rv = client.post(f"{API}/experts", json={"team_id": world.team.id, "name": "e", "prompt_template": "T",
                                             "description": "D", "model_name": "m1", "base": {"a": 1}},
                     headers=admin)
    original = rv.get_json()
    path = f"{API}/experts/{original['id']}"
    for change in ({"description": "new D"}, {"base": {"b": [1, 2]}}, {"name": "renamed"},
                   {"prompt_template": "{{ base.b }}"}, {"model_name": "m2"}):
        rv = client.patch(path, json=change, headers=admin)
        assert rv.status_code == 200, rv.get_json()
        expected = {**original, **change}
        for body in (rv.get_json(), client.get(path, headers=admin).get_json()):
            assert {k: body[k] for k in change} == change
            unchanged = set(original) - set(change) - {"updated_at"}
            assert {k: body[k] for k in unchanged} == {k: expected[k] for k in unchanged}
        original = expected
    rv = client.patch(path, json={}, headers=admin)
    assert rv.status_code == 200 and rv.get_json()["name"] == "renamed"


def test_team_id_cannot_be_moved_by_patch(client, world, admin):
    rv = client.patch(f"{API}/experts/{world.expert.id}", json={"team_id": world.other_team.id}, headers=admin)
    assert "team_id" in assert_error(rv, 422)["errors"]["json"]


# --- pagination -----------------------------------------------------------------


def test_pagination(client, world, admin, make_expert):
    for _ in range(6):
        make_expert(world.team)
    everything = client.get(f"{API}/experts", headers=admin)
    assert everything.headers["X-Total-Count"] == "7"
    all_ids = [e["id"] for e in everything.get_json()]
    assert all_ids == sorted(all_ids) and len(all_ids) == 7
    pages = []
    for page in (1, 2, 3):
        rv = client.get(f"{API}/experts?per_page=3&page={page}", headers=admin)
        assert rv.status_code == 200
        assert rv.headers["X-Total-Count"] == "7"
        pages.append([e["id"] for e in rv.get_json()])
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == all_ids
    rv = client.get(f"{API}/experts?per_page=3&page=4", headers=admin)
    assert rv.get_json() == [] and rv.headers["X-Total-Count"] == "7"
    # unknown query parameters (cache busters) are ignored
    assert client.get(f"{API}/experts?_=123", headers=admin).status_code == 200


@pytest.mark.parametrize("config_overrides", [{"max_page_size": 3, "default_page_size": 2}])
def test_per_page_is_clamped_to_the_maximum(client, world, admin, make_expert, config_overrides):
    for _ in range(5):
        make_expert(world.team)
    rv = client.get(f"{API}/experts?per_page=1000", headers=admin)
    assert rv.status_code == 200
    assert len(rv.get_json()) == 3 and rv.headers["X-Total-Count"] == "6"
    rv = client.get(f"{API}/experts?per_page=1000&page=2", headers=admin)
    assert len(rv.get_json()) == 3  # page 2 of the clamped size, not an empty page
    rv = client.get(f"{API}/experts", headers=admin)
    assert len(rv.get_json()) == 2


def test_every_list_has_a_total(client, world, admin, subtests):
    lists = ["/users", "/teams", "/services", "/experts", "/workflows", f"/teams/{world.team.id}/members",
             f"/experts/{world.expert.id}/services", f"/workflows/{world.workflow.id}/services"]
    for path in lists:
        with subtests.test(path):
            rv = client.get(API + path + "?per_page=1", headers=admin)
            assert rv.status_code == 200, rv.get_json()
            assert isinstance(rv.get_json(), list) and len(rv.get_json()) == 1
            assert int(rv.headers["X-Total-Count"]) >= 1


# --- services and their keys -----------------------------------------------------


def no_key_in(body) -> None:
    items = body if isinstance(body, list) else [body]
    for item in items:
        assert "api_key" not in item and "api_key_hash" not in item, item


def test_api_key_is_shown_on_create_and_rotate_only(client, world, admin):
    rv = client.post(f"{API}/services", json={"team_id": world.team.id, "name": "bot"}, headers=admin)
    assert rv.status_code == 201
    created = rv.get_json()
    key = created["api_key"]
    assert isinstance(key, str) and len(key) >= 32
    assert created["key_prefix"] == key[:8] and created["disabled"] is False and created["team_id"] == world.team.id
    path = f"{API}/services/{created['id']}"
    no_key_in(client.get(path, headers=admin).get_json())
    no_key_in(client.get(f"{API}/services", headers=admin).get_json())
    no_key_in(client.patch(path, json={"name": "bot 2"}, headers=admin).get_json())
    # the key authenticates the service (a service may read its own team)
    assert client.get(f"{API}/teams/{world.team.id}", headers={"X-API-Key": key}).status_code == 200

    rv = client.post(f"{path}/rotate-key", headers=admin)
    assert rv.status_code == 200
    new_key = rv.get_json()["api_key"]
    assert new_key != key and rv.get_json()["key_prefix"] == new_key[:8]
    assert_error(client.get(f"{API}/teams/{world.team.id}", headers={"X-API-Key": key}), 401)
    assert client.get(f"{API}/teams/{world.team.id}", headers={"X-API-Key": new_key}).status_code == 200
    no_key_in(client.get(path, headers=admin).get_json())


def test_rotation_keeps_the_links(client, world, admin):
    service = world.services["linked_service"]
    new_key = client.post(f"{API}/services/{service.id}/rotate-key", headers=admin).get_json()["api_key"]
    assert client.get(f"{API}/experts/{world.expert.id}", headers={"X-API-Key": new_key}).status_code == 200
    assert_error(client.get(f"{API}/experts/{world.expert.id}", headers=world.headers["linked_service"]), 401)


def test_disabled_service_is_401_until_enabled(client, world, admin):
    service = world.services["linked_service"]
    headers = world.headers["linked_service"]
    rv = client.patch(f"{API}/services/{service.id}", json={"disabled": True}, headers=admin)
    assert rv.status_code == 200 and rv.get_json()["disabled"] is True
    assert_error(client.get(f"{API}/experts/{world.expert.id}", headers=headers), 401)
    assert_error(client.get(f"{API}/experts", headers=headers), 401)
    rv = client.patch(f"{API}/services/{service.id}", json={"disabled": False}, headers=admin)
    assert rv.get_json()["disabled"] is False
    assert client.get(f"{API}/experts/{world.expert.id}", headers=headers).status_code == 200


def test_links_list_and_idempotence(client, world, admin):
    unlinked = world.services["unlinked_service"]
    path = f"{API}/experts/{world.expert.id}/services"
    linked_ids = lambda: [s["id"] for s in client.get(path, headers=admin).get_json()]  # noqa: E731
    assert linked_ids() == [world.services["linked_service"].id]
    for _ in range(2):  # PUT twice: still one link
        assert client.put(f"{path}/{unlinked.id}", headers=admin).status_code == 204
    assert sorted(linked_ids()) == sorted([world.services["linked_service"].id, unlinked.id])
    no_key_in(client.get(path, headers=admin).get_json())
    assert client.get(f"{API}/experts/{world.expert.id}", headers=world.headers["unlinked_service"]).status_code == 200
    for _ in range(2):
        assert client.delete(f"{path}/{unlinked.id}", headers=admin).status_code == 204
    assert linked_ids() == [world.services["linked_service"].id]
    assert_error(client.get(f"{API}/experts/{world.expert.id}", headers=world.headers["unlinked_service"]), 403)
    # a team member may see the links too
    assert client.get(path, headers=world.headers["member"]).status_code == 200


# --- teams and members ---------------------------------------------------------------


def test_members_by_id_and_email_role_changes_and_removal(client, world, admin, make_user):
    team = world.team.id
    by_id = make_user()
    rv = client.post(f"{API}/users", json={"email": "Mixed.Case@Example.com", "password": "long enough"},
                     headers=admin)
    by_email_id = rv.get_json()["id"]
    token = client.post(f"{API}/auth/login", json={"email": "mixed.case@example.com", "password": "long enough"})
    by_email_headers = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    rv = client.post(f"{API}/teams/{team}/members", json={"user_id": by_id.id}, headers=admin)
    assert rv.status_code == 201
    assert rv.get_json() | {"created_at": None} == {"team_id": team, "user_id": by_id.id, "email": by_id.email,
                                                    "role": "member", "created_at": None}
    rv = client.post(f"{API}/teams/{team}/members", json={"email": "MIXED.case@example.com", "role": "admin"},
                     headers=admin)
    assert rv.status_code == 201, rv.get_json()
    assert rv.get_json()["user_id"] == by_email_id and rv.get_json()["role"] == "admin"

    members = client.get(f"{API}/teams/{team}/members", headers=world.headers["member"]).get_json()
    assert {m["user_id"]: m["role"] for m in members} == {
        world.users["team_admin"].id: "admin", world.users["member"].id: "member",
        by_id.id: "member", by_email_id: "admin",
    }

    new_expert = {"team_id": team, "name": "by a promoted member", "prompt_template": "x"}
    assert_error(client.post(f"{API}/experts", json=new_expert, headers=auth_headers(by_id)), 403)
    rv = client.patch(f"{API}/teams/{team}/members/{by_id.id}", json={"role": "admin"},
                      headers=world.headers["team_admin"])
    assert rv.status_code == 200 and rv.get_json()["role"] == "admin"
    assert client.post(f"{API}/experts", json=new_expert, headers=auth_headers(by_id)).status_code == 201

    assert client.get(f"{API}/experts/{world.expert.id}", headers=by_email_headers).status_code == 200
    assert client.delete(f"{API}/teams/{team}/members/{by_email_id}", headers=admin).status_code == 204
    assert_error(client.get(f"{API}/experts/{world.expert.id}", headers=by_email_headers), 403)
    assert_error(client.get(f"{API}/teams/{team}/members/{by_email_id}", headers=admin), 404)


def test_team_created_with_its_admin(client, world, admin, make_user):
    boss = make_user()
    rv = client.post(f"{API}/teams", json={"name": "Skunk works", "admin_user_id": boss.id}, headers=admin)
    assert rv.status_code == 201, rv.get_json()
    team = rv.get_json()
    assert team["name"] == "Skunk works" and "admin_user_id" not in team
    members = client.get(f"{API}/teams/{team['id']}/members", headers=admin).get_json()
    assert [(m["user_id"], m["role"]) for m in members] == [(boss.id, "admin")]
    rv = client.post(f"{API}/services", json={"team_id": team["id"], "name": "bot"}, headers=auth_headers(boss))
    assert rv.status_code == 201
    assert [t["id"] for t in client.get(f"{API}/teams", headers=auth_headers(boss)).get_json()] == [team["id"]]


def test_team_lists_show_own_teams(client, world, subtests):
    expected = {
        "platform_admin": {world.team.id, world.other_team.id},
        "team_admin": {world.team.id},
        "member": {world.team.id},
        "outsider": {world.other_team.id},
        "linked_service": {world.team.id},
    }
    for caller, teams in expected.items():
        with subtests.test(caller):
            rv = client.get(f"{API}/teams", headers=world.headers[caller])
            assert {t["id"] for t in rv.get_json()} == teams


# --- workflows and their graph ---------------------------------------------------------


def graph_of(body):
    return ([(n["key"], n["node_type"], n["metadata"]) for n in body["nodes"]],
            sorted((e["source"], e["target"]) for e in body["edges"]))


def test_workflow_patch_replaces_the_graph(client, world, admin):
    create = {"team_id": world.team.id, "name": "w", "description": "first",
              "nodes": [{"key": "a", "node_type": "input"}, {"key": "b", "node_type": "echo"}],
              "edges": [{"source": "a", "target": "b"}]}
    rv = client.post(f"{API}/workflows", json=create, headers=admin)
    assert rv.status_code == 201
    path = location_path(rv)
    assert graph_of(rv.get_json()) == ([("a", "input", {}), ("b", "echo", {})], [("a", "b")])
    assert all(isinstance(n["id"], int) for n in rv.get_json()["nodes"])

    new_nodes = [{"key": "start", "node_type": "input"},
                 {"key": "wait", "node_type": "sleep", "metadata": {"seconds": 0.5}},
                 {"key": "calc", "node_type": "transform", "metadata": {"expression": "a + 1", "output_key": "n"}},
                 {"key": "join", "node_type": "echo"}]
    new_edges = [{"source": "start", "target": "wait"}, {"source": "start", "target": "calc"},
                 {"source": "wait", "target": "join"}, {"source": "calc", "target": "join"}]
    rv = client.patch(path, json={"nodes": new_nodes, "edges": new_edges}, headers=admin)
    assert rv.status_code == 200, rv.get_json()
    expected = ([("start", "input", {}), ("wait", "sleep", {"seconds": 0.5}),
                 ("calc", "transform", {"expression": "a + 1", "output_key": "n"}), ("join", "echo", {})],
                sorted((e["source"], e["target"]) for e in new_edges))
    assert graph_of(rv.get_json()) == expected
    assert graph_of(client.get(path, headers=admin).get_json()) == expected

    # a PATCH without nodes or edges keeps the graph
    rv = client.patch(path, json={"description": "second"}, headers=admin)
    assert rv.get_json()["description"] == "second" and graph_of(rv.get_json()) == expected
    # a PATCH with edges only keeps the nodes
    rv = client.patch(path, json={"edges": []}, headers=admin)
    assert graph_of(rv.get_json()) == (expected[0], [])
    # and an invalid replacement leaves everything as it was
    assert_error(client.patch(path, json={"edges": [{"source": "join", "target": "start"},
                                                    {"source": "start", "target": "join"}]}, headers=admin), 422)
    assert graph_of(client.get(path, headers=admin).get_json()) == (expected[0], [])


def test_nodes_keep_document_order_and_reuse_keys(client, world, admin):
    nodes = [{"key": k, "node_type": "echo"} for k in ("z", "y", "x")]
    rv = client.post(f"{API}/workflows", json={"team_id": world.team.id, "name": "w", "nodes": nodes}, headers=admin)
    body = rv.get_json()
    assert [n["key"] for n in body["nodes"]] == ["z", "y", "x"]
    ids = [n["id"] for n in body["nodes"]]
    assert ids == sorted(ids)
    # replacing the graph with the same keys works (old rows are gone before new ones land)
    rv = client.patch(f"{API}/workflows/{body['id']}", json={"nodes": nodes}, headers=admin)
    assert rv.status_code == 200 and [n["key"] for n in rv.get_json()["nodes"]] == ["z", "y", "x"]


def test_a_replaced_graph_is_answered_as_stored_even_when_its_rows_reuse_old_ids(client, world, admin):
    # SQLite gives a new row the highest id + 1, so nodes replacing the newest rows get their ids
    # back: what was loaded of the old graph (to keep its edges) must not answer for the new one.
    rv = client.post(f"{API}/workflows", headers=admin, json={
        "team_id": world.team.id, "name": "w", "nodes": [{"key": "a", "node_type": "echo"},
                                                         {"key": "b", "node_type": "echo"}]})
    path = location_path(rv)
    nodes = [{"key": "a", "node_type": "input"}, {"key": "b", "node_type": "sleep", "metadata": {"seconds": 1}}]
    rv = client.patch(path, json={"nodes": nodes}, headers=admin)
    expected = ([("a", "input", {}), ("b", "sleep", {"seconds": 1})], [])
    assert rv.status_code == 200 and graph_of(rv.get_json()) == expected
    assert graph_of(client.get(path, headers=admin).get_json()) == expected

"""What a newcomer meets first: content types, the OpenAPI security schemes, example inputs, the favicon."""

from __future__ import annotations

import pytest

from tests.helpers.api import API, assert_error


def test_a_body_that_is_not_json_is_415_saying_what_to_send(client, world):
    # What `curl -d '{"workflow_id": 1}'` sends: the body is there, the type is a form's.
    rv = client.post(f"{API}/chat/workflows:run", data='{"workflow_id": %d}' % world.workflow.id,
                     content_type="application/x-www-form-urlencoded", headers=world.headers["member"])
    body = assert_error(rv, 415)
    assert "Content-Type: application/json" in body["message"]
    rv = client.post(f"{API}/auth/login", data="email=a@example.com", content_type="text/plain")
    assert_error(rv, 415)


def test_the_openapi_document_declares_how_to_authenticate(client, world):
    spec = client.get(f"{API}/openapi.json").get_json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyAuth"] == {**schemes["apiKeyAuth"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["streamToken"] == {**schemes["streamToken"], "type": "apiKey", "in": "query", "name": "token"}
    assert spec["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    assert spec["paths"]["/api/v1/auth/login"]["post"]["security"] == []
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    stream = spec["paths"]["/api/v1/chat/runs/{run_id}/events"]["get"]
    assert {"streamToken": []} in stream["security"]

    # A request authorized the way the document says (Swagger UI's Authorize does this).
    scheme = schemes["apiKeyAuth"]
    service = world.services["linked_service"]
    rv = client.get(f"{API}/experts/{world.expert.id}", headers={scheme["name"]: service.plain_key})
    assert rv.status_code == 200


def test_experts_and_workflows_carry_an_optional_example_input(client, world):
    admin = world.headers["team_admin"]
    example = {"city": "Lisbon", "days": 3}
    rv = client.post(f"{API}/experts", headers=admin, json={
        "team_id": world.team.id, "name": "With example", "prompt_template": "{{ input.city }}",
        "example_input": example})
    assert rv.status_code == 201 and rv.get_json()["example_input"] == example
    expert_id = rv.get_json()["id"]
    assert client.get(f"{API}/experts/{expert_id}", headers=admin).get_json()["example_input"] == example
    rv = client.patch(f"{API}/experts/{expert_id}", headers=admin, json={"example_input": None})
    assert rv.status_code == 200 and rv.get_json()["example_input"] is None
    assert_error(client.patch(f"{API}/experts/{expert_id}", headers=admin, json={"example_input": [1, 2]}), 422)

    rv = client.patch(f"{API}/workflows/{world.workflow.id}", headers=admin, json={"example_input": example})
    assert rv.status_code == 200 and rv.get_json()["example_input"] == example
    assert_error(client.patch(f"{API}/workflows/{world.workflow.id}", headers=admin,
                              json={"example_input": "text"}), 422)


@pytest.mark.parametrize("path", ["/favicon.ico"])
def test_the_favicon_is_served(client, path):
    rv = client.get(path)
    assert rv.status_code == 200 and rv.mimetype == "image/svg+xml" and rv.data.startswith(b"<svg")

"""The OpenAPI document describes every API route, and its Swagger UI page is served locally."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

SPEC_URL = "/api/v1/openapi.json"
DOCS_URL = "/api/v1/docs"
DOCS_ASSETS = "/api/v1/docs/assets/"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
CHAT_OPERATIONS = [
    ("/api/v1/chat/experts:run", "post"),
    ("/api/v1/chat/workflows:run", "post"),
    ("/api/v1/chat/runs", "get"),
    ("/api/v1/chat/runs/{run_id}", "get"),
    ("/api/v1/chat/runs/{run_id}:cancel", "post"),
    ("/api/v1/chat/runs/{run_id}/events", "get"),
]


@pytest.fixture
def spec(client) -> dict:
    rv = client.get(SPEC_URL)
    assert rv.status_code == 200
    assert rv.mimetype == "application/json"
    return rv.get_json()


def openapi_path(rule: str) -> str:
    """`/runs/<run_id:run_id>` or `/users/<int:user_id>` -> `/runs/{run_id}`, `/users/{user_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^:<>]+)>", r"{\1}", rule)


def resolve(spec: dict, item: dict) -> dict:
    """Follow a local `$ref` such as `#/components/responses/UNPROCESSABLE_ENTITY`."""
    while "$ref" in item:
        node = spec
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        item = node
    return item


def is_documentation_route(rule) -> bool:
    return rule.endpoint.startswith("api-docs.") or rule.rule.startswith(DOCS_URL) or rule.endpoint.endswith("static")


def test_openapi_path_conversion():
    assert openapi_path("/api/v1/chat/runs/<run_id:run_id>:cancel") == "/api/v1/chat/runs/{run_id}:cancel"
    assert openapi_path("/api/v1/teams/<int:team_id>/members/<int:user_id>") == "/api/v1/teams/{team_id}/members/{user_id}"
    assert openapi_path("/api/v1/x/<name>") == "/api/v1/x/{name}"


def test_document_is_valid_openapi(spec):
    validate(spec)  # raises OpenAPIValidationError with the offending path
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "chatsvc"


def test_every_api_route_is_documented_with_its_methods(app, spec):
    routes = [rule for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/v1/") and not is_documentation_route(rule)]
    assert len(routes) >= 20, "the API blueprints are not registered"
    missing = []
    for rule in routes:
        path = openapi_path(rule.rule)
        methods = {m.lower() for m in rule.methods} & HTTP_METHODS
        documented = set(spec["paths"].get(path, {})) & HTTP_METHODS
        if methods - documented:
            missing.append(f"{sorted(methods - documented)} {path}")
    assert not missing, f"routes missing from {SPEC_URL}: {missing}"


def test_documented_paths_exist(app, spec):
    """The reverse direction: nothing documented that the app does not route."""
    routed = {openapi_path(rule.rule) for rule in app.url_map.iter_rules()}
    assert not set(spec["paths"]) - routed


def test_run_bodies_are_documented(spec):
    schemas = spec["components"]["schemas"]
    for path, required in [("/api/v1/chat/experts:run", "expert_id"), ("/api/v1/chat/workflows:run", "workflow_id")]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[-1]
        assert required in schemas[name]["required"], path
        assert {"mode"} <= set(schemas[name]["properties"]), path
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "202"} <= set(responses), path


@pytest.mark.parametrize("path, method", CHAT_OPERATIONS)
def test_chat_error_responses_are_documented(spec, path, method):
    responses = spec["paths"][path][method]["responses"]
    errors = {code for code in responses if code.startswith("4")}
    assert "401" in errors, f"{method.upper()} {path} authenticates but does not document 401"
    if "{run_id}" in path or path.endswith(":run"):
        assert "404" in errors, f"{method.upper()} {path}: 404 not documented"
    if path.endswith(":run"):
        assert {"403", "422", "429"} <= errors, f"{method.upper()} {path}: {sorted(errors)}"
    if path.endswith(":cancel"):
        assert "409" in errors
    for code in errors:
        response = resolve(spec, responses[code])
        content = response.get("content", {}).get("application/json", {})
        assert content.get("schema", {}).get("$ref", "").endswith("/Error"), (path, code, responses[code])


def test_error_envelope_schema(spec):
    assert set(spec["components"]["schemas"]["Error"]["properties"]) == {"code", "status", "message", "errors"}


def test_docs_page_is_served_from_chatsvc_without_external_urls(client):
    rv = client.get(DOCS_URL)
    assert rv.status_code == 200
    assert rv.mimetype == "text/html"
    html = rv.get_data(as_text=True)
    assert SPEC_URL in html
    assert not re.findall(r"https?://", html), "the docs page must not load anything from outside chatsvc"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
    for asset in assets:
        assert asset.startswith(DOCS_ASSETS), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.data) > 1000, asset
        expected = "text/css" if asset.endswith(".css") else "javascript"
        assert expected in served.mimetype, (asset, served.mimetype)


def test_docs_assets_do_not_escape_their_directory(client):
    assert client.get(DOCS_ASSETS + "../__init__.py").status_code == 404
    assert client.get(DOCS_ASSETS + "no-such-file.js").status_code == 404

"""Helpers shared by the tests of the resource API (tests/api)."""

from __future__ import annotations

from typing import Any

API = "/api/v1"
ENVELOPE_KEYS = {"code", "status", "message", "errors"}


def assert_error(rv, code: int, *, contains: str | None = None) -> dict[str, Any]:
    """The response is the one JSON error envelope with this status; return its body."""
    assert rv.status_code == code, (rv.status_code, rv.get_data(as_text=True)[:500])
    assert rv.mimetype == "application/json", rv.get_data(as_text=True)[:300]
    text = rv.get_data(as_text=True)
    assert "<html" not in text.lower() and "<!doctype" not in text.lower()
    body = rv.get_json()
    assert isinstance(body, dict)
    assert set(body) <= ENVELOPE_KEYS and {"code", "status", "message"} <= set(body), body
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    if "errors" in body:
        assert isinstance(body["errors"], dict) and body["errors"]
    if contains is not None:
        assert contains in body["message"], body
    return body


def field_errors(body: dict[str, Any], location: str = "json") -> dict[str, Any]:
    """``errors.<location>`` of a validation envelope."""
    assert "errors" in body, body
    assert location in body["errors"], body
    return body["errors"][location]


def db_state() -> dict[str, list[tuple]]:
    """Every row the resource API can change, to prove a refused request changed nothing.

    Needs an app context (the ``ctx`` fixture); reads fresh rows, not the session's cache.
    """
    from sqlalchemy import select

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

    columns = {
        User: ("id", "email", "is_admin", "password_hash"),
        Team: ("id", "name"),
        Membership: ("team_id", "user_id", "role"),
        Service: ("id", "team_id", "name", "disabled", "api_key_hash"),
        Expert: ("id", "team_id", "name", "description", "prompt_template", "model_name", "base"),
        Workflow: ("id", "team_id", "name", "description"),
        Node: ("id", "workflow_id", "key", "node_type", "meta"),
        Edge: ("workflow_id", "source_id", "target_id"),
        ExpertService: ("expert_id", "service_id"),
        WorkflowService: ("workflow_id", "service_id"),
    }
    db.session.expire_all()
    state = {}
    for model, names in columns.items():
        rows = db.session.execute(select(*(getattr(model, name) for name in names))).all()
        state[model.__tablename__] = sorted((tuple(repr(v) for v in row) for row in rows))
    return state

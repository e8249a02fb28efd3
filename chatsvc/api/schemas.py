"""marshmallow schemas for request bodies and responses of the resource API.

Loading is strict: unknown fields are rejected (422) by marshmallow's default
``RAISE``; query-string schemas ignore unknown parameters instead, so cache
busters such as ``?_=123`` do not break a list.
"""

from __future__ import annotations

from datetime import timezone

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from chatsvc.models import MAX_ID, MIN_PASSWORD_LENGTH, ROLES

NAME = validate.Length(min=1, max=200)


PASSWORD = validate.Length(min=MIN_PASSWORD_LENGTH, max=1024)


class Timestamp(fields.DateTime):
    """ISO 8601 with an offset; SQLite returns naive datetimes, which are UTC here."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return super()._serialize(value, attr, obj, **kwargs)


def Reference(**kwargs) -> fields.Integer:
    """An id in a body that names another row: a strict integer in the ids' range."""
    return fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ID), **kwargs)


class ErrorSchema(Schema):
    code = fields.Integer(metadata={"description": "HTTP status code"})
    status = fields.String(metadata={"description": "HTTP status name"})
    message = fields.String(metadata={"description": "What went wrong"})
    errors = fields.Dict(metadata={"description": "Validation errors by location and field"})


class PaginationArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=None, validate=validate.Range(min=1))


# --- auth -----------------------------------------------------------------


class LoginSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=320))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


class TokenSchema(Schema):
    access_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()


# --- users and teams ------------------------------------------------------


class UserSchema(Schema):
    id = fields.Integer(dump_only=True)
    email = fields.Email(required=True, validate=validate.Length(max=320))
    password = fields.String(required=True, load_only=True, validate=PASSWORD)
    is_admin = fields.Boolean(load_default=False)
    created_at = Timestamp(dump_only=True)
    updated_at = Timestamp(dump_only=True)


class UserUpdateSchema(Schema):
    password = fields.String(load_only=True, validate=PASSWORD)
    is_admin = fields.Boolean()


class TeamSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=NAME)
    admin_user_id = Reference(load_only=True)
    created_at = Timestamp(dump_only=True)
    updated_at = Timestamp(dump_only=True)


class TeamUpdateSchema(Schema):
    name = fields.String(validate=NAME)


class MemberCreateSchema(Schema):
    user_id = Reference()
    email = fields.Email()
    role = fields.String(load_default="member", validate=validate.OneOf(ROLES))

    @validates_schema
    def _one_identity(self, data: dict, **_kwargs) -> None:
        if ("user_id" in data) == ("email" in data):
            raise ValidationError("Give exactly one of user_id or email", "_schema")


class MemberUpdateSchema(Schema):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))


class MemberSchema(Schema):
    team_id = fields.Integer()
    user_id = fields.Integer()
    email = fields.String(attribute="user.email")
    role = fields.String()
    created_at = Timestamp()


# --- services -------------------------------------------------------------


class ServiceSchema(Schema):
    id = fields.Integer(dump_only=True)
    team_id = Reference(required=True)
    name = fields.String(required=True, validate=NAME)
    key_prefix = fields.String(dump_only=True)
    disabled = fields.Boolean(dump_only=True)
    created_at = Timestamp(dump_only=True)
    updated_at = Timestamp(dump_only=True)


class ServiceWithKeySchema(ServiceSchema):
    """Returned on create and rotate only: the one time the key is shown."""

    api_key = fields.String(dump_only=True)


class ServiceUpdateSchema(Schema):
    name = fields.String(validate=NAME)
    disabled = fields.Boolean()


# --- experts --------------------------------------------------------------


# Optional on experts and workflows: the JSON object the Chat page pre-fills as the run's input.
EXAMPLE_INPUT = fields.Dict(keys=fields.String(), allow_none=True, load_default=None,
                            metadata={"description": "Example input params / starting inputs (a JSON object) "
                                                     "that the Chat page pre-fills"})


class ExpertSchema(Schema):
    id = fields.Integer(dump_only=True)
    team_id = Reference(required=True)
    name = fields.String(required=True, validate=NAME)
    description = fields.String(load_default="", validate=validate.Length(max=10_000))
    prompt_template = fields.String(required=True, validate=validate.Length(min=1, max=200_000))
    model_name = fields.String(load_default="stub", validate=NAME)
    base = fields.Dict(keys=fields.String(), load_default=dict)
    example_input = EXAMPLE_INPUT
    created_at = Timestamp(dump_only=True)
    updated_at = Timestamp(dump_only=True)


class ExpertUpdateSchema(Schema):
    name = fields.String(validate=NAME)
    description = fields.String(validate=validate.Length(max=10_000))
    prompt_template = fields.String(validate=validate.Length(min=1, max=200_000))
    model_name = fields.String(validate=NAME)
    base = fields.Dict(keys=fields.String())
    example_input = EXAMPLE_INPUT


# --- workflows ------------------------------------------------------------


class NodeSchema(Schema):
    id = fields.Integer(dump_only=True)
    key = fields.String(required=True, validate=NAME)
    node_type = fields.String(required=True, validate=validate.Length(min=1, max=50))
    # The model attribute is `meta` (SQLAlchemy reserves `metadata`).
    meta = fields.Dict(keys=fields.String(), data_key="metadata", load_default=dict)


class EdgeSchema(Schema):
    source = fields.String(required=True, validate=NAME)
    target = fields.String(required=True, validate=NAME)


class EdgeOutSchema(Schema):
    source = fields.String(attribute="source.key")
    target = fields.String(attribute="target.key")


GRAPH_LIMIT = validate.Length(max=10_000)


class WorkflowSchema(Schema):
    id = fields.Integer(dump_only=True)
    team_id = Reference(required=True)
    name = fields.String(required=True, validate=NAME)
    description = fields.String(load_default="", validate=validate.Length(max=10_000))
    nodes = fields.List(fields.Nested(NodeSchema), load_default=list, validate=GRAPH_LIMIT)
    edges = fields.List(fields.Nested(EdgeSchema), load_default=list, validate=GRAPH_LIMIT)
    example_input = EXAMPLE_INPUT
    created_at = Timestamp(dump_only=True)
    updated_at = Timestamp(dump_only=True)


class WorkflowOutSchema(WorkflowSchema):
    edges = fields.List(fields.Nested(EdgeOutSchema))


class WorkflowUpdateSchema(Schema):
    name = fields.String(validate=NAME)
    description = fields.String(validate=validate.Length(max=10_000))
    example_input = EXAMPLE_INPUT
    nodes = fields.List(fields.Nested(NodeSchema), validate=GRAPH_LIMIT)
    edges = fields.List(fields.Nested(EdgeSchema), validate=GRAPH_LIMIT)


# --- chat runs ------------------------------------------------------------

MODES = ("sync", "async")


class ExpertRunSchema(Schema):
    expert_id = fields.Integer(required=True, strict=True)
    input_params = fields.Dict(keys=fields.String(), load_default=dict)
    base = fields.Dict(keys=fields.String(), load_default=dict)
    mode = fields.String(load_default="sync", validate=validate.OneOf(MODES))


class WorkflowRunSchema(Schema):
    workflow_id = fields.Integer(required=True, strict=True)
    starting_inputs = fields.Dict(keys=fields.String(), load_default=dict)
    mode = fields.String(load_default="sync", validate=validate.OneOf(MODES))


# The run responses' schemas are chatsvc.runs.shape: one shape for the wire and the document.

"""The domain (SPEC §2) as typed SQLAlchemy 2 models."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from chatsvc import passwords
from chatsvc.extensions import db

# JSONB on PostgreSQL (indexable, compact), plain JSON elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
MIN_PASSWORD_LENGTH = 8  # the API's schemas and accounts.create_user (the CLI) both enforce it

ROLES = ("member", "admin")
API_KEY_PREFIX_LEN = 8


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Ids are INTEGER columns: 32-bit on PostgreSQL. A number outside that range names no row,
# and handing one to the database raises (OverflowError on SQLite, out of range on PostgreSQL).
MAX_ID = 2**31 - 1


def is_possible_id(value: int) -> bool:
    """Whether a row could have this id; look up nothing else (it is a 404, not a 500)."""
    return 1 <= value <= MAX_ID


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TimestampMixin:
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class User(TimestampMixin, db.Model):
    __tablename__ = "users"

    # Stored lower-cased, so the unique index is case-insensitive on every database.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(default=False)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )

    @staticmethod
    def normalize_email(email: str) -> str:
        return email.strip().lower()

    def set_password(self, password: str) -> None:
        self.password_hash = passwords.hash_password(password)

    def check_password(self, password: str) -> bool:
        return passwords.check_password(self.password_hash, password)


class Team(TimestampMixin, db.Model):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(200), unique=True)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="team", cascade="all, delete-orphan"
    )


class Membership(TimestampMixin, db.Model):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("team_id", "user_id"),)

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20), default="member")

    team: Mapped[Team] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(back_populates="memberships")


class Service(TimestampMixin, db.Model):
    """A machine caller of one team, authenticated by an API key."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(API_KEY_PREFIX_LEN))
    disabled: Mapped[bool] = mapped_column(default=False)

    def issue_key(self) -> str:
        """Generate a new key, store only its hash, and return the key (shown once)."""
        key = "csk_" + secrets.token_urlsafe(32)
        self.api_key_hash = hash_api_key(key)
        self.key_prefix = key[:API_KEY_PREFIX_LEN]
        return key

    def key_matches(self, key: str) -> bool:
        return hmac.compare_digest(self.api_key_hash, hash_api_key(key))


class Expert(TimestampMixin, db.Model):
    __tablename__ = "experts"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    prompt_template: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(200), default="stub")
    base: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: Input params the Chat page pre-fills (optional): what a first run should send.
    example_input: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True, default=None)


class Workflow(TimestampMixin, db.Model):
    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    #: Starting inputs the Chat page pre-fills (optional).
    example_input: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True, default=None)

    nodes: Mapped[list[Node]] = relationship(
        back_populates="workflow", cascade="all, delete-orphan", order_by="Node.id"
    )
    edges: Mapped[list[Edge]] = relationship(
        back_populates="workflow", cascade="all, delete-orphan", order_by="Edge.id"
    )


class Node(TimestampMixin, db.Model):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("workflow_id", "key"),)

    workflow_id: Mapped[int] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(200))
    node_type: Mapped[str] = mapped_column(String(50))
    # `metadata` is reserved on declarative models, so the column keeps the API's
    # name while the attribute is `meta`.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)

    workflow: Mapped[Workflow] = relationship(back_populates="nodes")


class Edge(TimestampMixin, db.Model):
    __tablename__ = "edges"

    workflow_id: Mapped[int] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), index=True
    )
    source_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    target_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))

    workflow: Mapped[Workflow] = relationship(back_populates="edges")
    source: Mapped[Node] = relationship(foreign_keys=[source_id])
    target: Mapped[Node] = relationship(foreign_keys=[target_id])


class ExpertService(TimestampMixin, db.Model):
    __tablename__ = "expert_services"
    __table_args__ = (UniqueConstraint("expert_id", "service_id"),)

    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), index=True
    )


class WorkflowService(TimestampMixin, db.Model):
    __tablename__ = "workflow_services"
    __table_args__ = (UniqueConstraint("workflow_id", "service_id"),)

    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), index=True
    )

"""The guardrails SPEC §4 names: a service may use only what it is linked to.

These are the SPEC's public names; the rule itself lives in ``permissions``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from chatsvc.models import Expert, Workflow
from chatsvc.security.targets import service_linked_target


def ensure_service_can_use_expert(session: Session, service_id: int, expert_id: int) -> Expert:
    """Return the expert, or raise 404 if it does not exist and 403 if it is not linked."""
    return service_linked_target(session, Expert, service_id, expert_id)


def ensure_service_can_use_workflow(session: Session, service_id: int, workflow_id: int) -> Workflow:
    """Return the workflow, or raise 404 if it does not exist and 403 if it is not linked."""
    return service_linked_target(session, Workflow, service_id, workflow_id)

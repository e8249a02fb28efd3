"""Guardrails for service callers: a service may use only what it is linked to (SPEC §4)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatsvc.errors import Forbidden, NotFound
from chatsvc.models import Expert, ExpertService, Workflow, WorkflowService, is_possible_id


def ensure_service_can_use_expert(session: Session, service_id: int, expert_id: int) -> Expert:
    """Return the expert, or raise 404 if it does not exist and 403 if it is not linked."""
    expert = session.get(Expert, expert_id) if is_possible_id(expert_id) else None
    if expert is None:
        raise NotFound(f"Expert {expert_id} not found")
    linked = session.scalar(
        select(ExpertService.id).where(
            ExpertService.expert_id == expert_id, ExpertService.service_id == service_id
        )
    )
    if linked is None:
        raise Forbidden(f"This service is not linked to expert {expert_id}")
    return expert


def ensure_service_can_use_workflow(
    session: Session, service_id: int, workflow_id: int
) -> Workflow:
    """Return the workflow, or raise 404 if it does not exist and 403 if it is not linked."""
    workflow = session.get(Workflow, workflow_id) if is_possible_id(workflow_id) else None
    if workflow is None:
        raise NotFound(f"Workflow {workflow_id} not found")
    linked = session.scalar(
        select(WorkflowService.id).where(
            WorkflowService.workflow_id == workflow_id, WorkflowService.service_id == service_id
        )
    )
    if linked is None:
        raise Forbidden(f"This service is not linked to workflow {workflow_id}")
    return workflow

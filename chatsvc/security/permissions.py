"""The one place that decides who may do what (SPEC §4).

Existence is checked before permission: a missing target is 404 for everyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy import Select, select

from chatsvc.errors import Forbidden, NotFound
from chatsvc.extensions import db
from chatsvc.models import Expert, ExpertService, Team, Workflow, WorkflowService, is_possible_id
from chatsvc.security.caller import Caller
from chatsvc.security.guardrails import (
    ensure_service_can_use_expert,
    ensure_service_can_use_workflow,
)


if TYPE_CHECKING:
    from chatsvc.runs.registry import RunInfo


class TeamOwned(Protocol):
    id: int
    team_id: int


T = TypeVar("T")


def get_or_404(model: type[T], ident: int, label: str | None = None) -> T:
    obj = db.session.get(model, ident) if is_possible_id(ident) else None
    if obj is None:
        raise NotFound(f"{label or model.__name__} {ident} not found")
    return obj


def require_platform_admin(caller: Caller) -> None:
    if not caller.is_platform_admin:
        raise Forbidden("Platform admin only")


def require_team_member(caller: Caller, team_id: int) -> None:
    """Users who belong to the team (or platform admins); never services."""
    if caller.is_platform_admin or caller.is_member_of(team_id):
        return
    raise Forbidden(f"Not a member of team {team_id}")


def require_team_admin(caller: Caller, team_id: int) -> None:
    if caller.is_platform_admin or caller.is_admin_of(team_id):
        return
    raise Forbidden(f"Team admin of team {team_id} required")


def team_or_404(team_id: int) -> Team:
    return get_or_404(Team, team_id)


def expert_for_use(caller: Caller, expert_id: int) -> Expert:
    """Load an expert the caller may read and run (404 before 403)."""
    if caller.is_service:
        return ensure_service_can_use_expert(db.session, caller.id, expert_id)
    expert = get_or_404(Expert, expert_id)
    require_team_member(caller, expert.team_id)
    return expert


def workflow_for_use(caller: Caller, workflow_id: int) -> Workflow:
    """Load a workflow the caller may read and run (404 before 403)."""
    if caller.is_service:
        return ensure_service_can_use_workflow(db.session, caller.id, workflow_id)
    workflow = get_or_404(Workflow, workflow_id)
    require_team_member(caller, workflow.team_id)
    return workflow


def manageable(caller: Caller, obj: TeamOwned) -> TeamOwned:
    """Return a team-owned object if the caller may change it (team admin)."""
    require_team_admin(caller, obj.team_id)
    return obj


def visible_experts(caller: Caller) -> Select:
    """A select of the experts the caller may see."""
    return _visible(caller, Expert, ExpertService, ExpertService.expert_id)


def visible_workflows(caller: Caller) -> Select:
    return _visible(caller, Workflow, WorkflowService, WorkflowService.workflow_id)


def _visible(caller: Caller, model, link_model, link_column) -> Select:
    stmt = select(model).order_by(model.id)
    if caller.is_platform_admin:
        return stmt
    if caller.is_service:
        linked = select(link_column).where(link_model.service_id == caller.id)
        return stmt.where(model.id.in_(linked))
    return stmt.where(model.team_id.in_(list(caller.team_roles)))


def can_see_run(caller: Caller, run: RunInfo) -> bool:
    """Platform admins see every run, team admins their team's; anyone else only their own runs,
    and only while they still could start them: a user still in the run's team, a service
    still linked to the run's expert or workflow (SPEC §4: "team member: own runs",
    "service linked to the target: own runs")."""
    if caller.is_platform_admin or caller.is_admin_of(run.team_id):
        return True
    if run.owner != caller.key:
        return False
    if caller.is_user:
        return caller.is_member_of(run.team_id)
    return _service_linked(caller.id, run.kind, run.target_id)


def _service_linked(service_id: int, kind: str, target_id: int) -> bool:
    link, column = (ExpertService, ExpertService.expert_id) if kind == "expert" else (
        WorkflowService, WorkflowService.workflow_id)
    return db.session.scalar(
        select(link.id).where(link.service_id == service_id, column == target_id).limit(1)
    ) is not None
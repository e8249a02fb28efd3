"""The rules: who may do what (SPEC §4). ``targets`` loads what a run needs under them,
``grants`` applies them to stream opens.

Views and services ask here; they do not decide. Existence is checked before
permission: a missing target is 404 for everyone, then 403 for a caller who may
not use it. Runs are the exception SPEC §4 asks for: a run the caller may not see
is 404, as if it did not exist.

- Platform admins may do everything.
- Users act in their teams: members read and run, team admins change things.
- A service reads and runs only the experts and workflows it is linked to (the
  guardrails), and sees only its own runs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from chatsvc.errors import Forbidden, NotFound, Unprocessable
from chatsvc.extensions import db
from chatsvc.models import (
    Expert,
    ExpertService,
    Membership,
    Service,
    Team,
    User,
    Workflow,
    WorkflowService,
    is_possible_id,
)
from chatsvc.runs.model import RunInfo
from chatsvc.runs.registry import RunRegistry
from chatsvc.security.caller import Caller
from chatsvc.services.nodes import ExpertNode
from chatsvc.services.workflow_graph import check_graph


class TeamOwned(Protocol):
    id: int
    team_id: int


T = TypeVar("T")

# What links a service to a kind of target: (link model, its target column).
LINKS = {
    Expert: (ExpertService, ExpertService.expert_id),
    Workflow: (WorkflowService, WorkflowService.workflow_id),
}
_KIND_MODELS = {"expert": Expert, "workflow": Workflow}


def get_or_404(model: type[T], ident: int, label: str | None = None, session: Session | None = None) -> T:
    obj = (session or db.session).get(model, ident) if is_possible_id(ident) else None
    if obj is None:
        raise NotFound(f"{label or model.__name__} {ident} not found")
    return obj


# --- platform and teams -------------------------------------------------------------


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


def require_can_add(caller: Caller, user: User | None, field: str, value: object) -> User:
    """The user a team admin adds to a team (found by ``field`` = ``value``, or None).

    A platform admin may add anyone. A team admin may add only people they can already
    see: members of a team they belong to. Anyone else gets the same answer whether or
    not an account exists, so the endpoint cannot be used to learn who has an account
    (the sign-in answers unknown emails and wrong passwords alike, for the same reason).
    """
    if user is not None and (caller.is_platform_admin or _shares_a_team(caller, user.id)):
        return user
    reach = "" if caller.is_platform_admin else (
        " among the members of your teams (a platform admin adds anyone else)")
    raise Unprocessable("Unknown user", errors={"json": {field: [f"No user {value}{reach}"]}})


def _shares_a_team(caller: Caller, user_id: int) -> bool:
    found = select(Membership.user_id).where(Membership.user_id == user_id,
                                             Membership.team_id.in_(list(caller.team_roles))).limit(1)
    return caller.is_user and db.session.scalar(found) is not None


def team_or_404(team_id: int) -> Team:
    return get_or_404(Team, team_id)


def readable_team(caller: Caller, team_id: int) -> Team:
    """A team its members, and its own services, may read."""
    team = team_or_404(team_id)
    if caller.service_team_id != team_id:
        require_team_member(caller, team_id)
    return team


def visible_teams(caller: Caller) -> Select:
    """A select of the teams the caller belongs to (every team for a platform admin)."""
    stmt = select(Team).order_by(Team.id)
    if caller.is_platform_admin:
        return stmt
    own = [caller.service_team_id] if caller.is_service else list(caller.team_roles)
    return stmt.where(Team.id.in_(own))


def visible_services(caller: Caller) -> Select:
    """A select of the services of the teams the caller administers."""
    stmt = select(Service).order_by(Service.id)
    if caller.is_platform_admin:
        return stmt
    admin_of = [team_id for team_id in caller.team_roles if caller.is_admin_of(team_id)]
    return stmt.where(Service.team_id.in_(admin_of))


def manageable(caller: Caller, obj: TeamOwned) -> TeamOwned:
    """Return a team-owned object if the caller may change it (team admin)."""
    require_team_admin(caller, obj.team_id)
    return obj


# --- experts and workflows ----------------------------------------------------------


def require_linked(model: type, target_id: int, linked: bool) -> None:
    if not linked:
        raise Forbidden(f"This service is not linked to {model.__name__.lower()} {target_id}")


def require_use(caller: Caller, model: type, target_id: int, team_id: int, linked: Callable[[], bool]) -> None:
    """Who may read and run an expert or workflow: a service linked to it, or a member of its team."""
    if caller.is_service:
        require_linked(model, target_id, linked())
    else:
        require_team_member(caller, team_id)


def linked(session: Session, model: type, service_id: int, target_id: int) -> bool:
    link, column = LINKS[model]
    found = select(link.id).where(link.service_id == service_id, column == target_id).limit(1)
    return session.scalar(found) is not None


def check_workflow_graph(
    team_id: int, nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]]
) -> None:
    """Validate a workflow's graph (422 naming the offending nodes), including the rule
    that an ``expert`` node may use only an existing expert of the workflow's own team."""
    check_graph(nodes, edges, _foreign_experts(team_id, nodes))


def _foreign_experts(team_id: int, nodes: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per node key: the problem with the expert an ``expert`` node names, if any."""
    wanted = {}
    for node in nodes:
        expert_id = (node.get("metadata") or {}).get("expert_id")
        if node.get("node_type") == ExpertNode.node_type and type(expert_id) is int:
            wanted[node["key"]] = expert_id
    ids = [expert_id for expert_id in wanted.values() if is_possible_id(expert_id)]
    teams = dict(db.session.execute(select(Expert.id, Expert.team_id).where(Expert.id.in_(ids))).all())
    problems = {}
    for key, expert_id in wanted.items():
        if expert_id not in teams:
            problems[key] = [f"expert {expert_id} does not exist"]
        elif teams[expert_id] != team_id:
            problems[key] = [f"expert {expert_id} belongs to another team"]
    return problems


def visible_experts(caller: Caller) -> Select:
    """A select of the experts the caller may see."""
    return _visible(caller, Expert)


def visible_workflows(caller: Caller) -> Select:
    return _visible(caller, Workflow)


def _visible(caller: Caller, model) -> Select:
    stmt = select(model).order_by(model.id)
    if caller.is_platform_admin:
        return stmt
    if caller.is_service:
        link, column = LINKS[model]
        return stmt.where(model.id.in_(select(column).where(link.service_id == caller.id)))
    return stmt.where(model.team_id.in_(list(caller.team_roles)))


# --- runs --------------------------------------------------------------------------


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
    return linked(db.session, _KIND_MODELS[run.kind], caller.id, run.target_id)


def visible_runs(caller: Caller, registry: RunRegistry) -> list[RunInfo]:
    """The runs the caller may see, newest first."""
    return [run for run in registry.list_runs() if can_see_run(caller, run)]


def visible_run(caller: Caller, registry: RunRegistry, run_id: str) -> RunInfo:
    """The run, or 404 when it is unknown, expired or not the caller's to see."""
    run = registry.get(run_id)
    if run is None or not can_see_run(caller, run):
        raise NotFound(f"Run {run_id} not found")
    return run

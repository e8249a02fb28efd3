"""The one place that decides who may do what (SPEC §4).

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

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Protocol, Sequence, TypeVar

from sqlalchemy import Select, bindparam, event, exists, select
from sqlalchemy.orm import Session

from chatsvc.errors import Forbidden, NotFound, Unauthorized, Unprocessable
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
    is_possible_id,
)
from chatsvc.security.caller import Caller, caller_for_key
from chatsvc.services.expert_runner import ExpertSnapshot
from chatsvc.services.nodes import ExpertNode
from chatsvc.services.workflow_graph import check_graph

if TYPE_CHECKING:
    from chatsvc.runs.model import RunInfo
    from chatsvc.runs.registry import RunRegistry


class TeamOwned(Protocol):
    id: int
    team_id: int


T = TypeVar("T")

# What links a service to a kind of target: (link model, its target column).
_LINKS = {
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


def service_linked_target(session: Session, model: type[T], service_id: int, target_id: int) -> T:
    """The expert or workflow, if the service is linked to it: 404 if it does not exist,
    403 if it is not linked (the guardrails of SPEC §4)."""
    target = get_or_404(model, target_id, session=session)
    _require_linked(model, target_id, _linked(session, model, service_id, target_id))
    return target


def _require_linked(model: type, target_id: int, linked: bool) -> None:
    if not linked:
        raise Forbidden(f"This service is not linked to {model.__name__.lower()} {target_id}")


def _require_use(caller: Caller, model: type, target_id: int, team_id: int, linked: Callable[[], bool]) -> None:
    """Who may read and run an expert or workflow: a service linked to it, or a member of its team."""
    if caller.is_service:
        _require_linked(model, target_id, linked())
    else:
        require_team_member(caller, team_id)


def _linked(session: Session, model: type, service_id: int, target_id: int) -> bool:
    link, column = _LINKS[model]
    found = select(link.id).where(link.service_id == service_id, column == target_id).limit(1)
    return session.scalar(found) is not None


def _for_use(caller: Caller, model: type[T], target_id: int) -> T:
    target = get_or_404(model, target_id)
    _require_use(caller, model, target_id, target.team_id, lambda: _linked(db.session, model, caller.id, target_id))
    return target


def expert_for_use(caller: Caller, expert_id: int) -> Expert:
    """Load an expert the caller may read and run (404 before 403)."""
    return _for_use(caller, Expert, expert_id)


def _select_for_run(model: type, *columns: Any) -> Select:
    """One target's row by ``target_id``: its ``team_id``, ``columns`` and whether the
    service ``service_id`` is linked to it (``linked``)."""
    table = model.__table__.c
    link, target_column = _LINKS[model]
    links = link.__table__.c
    linked = exists().where(links[target_column.key] == table.id, links.service_id == bindparam("service_id"))
    return select(table.team_id, *columns, linked.label("linked")).where(table.id == bindparam("target_id"))


def _row_for_run(caller: Caller, model: type, query: Select, target_id: int) -> Any:
    """The target's row (``_select_for_run``) if the caller may run it: the rule of ``_for_use``."""
    row = None
    if is_possible_id(target_id):
        service_id = caller.id if caller.is_service else None
        row = db.session.connection().execute(query, {"target_id": target_id, "service_id": service_id}).first()
    if row is None:
        raise NotFound(f"{model.__name__} {target_id} not found")
    _require_use(caller, model, target_id, row.team_id, lambda: row.linked)
    return row


_experts = Expert.__table__.c
_EXPERT_FOR_RUN = _select_for_run(Expert, _experts.id, _experts.name, _experts.prompt_template,
                                  _experts.model_name, _experts.base)


def expert_for_run(caller: Caller, expert_id: int) -> ExpertSnapshot:
    """What a run of the expert needs, under the same rule as ``expert_for_use``.

    Runs start here, so it is one query for plain rows (the expert and, for a
    service, its link), not ORM objects.
    """
    row = _row_for_run(caller, Expert, _EXPERT_FOR_RUN, expert_id)
    return ExpertSnapshot(id=row.id, team_id=row.team_id, name=row.name, prompt_template=row.prompt_template,
                          model_name=row.model_name, base=dict(row.base or {}))


@dataclass(frozen=True)
class StoredWorkflow:
    """A workflow as a run reads it: plain rows, as ``services.workflow_graph`` takes them.

    ``nodes``: id, key, node_type, meta (by id); ``edges``: source_id, target_id (by id).
    """

    id: int
    team_id: int
    name: str
    nodes: Sequence[Any]
    edges: Sequence[Any]


_workflows, _nodes, _edges = Workflow.__table__.c, Node.__table__.c, Edge.__table__.c
_WORKFLOW_FOR_RUN = _select_for_run(Workflow, _workflows.id, _workflows.name)
_NODES_OF = (select(_nodes.id, _nodes.key, _nodes.node_type, _nodes["metadata"].label("meta"))
             .where(_nodes.workflow_id == bindparam("workflow_id")).order_by(_nodes.id))
_EDGES_OF = (select(_edges.source_id, _edges.target_id)
             .where(_edges.workflow_id == bindparam("workflow_id")).order_by(_edges.id))


def workflow_for_run(caller: Caller, workflow_id: int) -> StoredWorkflow:
    """The workflow and its graph, under the same rule as ``workflow_for_use``.

    Plain rows, not ORM objects: a workflow of 150 nodes starts in about 3 ms
    rather than 10 (benchmarks/bench_workflow_start.py).
    """
    row = _row_for_run(caller, Workflow, _WORKFLOW_FOR_RUN, workflow_id)
    connection = db.session.connection()
    return StoredWorkflow(id=row.id, team_id=row.team_id, name=row.name,
                          nodes=connection.execute(_NODES_OF, {"workflow_id": row.id}).all(),
                          edges=connection.execute(_EDGES_OF, {"workflow_id": row.id}).all())


def workflow_for_use(caller: Caller, workflow_id: int) -> Workflow:
    """Load a workflow the caller may read and run (404 before 403)."""
    return _for_use(caller, Workflow, workflow_id)


def experts_of_workflow(caller: Caller, workflow: StoredWorkflow) -> dict[int, ExpertSnapshot]:
    """The experts the workflow's ``expert`` nodes use, for running it.

    The caller must be allowed to run each of them, as if it ran them directly:
    a service must be linked to each (SPEC §6.2); for a user who may run the
    workflow this holds already, as they are of the workflow's own team
    (``check_workflow_graph``).
    """
    experts = {}
    for node in workflow.nodes:
        if node.node_type == ExpertNode.node_type:
            expert_id = node.meta["expert_id"]
            experts[expert_id] = expert_for_run(caller, expert_id)
    return experts


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
        link, column = _LINKS[model]
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
    return _linked(db.session, _KIND_MODELS[run.kind], caller.id, run.target_id)


def visible_runs(caller: Caller, registry: RunRegistry) -> list[RunInfo]:
    """The runs the caller may see, newest first."""
    return [run for run in registry.list_runs() if can_see_run(caller, run)]


def visible_run(caller: Caller, registry: RunRegistry, run_id: str) -> RunInfo:
    """The run, or 404 when it is unknown, expired or not the caller's to see."""
    run = registry.get(run_id)
    if run is None or not can_see_run(caller, run):
        raise NotFound(f"Run {run_id} not found")
    return run


# --- stream opens ------------------------------------------------------------------


_TOKEN_CALLER_GONE = "This stream token's caller can no longer see the run"
_last_commit = 0  # which commit of this process came last (StreamGrants)
_commits = itertools.count(1)


@event.listens_for(db.session, "after_commit")
def _note_commit(session: Session) -> None:
    """Any commit may have changed who may see what: StreamGrants stop reusing earlier answers."""
    global _last_commit
    _last_commit = next(_commits)


class StreamGrants:
    """Recent answers to the questions a stream open asks: who is the caller a stream
    token names, today, and may that caller still see this run?

    Every open of a stream with a token asks the database whether its caller still
    exists and may still see the run (a removed member, a disabled or unlinked
    service is refused). 10,000 EventSources (re)connecting to one run at once would
    ask the same question 10,000 times, and one person's Chat page opens a stream per
    run, so an answer is reused for up to ``seconds``
    (``CHATSVC_STREAM_ACCESS_CACHE_SECONDS``): the caller (its flags and team roles)
    per caller, the "yes" per caller and run. Every commit made by this process
    forgets them all: a change made through this process applies to the next open at
    once, one made elsewhere (another worker or host, the CLI) within ``seconds``.
    ``seconds=0``: ask every time. An open stream is never cut off either way.
    Only found callers and "yes" answers are kept: a refusal is asked again.

    Plain dict operations, no lock (as ``caller.VerifiedTokens``); cleared when full.
    """

    def __init__(self, seconds: float, size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._size = size
        self._clock = clock
        self._items: dict[Hashable, tuple[int, float, Any]] = {}  # question -> (last commit, until, answer)

    def caller(self, caller_key: str) -> Caller | None:
        """The caller ``caller_key`` names today (``caller_for_key``), or one found less than ``seconds`` ago."""
        return self._recall(caller_key, lambda: caller_for_key(caller_key))

    def allowed(self, caller_key: str, run_id: str, ask: Callable[[], bool]) -> bool:
        """``ask()``'s answer, or a "yes" it gave less than ``seconds`` ago with no commit since."""
        return bool(self._recall((caller_key, run_id), ask))

    def _recall(self, question: Hashable, ask: Callable[[], T]) -> T:
        as_of = _last_commit  # read before asking: a commit made while we ask voids the answer
        held = self._items.get(question)
        if held is not None and held[0] == as_of and self._clock() < held[1]:
            return held[2]
        answer = ask()
        if answer and self._seconds > 0:
            if len(self._items) >= self._size:
                self._items = {}
            self._items[question] = (as_of, self._clock() + self._seconds, answer)
        return answer


def run_for_stream_token(caller_key: str, registry: RunRegistry, run_id: str, grants: StreamGrants) -> RunInfo:
    """The run a genuine stream token names, for the caller it was issued to (``caller_key``).

    The token proved that caller could see the run when it was issued. If the
    caller is gone or disabled or has lost access since, the token is what
    failed: 401, not 404.
    """
    run = registry.get(run_id)
    caller = grants.caller(caller_key)
    if caller is None:
        raise Unauthorized(_TOKEN_CALLER_GONE)
    if run is None:
        raise NotFound(f"Run {run_id} not found")
    if not grants.allowed(caller_key, run_id, lambda: can_see_run(caller, run)):
        raise Unauthorized(_TOKEN_CALLER_GONE)
    return run

"""Demo data: a team, two users, a linked service, an expert and a diamond workflow.

``seed`` is idempotent: it finds what exists and creates what is missing. Only
the demo service key's hash is in the database, so the key itself is kept in a
file of the instance folder (``demo-service-key``, mode 0600): a later call (a
restart of ``chatsvc serve --demo``) prints the same key, and what it printed
before keeps working. Without that file (or if it no longer matches) the key is
rotated and the file written.
"""

from __future__ import annotations

import os
from typing import Any

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

DEMO_TEAM = "Demo team"
DEMO_MEMBER = "member@example.com"

DEMO_INPUTS: dict[str, Any] = {
    "city": "Lisbon",
    "days": 3,
    "travellers": [{"name": "Ada", "age": 36}, {"name": "Grace", "age": 41}],
    "interests": ["food", "tiles", "music"],
    "budget": 1200,
}

EXPERT_TEMPLATE = """You are a careful travel planner. Today is {{ base.now }} ({{ base.timezone }}).

Plan a {{ input.days }}-day trip to {{ input.city }} for {{ $count(input.travellers) }} \
traveller{{ $count(input.travellers) = 1 ? "" : "s" }}: \
{{ $join(input.travellers[*].name, ", ") }} (average age {{ $round($average(input.travellers.age)) }}).
Interests: {{ input.interests }}.
Budget: {{ input.budget }} {{ base.currency }} in total, {{ $round(input.budget / input.days) }} per day.
Style: {{ base.style }}."""

# start -> greeting ---------------> summary -> advice
#   \---> pause -> stats ---------/
WORKFLOW_NODES = [
    ("start", "input", {}),
    ("greeting", "template", {"template": "Hello {{ $join(input.travellers.name, ' and ') }}!"}),
    ("pause", "sleep", {"seconds": 1}),
    (
        "stats",
        "transform",
        {"expression": "{'people': $count(travellers), 'per_day': $round(budget / days)}"},
    ),
    ("summary", "echo", {}),
    ("advice", "expert", {"output_key": "advice"}),  # expert_id filled in by seed()
]
WORKFLOW_EDGES = [
    ("start", "greeting"),
    ("start", "pause"),
    ("pause", "stats"),
    ("greeting", "summary"),
    ("stats", "summary"),
    ("summary", "advice"),
]


def _get_or_add(model, defaults: dict[str, Any] | None = None, **where: Any):
    found = db.session.scalar(select(model).filter_by(**where))
    if found is None:
        found = model(**where, **(defaults or {}))
        db.session.add(found)
        db.session.flush()
    return found


def _user(email: str, password: str, *, is_admin: bool) -> User:
    user = db.session.scalar(select(User).filter_by(email=email))
    if user is None:
        user = User(email=email, is_admin=is_admin)
        user.set_password(password)
        db.session.add(user)
        db.session.flush()
    return user


def _kept_key(service: Service, key_file: str | None) -> str | None:
    if key_file is None or service.id is None or not os.path.exists(key_file):
        return None
    with open(key_file) as fh:
        key = fh.read().strip()
    return key if key and service.key_matches(key) else None


def _keep_key(key: str, key_file: str | None) -> None:
    if key_file is None:
        return
    os.makedirs(os.path.dirname(key_file), exist_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as fh:
        fh.write(key + "\n")


def seed(admin_email: str, password: str, key_file: str | None = None) -> dict[str, Any]:
    """Create what is missing and return how to use it (the service key from ``key_file`` if it still works)."""
    admin = _user(admin_email, password, is_admin=True)
    member = _user(DEMO_MEMBER, password, is_admin=False)
    team = _get_or_add(Team, name=DEMO_TEAM)
    _get_or_add(Membership, {"role": "admin"}, team_id=team.id, user_id=admin.id)
    _get_or_add(Membership, {"role": "member"}, team_id=team.id, user_id=member.id)

    service = db.session.scalar(select(Service).filter_by(team_id=team.id, name="demo-bot"))
    if service is None:
        service = Service(team_id=team.id, name="demo-bot")
        db.session.add(service)
    key = _kept_key(service, key_file)
    if key is None:
        key = service.issue_key()
        _keep_key(key, key_file)
    db.session.flush()

    expert = _get_or_add(
        Expert,
        {
            "description": "Plans a short city trip from the travellers, interests and budget.",
            "prompt_template": EXPERT_TEMPLATE,
            "model_name": "stub",
            "base": {"currency": "EUR", "style": "concise, friendly"},
            "example_input": DEMO_INPUTS,
        },
        team_id=team.id,
        name="Trip planner",
    )
    workflow = db.session.scalar(select(Workflow).filter_by(team_id=team.id, name="Trip pipeline"))
    if workflow is None:
        workflow = Workflow(
            team_id=team.id,
            name="Trip pipeline",
            description="A diamond: greet and compute stats on two branches (run one after the other), merge, ask the expert.",
            example_input=DEMO_INPUTS,
        )
        db.session.add(workflow)
        nodes = {}
        for key_, node_type, meta in WORKFLOW_NODES:
            if node_type == "expert":
                meta = {**meta, "expert_id": expert.id}
            nodes[key_] = Node(key=key_, node_type=node_type, meta=meta)
            workflow.nodes.append(nodes[key_])
        db.session.flush()
        for source, target in WORKFLOW_EDGES:
            workflow.edges.append(Edge(source=nodes[source], target=nodes[target]))
        db.session.flush()
    for item in (expert, workflow):  # demo data seeded before example inputs existed
        if item.example_input is None:
            item.example_input = DEMO_INPUTS
    _get_or_add(ExpertService, expert_id=expert.id, service_id=service.id)
    _get_or_add(WorkflowService, workflow_id=workflow.id, service_id=service.id)
    db.session.commit()
    return {
        "admin_email": admin.email,
        "admin_password": password,
        "member_email": member.email,
        "member_password": password,  # a team member, not an admin: to see what members may do
        "team_id": team.id,
        "service_id": service.id,
        "service_api_key": key,
        "expert_id": expert.id,
        "workflow_id": workflow.id,
        "starting_inputs": DEMO_INPUTS,
    }

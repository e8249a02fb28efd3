"""What a run loads under the rules (security/targets.py), without HTTP: one check, few queries."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from chatsvc.errors import Forbidden, NotFound, Unprocessable
from chatsvc.extensions import db
from chatsvc.security.caller import caller_for_key
from chatsvc.security.targets import runnable_workflow


@pytest.fixture
def statements(app):
    """The SQL statements the test's code sends (one list per test)."""
    sent: list[str] = []
    with app.app_context():
        engine = db.engine

        def count(conn, cursor, statement, *args) -> None:
            sent.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        yield sent
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
def expert_workflow(world, make_expert, make_workflow):
    """A workflow whose three expert nodes use two experts (one of them twice)."""
    other = make_expert(world.team)
    return make_workflow(world.team, nodes=(
        ("in", "input", {}),
        ("e1", "expert", {"expert_id": world.expert.id}),
        ("e2", "expert", {"expert_id": other.id}),
        ("e3", "expert", {"expert_id": world.expert.id}),
    ), edges=(("in", "e1"), ("e1", "e2"), ("e2", "e3"))), other


def caller(world, name: str):
    if name in world.users:
        return caller_for_key(f"user:{world.users[name].id}")
    return caller_for_key(f"service:{world.services[name].id}")


def test_a_workflow_and_every_expert_it_uses_load_in_a_few_queries(world, expert_workflow, statements):
    workflow, other = expert_workflow
    member = caller(world, "member")
    workflow_id, expert_ids = workflow.id, {world.expert.id, other.id}
    statements.clear()
    runnable = runnable_workflow(member, workflow_id)
    sent = list(statements)
    assert set(runnable.experts) == expert_ids  # each once
    assert [node.key for node in runnable.graph.topological_order()] == ["in", "e1", "e2", "e3"]
    # the workflow (+ the caller's right to it), its nodes, its edges, the graph's experts
    # (their team, for the check), the experts for the run: not one query per expert node
    assert len(sent) == 5, sent


def test_a_service_must_be_linked_to_every_expert_of_the_workflow(world, expert_workflow, make_service):
    workflow, other = expert_workflow
    service = make_service(world.team, experts=(world.expert,), workflows=(workflow,))
    with pytest.raises(Forbidden, match=f"not linked to expert {other.id}"):
        runnable_workflow(caller_for_key(f"service:{service.id}"), workflow.id)
    both = make_service(world.team, experts=(world.expert, other), workflows=(workflow,))
    assert set(runnable_workflow(caller_for_key(f"service:{both.id}"), workflow.id).experts) == {
        world.expert.id, other.id}


@pytest.mark.parametrize("name, error", [
    ("outsider", Forbidden), ("unlinked_service", Forbidden), ("member", None), ("linked_service", None),
])
def test_who_may_run_the_workflow(world, name, error):
    if error is None:
        assert runnable_workflow(caller(world, name), world.workflow.id).id == world.workflow.id
    else:
        with pytest.raises(error):
            runnable_workflow(caller(world, name), world.workflow.id)


def test_a_missing_workflow_is_not_found_before_anything_else(world):
    with pytest.raises(NotFound):
        runnable_workflow(caller(world, "outsider"), 987654)


def test_a_graph_that_went_bad_since_it_was_saved_is_refused(world, make_workflow, make_expert, make_team):
    foreign = make_expert(make_team())
    workflow = make_workflow(world.team, nodes=(("e", "expert", {"expert_id": foreign.id}),))
    with pytest.raises(Unprocessable, match="Invalid metadata"):
        runnable_workflow(caller(world, "member"), workflow.id)

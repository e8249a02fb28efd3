"""SPEC §4's guardrail functions, called as the SPEC names them: 404 before 403, linked targets returned."""

from __future__ import annotations

import pytest

from chatsvc.errors import Forbidden, NotFound
from chatsvc.extensions import db
from chatsvc.models import MAX_ID
from chatsvc.security.guardrails import ensure_service_can_use_expert, ensure_service_can_use_workflow

GUARDRAILS = pytest.mark.parametrize("guard, target", [
    (ensure_service_can_use_expert, "expert"),
    (ensure_service_can_use_workflow, "workflow"),
])


@GUARDRAILS
def test_a_linked_service_gets_the_target(world, guard, target):
    wanted = getattr(world, target)
    assert guard(db.session, world.services["linked_service"].id, wanted.id) is wanted


@GUARDRAILS
def test_an_unlinked_service_is_forbidden(world, guard, target):
    with pytest.raises(Forbidden, match=f"not linked to {target}"):
        guard(db.session, world.services["unlinked_service"].id, getattr(world, target).id)


@GUARDRAILS
@pytest.mark.parametrize("missing_id", [10_000, MAX_ID + 1, 0])
def test_a_missing_target_is_not_found_for_any_service(world, guard, target, missing_id):
    for service in world.services.values():  # existence first: linked or not, it is 404
        with pytest.raises(NotFound):
            guard(db.session, service.id, missing_id)

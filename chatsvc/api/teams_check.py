"""Checks for a ``team_id`` given in a request body."""

from chatsvc.errors import Unprocessable
from chatsvc.extensions import db
from chatsvc.models import Team


def existing_team_id(team_id: int) -> int:
    """A body's team_id must name a team: 422 (the body is wrong), not 404."""
    if db.session.get(Team, team_id) is None:
        raise Unprocessable(
            "Unknown team", errors={"json": {"team_id": [f"Team {team_id} does not exist"]}}
        )
    return team_id

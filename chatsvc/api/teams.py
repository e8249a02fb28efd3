"""Teams and their members."""

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from chatsvc import accounts
from chatsvc.errors import NotFound
from chatsvc.extensions import db
from chatsvc.models import Membership, User
from chatsvc.security.caller import authenticate, get_caller
from chatsvc.security.permissions import (
    readable_team,
    require_can_add,
    require_platform_admin,
    require_team_admin,
    require_team_member,
    team_or_404,
    visible_teams,
)

from .pagination import paginate
from .schemas import (
    MemberCreateSchema,
    MemberSchema,
    MemberUpdateSchema,
    PaginationArgs,
    TeamSchema,
    TeamUpdateSchema,
)

blp = Blueprint("teams", __name__, url_prefix="/api/v1/teams", description="Teams and members")
blp.before_request(authenticate)


def _membership_or_404(team_id: int, user_id: int) -> Membership:
    membership = db.session.scalar(
        select(Membership).where(Membership.team_id == team_id, Membership.user_id == user_id)
    )
    if membership is None:
        raise NotFound(f"User {user_id} is not a member of team {team_id}")
    return membership


@blp.route("")
class Teams(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, TeamSchema(many=True))
    def get(self, args):
        """List the teams the caller belongs to (all of them for a platform admin)."""
        return paginate(visible_teams(get_caller()), args)

    @blp.arguments(TeamSchema)
    @blp.response(201, TeamSchema)
    def post(self, body):
        """Create a team, optionally with its first admin."""
        require_platform_admin(get_caller())
        team = accounts.create_team(body["name"], admin_user_id=body.get("admin_user_id"))
        return team, 201, {"Location": url_for("teams.TeamItem", team_id=team.id)}


@blp.route("/<int:team_id>")
class TeamItem(MethodView):
    @blp.response(200, TeamSchema)
    def get(self, team_id):
        """Get a team."""
        return readable_team(get_caller(), team_id)

    @blp.arguments(TeamUpdateSchema)
    @blp.response(200, TeamSchema)
    def patch(self, body, team_id):
        """Rename a team."""
        team = team_or_404(team_id)
        require_team_admin(get_caller(), team_id)
        if "name" in body:
            team.name = body["name"]
        db.session.commit()
        return team

    @blp.response(204)
    def delete(self, team_id):
        """Delete a team and everything it owns."""
        team = team_or_404(team_id)
        require_platform_admin(get_caller())
        db.session.delete(team)
        db.session.commit()


@blp.route("/<int:team_id>/members")
class Members(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, MemberSchema(many=True))
    def get(self, args, team_id):
        """List a team's members."""
        team_or_404(team_id)
        require_team_member(get_caller(), team_id)
        stmt = select(Membership).where(Membership.team_id == team_id).order_by(Membership.user_id)
        return paginate(stmt, args)

    @blp.arguments(MemberCreateSchema)
    @blp.response(201, MemberSchema)
    def post(self, body, team_id):
        """Add a user to a team, by user id or email."""
        team_or_404(team_id)
        caller = get_caller()
        require_team_admin(caller, team_id)
        if "user_id" in body:
            user, field = db.session.get(User, body["user_id"]), "user_id"
        else:
            user, field = accounts.find_user(body["email"]), "email"
        user = require_can_add(caller, user, field, body[field])
        membership = Membership(team_id=team_id, user=user, role=body["role"])
        db.session.add(membership)
        db.session.commit()
        location = url_for("teams.MemberItem", team_id=team_id, user_id=user.id)
        return membership, 201, {"Location": location}


@blp.route("/<int:team_id>/members/<int:user_id>")
class MemberItem(MethodView):
    @blp.response(200, MemberSchema)
    def get(self, team_id, user_id):
        """Get one membership."""
        team_or_404(team_id)
        membership = _membership_or_404(team_id, user_id)  # 404 before 403
        require_team_member(get_caller(), team_id)
        return membership

    @blp.arguments(MemberUpdateSchema)
    @blp.response(200, MemberSchema)
    def patch(self, body, team_id, user_id):
        """Change a member's role."""
        team_or_404(team_id)
        membership = _membership_or_404(team_id, user_id)  # 404 before 403
        require_team_admin(get_caller(), team_id)
        membership.role = body["role"]
        db.session.commit()
        return membership

    @blp.response(204)
    def delete(self, team_id, user_id):
        """Remove a member from a team."""
        team_or_404(team_id)
        membership = _membership_or_404(team_id, user_id)  # 404 before 403
        require_team_admin(get_caller(), team_id)
        db.session.delete(membership)
        db.session.commit()

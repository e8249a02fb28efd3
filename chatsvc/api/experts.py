"""Experts: prompt templates sent to an LLM."""

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from chatsvc.extensions import db
from chatsvc.models import Expert, ExpertService
from chatsvc.security.caller import authenticate, get_caller
from chatsvc.security.permissions import (
    get_or_404,
    manageable,
    require_team_admin,
    visible_experts,
)
from chatsvc.security.targets import expert_for_use

from .links import register_link_routes
from .pagination import paginate
from .schemas import ExpertSchema, ExpertUpdateSchema, PaginationArgs
from .teams_check import existing_team_id

blp = Blueprint("experts", __name__, url_prefix="/api/v1/experts", description="Experts")
blp.before_request(authenticate)


@blp.route("")
class Experts(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, ExpertSchema(many=True))
    def get(self, args):
        """List the experts the caller may use."""
        return paginate(visible_experts(get_caller()), args)

    @blp.arguments(ExpertSchema)
    @blp.response(201, ExpertSchema)
    def post(self, body):
        """Create an expert."""
        require_team_admin(get_caller(), existing_team_id(body["team_id"]))
        expert = Expert(**body)
        db.session.add(expert)
        db.session.commit()
        return expert, 201, {"Location": url_for("experts.ExpertItem", expert_id=expert.id)}


@blp.route("/<int:expert_id>")
class ExpertItem(MethodView):
    @blp.response(200, ExpertSchema)
    def get(self, expert_id):
        """Get an expert."""
        return expert_for_use(get_caller(), expert_id)

    @blp.arguments(ExpertUpdateSchema)
    @blp.response(200, ExpertSchema)
    def patch(self, body, expert_id):
        """Change an expert."""
        expert = manageable(get_caller(), get_or_404(Expert, expert_id))
        for name, value in body.items():
            setattr(expert, name, value)
        db.session.commit()
        return expert

    @blp.response(204)
    def delete(self, expert_id):
        """Delete an expert."""
        expert = manageable(get_caller(), get_or_404(Expert, expert_id))
        db.session.delete(expert)
        db.session.commit()


register_link_routes(blp, Expert, ExpertService, "expert_id")

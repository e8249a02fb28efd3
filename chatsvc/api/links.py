"""Links between a service and an expert or workflow, shared by both resources."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from chatsvc.errors import Unprocessable
from chatsvc.extensions import db
from chatsvc.models import Service
from chatsvc.security.caller import get_caller
from chatsvc.security.permissions import get_or_404, manageable, require_team_member

from .pagination import paginate
from .schemas import PaginationArgs, ServiceSchema


def register_link_routes(blp: Blueprint, target_model, link_model, target_field: str) -> None:
    """Add ``GET /<id>/services`` and ``PUT``/``DELETE /<id>/services/<service_id>`` to ``blp``."""
    label = target_model.__name__
    target_column = getattr(link_model, target_field)

    def find_link(target_id: int, service_id: int):
        return db.session.scalar(
            select(link_model).where(target_column == target_id, link_model.service_id == service_id)
        )

    class LinkedServices(MethodView):
        @blp.arguments(PaginationArgs, location="query")
        @blp.response(200, ServiceSchema(many=True))
        def get(self, args, target_id):
            """List the services linked to this resource."""
            target = get_or_404(target_model, target_id)
            require_team_member(get_caller(), target.team_id)
            linked = select(link_model.service_id).where(target_column == target_id)
            return paginate(select(Service).where(Service.id.in_(linked)).order_by(Service.id), args)

    class Link(MethodView):
        @blp.response(204)
        def put(self, target_id, service_id):
            """Let the service use this resource (idempotent)."""
            target = get_or_404(target_model, target_id)
            service = get_or_404(Service, service_id)  # both exist before any permission check
            manageable(get_caller(), target)
            if service.team_id != target.team_id:
                raise Unprocessable(
                    f"Service {service_id} belongs to another team than {label.lower()} {target_id}",
                    errors={"path": {"service_id": ["Service must be of the same team"]}},
                )
            if find_link(target_id, service_id) is None:
                db.session.add(link_model(**{target_field: target_id, "service_id": service_id}))
                db.session.commit()

        @blp.response(204)
        def delete(self, target_id, service_id):
            """Remove the service's access to this resource (idempotent)."""
            target = get_or_404(target_model, target_id)
            get_or_404(Service, service_id)  # both exist before any permission check
            manageable(get_caller(), target)
            link = find_link(target_id, service_id)
            if link is not None:
                db.session.delete(link)
                db.session.commit()

    LinkedServices.__name__ = f"{label}LinkedServices"
    Link.__name__ = f"{label}ServiceLink"
    blp.route("/<int:target_id>/services", endpoint=LinkedServices.__name__)(LinkedServices)
    blp.route("/<int:target_id>/services/<int:service_id>", endpoint=Link.__name__)(Link)

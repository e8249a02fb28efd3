"""Services: machine callers with API keys (the key is shown once)."""

from flask import url_for
from flask.views import MethodView
from flask_smorest import Blueprint

from chatsvc import accounts
from chatsvc.extensions import db
from chatsvc.models import Service
from chatsvc.security.caller import authenticate, get_caller
from chatsvc.security.permissions import get_or_404, manageable, require_team_admin, visible_services

from .pagination import paginate
from .schemas import PaginationArgs, ServiceSchema, ServiceUpdateSchema, ServiceWithKeySchema
from .teams_check import existing_team_id

blp = Blueprint("services", __name__, url_prefix="/api/v1/services", description="Services and API keys")
blp.before_request(authenticate)


def _with_key(service: Service, key: str) -> Service:
    """Attach the clear key for this one response; it is never stored."""
    service.api_key = key
    return service


@blp.route("")
class Services(MethodView):
    @blp.arguments(PaginationArgs, location="query")
    @blp.response(200, ServiceSchema(many=True))
    def get(self, args):
        """List the services of the teams the caller administers."""
        return paginate(visible_services(get_caller()), args)

    @blp.arguments(ServiceSchema)
    @blp.response(201, ServiceWithKeySchema)
    def post(self, body):
        """Create a service; the response is the only time its API key is shown."""
        require_team_admin(get_caller(), existing_team_id(body["team_id"]))
        service, key = accounts.create_service(body["team_id"], body["name"])
        return _with_key(service, key), 201, {"Location": url_for("services.ServiceItem", service_id=service.id)}


@blp.route("/<int:service_id>")
class ServiceItem(MethodView):
    @blp.response(200, ServiceSchema)
    def get(self, service_id):
        """Get a service (never its key)."""
        return manageable(get_caller(), get_or_404(Service, service_id))

    @blp.arguments(ServiceUpdateSchema)
    @blp.response(200, ServiceSchema)
    def patch(self, body, service_id):
        """Rename, disable or enable a service."""
        service = manageable(get_caller(), get_or_404(Service, service_id))
        for name, value in body.items():
            setattr(service, name, value)
        db.session.commit()
        return service

    @blp.response(204)
    def delete(self, service_id):
        """Delete a service; its key stops working at once."""
        service = manageable(get_caller(), get_or_404(Service, service_id))
        db.session.delete(service)
        db.session.commit()


@blp.route("/<int:service_id>/rotate-key")
class RotateKey(MethodView):
    @blp.response(200, ServiceWithKeySchema)
    def post(self, service_id):
        """Issue a new API key; the old one stops working at once."""
        service = manageable(get_caller(), get_or_404(Service, service_id))
        key = service.issue_key()
        db.session.commit()
        return _with_key(service, key)

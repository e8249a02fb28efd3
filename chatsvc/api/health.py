"""Liveness and readiness probes."""

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import text

from chatsvc.errors import ServiceUnavailable
from chatsvc.extensions import db
from chatsvc.runtime import current_runtime

blp = Blueprint("health", __name__, description="Probes")


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200)
    def get(self):
        """The process is alive."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200)
    def get(self):
        """The database and the run registry answer."""
        checks = {}
        try:
            db.session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception:  # any driver error means "not ready", never a 500
            current_app.logger.exception("readiness: database check failed")
            db.session.rollback()
            raise ServiceUnavailable("Database unreachable", retry_after=5) from None
        if not current_runtime().registry.ping():
            raise ServiceUnavailable("Run registry unreachable", retry_after=5)
        checks["registry"] = "ok"
        return {"status": "ok", "checks": checks}

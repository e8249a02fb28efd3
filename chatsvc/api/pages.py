"""The Chat page, the Swagger UI files and the Prometheus endpoint (not part of the JSON API)."""

from flask import Blueprint, Response, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from chatsvc.runs.runtime import current_runtime

bp = Blueprint("pages", __name__)


@bp.get("/")
def chat_page():
    """The Chat page: static HTML, CSS and vanilla JS."""
    response = send_from_directory(current_app.static_folder, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/api/v1/docs/assets/<path:filename>")
def swagger_ui_asset(filename: str):
    """Swagger UI's JS and CSS from the swagger-ui-bundle package, so /api/v1/docs needs no CDN."""
    return send_from_directory(str(swagger_ui_path), filename, max_age=3600)


@bp.get("/metrics")
def metrics():
    """Prometheus text format."""
    return Response(current_runtime().metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

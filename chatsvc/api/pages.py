"""The Chat page, the Swagger UI files and the Prometheus endpoint (not part of the JSON API)."""

from flask import Blueprint, Response, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from chatsvc.runtime import current_runtime

bp = Blueprint("pages", __name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"  # the text format generate_latest writes


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
    # content_type, not mimetype: werkzeug would append a second "; charset=utf-8".
    return Response(current_runtime().metrics.render(), content_type=PROMETHEUS_TEXT)


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for it on every page; the page itself links the same icon."""
    return send_from_directory(current_app.static_folder, "favicon.svg", mimetype="image/svg+xml", max_age=86400)

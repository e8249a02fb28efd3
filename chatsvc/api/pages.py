"""The Chat page and the Prometheus endpoint (not part of the JSON API)."""

from flask import Blueprint, Response, current_app, send_from_directory

from chatsvc.runs.runtime import current_runtime

bp = Blueprint("pages", __name__)


@bp.get("/")
def chat_page():
    """The Chat page: static HTML, CSS and vanilla JS."""
    response = send_from_directory(current_app.static_folder, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/metrics")
def metrics():
    """Prometheus text format."""
    return Response(current_runtime().metrics.render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

"""gunicorn settings for chatsvc, read from the environment.

Loaded by file path (``chatsvc serve`` and the top-level ``gunicorn.conf.py``)
so that the gunicorn master never imports the app: gevent patches each worker
before the app, its locks and its HTTP clients are created there. gevent workers: each holds thousands of open
SSE streams. The app is created in each worker after the fork (no preload), so
gevent has patched threading before the registry and executor create locks.
"""

import gc
import json
import logging
import os
import pathlib
import runpy
import signal
import time

from gunicorn import util
from gunicorn.glogging import Logger

log = logging.getLogger("gunicorn.error")


# Loaded by path, as this file is: importing chatsvc.envvars would import the package.
_envvars = runpy.run_path(str(pathlib.Path(__file__).with_name("envvars.py")))


def _int(name: str, default: int) -> int:
    return _envvars["env_int"](os.environ, name, default)


bind = os.environ.get("CHATSVC_BIND") or (
    f"{os.environ.get('CHATSVC_HOST') or '127.0.0.1'}:{os.environ.get('CHATSVC_PORT') or '8000'}"
)
worker_class = "gevent"
worker_connections = _int("CHATSVC_WORKER_CONNECTIONS", 2000)
_registry_url = _envvars["registry_url"](os.environ)
# With Redis every worker serves every run: one gevent worker per core by default.
workers = _int("CHATSVC_WORKERS", 1 if _registry_url.startswith("memory://") else (os.cpu_count() or 1))
timeout = _int("CHATSVC_WORKER_TIMEOUT", 30)
graceful_timeout = _int("CHATSVC_GRACEFUL_TIMEOUT", 30)
keepalive = _int("CHATSVC_KEEPALIVE", 5)
preload_app = False
# gunicorn's control socket defaults to one fixed path per user, which several
# servers on one host would fight over; enable it explicitly if you use it.
control_socket_disable = os.environ.get("CHATSVC_GUNICORN_CONTROL_SOCKET", "") == ""
if not control_socket_disable:
    control_socket = os.environ["CHATSVC_GUNICORN_CONTROL_SOCKET"]
accesslog = "-"
errorlog = "-"


class AccessLogger(Logger):
    """gunicorn's logger, with a cheaper access line of a fixed format.

    ``remote "METHOD /path HTTP/1.1" status bytes Nms``: the path without the
    query string, so stream tokens (?token=) stay out of the logs. gunicorn's own
    access() builds a dict of every header and environ entry per request; when
    10,000 streams end together that delayed the last `done` by about a second.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        self.access_log.info(
            '%s "%s %s %s" %s %s %dms',
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            environ.get("SERVER_PROTOCOL"),
            status,
            "-" if getattr(resp, "sent", None) is None else resp.sent,
            request_time.total_seconds() * 1000,
        )


logger_class = AccessLogger


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answers (414, 431, 400 for a malformed request...) in the JSON envelope.

    gunicorn writes these itself, before the app sees a request, as small HTML
    pages; every chatsvc error is the envelope, so its writer is replaced in
    each worker (``post_worker_init``). Same signature as ``gunicorn.util.write_error``.
    """
    body = json.dumps({"code": status_int, "status": reason, "message": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)

MEMORY_REGISTRY_WORKERS_NOTE = (
    "CHATSVC_REGISTRY_URL is memory://: runs live in one process, so gunicorn runs "
    "exactly one (gevent) worker"
)
if _registry_url.startswith("memory://") and workers != 1:
    _requested_workers = workers
    workers = 1
else:
    _requested_workers = None


def on_starting(server) -> None:
    """Log the worker-count rule, and when it overrode CHATSVC_WORKERS."""
    if _requested_workers is not None:
        server.log.warning(
            "%s (CHATSVC_WORKERS=%s ignored)", MEMORY_REGISTRY_WORKERS_NOTE, _requested_workers
        )
    elif _registry_url.startswith("memory://"):
        server.log.info(MEMORY_REGISTRY_WORKERS_NOTE)


# --- graceful shutdown (SPEC §12) ---------------------------------------------------
# On SIGTERM gunicorn stops accepting and waits up to graceful_timeout for open
# connections, then the worker exits. Runs are not connections, so the app is
# told too: it takes no new runs, closes streams that can resume elsewhere, and
# gives its live runs the rest of the graceful window before ending them as
# failed ``ShuttingDown``. A margin keeps that inside the arbiter's SIGKILL.
SHUTDOWN_MARGIN_SECONDS = 2


def post_worker_init(worker) -> None:
    """Start the app's shutdown as soon as the worker receives SIGTERM."""
    # A log record would otherwise look up the current thread, which under gevent
    # builds a dummy Thread object for every greenlet that logs (no format uses it).
    logging.logThreads = False
    util.write_error = write_json_error  # gunicorn.workers.base calls util.write_error
    # Everything loaded so far (modules, classes, the app) lives as long as the worker:
    # out of every later full garbage collection, which would otherwise walk it all
    # each time (~150,000 objects, ~75 ms a collection; docs/performance.md).
    gc.freeze()
    gunicorn_handler = worker.handle_exit

    def handle_exit(sig, frame) -> None:
        gunicorn_handler(sig, frame)
        if getattr(worker, "chatsvc_shutdown_deadline", None) is None:
            worker.chatsvc_shutdown_deadline = time.monotonic() + graceful_timeout - SHUTDOWN_MARGIN_SECONDS
            import gevent  # the worker class is gevent's; only imported inside a worker

            gevent.spawn(_shut_down_app, worker)

    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server, worker) -> None:
    """The worker's loop ended (SIGTERM, reload, max requests): finish the app's shutdown."""
    _shut_down_app(worker)


def _shut_down_app(worker) -> None:
    shutdown = getattr(worker.wsgi, "extensions", {}).get("chatsvc.shutdown")
    if shutdown is None:
        return
    deadline = getattr(worker, "chatsvc_shutdown_deadline", None)
    shutdown(0.0 if deadline is None else max(0.0, deadline - time.monotonic()))

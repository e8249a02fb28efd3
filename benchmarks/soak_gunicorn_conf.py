"""gunicorn config for leak hunting: chatsvc's own settings plus a diagnostics dump on SIGUSR2.

Used by ``benchmarks/soak.py --diag DIR`` (nothing in ``chatsvc/`` changes):

    python -m gunicorn -c benchmarks/soak_gunicorn_conf.py --pythonpath . 'chatsvc:create_app()'

Everything ``chatsvc/gunicorn_config.py`` defines is loaded as it is; ``post_worker_init``
runs chatsvc's hook first (which ``gc.freeze()``s everything loaded at start-up), then, in
each worker:

- starts ``tracemalloc`` with ``SOAK_TRACEMALLOC_FRAMES`` frames (0 or unset: no tracing;
  tracing costs CPU and memory of its own, so RSS figures of such a run are not the service's);
- on ``SIGUSR2`` (send it to a *worker*: to the master it means "re-exec"), in a new greenlet,
  writes to ``SOAK_DIAG_DIR``:
  ``<pid>-<n>.json``: RSS, gc-tracked objects by type (the frozen start-up objects are not
  among them), and the sizes of chatsvc's per-process bookkeeping (registry, executor,
  follower, caches, metric label sets); and ``<pid>-<n>.tm``: the tracemalloc snapshot
  (``tracemalloc.Snapshot.load`` reads it; ``soak.py`` compares two of them). When the file
  ``SOAK_DIAG_DIR/trim`` exists (soak.py's last sample), it then calls glibc's ``malloc_trim(0)``
  and records the RSS after it: the part of the RSS that is freed memory the allocator kept.

Reads chatsvc internals with ``getattr`` defaults: a renamed attribute shows as missing
(``null``), it does not break the server.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import runpy
import signal
import sys
import time
import tracemalloc
from collections import Counter

_ROOT = os.environ.get("SOAK_CHATSVC_ROOT") or pathlib.Path(__file__).resolve().parent.parent
_CHATSVC_CONFIG = pathlib.Path(_ROOT) / "chatsvc" / "gunicorn_config.py"
_base = runpy.run_path(str(_CHATSVC_CONFIG))
globals().update({name: value for name, value in _base.items() if not name.startswith("__")})
_chatsvc_post_worker_init = _base["post_worker_init"]

_dumps = 0


def post_worker_init(worker) -> None:  # noqa: F811  (wraps chatsvc's)
    _chatsvc_post_worker_init(worker)
    frames = int(os.environ.get("SOAK_TRACEMALLOC_FRAMES") or 0)
    if frames > 0:
        tracemalloc.start(frames)
    out_dir = os.environ.get("SOAK_DIAG_DIR")
    if not out_dir:
        return
    import gevent  # a gevent worker: the dump runs in a greenlet of its own, not inside a handler

    gevent.signal_handler(signal.SIGUSR2, _dump, worker, out_dir)


def _len(obj, *path):
    """len() of obj.a.b..., or None when some attribute does not exist."""
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    try:
        return len(obj)
    except TypeError:
        return None


def _rss_kb() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _bookkeeping(app) -> dict:
    """Sizes of the per-process structures that could grow with the number of runs."""
    out: dict = {}
    runtime = app.extensions.get("chatsvc.runtime")
    if runtime is None:
        return out
    reg = runtime.registry
    out["registry.type"] = type(reg).__name__
    for name in ("_runs", "_live", "_live_by_owner", "_finished_order", "_held", "_cancel_checked", "_cancelled"):
        if hasattr(reg, name):
            out[f"registry.{name}"] = _len(reg, name)
    follower = getattr(reg, "_follower", None)
    if follower is not None:
        out["follower._runs"] = _len(follower, "_runs")
    ex = runtime.executor
    out["executor._contexts"] = _len(ex, "_contexts")
    out["executor._done"] = _len(ex, "_done")
    out["executor._queued"] = getattr(ex, "_queued", None)
    pool = getattr(ex, "_pool", None)
    out["executor.pool._threads"] = _len(pool, "_threads")
    work_queue = getattr(pool, "_work_queue", None)
    out["executor.pool._work_queue"] = work_queue.qsize() if work_queue is not None else None
    out["stream_grants._items"] = _len(runtime, "stream_grants", "_items")
    tokens = app.extensions.get("chatsvc.verified_tokens")
    out["verified_tokens._items"] = _len(tokens, "_verified", "_items") if tokens is not None else None
    try:
        from chatsvc.runs.feed import feeds_alive

        out["feeds_alive"] = feeds_alive()
    except Exception as exc:  # noqa: BLE001
        out["feeds_alive"] = repr(exc)
    try:
        from chatsvc.services.jsonata import expressions, pool as jsonata_pool

        pool_ = getattr(jsonata_pool, "_pool", None)
        for name in ("_lanes", "_held", "_suspects", "_idle"):
            out[f"jsonata.pool.{name}"] = _len(pool_, name) if pool_ is not None else None
        out["jsonata.expressions.compile_cache"] = expressions.compile_expression.cache_info().currsize
    except Exception as exc:  # noqa: BLE001
        out["jsonata"] = repr(exc)
    try:  # label sets per metric: a label made of raw paths or ids would grow here
        families = {}
        for family in runtime.metrics.registry.collect():
            families[family.name] = len(family.samples)
        out["metrics.samples"] = families
    except Exception as exc:  # noqa: BLE001
        out["metrics"] = repr(exc)
    try:
        from chatsvc.extensions import db

        with app.app_context():
            out["db.pool"] = db.engine.pool.status()
    except Exception as exc:  # noqa: BLE001
        out["db.pool"] = repr(exc)
    return out


def _dump(worker, out_dir: str) -> None:
    global _dumps
    _dumps += 1
    started = time.monotonic()
    stem = os.path.join(out_dir, f"{os.getpid()}-{_dumps:03d}")
    gc.collect()
    objects = gc.get_objects()
    by_type = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    report = {
        "pid": os.getpid(),
        "n": _dumps,
        "time": time.time(),
        "rss_kb": _rss_kb(),
        "gc_objects": len(objects),
        "gc_frozen": gc.get_freeze_count(),
        "gc_garbage": len(gc.garbage),
        "allocated_blocks": sys.getallocatedblocks(),
        "by_type": dict(by_type.most_common(400)),
        "bookkeeping": _bookkeeping(worker.wsgi),
    }
    del objects
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        report["tracemalloc"] = {"current": current, "peak": peak,
                                 "overhead": tracemalloc.get_tracemalloc_memory()}
        snapshot = tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        ])
        snapshot.dump(stem + ".tm.part")
        os.replace(stem + ".tm.part", stem + ".tm")
    if os.path.exists(os.path.join(out_dir, "trim")):
        # soak.py asks for this at its last sample: how much of the RSS is memory the allocator
        # holds free (glibc hands it back on malloc_trim; pymalloc frees whole arenas only)?
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        report["rss_kb_after_malloc_trim"] = _rss_kb()
    report["dump_seconds"] = round(time.monotonic() - started, 3)
    with open(stem + ".json.part", "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    os.replace(stem + ".json.part", stem + ".json")

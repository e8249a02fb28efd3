"""Which concurrency the process runs under: gevent's greenlets or plain threads."""

from __future__ import annotations


def under_gevent() -> bool:
    """True when gevent has patched ``threading`` (gunicorn's gevent worker): "threads" are
    greenlets sharing one OS thread, and whatever computes without waiting holds them all."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("threading")

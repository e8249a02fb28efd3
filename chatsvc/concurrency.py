"""Which concurrency the process runs under (gevent's greenlets or plain threads), and the
one way chatsvc starts a background thread of its own (``ProcessThread``)."""

from __future__ import annotations

import os
import threading
from typing import Callable


def under_gevent() -> bool:
    """True when gevent has patched ``threading`` (gunicorn's gevent worker): "threads" are
    greenlets sharing one OS thread, and whatever computes without waiting holds them all."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("threading")


class ProcessThread:
    """A daemon thread that belongs to the process that started it.

    ``ensure_started()`` starts it if it is not running in *this* process: a gunicorn
    worker forked from a parent that had started one inherits the attributes but not
    the thread, so the thread is keyed by pid. ``target`` receives the ``Event`` that
    ``stop()`` sets. Created objects are gevent's when gevent has patched threading.
    """

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self._name = name
        self._target = target
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._pid: int | None = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def ensure_started(self) -> None:
        with self._guard:
            if self.running:
                return
            stop = threading.Event()
            thread = threading.Thread(target=self._target, args=(stop,), name=self._name, daemon=True)
            self._thread, self._stop, self._pid = thread, stop, os.getpid()
            thread.start()

    def stop(self, timeout: float = 5.0, wake: Callable[[], None] | None = None) -> None:
        """Asks the thread to end and waits up to ``timeout`` for it (never for itself);
        ``wake()`` first ends whatever the thread is blocked in."""
        with self._guard:
            thread, stop, pid = self._thread, self._stop, self._pid
            self._thread = self._stop = self._pid = None
        if stop is not None:
            stop.set()
        if wake is not None:
            wake()
        if thread is not None and pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=timeout)

"""Per-process fan-out of one run's log to its local SSE subscribers (SPEC §6.4, §12).

A ``RunFeed`` holds a run's events already encoded as SSE wire bytes, once per
process, and wakes the subscribers waiting for more. It is the one place that
hands events to local subscribers: the memory registry publishes into it as it
appends, the Redis registry's follower publishes what it reads from the run's
stream. Subscribers write the very bytes objects stored here, so delivering an
event to N subscribers costs N socket writes and no encoding.

Concurrency: one writer per feed (the registry under its lock, or the follower),
any number of readers, no lock on the read path. The chunk list only grows, and
each wake-up (every publish, or a ``wake()`` after publishes that held their events
back) swaps in a fresh ``threading.Event`` and sets the old one: waking
N readers is N cheap switches (under gevent, greenlet switches scheduled by the
hub), and they do not queue on a shared lock afterwards. A reader takes the
current Event *before* it looks at the chunks, so an append that lands between
its look and its wait still wakes it.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

_ALIVE: "weakref.WeakSet[RunFeed]" = weakref.WeakSet()


def feeds_alive() -> int:
    """RunFeeds alive in this process (``/metrics``: a feed that outlives its run is a leak)."""
    return len(_ALIVE)


class FeedRead(NamedTuple):
    """What one ``RunFeed.read`` found."""

    data: bytes  # wire bytes of the events after ``after_seq`` (and of ``done`` once reached)
    last_seq: int  # the seq the reader has now seen (``after_seq`` when nothing new)
    finished: bool  # ``data`` ends with the ``done`` event (or the feed was aborted): send it and close


class RunFeed:
    """Encoded events of one run in this process, and the signal that wakes its readers."""

    __slots__ = ("_chunks", "_held", "_done", "_wake", "subscribers", "__weakref__")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []  # _chunks[i] is the wire bytes of seq i + 1
        self._held: list[bytes] = []  # published with wake=False: readers see them at wake()
        self._done: bytes | None = None  # wire bytes of `done`, once the run ended
        self._wake = threading.Event()  # set (and replaced) on every publish
        self.subscribers = 0  # local readers; the registry's bookkeeping, not the feed's
        _ALIVE.add(self)

    @property
    def last_seq(self) -> int:
        """The last seq published (held events included: the writer's view)."""
        return len(self._chunks) + len(self._held)

    @property
    def finished(self) -> bool:
        return self._done is not None

    def publish(self, seq: int, wire: bytes, *, wake: bool = True) -> None:
        """Adds the event numbered ``seq`` (the writer keeps them in order, no gaps).

        ``wake=False`` holds it back from readers until ``wake()``: the Redis follower
        gathers events that arrive close together, so that every subscriber writes
        them in one chunk (as with the memory registry, which appends them back to back).
        """
        if seq != self.last_seq + 1:
            raise ValueError(f"feed expected seq {self.last_seq + 1}, got {seq}")
        self._held.append(wire)
        if wake:
            self.wake()

    def wake(self) -> None:
        """Shows readers the events held so far and wakes those waiting."""
        self._release()
        wake, self._wake = self._wake, threading.Event()
        wake.set()

    def _release(self) -> None:
        if self._held:  # no new list per event: this runs on every publish
            self._chunks += self._held  # one C-level extend: readers see all of them or none
            self._held.clear()

    def close(self, done_wire: bytes) -> None:
        """The run ended: readers get ``done`` after the last event, then stop."""
        if self._done is None:
            self._release()
            self._done = done_wire
            self._wake.set()

    def abort(self) -> None:
        """This process can no longer follow the run (Redis lost): readers end without ``done``.

        ``EventSource`` then reconnects and resumes after the last event it got.
        """
        if self._done is None:
            self._release()
            self._done = b""
            self._wake.set()

    def wire_after(self, after_seq: int) -> list[bytes]:
        """The wire bytes of each event after ``after_seq`` (a new list)."""
        return self._chunks[max(0, after_seq):]

    def signal(self) -> threading.Event:
        """The Event the next publish or close sets; take it *before* looking at the run."""
        return self._wake

    def read(self, after_seq: int, timeout: float) -> FeedRead:
        """Everything after ``after_seq``, waiting up to ``timeout`` seconds for something new.

        Returns at once when there is something to send; empty ``data`` means the
        timeout passed (the caller sends a heartbeat).
        """
        wake = self._wake  # before looking: see the module docstring
        found = self._collect(after_seq)
        if found.data or found.finished or timeout <= 0:
            return found
        wake.wait(timeout)
        return self._collect(after_seq)

    def _collect(self, after_seq: int) -> FeedRead:
        done = self._done  # read first: once set, every event is already in _chunks
        chunks = self._chunks
        last = len(chunks)
        after_seq = max(0, after_seq)
        if after_seq < last:
            new = chunks[after_seq] if after_seq + 1 == last else b"".join(chunks[after_seq:last])
        else:
            new, last = b"", max(after_seq, last)
        if done is None:
            return FeedRead(new, last, False)
        return FeedRead(new + done, last, True)

"""Live delivery for the Redis registry: one reader per process feeds every local subscriber (SPEC §12).

A ``RedisFollower`` keeps a ``RunFeed`` for each run that has subscribers in
this process. The first subscriber of a run loads its backlog (one ``XRANGE``);
after that a single connection follows *all* such runs with one
``XREAD BLOCK`` over their streams and publishes what it reads into their
feeds, each event encoded to SSE bytes once for the whole process. So 10,000
subscribers on one worker cost this one connection plus the registry's small
command pool, whatever the number of runs. Events read for a run are held for
``GATHER_MS`` before its subscribers see them, so events appended a round trip apart
reach each subscriber in one write.

When the set of followed runs changes, the blocked ``XREAD`` is interrupted
at once: it also reads this process's own *wake* stream, and a new run adds an
entry there. (Unlike ``CLIENT UNBLOCK``, an entry added just before the
``XREAD`` is sent still ends it, so no change can be missed.) When Redis cannot be
reached, every feed is aborted: open streams end without ``done`` and
``EventSource`` reconnects (to a 503 until Redis is back, then it resumes).

The reader is supervised (``_supervise``): whatever else stops its loop is logged and the
loop starts again at once, reading on from each feed's last seq, so the streams it serves
lose and repeat nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import redis

from chatsvc.concurrency import ProcessThread
from chatsvc.runs.feed import RunFeed
from chatsvc.runs.model import RegistryUnavailable, RunNotFound
from chatsvc.runs.sse import done_wire, log_wire

log = logging.getLogger("chatsvc.runs")

BLOCK_MS = 5_000  # longest XREAD BLOCK; a change of the followed runs interrupts it
# How long events read for a run are held before its subscribers see them, with whatever
# arrived meanwhile: a job appends `node_output` and the next `node_start` one Redis round
# trip apart (more when the worker is busy), and every chunk a subscriber sees costs it a
# socket write. So a run's subscribers are woken at most once per GATHER_MS.
GATHER_MS = 5
WAKE_TTL_SECONDS = 3600  # the wake stream of a process that died goes away by itself
RETRY_SECONDS = 1.0  # pause after a failed read before connecting again
LOAD_WAIT_SECONDS = 10.0  # how long a subscriber waits for another's backlog load
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class FollowedStore(Protocol):
    """What the follower needs of the Redis store (``RedisRunRegistry`` provides it)."""

    def stream_key(self, run_id: str) -> str:
        """The key of a run's event stream."""

    def run_id_of_stream(self, stream_key: str) -> str: ...

    def follower_wake_key(self, token: str) -> str:
        """The key of a follower's own wake stream."""

    def wake_follower(self, key: str, ttl_seconds: int) -> None:
        """Adds an entry to a wake stream (raises RegistryUnavailable when Redis is down)."""

    def backlog(self, run_id: str) -> tuple[list[tuple[int, str]], str | None]:
        """A run's events as ``(seq, event_json)`` and its ``done`` JSON if it ended (RunNotFound)."""

    def dedicated_client(self, *, read_timeout: float) -> redis.Redis:
        """A client with a connection of its own, for ``XREAD BLOCK``."""


@dataclass(eq=False)
class _Followed:
    feed: RunFeed = field(default_factory=RunFeed)
    loaded: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class RedisFollower:
    """Follows the streams of the runs with local subscribers and publishes into their feeds."""

    def __init__(self, store: FollowedStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._runs: dict[str, _Followed] = {}
        self._changed = threading.Event()  # set when a run is added; wakes an idle reader
        self._reader = ProcessThread("chatsvc-run-follower", self._supervise)
        self._client: redis.Redis | None = None
        self._wake_key = store.follower_wake_key(uuid.uuid4().hex)
        self._wake_seen = "0-0"  # last wake entry the reader saw
        self._wake_pending = False  # a wake entry was added and the reader has not yet re-read the runs

    @contextmanager
    def subscribe(self, run_id: str) -> Iterator[RunFeed]:
        """The run's feed for one local subscriber; raises RunNotFound / RegistryUnavailable."""
        entry = self._acquire(run_id)
        try:
            yield entry.feed
        finally:
            self._release(run_id, entry)

    def close(self) -> None:
        """Stops the reader (tests and app teardown); open feeds are aborted."""
        self._reader.stop(wake=self._interrupt)
        self._abort_all()

    @property
    def followed(self) -> int:
        """Runs followed by this process (for tests and metrics)."""
        return len(self._runs)

    def _acquire(self, run_id: str) -> _Followed:
        with self._lock:
            entry = self._runs.get(run_id)
            loader = entry is None
            if loader:
                entry = self._runs[run_id] = _Followed()
            entry.feed.subscribers += 1
        if not loader:
            # Another subscriber is loading the backlog; its feed is ours once loaded.
            entry.loaded.wait(LOAD_WAIT_SECONDS)
            if entry.error is not None or not entry.loaded.is_set():
                self._release(run_id, entry)
                raise entry.error or RunNotFound(run_id)
            return entry
        try:
            events, done = self._store.backlog(run_id)
        except BaseException as exc:
            entry.error = exc
            self._release(run_id, entry)
            entry.loaded.set()
            raise
        for seq, event_json in events:
            entry.feed.publish(seq, log_wire(seq, event_json))
        if done is not None:
            entry.feed.close(done_wire(entry.feed.last_seq + 1, done))
        entry.loaded.set()
        if done is None:
            try:
                self._reader.ensure_started()
                self._changed.set()
                self._interrupt()  # after `loaded` is set: see _interrupt
            except BaseException:  # nothing may keep a feed that no subscriber holds
                self._release(run_id, entry)
                raise
        return entry

    def _release(self, run_id: str, entry: _Followed) -> None:
        """One subscriber less; the last one takes the run out (the reader drops it from its next XREAD)."""
        with self._lock:
            entry.feed.subscribers -= 1
            if entry.feed.subscribers == 0 and self._runs.get(run_id) is entry:
                del self._runs[run_id]

    def _interrupt(self) -> None:
        """Ends the reader's current XREAD BLOCK so it re-reads the set of followed runs.

        Coalesced: the reader clears ``_wake_pending`` *before* it collects the
        runs, and a subscriber sets ``loaded`` *before* it looks at the flag, so a
        skipped wake-up always belongs to a collection that will include the run.
        """
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._store.wake_follower(self._wake_key, WAKE_TTL_SECONDS)
        except (RegistryUnavailable, *_UNAVAILABLE):
            # The reader meets the same outage (and aborts the feeds), or Redis was only
            # slow: it takes the new run in at its next XREAD (within BLOCK_MS) anyway.
            self._wake_pending = False

    def _streams(self) -> dict[str, str]:
        """``XREAD`` arguments: each loaded, unfinished run's stream after its last seq."""
        with self._lock:
            return {
                self._store.stream_key(run_id): f"0-{entry.feed.last_seq}"
                for run_id, entry in self._runs.items()
                if entry.loaded.is_set() and entry.error is None and not entry.feed.finished
            }

    def _supervise(self, stop: threading.Event) -> None:
        """The reader thread: ``_read_loop``, restarted at once whatever ends it.

        Its feeds keep their events, so the new loop reads on from each feed's last seq:
        open streams lose and repeat nothing. A loop that fails again within
        ``RETRY_SECONDS`` (a fault that does not pass) aborts the feeds instead, so that
        their streams end and ``EventSource`` resumes from a fresh backlog.
        """
        self._client = None  # a forked worker inherits the attribute, not the connection
        failed_at = -math.inf
        while not stop.is_set():
            held: dict[RunFeed, float] = {}
            try:
                self._read_loop(stop, held)
            except Exception:
                now = time.monotonic()
                again = now - failed_at < RETRY_SECONDS
                failed_at = now
                log.exception("run follower failed; %s", "closing this process's streams" if again
                              else "restarting it (open streams go on where they were)")
                if again:
                    self._fail(stop, held)
                else:
                    _show_due(held, math.inf)

    def _read_loop(self, stop: threading.Event, held: dict[RunFeed, float]) -> None:
        """Reads the followed runs' streams until stopped; ``held``: feed -> when its subscribers
        see the events it holds."""
        while not stop.is_set():
            self._changed.clear()
            self._wake_pending = False
            streams = self._streams()
            if not streams:
                _show_due(held, math.inf)
                self._changed.wait(1.0)
                continue
            block_ms: int | None = BLOCK_MS
            if held:  # let what follows closely arrive, then read it without blocking
                stop.wait(max(0.0, min(held.values()) - time.monotonic()))
                block_ms = None
            streams[self._wake_key] = self._wake_seen
            try:
                reply = self._read(streams, block_ms)
            except _UNAVAILABLE as exc:  # anything else: _supervise restarts the loop
                log.warning("run follower: Redis unavailable (%s); closing this process's streams", exc)
                self._fail(stop, held)
                continue
            due = time.monotonic() + GATHER_MS / 1000
            for stream, entries in reply or ():
                if stream == self._wake_key:
                    self._wake_seen = entries[-1][0]
                elif feed := self._publish(stream, entries):
                    held.setdefault(feed, due)
            _show_due(held, time.monotonic())

    def _fail(self, stop: threading.Event, held: dict[RunFeed, float]) -> None:
        """After a failed read: abort every feed (held events go out first), wait, connect again."""
        held.clear()
        self._drop_connection()
        self._abort_all()
        stop.wait(RETRY_SECONDS)

    def _read(self, streams: dict[str, str], block_ms: int | None) -> list:
        if self._client is None:
            self._client = self._store.dedicated_client(read_timeout=BLOCK_MS / 1000 + 5)
        return self._client.xread(streams, block=block_ms)

    def _publish(self, stream: str, entries: list) -> RunFeed | None:
        """Gives a run's feed the events read from its stream, held; that feed if it got any.

        The read may be older than the feed: it was sent for the run's previous feed, whose
        last subscriber has left since, and a new subscriber's feed may still be loading
        its backlog (the loader is then its only writer) or may start further back. So only
        a loaded feed takes entries, and only the one right after its last seq: anything
        beyond a gap is read again by the next ``XREAD``, which starts at the feed's end.
        """
        entry = self._runs.get(self._store.run_id_of_stream(stream))
        if entry is None or not entry.loaded.is_set() or entry.error is not None:
            return None  # no subscriber left, or a new one still loading the backlog
        feed = entry.feed
        published = False
        for entry_id, fields in entries:
            seq = int(entry_id.partition("-")[2])
            if feed.finished or seq > feed.last_seq + 1:
                break
            if seq <= feed.last_seq:
                continue  # already published (the backlog and the read overlap)
            if "e" in fields:
                feed.publish(seq, log_wire(seq, fields["e"]), wake=False)
                published = True
            elif "d" in fields:
                feed.close(done_wire(seq, fields["d"]))
        return feed if published else None

    def _drop_connection(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # already broken
                pass

    def _abort_all(self) -> None:
        with self._lock:
            entries, self._runs = list(self._runs.values()), {}
        for entry in entries:
            entry.feed.abort()


def _show_due(held: dict[RunFeed, float], now: float) -> None:
    """Wakes the subscribers of every held feed that is due by ``now``."""
    for feed in [feed for feed, due in held.items() if due <= now]:
        del held[feed]
        feed.wake()

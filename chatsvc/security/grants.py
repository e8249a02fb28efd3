"""Stream opens: may the caller a stream token names still see the run? (SPEC §6.4)

A token proves that its caller could see the run when it was issued; every open asks
again whether that caller still exists and still may (``permissions.can_see_run``),
reusing a recent "yes" for a short while (``StreamGrants``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Hashable, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from chatsvc.errors import NotFound, Unauthorized
from chatsvc.extensions import db
from chatsvc.runs.model import RunInfo
from chatsvc.runs.registry import RunRegistry
from chatsvc.security.caller import Caller, caller_for_key
from chatsvc.security.permissions import can_see_run

T = TypeVar("T")


_TOKEN_CALLER_GONE = "This stream token's caller can no longer see the run"
_last_commit = 0  # which commit of this process came last (StreamGrants)
_commits = itertools.count(1)


@event.listens_for(db.session, "after_commit")
def _note_commit(session: Session) -> None:
    """Any commit may have changed who may see what: StreamGrants stop reusing earlier answers."""
    global _last_commit
    _last_commit = next(_commits)


class StreamGrants:
    """Recent answers to the questions a stream open asks: who is the caller a stream
    token names, today, and may that caller still see this run?

    Every open of a stream with a token asks the database whether its caller still
    exists and may still see the run (a removed member, a disabled or unlinked
    service is refused). 10,000 EventSources (re)connecting to one run at once would
    ask the same question 10,000 times, and one person's Chat page opens a stream per
    run, so an answer is reused for up to ``seconds``
    (``CHATSVC_STREAM_ACCESS_CACHE_SECONDS``): the caller (its flags and team roles)
    per caller, the "yes" per caller and run. Every commit made by this process
    forgets them all: a change made through this process applies to the next open at
    once, one made elsewhere (another worker or host, the CLI) within ``seconds``.
    ``seconds=0``: ask every time. An open stream is never cut off either way.
    Only found callers and "yes" answers are kept: a refusal is asked again.

    Plain dict operations, no lock (as ``caller.VerifiedTokens``); answers past their time are
    dropped as new ones come, and the whole is cleared if it ever fills.
    """

    def __init__(self, seconds: float, size: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._size = size
        self._clock = clock
        self._items: dict[Hashable, tuple[int, float, Any]] = {}  # question -> (last commit, until, answer)

    def caller(self, caller_key: str) -> Caller | None:
        """The caller ``caller_key`` names today (``caller_for_key``), or one found less than ``seconds`` ago."""
        return self._recall(caller_key, lambda: caller_for_key(caller_key))

    def allowed(self, caller_key: str, run_id: str, ask: Callable[[], bool]) -> bool:
        """``ask()``'s answer, or a "yes" it gave less than ``seconds`` ago with no commit since."""
        return bool(self._recall((caller_key, run_id), ask))

    def _recall(self, question: Hashable, ask: Callable[[], T]) -> T:
        as_of = _last_commit  # read before asking: a commit made while we ask voids the answer
        held = self._items.get(question)
        if held is not None and held[0] == as_of and self._clock() < held[1]:
            return held[2]
        answer = ask()
        if answer and self._seconds > 0:
            now = self._clock()
            items = self._items
            items.pop(question, None)  # re-inserted last: the order of the dict is that of expiry
            self._forget_expired(now)
            if len(items) >= self._size:
                self._items = items = {}
            items[question] = (as_of, now + self._seconds, answer)
        return answer

    def _forget_expired(self, now: float) -> None:
        """Drops the answers past their time, oldest first: the cache holds about what one
        ``seconds`` brings, not every stream opened until it is full (a soak saw it grow to
        the cap and start again)."""
        items = self._items
        while items:
            try:
                oldest = next(iter(items))
                if items[oldest][1] > now:
                    return
                del items[oldest]
            except (KeyError, RuntimeError):  # another thread changed it meanwhile: next time
                return


def run_for_stream_token(caller_key: str, registry: RunRegistry, run_id: str, grants: StreamGrants) -> RunInfo:
    """The run a genuine stream token names, for the caller it was issued to (``caller_key``).

    The token proved that caller could see the run when it was issued. If the
    caller is gone or disabled or has lost access since, the token is what
    failed: 401, not 404.
    """
    run = registry.get(run_id)
    caller = grants.caller(caller_key)
    if caller is None:
        raise Unauthorized(_TOKEN_CALLER_GONE)
    if run is None:
        raise NotFound(f"Run {run_id} not found")
    if not grants.allowed(caller_key, run_id, lambda: can_see_run(caller, run)):
        raise Unauthorized(_TOKEN_CALLER_GONE)
    return run

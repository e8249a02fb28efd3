"""Signed, expiring stream tokens bound to one run and its caller (for EventSource, which cannot send headers)."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeTimedSerializer

SALT = "chatsvc.run-events"


class StreamTokens:
    def __init__(self, secret: str, max_age_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=SALT)
        self._max_age = max_age_seconds

    def issue(self, run_id: str, caller_key: str) -> str:
        """A token for ``run_id``, naming the caller it was issued to (``user:3``, ``service:7``)."""
        return self._serializer.dumps({"run": run_id, "sub": caller_key})

    def caller_key(self, token: str, run_id: str) -> str | None:
        """The caller key of a genuine, unexpired token issued for ``run_id``; else None.

        The stream still checks that this caller may see the run *now*: a token
        outlives neither its caller's access nor its caller.
        """
        try:
            payload = self._serializer.loads(token, max_age=self._max_age)
        except BadSignature:  # includes SignatureExpired
            return None
        if not isinstance(payload, dict) or payload.get("run") != run_id:
            return None
        sub = payload.get("sub")
        return sub if isinstance(sub, str) else None

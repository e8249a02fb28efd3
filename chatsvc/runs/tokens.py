"""Signed, expiring stream tokens bound to one run (for EventSource, which cannot send headers)."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeTimedSerializer

SALT = "chatsvc.run-events"


class StreamTokens:
    def __init__(self, secret: str, max_age_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=SALT)
        self._max_age = max_age_seconds

    def issue(self, run_id: str) -> str:
        return self._serializer.dumps({"run": run_id})

    def is_valid_for(self, token: str, run_id: str) -> bool:
        """True if the token is genuine, unexpired and was issued for ``run_id``."""
        try:
            payload = self._serializer.loads(token, max_age=self._max_age)
        except BadSignature:  # includes SignatureExpired
            return False
        return isinstance(payload, dict) and payload.get("run") == run_id

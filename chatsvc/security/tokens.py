"""Signed, expiring stream tokens bound to one run and its caller (for EventSource, which cannot send headers)."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeTimedSerializer

SALT = "chatsvc.run-events"


class StreamTokens:
    """Issues and verifies stream tokens.

    A verified token is remembered until it expires (at most ``size`` of them, forgotten
    all at once when full), as ``caller.VerifiedTokens`` does for access tokens: a token is
    signed and immutable, so checking its signature again gives the same answer, and every
    ``EventSource`` reconnects with the same URL (a deploy or a network blip reconnects
    thousands at once). Only the signature is remembered: whether the caller may still see
    the run is asked on every open (``grants``).
    """

    def __init__(self, secret: str, max_age_seconds: int, *, size: int = 10_000) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=SALT)
        self._max_age = max_age_seconds
        self._size = size
        self._signer = self._serializer.make_signer(SALT)  # its clock judges expiry, as in loads()
        self._verified: dict[str, tuple[dict, float]] = {}  # token -> (payload, expires at)

    def issue(self, run_id: str, caller_key: str) -> str:
        """A token for ``run_id``, naming the caller it was issued to (``user:3``, ``service:7``)."""
        return self._serializer.dumps({"run": run_id, "sub": caller_key})

    def caller_key(self, token: str, run_id: str) -> str | None:
        """The caller key of a genuine, unexpired token issued for ``run_id``; else None.

        The stream still checks that this caller may see the run *now*: a token
        outlives neither its caller's access nor its caller.
        """
        payload = self._payload(token)
        if not isinstance(payload, dict) or payload.get("run") != run_id:
            return None
        sub = payload.get("sub")
        return sub if isinstance(sub, str) else None

    def _payload(self, token: str) -> object:
        now = self._signer.get_timestamp()
        known = self._verified.get(token)
        if known is not None and now <= known[1]:
            return known[0]
        try:
            payload, signed_at = self._serializer.loads(token, max_age=self._max_age, return_timestamp=True)
        except BadSignature:  # includes SignatureExpired
            return None
        if isinstance(payload, dict):
            if len(self._verified) >= self._size:
                self._verified = {}
            self._verified[token] = (payload, int(signed_at.timestamp()) + self._max_age)
        return payload

"""Signed, expiring stream tokens bound to one run and its caller (for EventSource, which cannot
send headers), and what every kind of signed token shares: a verification, once made, is
remembered until the token expires (``Verified``)."""

from __future__ import annotations

from typing import Generic, Hashable, TypeVar

from itsdangerous import BadSignature, URLSafeTimedSerializer

SALT = "chatsvc.run-events"
V = TypeVar("V")


class Verified(Generic[V]):
    """Tokens this process has verified: token -> (what it says, valid until).

    A token is signed and immutable, so verifying it again gives the same answer until it
    expires. Bounded by clearing when full; no lock needed (single dict operations).
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._items: dict[Hashable, tuple[V, float]] = {}

    def get(self, token: Hashable, now: float) -> V | None:
        """What ``token`` says, if it was verified and ``now`` is before its end."""
        entry = self._items.get(token)
        return entry[0] if entry is not None and now < entry[1] else None

    def put(self, token: Hashable, value: V, until: float) -> None:
        if len(self._items) >= self._size:
            self._items = {}
        self._items[token] = (value, until)


class StreamTokens:
    """Issues and verifies stream tokens.

    A verified token is remembered until it expires (``Verified``): every ``EventSource``
    reconnects with the same URL, and a deploy or a network blip reconnects thousands at
    once. Only the signature is remembered: whether the caller may still see the run is
    asked on every open (``grants``).
    """

    def __init__(self, secret: str, max_age_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=SALT)
        self._max_age = max_age_seconds
        self._signer = self._serializer.make_signer(SALT)  # its clock judges expiry, as in loads()
        self._verified: Verified[dict] = Verified()

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
        known = self._verified.get(token, self._signer.get_timestamp())
        if known is not None:
            return known
        try:
            payload, signed_at = self._serializer.loads(token, max_age=self._max_age, return_timestamp=True)
        except BadSignature:  # includes SignatureExpired
            return None
        if isinstance(payload, dict):  # valid while age <= max_age, in whole seconds as loads() counts
            self._verified.put(token, payload, int(signed_at.timestamp()) + self._max_age + 1)
        return payload

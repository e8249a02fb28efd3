"""Stream tokens: bound to a run and a caller, expiring; a verified one is remembered, never trusted past its age."""

from __future__ import annotations

import itsdangerous.timed

from chatsvc.security.tokens import StreamTokens

SECRET = "a-secret-for-stream-token-tests-0123456789"


def test_a_token_names_its_caller_for_its_run_only():
    tokens = StreamTokens(SECRET, max_age_seconds=60)
    token = tokens.issue("run1", "user:3")
    assert tokens.caller_key(token, "run1") == "user:3"
    assert tokens.caller_key(token, "run1") == "user:3"  # remembered: the same answer
    assert tokens.caller_key(token, "run2") is None
    assert StreamTokens("another-secret-0123456789-0123456789", 60).caller_key(token, "run1") is None


def test_a_forged_token_is_refused_even_beside_a_remembered_genuine_one():
    tokens = StreamTokens(SECRET, max_age_seconds=60)
    token = tokens.issue("run1", "user:3")
    assert tokens.caller_key(token, "run1") == "user:3"
    payload, _, signature = token.rpartition(".")
    forged = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    assert tokens.caller_key(forged, "run1") is None


def test_a_remembered_token_still_expires(monkeypatch):
    tokens = StreamTokens(SECRET, max_age_seconds=60)
    token = tokens.issue("run1", "user:3")
    assert tokens.caller_key(token, "run1") == "user:3"
    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: real(self) + 61)
    assert tokens.caller_key(token, "run1") is None

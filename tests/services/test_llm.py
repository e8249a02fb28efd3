"""LLM providers (SPEC §9): the stub, and the real openai client against a local fake server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatsvc.services.llm import (
    ChatMessage,
    LLMCancelled,
    LLMError,
    OpenAIProvider,
    StubProvider,
    make_provider,
    _EventStream,
)
from tests.helpers.fake_openai import FakeOpenAI

API_KEY = "sk-test-SECRET-0123456789"
MESSAGES: list[ChatMessage] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def provider(fake_openai: FakeOpenAI) -> Iterator[OpenAIProvider]:
    p = OpenAIProvider(base_url=fake_openai.base_url, api_key=API_KEY, timeout_seconds=1.0)
    yield p
    p.close()


def never() -> bool:
    return False


def complete(provider: OpenAIProvider | StubProvider, *, should_cancel: Callable[[], bool] = never,
             model: str = "test-model") -> tuple[str, list[str]]:
    """Run one completion; return (reply, the deltas on_delta received)."""
    deltas: list[str] = []
    reply = provider.complete(model=model, messages=MESSAGES, on_delta=deltas.append,
                              should_cancel=should_cancel)
    return reply, deltas


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- stub ------------------------------------------------------------------------


def test_stub_answers_stubbed_without_streaming() -> None:
    reply, deltas = complete(StubProvider())
    assert reply == "(stubbed)"
    assert deltas == []
    assert StubProvider.is_stub and not OpenAIProvider.is_stub


# -- streaming -------------------------------------------------------------------


def test_openai_streams_each_chunk_and_returns_the_whole_reply(fake_openai, provider) -> None:
    # Pieces 50 ms apart: each is handed on as it arrives, none waits for the next.
    fake_openai.stream(["Hel", "lo", ", ", "wor", "ld"], delay=0.05)

    reply, deltas = complete(provider, model="my-model")

    assert deltas == ["Hel", "lo", ", ", "wor", "ld"]
    assert reply == "Hello, world"
    request = fake_openai.last_request
    assert request.path == "/v1/chat/completions"
    assert request.model == "my-model"
    assert request.messages == MESSAGES
    assert request.body["stream"] is True
    assert request.authorization == f"Bearer {API_KEY}"


def test_pieces_that_arrive_together_are_one_delta_and_the_deltas_are_the_reply(fake_openai, provider) -> None:
    """SPEC §14: one `assistant_delta` may carry the pieces that arrived together."""
    pieces = [f"piece {n} " for n in range(50)]
    fake_openai.stream(pieces, together=True)

    reply, deltas = complete(provider, model="my-model")

    assert reply == "".join(pieces) == "".join(deltas)
    assert len(deltas) < len(pieces)  # read together, handed on together, nothing held back


@pytest.mark.parametrize("wire, expected", [
    ([b'data: {"a":1}\n\n'], [b'{"a":1}']),
    ([b'data: {"a":1}\r\n\r\n', b'data:{"b":2}\n\n'], [b'{"a":1}', b'{"b":2}']),  # CRLF, no space
    ([b'data: {"a"', b':1}\n', b'\n'], [b'{"a":1}']),  # split anywhere, even between lines
    ([b': keep-alive\n\nevent: x\nid: 3\ndata: [DONE]\n\n'], [b"[DONE]"]),  # comments, other fields
    ([b"data: one\ndata: two\n\n"], [b"one\ntwo"]),  # several data lines join with a line feed
    ([b"data: unfinished"], []),  # no blank line yet: not an event
])
def test_the_event_stream_reader_follows_the_sse_format(wire, expected) -> None:
    reader = _EventStream()
    assert [event for chunk in wire for event in reader.feed(chunk)] == expected


def test_a_line_that_never_ends_is_refused_before_it_is_held_whole() -> None:
    reader = _EventStream(max_bytes=1000)
    reader.feed(b"data: " + b"x" * 900)
    with pytest.raises(Exception, match="longer than 1,000 bytes"):
        reader.feed(b"x" * 200)


def test_a_server_streaming_one_endless_line_fails_the_call(fake_openai) -> None:
    provider = OpenAIProvider(base_url=fake_openai.base_url, api_key=API_KEY, timeout_seconds=5,
                              max_reply_chars=100)
    fake_openai.send_raw(["x" * 1_000_000])  # one line of a megabyte, arriving in many reads
    with pytest.raises(LLMError, match="malformed stream: a line of the stream is longer"):
        complete(provider)
    provider.close()


def test_missing_api_key_sends_a_placeholder_not_the_env_key(fake_openai, monkeypatch) -> None:
    # The openai client would otherwise fall back to OPENAI_API_KEY and leak it to this server.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")
    provider = OpenAIProvider(base_url=fake_openai.base_url, api_key=None, timeout_seconds=1.0)
    fake_openai.stream(["ok"])

    assert complete(provider)[0] == "ok"
    assert fake_openai.last_request.authorization == "Bearer not-needed"
    provider.close()


def test_one_provider_serves_many_threads_at_once(fake_openai, provider) -> None:
    fake_openai.stream(["a", "b", "c"], delay=0.02)

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: complete(provider), range(16)))

    # Pieces that arrive while a busy thread handles the last may come as one delta.
    assert [(reply, "".join(deltas)) for reply, deltas in replies] == [("abc", "abc")] * 16
    assert len(fake_openai.requests) == 16


def test_a_reply_past_its_limit_fails_and_the_rest_is_not_read(fake_openai) -> None:
    # A broken or hostile server can stream for ever; its pieces are events and memory.
    provider = OpenAIProvider(base_url=fake_openai.base_url, api_key=API_KEY, timeout_seconds=1.0,
                              max_reply_chars=10)
    fake_openai.stream(["abcd"] * 200, delay=0.01)
    deltas: list[str] = []

    with pytest.raises(LLMError, match=r"longer than 10 characters \(CHATSVC_LLM_MAX_REPLY_CHARS\)"):
        provider.complete(model="m", messages=MESSAGES, on_delta=deltas.append, should_cancel=never)

    assert deltas == ["abcd", "abcd"]  # what fits; the piece that crosses the limit is not handed on
    assert fake_openai.wait_for_disconnect(timeout=2.0)
    assert fake_openai.chunks_sent < 50
    provider.close()


def test_a_reply_of_exactly_the_limit_is_whole(fake_openai) -> None:
    provider = OpenAIProvider(base_url=fake_openai.base_url, api_key=API_KEY, timeout_seconds=1.0,
                              max_reply_chars=8)
    fake_openai.stream(["abcd", "efgh"])
    assert complete(provider)[0] == "abcdefgh"
    provider.close()


# -- cancellation ----------------------------------------------------------------


def test_cancel_between_chunks_stops_reading_promptly(fake_openai, provider) -> None:
    fake_openai.stream([f"t{i} " for i in range(100)], delay=0.05)
    deltas: list[str] = []
    started = time.monotonic()

    with pytest.raises(LLMCancelled):
        provider.complete(model="m", messages=MESSAGES, on_delta=deltas.append,
                          should_cancel=lambda: len(deltas) >= 2)

    assert time.monotonic() - started < 1.0
    assert deltas == ["t0 ", "t1 "]
    # The stream was closed: the server sees the client go away long before its 100 chunks.
    assert fake_openai.wait_for_disconnect(timeout=2.0)
    assert fake_openai.chunks_sent < 10


def test_cancel_is_checked_even_while_chunks_carry_no_text(fake_openai, provider) -> None:
    # e.g. a reasoning model that streams for a long time before any visible text
    fake_openai.stream([""] * 100, delay=0.02)
    checks = 0

    def should_cancel() -> bool:
        nonlocal checks
        checks += 1
        return checks > 3

    started = time.monotonic()
    with pytest.raises(LLMCancelled):
        complete(provider, should_cancel=should_cancel)
    assert time.monotonic() - started < 1.0


def test_cancel_before_the_call_sends_nothing(fake_openai, provider) -> None:
    with pytest.raises(LLMCancelled):
        complete(provider, should_cancel=lambda: True)
    assert fake_openai.requests == []


# -- failures --------------------------------------------------------------------


@pytest.mark.parametrize("status, message", [
    (500, "The server had an error"),
    (401, "Invalid authentication"),
    (429, "Rate limit reached"),
])
def test_error_status_becomes_llm_error(fake_openai, provider, status, message) -> None:
    fake_openai.fail(status, message)

    with pytest.raises(LLMError) as info:
        complete(provider)

    assert f"HTTP {status}" in str(info.value)
    assert message in str(info.value)
    assert len(fake_openai.requests) == 1  # no automatic retries


@pytest.mark.timeout(10)
def test_server_that_never_answers_times_out(fake_openai, provider) -> None:
    fake_openai.hang()
    started = time.monotonic()

    with pytest.raises(LLMError, match="did not respond within 1 s"):
        complete(provider)

    assert 0.9 <= time.monotonic() - started < 3.0


@pytest.mark.timeout(10)
def test_server_that_stalls_mid_stream_times_out(fake_openai, provider) -> None:
    fake_openai.stream(["one ", "two ", "three"], stall_after=2)
    deltas: list[str] = []
    started = time.monotonic()

    with pytest.raises(LLMError, match="timeout"):
        provider.complete(model="m", messages=MESSAGES, on_delta=deltas.append, should_cancel=never)

    assert time.monotonic() - started < 3.0
    assert "".join(deltas) == "one two "  # what came before the stall was handed on


def test_connection_refused_becomes_llm_error() -> None:
    provider = OpenAIProvider(base_url=f"http://127.0.0.1:{unused_port()}/v1", api_key=API_KEY,
                              timeout_seconds=1.0)
    with pytest.raises(LLMError, match="connection to the LLM server at .* failed"):
        complete(provider)


def test_stream_ending_without_finish_reason_is_an_error(fake_openai, provider) -> None:
    fake_openai.stream(["half a rep"], finish=False)
    with pytest.raises(LLMError, match="before the reply was complete"):
        complete(provider)


@pytest.mark.parametrize("data_lines, expected", [
    (["{not json"], "malformed stream"),
    ([json.dumps({"object": "chat.completion.chunk", "choices": "oops"})], "not a list of choices"),
    ([json.dumps({"choices": [{"index": 0, "delta": {"content": 42}}]})], "not text"),
    ([json.dumps({"error": {"message": "model overloaded", "type": "server_error"}})],
     "reported an error: model overloaded"),
])
def test_malformed_or_error_streams_become_llm_errors(fake_openai, provider, data_lines, expected):
    fake_openai.send_raw(data_lines)
    with pytest.raises(LLMError, match=expected):
        complete(provider)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("failure", [
    "status echoing the key", "stream error echoing the key", "hang", "refused",
])
def test_api_key_never_appears_in_llm_errors(fake_openai, failure) -> None:
    base_url = fake_openai.base_url
    if failure == "status echoing the key":
        fake_openai.fail(401, f"Incorrect API key provided: {API_KEY}")
    elif failure == "stream error echoing the key":
        fake_openai.send_raw([json.dumps({"error": {"message": f"bad key {API_KEY}"}})])
    elif failure == "hang":
        fake_openai.hang()
    else:
        base_url = f"http://127.0.0.1:{unused_port()}/v1"
    provider = OpenAIProvider(base_url=base_url, api_key=API_KEY, timeout_seconds=0.5)

    with pytest.raises(LLMError) as info:
        complete(provider)

    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    assert info.value.__cause__ is None  # a chained openai error could carry the raw body
    assert API_KEY not in repr(provider)
    provider.close()


# -- make_provider ---------------------------------------------------------------


def test_make_provider_builds_each_kind() -> None:
    stub = make_provider("stub", base_url=None, api_key=None, timeout_seconds=5)
    assert isinstance(stub, StubProvider)

    real = make_provider(" OpenAI ", base_url="http://localhost:8080/v1", api_key="k",
                         timeout_seconds=5)
    assert isinstance(real, OpenAIProvider)
    assert real.name == "openai"
    real.close()


@pytest.mark.parametrize("name, base_url, expected", [
    ("bogus", "http://localhost/v1", "unknown LLM provider 'bogus'"),
    ("", None, "unknown LLM provider ''"),
    ("openai", None, "needs a base URL"),
    ("openai", "", "needs a base URL"),
    ("openai", "localhost:8080/v1", "must be an http"),
    ("openai", "ftp://example.com/v1", "must be an http"),
])
def test_make_provider_rejects_bad_settings(name, base_url, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        make_provider(name, base_url=base_url, api_key=None, timeout_seconds=5)


def test_base_url_credentials_are_hidden_from_messages() -> None:
    with pytest.raises(ValueError) as info:
        make_provider("openai", base_url="ftp://user:hunter2@example.com/v1", api_key=None,
                      timeout_seconds=5)
    assert "hunter2" not in str(info.value)

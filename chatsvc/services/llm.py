"""LLM providers: the stub, and any OpenAI-compatible chat server (SPEC §9).

A provider turns a list of chat messages into the assistant's reply. Real
providers stream: they hand every piece of text to ``on_delta`` as it arrives
(the run turns those into ``assistant_delta`` events) and check
``should_cancel`` between pieces, so a cancelled run stops reading at once.

Every provider failure leaves as :class:`LLMError`, whose message is safe to
show to the caller and to put in run events: it never contains the API key.
This module knows nothing about Flask; the caller passes settings in.
"""

from __future__ import annotations

import json
import sys
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

import openai

__all__ = [
    "ChatMessage",
    "LLMCancelled",
    "LLMError",
    "LLMProvider",
    "OpenAIProvider",
    "StubProvider",
    "make_provider",
]

STUB_REPLY = "(stubbed)"

# The openai client refuses an empty key, and with ``api_key=None`` it falls
# back to the OPENAI_API_KEY environment variable, which would send a real
# OpenAI key to whatever server CHATSVC_LLM_BASE_URL names. Local servers
# (llama.cpp, Ollama, vLLM...) ignore the key, so a placeholder is safe.
NO_API_KEY_PLACEHOLDER = "not-needed"

# Server error messages are shown to callers; keep them to a readable size.
_MAX_SERVER_MESSAGE_CHARS = 300

# The longest reply read before the call fails: far above any model's output limit, far below
# what would hurt the process (a broken or hostile server can stream for ever).
DEFAULT_MAX_REPLY_CHARS = 1_000_000


class ChatMessage(TypedDict):
    """One chat message, as the OpenAI chat API takes it: {"role": ..., "content": ...}."""

    role: str
    content: str


class LLMError(Exception):
    """The LLM provider failed; the message is clear and free of secrets."""


class LLMCancelled(Exception):
    """``should_cancel()`` became true while the reply was being produced."""


class _MalformedChunk(Exception):
    """A stream chunk that is not a chat.completion.chunk; becomes an LLMError."""


# What a broken stream raises while being read: a `data:` line that is not JSON
# (or not UTF-8), or JSON of the wrong shape.
_MALFORMED_STREAM_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, _MalformedChunk)


class LLMProvider(ABC):
    """Something that answers a chat: the stub, or a real LLM server."""

    name: str
    # True for the stub: the run then emits `assistant_stub_sent` instead of
    # `assistant_delta` events and `assistant_reply`.
    is_stub: bool = False

    @abstractmethod
    def complete(
        self,
        *,
        model: str,
        messages: list[ChatMessage],
        on_delta: Callable[[str], None],
        should_cancel: Callable[[], bool],
    ) -> str:
        """Return the full assistant text, calling ``on_delta`` with each streamed piece.

        Raises LLMCancelled when ``should_cancel()`` turns true between pieces,
        and LLMError for any provider failure; exceptions from ``on_delta`` pass through.
        """

    def close(self) -> None:
        """Release network resources (connection pool); the provider is unusable afterwards."""


class StubProvider(LLMProvider):
    """Answers every chat with exactly "(stubbed)", without streaming."""

    name = "stub"
    is_stub = True

    def complete(
        self,
        *,
        model: str,
        messages: list[ChatMessage],
        on_delta: Callable[[str], None],
        should_cancel: Callable[[], bool],
    ) -> str:
        return STUB_REPLY


class OpenAIProvider(LLMProvider):
    """Streams replies from an OpenAI-compatible ``/v1/chat/completions`` server.

    One instance holds one ``openai.OpenAI`` client, whose HTTP connection pool
    is shared by every call; the client is safe to use from many threads at once,
    so create the provider once (per app) and reuse it.

    ``timeout_seconds`` bounds each wait for the server (for the response to
    start, and between two pieces of the stream), not the whole reply: a long
    answer that keeps streaming is fine, a server that goes silent is an LLMError.
    ``max_reply_chars`` bounds the reply: a server that streams past it is an
    LLMError, and the rest is not read (its pieces so far have reached ``on_delta``).
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeout_seconds: float = 60.0,
        connect_timeout_seconds: float = 5.0,
        max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
    ) -> None:
        _check_base_url(base_url)
        self.base_url = base_url
        self.timeout_seconds = timeout_seconds
        self.max_reply_chars = max_reply_chars
        self._api_key = api_key or None  # kept only to scrub it from error messages
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or NO_API_KEY_PLACEHOLDER,
            # read/write/pool waits use timeout_seconds; connecting gets its own, shorter limit.
            timeout=openai.Timeout(timeout_seconds, connect=connect_timeout_seconds),
            # No automatic retries: each retry would repeat the whole wait, so a dead server
            # would take (retries + 1) x timeout to report, and the run already shows failures.
            max_retries=0,
        )
        # Resolve the lazily created resource once, here, rather than racing on it from threads.
        self._completions = self._client.chat.completions

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={_display_url(self.base_url)!r})"

    def complete(
        self,
        *,
        model: str,
        messages: list[ChatMessage],
        on_delta: Callable[[str], None],
        should_cancel: Callable[[], bool],
    ) -> str:
        if should_cancel():
            raise LLMCancelled("LLM call cancelled before it started")
        parts: list[str] = []
        chars = 0
        deltas = self._stream_deltas(model, messages)
        try:
            for text in deltas:
                if text:
                    chars += len(text)
                    if chars > self.max_reply_chars:
                        raise LLMError(
                            f"the LLM server at {_display_url(self.base_url)} sent a reply longer than "
                            f"{self.max_reply_chars:,} characters (CHATSVC_LLM_MAX_REPLY_CHARS); "
                            "the rest was not read"
                        )
                    parts.append(text)
                    on_delta(text)
                # Checked after every chunk, even an empty one: reasoning models can stream
                # for a long time before their first piece of visible text.
                if should_cancel():
                    raise LLMCancelled("LLM call cancelled while the reply was streaming")
        finally:
            # Closing the generator closes the HTTP response, so the server stops
            # sending and the socket is released even when we leave early.
            deltas.close()
        return "".join(parts)

    def close(self) -> None:
        self._client.close()

    def _stream_deltas(self, model: str, messages: list[ChatMessage]) -> Iterator[str]:
        """Yield the text of each read from the server's stream ("" if it held none); failures
        leave as LLMError.

        The openai client makes the call (base URL, auth, timeouts, HTTP errors), but the
        stream's bytes are read here: the client would build a pydantic object per piece,
        which cost more than everything else chatsvc does with it (docs/performance.md,
        "LLM replies"). Everything that arrived since the last turn is yielded as one text,
        so pieces that arrive together (or while the run was busy) become one
        ``assistant_delta``, and none waits for a later one (``_BodyReader``).
        """
        finished = False
        try:
            with self._completions.with_streaming_response.create(
                    model=model, messages=messages, stream=True) as response:
                http = response.http_response
                timeout_error, request_error = _transport_errors(http)
                # JSON spells a character in at most 6 bytes (a \u escape), plus the envelope.
                events = _EventStream(max_bytes=6 * self.max_reply_chars + (64 << 10))
                body = _BodyReader(http.iter_bytes(), wait_seconds=self.timeout_seconds + 5)
                done = False
                while not done:
                    try:
                        chunks, done = body.take()
                    except timeout_error as exc:  # as the openai client maps them
                        raise openai.APITimeoutError(request=http.request) from exc
                    except request_error as exc:
                        raise openai.APIConnectionError(request=http.request) from exc
                    texts = []
                    for data in (data for chunk in chunks for data in events.feed(chunk)):
                        if data == b"[DONE]":
                            done = True
                            break
                        text, chunk_finished = _read_chunk(json.loads(data), http.request)
                        finished = finished or chunk_finished
                        if text:
                            texts.append(text)
                    yield "".join(texts)
        except (openai.OpenAIError, *_MALFORMED_STREAM_ERRORS) as exc:
            # `from None`: the original exception can hold the server's raw error body (which
            # may echo the key), and chained causes end up in server-log tracebacks.
            raise self._to_llm_error(exc) from None
        if not finished:
            # The stream ended (connection closed, or [DONE]) before any choice had a
            # finish_reason: the reply is truncated, and a partial answer must not pass as whole.
            raise LLMError(
                f"the LLM server at {_display_url(self.base_url)} ended the stream "
                "before the reply was complete"
            )

    def _to_llm_error(self, exc: Exception) -> LLMError:
        """Map an openai (or stream-decoding) exception to a clear, key-free LLMError.

        The one place that decides what callers read about a provider failure.
        """
        where = f"the LLM server at {_display_url(self.base_url)}"
        # APITimeoutError is a subclass of APIConnectionError, so it goes first.
        if isinstance(exc, openai.APITimeoutError):
            message = f"{where} did not respond within {self.timeout_seconds:g} s (timeout)"
        elif isinstance(exc, openai.APIConnectionError):
            reason = f": {exc.__cause__}" if exc.__cause__ else ""
            message = f"connection to {where} failed{reason}"
        elif isinstance(exc, openai.APIStatusError):
            detail = _server_message(exc.body, exc.message)
            message = f"{where} answered HTTP {exc.status_code}: {detail}"
        elif isinstance(exc, openai.APIError):
            # An error object sent inside a 200 stream ({"error": {...}}).
            message = f"{where} reported an error: {_server_message(exc.body, exc.message)}"
        elif isinstance(exc, _MALFORMED_STREAM_ERRORS):
            message = f"{where} sent a malformed stream: {exc}"
        else:
            message = f"{where} failed: {type(exc).__name__}"
        return LLMError(self._scrub(message))

    def _scrub(self, text: str) -> str:
        """Remove the API key, in case a server echoed it back in an error message."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text


def make_provider(
    name: str, *, base_url: str | None, api_key: str | None, timeout_seconds: float,
    max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS,
) -> LLMProvider:
    """Build the provider named by CHATSVC_LLM_PROVIDER: "stub" or "openai"."""
    normalized = (name or "").strip().lower()
    if normalized == "stub":
        return StubProvider()
    if normalized == "openai":
        if not base_url:
            raise ValueError(
                "the openai LLM provider needs a base URL (CHATSVC_LLM_BASE_URL), "
                "e.g. http://localhost:8080/v1"
            )
        return OpenAIProvider(base_url=base_url, api_key=api_key, timeout_seconds=timeout_seconds,
                              max_reply_chars=max_reply_chars)
    raise ValueError(f"unknown LLM provider {name!r}; expected 'stub' or 'openai'")


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _BodyReader:
    """An HTTP response body read by a thread of its own (a greenlet under gevent).

    ``take()`` returns every chunk that arrived since the last call, waiting only when there
    is none: pieces that arrive together, or while the caller was busy, are handled in one
    turn, and none is held back for a later one. (The HTTP client hands over each chunk of
    the response's chunked encoding on its own, even when many came in one read.) The
    reader's failure (a timeout, a broken connection) is raised by ``take()`` after the
    chunks that came before it. Closing the response ends the reader.
    """

    _END = object()

    def __init__(self, chunks: Iterator[bytes], *, wait_seconds: float) -> None:
        self._chunks = chunks
        self._wait_seconds = wait_seconds  # a backstop: the HTTP client's own read timeout comes first
        self._pending: deque[Any] = deque()
        self._ready = threading.Event()
        threading.Thread(target=self._read, name="chatsvc-llm-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            for chunk in self._chunks:
                self._pending.append(chunk)
                self._ready.set()
        except BaseException as error:  # handed to the caller, whose run reports it
            self._pending.append(_Failed(error))
        else:
            self._pending.append(self._END)
        self._ready.set()

    def take(self) -> tuple[list[bytes], bool]:
        """(the chunks that arrived since the last call, whether the body ended)."""
        if not self._ready.wait(self._wait_seconds):
            raise LLMError("the LLM server's stream stopped without a timeout")
        self._ready.clear()  # before taking: a chunk appended from now on sets it again
        taken: list[bytes] = []
        while self._pending:
            item = self._pending.popleft()
            if item is self._END:
                return taken, True
            if isinstance(item, _Failed):
                if taken:  # the chunks before the failure first
                    self._pending.appendleft(item)
                    self._ready.set()
                    return taken, False
                raise item.error
            taken.append(item)
        return taken, False


def _transport_errors(http_response: object) -> tuple[type[Exception], type[Exception]]:
    """The timeout and request error classes of the HTTP library the openai client uses
    (httpx, or its successor httpx2 in newer releases), found from its response."""
    library = sys.modules[type(http_response).__module__.partition(".")[0]]
    return library.TimeoutException, library.RequestError


class _EventStream:
    """The ``data`` of each Server-Sent Event in a byte stream, fed as it arrives.

    What an OpenAI-compatible stream uses of the format: ``data:`` lines (several join with
    a line feed), events ended by a blank line, ``\n`` or ``\r\n`` line ends; comments
    and the other fields are skipped.
    """

    __slots__ = ("_rest", "_data", "_max_bytes")

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._rest = b""  # an incomplete last line
        self._data: list[bytes] = []  # data lines of the event being read
        self._max_bytes = max_bytes  # of a line: a server that never ends one is refused

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self._max_bytes:
            raise _MalformedChunk(f"a line of the stream is longer than {self._max_bytes:,} bytes")
        events = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        return events


def _read_chunk(chunk: object, request: Any) -> tuple[str, bool]:
    """Return (text, finished) from one decoded stream chunk; _MalformedChunk if it has the
    wrong shape, openai.APIError for an error the server sent inside the stream."""
    if not isinstance(chunk, dict):
        raise _MalformedChunk(f"expected a chat.completion.chunk, got {_shorten(repr(chunk))}")
    if chunk.get("error"):  # {"error": {...}} inside a 200 stream, as the openai client reads it
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(message if isinstance(message, str) and message
                              else "An error occurred during streaming", request, body=error)
    choices = chunk.get("choices")
    if not choices:
        return "", False  # e.g. a usage-only chunk: nothing to show
    choice = choices[0] if isinstance(choices, list) else None
    if not isinstance(choice, dict):
        raise _MalformedChunk("'choices' is not a list of choices")
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else None
    if text is not None and not isinstance(text, str):
        raise _MalformedChunk("'delta.content' is not text")
    return text or "", bool(choice.get("finish_reason"))


def _server_message(body: object, fallback: str) -> str:
    """The human part of an OpenAI-style error body ({"message": ...}), shortened."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _shorten(body["message"])
    if isinstance(body, str):
        return _shorten(body.strip()) or "(empty response body)"
    if body is not None:
        return _shorten(json.dumps(body, default=str))
    return _shorten(fallback)


def _shorten(text: str) -> str:
    if len(text) <= _MAX_SERVER_MESSAGE_CHARS:
        return text
    return text[: _MAX_SERVER_MESSAGE_CHARS - 1] + "…"


def _check_base_url(base_url: str) -> None:
    """Reject a base URL that cannot work, with a message that says why."""
    parts = urlsplit(base_url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"LLM base URL {_display_url(base_url)!r} must be an http(s) URL "
            "such as http://localhost:8080/v1"
        )


def _display_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:  # e.g. a malformed IPv6 host
        return "<invalid URL>"

"""A fake OpenAI-compatible chat server for tests: real HTTP and real SSE on 127.0.0.1.

Usage::

    with FakeOpenAI() as fake:
        fake.stream(["Hel", "lo"], delay=0.05)
        provider = OpenAIProvider(base_url=fake.base_url, api_key="k")
        ...
        assert fake.last_request.model == "m"

As a pytest fixture (e.g. in conftest.py), then point the app at it with
``CHATSVC_LLM_PROVIDER=openai`` and ``CHATSVC_LLM_BASE_URL=fake.base_url``::

    @pytest.fixture
    def fake_openai():
        with FakeOpenAI() as fake:
            yield fake

Only the standard library is used, and nothing leaves the machine.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the decoded JSON body (None if it was not JSON)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]] | None:
        return self.body.get("messages") if isinstance(self.body, dict) else None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass(frozen=True)
class _Behaviour:
    """What the fake does with chat requests from now on.

    Replaced whole, never mutated, so a handler thread never sees half a change.
    """

    mode: Literal["stream", "error", "hang", "raw"] = "stream"
    chunks: tuple[str, ...] = ("Hello", ", ", "world", "!")
    delay: float = 0.0  # seconds to wait before each content chunk
    stall_after: int | None = None  # send this many content chunks, then go silent
    finish: bool = True  # send the finish_reason chunk and [DONE]
    status: int = 500
    error_body: dict[str, Any] = field(default_factory=dict)
    raw_data: tuple[str, ...] = ()  # payloads sent verbatim as `data:` lines
    together: bool = False  # every chunk of the reply in one write (they arrive together)


class FakeOpenAI:
    """An OpenAI-compatible ``POST /v1/chat/completions`` server running in a background thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._behaviour = _Behaviour()
        self._requests: list[RecordedRequest] = []
        self._chunks_sent = 0
        self._disconnects = 0
        self._disconnected = threading.Condition(self._lock)
        # Set on stop(): wakes every handler that is hanging or sleeping between chunks.
        self._stopping = threading.Event()
        self._open_connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        """Listen on a free port of 127.0.0.1 and serve in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server = server
        self._thread = threading.Thread(
            # A short poll interval keeps stop() fast: shutdown() waits for the loop's next poll.
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-openai", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; handlers that hang or wait are released and their connections closed."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            connections = list(self._open_connections)
        for conn in connections:
            # Unblocks handler threads waiting to read the next keep-alive request.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client (ends in /v1)."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; use start() or `with FakeOpenAI()`")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- configuring the next responses -----------------------------------------

    def stream(
        self,
        chunks: list[str],
        *,
        delay: float = 0.0,
        stall_after: int | None = None,
        finish: bool = True,
        together: bool = False,
    ) -> None:
        """Answer with these content chunks as SSE.

        ``delay`` waits before each chunk; ``stall_after=n`` sends n chunks then goes silent
        until the server stops; ``finish=False`` ends the response with neither a
        finish_reason nor [DONE] (a truncated reply); ``together`` writes the whole reply
        at once, so the client reads its pieces together.
        """
        self._set(_Behaviour(mode="stream", chunks=tuple(chunks), delay=delay,
                             stall_after=stall_after, finish=finish, together=together))

    def fail(self, status: int, message: str = "fake failure", *, error_type: str = "server_error",
             code: str | None = None) -> None:
        """Answer with this HTTP status and an OpenAI-style JSON error body."""
        body = _error_body(message, error_type)
        body["error"]["code"] = code
        self._set(_Behaviour(mode="error", status=status, error_body=body))

    def hang(self) -> None:
        """Read the request and never answer (until the server stops)."""
        self._set(_Behaviour(mode="hang"))

    def send_raw(self, data_lines: list[str]) -> None:
        """Answer 200 with these payloads as `data:` lines, unchecked (for malformed streams)."""
        self._set(_Behaviour(mode="raw", raw_data=tuple(data_lines)))

    def _set(self, behaviour: _Behaviour) -> None:
        with self._lock:
            self._behaviour = behaviour

    # -- what happened ---------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise AssertionError("the fake OpenAI server received no request")
            return self._requests[-1]

    @property
    def chunks_sent(self) -> int:
        """Content chunks written to clients so far (over all requests)."""
        with self._lock:
            return self._chunks_sent

    def wait_for_disconnect(self, timeout: float = 2.0) -> bool:
        """Wait until a client has dropped a stream before its end; True if one did."""
        deadline = time.monotonic() + timeout
        with self._disconnected:
            while self._disconnects == 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._disconnected.wait(remaining)
            return True

    # -- used by the handler ---------------------------------------------------

    def _record(self, request: RecordedRequest) -> _Behaviour:
        with self._lock:
            self._requests.append(request)
            return self._behaviour

    def _count_chunk(self) -> None:
        with self._lock:
            self._chunks_sent += 1

    def _count_disconnect(self) -> None:
        with self._disconnected:
            self._disconnects += 1
            self._disconnected.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler must never keep the test process alive

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client drops its connection; report anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _error_body(message: str, error_type: str = "invalid_request_error") -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def _make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(_ChatHandler):
        pass

    Handler.fake = fake
    return Handler


class _ChatHandler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, like real servers

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._open_connections.add(self.connection)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._open_connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the client may already be gone

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        behaviour = self.fake._record(RecordedRequest(
            method="POST",
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        ))

        if self.path != CHAT_PATH:
            self._send_json(404, _error_body(f"no route {self.path}"))
        elif body is None:
            self._send_json(400, _error_body("body is not JSON"))
        elif behaviour.mode == "error":
            self._send_json(behaviour.status, behaviour.error_body)
        elif behaviour.mode == "hang":
            self._hang()
        else:
            model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
            try:
                self._send_stream(behaviour, model)
            except (BrokenPipeError, ConnectionResetError):
                # The client closed the connection mid-stream (e.g. a cancelled run).
                self.fake._count_disconnect()
                self.close_connection = True

    def _hang(self) -> None:
        self.fake._stopping.wait()
        self.close_connection = True

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, behaviour: _Behaviour, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        if behaviour.mode == "raw":
            for payload in behaviour.raw_data:
                self._send_event(payload)
            self._end_body()
            return

        completion_id = f"chatcmpl-fake-{time.monotonic_ns()}"
        self._held = [] if behaviour.together else None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            return json.dumps({
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            })

        # Real servers open with the role and empty content.
        self._send_event(chunk({"role": "assistant", "content": ""}))
        for sent, text in enumerate(behaviour.chunks):
            if behaviour.stall_after is not None and sent >= behaviour.stall_after:
                self._hang()
                return
            if behaviour.delay and self.fake._stopping.wait(behaviour.delay):
                self.close_connection = True  # the server is stopping
                return
            self._send_event(chunk({"content": text}))
            self.fake._count_chunk()
        if behaviour.stall_after is not None and behaviour.stall_after >= len(behaviour.chunks):
            self._hang()
            return
        if behaviour.finish:
            self._send_event(chunk({}, finish_reason="stop"))
            self._send_event("[DONE]")
        if self._held is not None:
            held, self._held = self._held, None
            self.wfile.write(b"".join(held))
        self._end_body()

    def _send_event(self, payload: str) -> None:
        self._write_chunk(f"data: {payload}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        """Write one HTTP/1.1 chunk and flush it, so the client sees it now (or hold it)."""
        framed = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        if getattr(self, "_held", None) is not None:
            self._held.append(framed)
            return
        self.wfile.write(framed)
        self.wfile.flush()

    def _end_body(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

"""Redis for tests: the shared server (CHATSVC_TEST_REDIS_URL) and test-owned servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import redis

from tests.helpers.support import need

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.exceptions.RedisError:
        return False


def redis_url() -> str:
    """The shared test Redis; skips (fails under STRICT) when it does not answer."""
    url = os.environ.get("CHATSVC_TEST_REDIS_URL") or DEFAULT_URL
    need(_answers(url), f"Redis not reachable at {url} (set CHATSVC_TEST_REDIS_URL)")
    return url


def unique_prefix() -> str:
    """A key prefix of one test, so tests never see each other's runs."""
    return f"chatsvc-test:{uuid.uuid4().hex[:12]}:"


def prefix_keys(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A test-owned redis-server on a free port, which a test may stop and start again."""

    def __init__(self) -> None:
        need(shutil.which("redis-server") is not None, "redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _answers(self.url):
            assert time.monotonic() < deadline, "test redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

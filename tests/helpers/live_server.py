"""A real chatsvc server process (gunicorn + gevent, the production setup) for tests.

    with LiveServer(tmp_path, env={"CHATSVC_SSE_HEARTBEAT_SECONDS": "1"}) as server:
        httpx.get(server.url + "/healthz")

The server gets its own SQLite file and the test JWT secret; ``server.seed()``
runs ``chatsvc demo-data`` against the same database and returns its JSON.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.support import TEST_JWT_SECRET

GUNICORN_CONFIG = str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None, *, command: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"server-{self.port}.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
        self.env = {
            **inherited,
            "CHATSVC_JWT_SECRET": TEST_JWT_SECRET,
            "CHATSVC_DATABASE_URL": f"sqlite:///{self.workdir / 'live.db'}",
            "CHATSVC_INSTANCE_PATH": str(self.workdir / "instance"),
            "CHATSVC_HOST": "127.0.0.1",
            "CHATSVC_PORT": str(self.port),
            **(env or {}),
        }
        self.command = command or [
            sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "chatsvc:create_app()",
        ]
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        """Run a ``chatsvc`` CLI command against the server's database; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "chatsvc.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"chatsvc {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def seed(self) -> dict[str, Any]:
        return json.loads(self.cli("demo-data"))

    def nap_workflow(self, headers: dict[str, str], team_id: int, seconds: float, name: str = "Nap") -> int:
        """Create a workflow `start` (input) -> `nap` (sleep ``seconds``): runs that stay live a while. Its id."""
        rv = httpx.post(self.url + "/api/v1/workflows", headers=headers, timeout=10, json={
            "team_id": team_id, "name": name,
            "nodes": [{"key": "start", "node_type": "input", "metadata": {}},
                      {"key": "nap", "node_type": "sleep", "metadata": {"seconds": seconds}}],
            "edges": [{"source": "start", "target": "nap"}]})
        assert rv.status_code == 201, rv.text
        return rv.json()["id"]

    def admin_headers(self, seed: dict[str, Any]) -> dict[str, str]:
        """A bearer header for the demo admin that ``seed()`` returned."""
        rv = httpx.post(self.url + "/api/v1/auth/login", timeout=10,
                        json={"email": seed["admin_email"], "password": seed["admin_password"]})
        assert rv.status_code == 200, rv.text
        return {"Authorization": f"Bearer {rv.json()['access_token']}"}

    def start(self) -> "LiveServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cli("init-db")
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

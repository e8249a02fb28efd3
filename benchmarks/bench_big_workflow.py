"""What a big workflow costs everyone else: saving and running it on one gevent worker.

Run: python benchmarks/bench_big_workflow.py [--nodes 10000]

Starts a real chatsvc server (tests/helpers/live_server.py), saves a chain input -> N-1
`echo` nodes (POST /workflows), then runs it (sync). Meanwhile another client asks
/healthz every 20 ms: its longest wait during each step is how long that step held the
worker's one thread, stalling every other request and stream of the process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.live_server import LiveServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    n = parser.parse_args().nodes
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Path(tmp)) as server:
        seed = server.seed()
        admin = server.admin_headers(seed)
        keys = ["in"] + [f"n{i}" for i in range(1, n)]
        body = {"team_id": seed["team_id"], "name": "big",
                "nodes": [{"key": k, "node_type": "input" if k == "in" else "echo"} for k in keys],
                "edges": [{"source": a, "target": b} for a, b in zip(keys, keys[1:])]}
        probes: list[tuple[float, float]] = []  # (sent at, waited)
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                while not done.is_set():
                    sent = time.monotonic()
                    client.get("/healthz")
                    probes.append((sent, time.monotonic() - sent))
                    time.sleep(0.02)

        def step(name: str, send) -> httpx.Response:
            started = time.monotonic()
            rv = send()
            ended = time.monotonic()
            time.sleep(0.3)  # let the probe that was waiting come back
            longest = max((waited for sent, waited in probes if started <= sent < ended), default=0.0)
            print(f"{name}: {rv.status_code} in {ended - started:.2f} s; longest /healthz wait {longest * 1000:.0f} ms")
            return rv

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            time.sleep(0.5)
            with httpx.Client(base_url=server.url, headers=admin, timeout=120) as client:
                saved = step(f"save {n} nodes", lambda: client.post("/api/v1/workflows", json=body))
                step(f"run {n} nodes (sync)", lambda: client.post("/api/v1/chat/workflows:run", json={
                    "workflow_id": saved.json()["id"], "mode": "sync", "starting_inputs": {"x": 1}}))
        finally:
            done.set()
            prober.join()


if __name__ == "__main__":
    main()

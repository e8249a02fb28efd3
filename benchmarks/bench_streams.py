"""Many SSE subscribers on one gunicorn + gevent worker: fan-out latency, memory, API latency.

Run: python benchmarks/bench_streams.py [--subscribers 1000]

Starts a real chatsvc server (tests/helpers/live_server.py), creates a workflow that sleeps
between two nodes, starts it, opens N streams on it, and measures:
- how long until every stream received its backlog (all N connected),
- the delay from an event's server timestamp until each subscriber read it,
- the worker's resident memory with N streams open,
- `GET /healthz` and `GET /api/v1/chat/runs/{id}` latency while the N streams are open,
- that every subscriber saw the same complete sequence and `done`.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.live_server import LiveServer  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


async def subscribe(client: httpx.AsyncClient, url: str, connected: asyncio.Event, counter: list[int],
                    n: int, received: dict[int, float]) -> list[int]:
    """Read one stream to `done`; note when each seq arrived."""
    seqs: list[int] = []
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "log":
                data = json.loads(line[6:])
                seqs.append(data["seq"])
                if data["message"] == "node_output" and data["data"]["node_key"] == "after":
                    received[id(seqs)] = time.time() - data["ts"]
                if len(seqs) == 1:
                    counter[0] += 1
                    if counter[0] == n:
                        connected.set()
            elif line.startswith("data: ") and event == "done":
                return seqs
    return seqs


async def latency(client: httpx.AsyncClient, url: str, headers: dict, rounds: int = 50) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        (await client.get(url, headers=headers)).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(n: int, sleep_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, LiveServer(
        Path(tmp), env={"CHATSVC_WORKER_CONNECTIONS": str(n + 200), "CHATSVC_SSE_HEARTBEAT_SECONDS": "20"}
    ) as server:
        seeded = server.seed()
        headers = {"X-API-Key": seeded["service_api_key"]}
        limits = httpx.Limits(max_connections=n + 50, max_keepalive_connections=n + 50)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            token = (await client.post("/api/v1/auth/login", json={
                "email": seeded["admin_email"], "password": seeded["admin_password"]})).json()["access_token"]
            admin = {"Authorization": f"Bearer {token}"}
            workflow = (await client.post("/api/v1/workflows", headers=admin, json={
                "team_id": seeded["team_id"], "name": "bench-streams",
                "nodes": [{"key": "start", "node_type": "input"},
                          {"key": "wait", "node_type": "sleep", "metadata": {"seconds": sleep_seconds}},
                          {"key": "after", "node_type": "echo"}],
                "edges": [{"source": "start", "target": "wait"}, {"source": "wait", "target": "after"}],
            })).json()
            await client.put(f"/api/v1/workflows/{workflow['id']}/services/{seeded['service_id']}", headers=admin)
            idle_rss = rss_mib(worker_pid(server.process.pid))
            run_body = (await client.post("/api/v1/chat/workflows:run", headers=headers, json={
                "workflow_id": workflow["id"], "mode": "async", "starting_inputs": {"x": 1}})).json()

            connected, counter, received = asyncio.Event(), [0], {}
            opened = time.perf_counter()
            tasks = [asyncio.create_task(subscribe(client, run_body["events_url"], connected, counter, n, received))
                     for _ in range(n)]
            await asyncio.wait_for(connected.wait(), timeout=sleep_seconds - 1)
            connect_s = time.perf_counter() - opened
            open_rss = rss_mib(worker_pid(server.process.pid))
            health = await latency(client, "/healthz", {})
            status = await latency(client, run_body["status_url"], headers)
            results = await asyncio.gather(*tasks)

    delays_ms = [v * 1000 for v in received.values()]
    complete = all(r == results[0] for r in results) and results[0] == list(range(1, len(results[0]) + 1))
    print(f"subscribers: {n}; all received identical complete sequences: {complete} ({len(results[0])} events)")
    print(f"all {n} streams connected and had their backlog after {connect_s:.2f} s")
    print(f"worker RSS: {idle_rss:.0f} MiB idle, {open_rss:.0f} MiB with {n} streams open "
          f"({(open_rss - idle_rss) * 1024 / n:.0f} KiB per stream)")
    print(f"event fan-out delay (server ts -> client read), ms: p50 {statistics.median(delays_ms):.1f}, "
          f"p95 {pct(delays_ms, 95):.1f}, max {max(delays_ms):.1f}")
    print(f"GET /healthz with {n} streams open, ms: p50 {statistics.median(health):.1f}, p95 {pct(health, 95):.1f}")
    print(f"GET run status with {n} streams open, ms: p50 {statistics.median(status):.1f}, "
          f"p95 {pct(status, 95):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds the run waits before its last node")
    args = parser.parse_args()
    asyncio.run(run(args.subscribers, args.sleep))


if __name__ == "__main__":
    main()

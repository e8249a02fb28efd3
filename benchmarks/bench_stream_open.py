"""Cost of opening a log stream, and memory per idle stream, on one gunicorn + gevent worker.

Run: python benchmarks/bench_stream_open.py [--streams 10000] [--runs 1]

Starts a real chatsvc server (tests/helpers/live_server.py), starts ``--runs`` runs that sleep
for a minute, then opens N streams on them, in turn, with raw sockets (a cheap client, so the
server's cost shows) and waits for each one's first bytes. ``--runs`` equal to ``--streams`` is
the Chat page's shape: one person, one stream per run. Prints the worker's CPU per open and
its resident memory per open stream (RSS after the opens settle, minus before).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.live_server import LiveServer  # noqa: E402


def worker_pid(master_pid: int) -> int:
    return int(Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.streams + 1000), hard))
    env = {"CHATSVC_WORKER_CONNECTIONS": str(args.streams + 1000),
           "CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER": str(args.runs + 10)}
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Path(tmp), env=env) as server:
        seed = server.seed()
        headers = server.admin_headers(seed)
        workflow_id = server.nap_workflow(headers, seed["team_id"], 60)
        requests = []
        with httpx.Client(base_url=server.url, headers=headers) as http:
            for _ in range(args.runs):
                events_url = http.post("/api/v1/chat/workflows:run", json={
                    "workflow_id": workflow_id, "mode": "async"}).json()["events_url"]
                requests.append(f"GET {events_url} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                f"Accept: text/event-stream\r\n\r\n".encode())
        worker = worker_pid(server.process.pid)
        time.sleep(1)
        rss_before, cpu_before, started = rss_kb(worker), cpu_seconds(worker), time.monotonic()
        sockets = []
        for n in range(args.streams):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(requests[n % len(requests)])
            sockets.append(sock)
        for sock in sockets:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        elapsed, cpu = time.monotonic() - started, cpu_seconds(worker) - cpu_before
        time.sleep(2)
        rss_after = rss_kb(worker)
        print(f"{args.streams} streams on {args.runs} runs opened in {elapsed:.2f} s; server CPU {cpu / args.streams * 1e6:.0f} µs per open;"
              f" worker RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB,"
              f" {(rss_after - rss_before) / args.streams:.1f} KB per idle stream")
        for sock in sockets:
            sock.close()


if __name__ == "__main__":
    main()

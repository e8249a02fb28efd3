"""Runaway JSONata against everyone else: /healthz and a normal expert run, with and without 3 runaways.

Run: python benchmarks/bench_jsonata_isolation.py [--seconds 10]

A real gunicorn + gevent server (one worker, defaults). Phase "quiet": one client probes
`GET /healthz` every 10 ms while another runs the demo expert (9 placeholders, stub LLM)
in sync mode back to back. Phase "3 runaways, other team": the same, while 3 runs of
another team's expert whose template holds a catastrophic regex are kept in flight (each
is killed at CHATSVC_JSONATA_TIMEOUT_MS and restarted at once). Phase "3 runaways, same
team": the runaway expert belongs to the demo expert's team. Prints /healthz p50/p99, the
normal run's p50, and how many normal runs had a placeholder time out.
SPEC §13 targets: /healthz p99 < 50 ms with the runaways, run p50 changes by < 2 ms
(another team's runaways: evaluators are shared out by team, see docs/decisions.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsvc.demo import DEMO_INPUTS  # noqa: E402
from tests.helpers.live_server import LiveServer  # noqa: E402

RUNAWAY = "{{ $contains(input.s, /(a+)+$/) }}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase(url: str, headers: dict, expert_id: int, runaway_id: int | None, seconds: float) -> dict:
    stop = threading.Event()
    health: list[float] = []
    runs: list[float] = []
    timed_out: list[int] = []

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get(url + "/healthz")
                health.append(time.perf_counter() - started)
                time.sleep(0.01)

    def normal() -> None:
        with httpx.Client(timeout=30, headers=headers) as client:
            while not stop.is_set():
                started = time.perf_counter()
                rv = client.post(url + "/api/v1/chat/experts:run", json={
                    "expert_id": expert_id, "input_params": DEMO_INPUTS, "mode": "sync"})
                assert rv.status_code == 200, rv.text
                runs.append(time.perf_counter() - started)
                if rv.json()["warnings"]:
                    timed_out.append(1)

    def runaway() -> None:
        with httpx.Client(timeout=30, headers=headers) as client:
            while not stop.is_set():
                client.post(url + "/api/v1/chat/experts:run", json={
                    "expert_id": runaway_id, "input_params": {"s": "a" * 29 + "!"}, "mode": "sync"})

    threads = [threading.Thread(target=probe), threading.Thread(target=normal)]
    if runaway_id is not None:
        threads += [threading.Thread(target=runaway) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    return {"healthz_p50_ms": statistics.median(health) * 1000, "healthz_p99_ms": percentile(health, 0.99) * 1000,
            "run_p50_ms": statistics.median(runs) * 1000, "runs": len(runs), "timed_out": len(timed_out)}


def runaway_expert(url: str, headers: dict, team_id: int) -> int:
    rv = httpx.post(url + "/api/v1/experts", headers=headers, json={
        "team_id": team_id, "name": "Runaway", "prompt_template": RUNAWAY, "model_name": "stub"})
    assert rv.status_code == 201, rv.text
    return rv.json()["id"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    env = {"CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER": "1000"}
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Path(tmp), env=env) as server:
        seed = server.seed()
        headers = server.admin_headers(seed)
        other_team = httpx.post(server.url + "/api/v1/teams", headers=headers, json={"name": "Other"}).json()
        runaways = {"other team": runaway_expert(server.url, headers, other_team["id"]),
                    "same team": runaway_expert(server.url, headers, seed["team_id"])}
        phase(server.url, headers, seed["expert_id"], None, 2)  # warm up
        results = {"quiet": phase(server.url, headers, seed["expert_id"], None, args.seconds)}
        for name, expert_id in runaways.items():
            results[f"3 runaways, {name}"] = phase(server.url, headers, seed["expert_id"], expert_id, args.seconds)
        quiet = results["quiet"]["run_p50_ms"]
        for name, result in results.items():
            print(f"{name:>24}: /healthz p50 {result['healthz_p50_ms']:.1f} ms, p99 {result['healthz_p99_ms']:.1f} ms;"
                  f" normal expert run p50 {result['run_p50_ms']:.1f} ms ({result['run_p50_ms'] - quiet:+.1f}),"
                  f" {result['runs']} runs, {result['timed_out']} with a placeholder timed out")


if __name__ == "__main__":
    main()

"""Cost of starting a workflow run, by the workflow's size: loading, re-validating and ordering its graph.

Run: python benchmarks/bench_workflow_start.py [--nodes 10 150 1000] [--starts 20]

In process, through Flask's test client (no server, no network), on a temporary SQLite
database: a chain input -> sleep(60 s) -> N echo nodes, started in async mode. The runs
sleep at their first node, so what is timed is the request alone, not the runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 150, 1000])
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    os.environ.update(CHATSVC_DATABASE_URL=f"sqlite:///{tmp}/db.sqlite", CHATSVC_JWT_SECRET="bench-" + "x" * 40,
                      CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER="100000")
    from click.testing import CliRunner

    from chatsvc import create_app
    from chatsvc.cli import main as cli

    CliRunner().invoke(cli, ["init-db"], catch_exceptions=False)
    CliRunner().invoke(cli, ["create-user", "a@example.com", "--password", "benchpass123", "--admin"],
                       catch_exceptions=False)
    client = create_app().test_client()
    token = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "benchpass123"})
    headers = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    team = client.post("/api/v1/teams", json={"name": "bench"}, headers=headers).get_json()
    print(f"{'nodes':>6} {'ms per start':>13}")
    for n in args.nodes:
        nodes = [{"key": "in", "node_type": "input", "metadata": {}},
                 {"key": "wait", "node_type": "sleep", "metadata": {"seconds": 60}}]
        nodes += [{"key": f"e{i}", "node_type": "echo", "metadata": {}} for i in range(n)]
        keys = [node["key"] for node in nodes]
        edges = [{"source": a, "target": z} for a, z in zip(keys, keys[1:])]
        workflow = client.post("/api/v1/workflows", headers=headers, json={
            "team_id": team["id"], "name": f"chain {n}", "nodes": nodes, "edges": edges}).get_json()

        def start(times: int) -> None:
            for _ in range(times):
                rv = client.post("/api/v1/chat/workflows:run", headers=headers,
                                 json={"workflow_id": workflow["id"], "mode": "async"})
                assert rv.status_code == 202, rv.get_data(as_text=True)

        start(3)  # warm: compiled queries, imports
        began = time.perf_counter()
        start(args.starts)
        print(f"{n:>6} {(time.perf_counter() - began) / args.starts * 1000:>13.1f}", flush=True)
    os._exit(0)  # the sleeping runs: nothing to wait for


if __name__ == "__main__":
    main()

"""Cost of starting a run: `experts:run` sync (stub LLM) against a bare Flask POST.

Run: python benchmarks/bench_run_start.py [--rounds 3] [--seconds 10] [--mode sync] [--layers]

Both servers run under gunicorn with chatsvc's own gunicorn.conf.py (one gevent
worker), one after the other; wrk (Debian package `wrk`) loads each with
-t2 -c50 in alternating rounds, so machine noise hits both alike. Prints req/s per
round and the ratio chatsvc / hello (SPEC §13 asks for >= 0.4). With --layers, each round
also loads chatsvc's /healthz and an authenticated GET /api/v1/experts/{id}: what the
request path costs before a run is involved.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatsvc.demo import DEMO_INPUTS  # noqa: E402
from tests.helpers.live_server import GUNICORN_CONFIG, LiveServer  # noqa: E402

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


def wrk(url: str, body: dict | None, headers: dict[str, str], seconds: int) -> float:
    """Requests per second: a POST of ``body`` as JSON, or a GET when ``body`` is None."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is None:
            script.write(lines)
        else:
            script.write(WRK_SCRIPT.format(body=json.dumps(body), headers=lines))
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"errors in the run:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--mode", default="sync", choices=["sync", "async"])
    parser.add_argument("--layers", action="store_true", help="also /healthz and an authenticated GET")
    args = parser.parse_args()
    env = {"CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER": "100000", "CHATSVC_RUN_TTL_SECONDS": "5"}
    with tempfile.TemporaryDirectory() as tmp:
        chatsvc = LiveServer(Path(tmp) / "chatsvc", env=env).start()
        hello = LiveServer(Path(tmp) / "hello", env=env, command=[
            sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, "--chdir", str(ROOT / "benchmarks"),
            "hello_app:app"]).start()
        try:
            seed = chatsvc.seed()
            admin = chatsvc.admin_headers(seed)
            body = {"expert_id": seed["expert_id"], "input_params": DEMO_INPUTS, "mode": args.mode}
            probe = httpx.post(chatsvc.url + "/api/v1/chat/experts:run", json=body, headers=admin)
            assert probe.status_code in (200, 202), probe.text
            ratios = []
            for n in range(args.rounds):
                base = wrk(hello.url + "/hello", {"name": "x"}, {}, args.seconds)
                runs = wrk(chatsvc.url + "/api/v1/chat/experts:run", body, admin, args.seconds)
                ratios.append(runs / base)
                print(f"round {n + 1}: hello {base:8.0f} req/s   experts:run {args.mode} {runs:7.0f} req/s"
                      f"   ratio {runs / base:.2f}", flush=True)
                if args.layers:
                    health = wrk(chatsvc.url + "/healthz", None, {}, args.seconds)
                    read = wrk(f"{chatsvc.url}/api/v1/experts/{seed['expert_id']}", None, admin, args.seconds)
                    print(f"         /healthz {health:7.0f} req/s ({health / base:.2f})   GET expert "
                          f"{read:7.0f} req/s ({read / base:.2f})", flush=True)
            print(f"median ratio {sorted(ratios)[len(ratios) // 2]:.2f}")
        finally:
            chatsvc.stop()
            hello.stop()


if __name__ == "__main__":
    main()

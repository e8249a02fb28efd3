"""Soak test: a real chatsvc server under a mixed, bounded load; its memory sampled over time.

Run (from the repository root, venv active):

    python benchmarks/soak.py --registry memory --minutes 30 --ttl 120 --out /tmp/soak-memory
    python benchmarks/soak.py --registry redis  --minutes 30 --ttl 120 --out /tmp/soak-redis

It starts its own server on a free port of 127.0.0.1 (``chatsvc serve --demo``: SQLite and
the demo data in a temporary instance folder; ``--registry redis`` adds
``CHATSVC_REGISTRY_URL=redis://127.0.0.1:6379/0`` with a unique ``CHATSVC_REDIS_PREFIX``,
whose keys it deletes at the end, and ``CHATSVC_WORKERS=--workers``), drives the load for
``--minutes``, keeps sampling for ``--idle-minutes`` without load, then stops the server and
itself. Every loop is bounded in count and time: a request that cannot be placed because
every client thread is busy is dropped and counted, never queued without end.

The load (``--rate`` run starts per second in all, default 25) mixes expert and workflow runs
(the demo ones: the workflow has a 1 s ``sleep`` node, JSONata ``transform`` and ``template``
nodes and an ``expert`` node), sync and async, as the admin user (JWT) and the demo service
(API key), with inputs that vary per run. Of the async runs some are cancelled, some get an SSE
subscriber (the ``events_url`` token, no headers) that reads a few events, drops the
connection and resumes with ``Last-Event-ID`` (up to 3 times), some a subscriber that reads to
``done``, some a status poll; ``GET /runs`` is listed every ``--list-every`` seconds.

Every ``--interval`` seconds (default 30) it samples each gunicorn worker's RSS and open file
descriptors (``/proc``), the RSS of its JSONata evaluator processes, and ``GET /metrics``:
``chatsvc_greenlets``, ``chatsvc_run_feeds``, ``chatsvc_runs`` (summed by status) and
``chatsvc_sse_connections``; with Redis also the keys under the prefix and Redis's
``used_memory``. It prints a table as it goes and writes ``<out>.json`` (settings, samples,
request counts) and ``<out>.csv`` (one row per sample and worker).
With several workers, the per-process gauges of ``/metrics`` come from whichever worker
answered that scrape (``--diag`` records each worker's own figures).

**The TTL.** A finished run stays in the registry for ``CHATSVC_RUN_TTL_SECONDS`` (default
900 s) by design, so a worker's memory rises for that long under a steady load before runs
start leaving as fast as they arrive (25 runs/s x 900 s = 22,500 runs held). ``--ttl``
(default 120 s) sets a shorter TTL, so that the plateau is reached within a short run: memory
that still rises well after ``--ttl`` seconds of load is a leak, memory that levels off is
the TTL window. ``--ttl 900`` reproduces the production setting.

**Leak hunting.** ``--diag DIR`` serves with ``benchmarks/soak_gunicorn_conf.py`` (chatsvc's own
gunicorn settings plus a dump on SIGUSR2) instead of ``chatsvc serve``, starts ``tracemalloc``
in each worker (``--tracemalloc-frames``, default 12; 0 = none: the dumps then hold gc counts
and bookkeeping sizes only), dumps at every sample, and at the end compares the first dump
taken after ``--compare-after`` seconds (default: TTL + 60 s) with the last: growth by
allocation traceback and by source line, gc-tracked objects by type, bookkeeping sizes
(``DIR/report.txt``). tracemalloc slows the worker down and adds memory of its own: take RSS
figures from runs without ``--diag`` (or with ``--tracemalloc-frames 0``).

Time: a run takes ``--minutes + --idle-minutes`` plus ~15 s of start-up and shutdown (a
30-minute soak: about 30.5 minutes with either registry).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
WRAPPER_CONFIG = Path(__file__).resolve().parent / "soak_gunicorn_conf.py"
REDIS_URL = "redis://127.0.0.1:6379/0"
CITIES = ["Lisbon", "Porto", "Madrid", "Paris", "Oslo", "Rome", "Vienna", "Prague", "Tallinn", "Riga"]
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# --- the server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "Threads"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def is_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


class Server:
    """A chatsvc server of our own on 127.0.0.1 (and its temporary instance folder)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = f"soak-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATSVC_", "SOAK_"))}
        env.update(
            CHATSVC_ENV="development",
            CHATSVC_INSTANCE_PATH=str(workdir / "instance"),
            CHATSVC_HOST="127.0.0.1",
            CHATSVC_PORT=str(self.port),
            CHATSVC_RUN_TTL_SECONDS=str(args.ttl),
            # Both callers run many runs at once (the 1 s workflow): not the 10 of production.
            CHATSVC_MAX_ACTIVE_RUNS_PER_CALLER=str(args.max_active_per_caller),
            CHATSVC_GRACEFUL_TIMEOUT="5",
        )
        if args.registry == "redis":
            env.update(CHATSVC_REGISTRY_URL=args.redis_url, CHATSVC_REDIS_PREFIX=self.prefix,
                       CHATSVC_WORKERS=str(args.workers))
        for item in args.env:
            key, _, value = item.partition("=")
            env[key] = value
        # The chatsvc to serve: this checkout, or a `git archive` of --git-ref (see main()).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.source), env.get("PYTHONPATH")]))
        env["SOAK_CHATSVC_ROOT"] = str(args.source)
        if args.diag:
            env.update(SOAK_DIAG_DIR=str(args.diag), SOAK_TRACEMALLOC_FRAMES=str(args.tracemalloc_frames))
        self.env = env
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def seed(self) -> dict:
        done = subprocess.run([sys.executable, "-m", "chatsvc.cli", "demo-data"], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise SystemExit(f"chatsvc demo-data failed:\n{done.stderr}")
        return json.loads(done.stdout)

    def start(self) -> None:
        if self.args.diag:
            # chatsvc serve --demo does this: development env, SQLite in the instance folder.
            command = [sys.executable, "-m", "gunicorn", "-c", str(WRAPPER_CONFIG),
                       "--pythonpath", str(self.args.source), "chatsvc:create_app()"]
        else:
            command = [sys.executable, "-m", "chatsvc.cli", "serve", "--demo", "--port", str(self.port)]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, env=self.env, cwd=self.workdir, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited ({self.process.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200 and \
                        len(self.workers()) >= self.expected_workers():
                    time.sleep(1.0)  # let the evaluators start
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server did not become ready; see {self.log_path}")

    def expected_workers(self) -> int:
        return self.args.workers if self.args.registry == "redis" else 1

    def workers(self) -> list[int]:
        """The gunicorn workers: the master's live children. (``chatsvc serve --demo`` seeds the demo
        with an app whose JSONata evaluators it leaves behind when it exec's gunicorn: zombies.)"""
        return [pid for pid in children(self.process.pid) if not is_zombie(pid)] if self.process else []

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # the gunicorn master we started
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()

    def delete_redis_keys(self) -> int:
        if self.args.registry != "redis":
            return 0
        import redis

        client = redis.Redis.from_url(self.args.redis_url)
        deleted = 0
        batch = []
        for key in client.scan_iter(match=self.prefix + "*", count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
        return deleted


# --- the load ---------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counts)


class Load:
    """Starts runs at a fixed rate on a bounded pool of client threads, until told to stop."""

    def __init__(self, server: Server, seed: dict, args: argparse.Namespace) -> None:
        self.server = server
        self.args = args
        self.seed = seed
        self.stats = Stats()
        self.stop = threading.Event()
        self.tasks: queue.Queue = queue.Queue(maxsize=args.concurrency)
        timeout = httpx.Timeout(connect=5, read=args.sync_read_timeout, write=10, pool=10)
        limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8)
        self.http = httpx.Client(base_url=server.url, timeout=timeout, limits=limits)
        token = self.http.post("/api/v1/auth/login", json={
            "email": seed["admin_email"], "password": seed["admin_password"]}).json()["access_token"]
        self.callers = [{"Authorization": f"Bearer {token}"}, {"X-API-Key": seed["service_api_key"]}]
        self.rng = random.Random(args.seed)
        self.threads: list[threading.Thread] = []

    # scheduling

    def run(self, seconds: float) -> None:
        for n in range(self.args.concurrency):
            thread = threading.Thread(target=self._worker, name=f"soak-client-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        lister = threading.Thread(target=self._lister, name="soak-lister", daemon=True)
        lister.start()
        started = time.monotonic()
        end = started + seconds
        period = 1.0 / self.args.rate
        next_at = started
        while not self.stop.is_set() and time.monotonic() < end:
            next_at += period
            task = self._pick()
            try:
                self.tasks.put_nowait(task)
            except queue.Full:
                self.stats.add("dropped: every client thread busy")
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind (machine busy): do not burst to catch up
        self.stop.set()
        for thread in [*self.threads, lister]:
            thread.join(timeout=self.args.sync_read_timeout + 40)
        self.http.close()

    def _pick(self) -> tuple[str, str, str, dict]:
        """(kind, mode, follow-up, caller headers)."""
        r = self.rng.random()
        caller = self.rng.choice(self.callers)
        if r < 0.25:
            return ("expert", "sync", "none", caller)
        if r < 0.45:
            return ("expert", "async", self.rng.choice(["resume", "done", "status", "resume"]), caller)
        if r < 0.55:
            return ("workflow", "sync", "none", caller)
        follow = self.rng.choices(["cancel", "resume", "done", "status"], weights=[20, 40, 25, 15])[0]
        return ("workflow", "async", follow, caller)

    def _worker(self) -> None:
        while not self.stop.is_set():
            try:
                task = self.tasks.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._run(*task)
            except httpx.HTTPError as exc:
                self.stats.add(f"client error: {type(exc).__name__}")
            except Exception as exc:  # noqa: BLE001  (counted, the soak goes on)
                self.stats.add(f"unexpected: {type(exc).__name__}: {exc}"[:120])

    def _lister(self) -> None:
        n = 0
        while not self.stop.wait(self.args.list_every):
            n += 1
            caller = self.callers[n % 2]
            try:
                response = self.http.get("/api/v1/chat/runs", params={"per_page": 20}, headers=caller)
                self.stats.add(f"GET /runs {response.status_code}")
            except httpx.HTTPError as exc:
                self.stats.add(f"client error: {type(exc).__name__}")

    # one task

    def _run(self, kind: str, mode: str, follow: str, caller: dict) -> None:
        city = self.rng.choice(CITIES)
        inputs = {"city": city, "days": self.rng.randint(1, 9),
                  "travellers": [{"name": f"t{self.rng.randint(1, 999)}", "age": self.rng.randint(18, 80)}
                                 for _ in range(self.rng.randint(1, 3))],
                  "interests": self.rng.sample(["food", "tiles", "music", "art", "walks"], 2),
                  "budget": self.rng.randint(300, 5000)}
        if kind == "expert":
            body = {"expert_id": self.seed["expert_id"], "input_params": inputs, "mode": mode,
                    "base": {"currency": "EUR", "style": self.rng.choice(["brief", "detailed"])}}
            path = "/api/v1/chat/experts:run"
        else:
            body = {"workflow_id": self.seed["workflow_id"], "starting_inputs": inputs, "mode": mode}
            path = "/api/v1/chat/workflows:run"
        response = self.http.post(path, json=body, headers=caller)
        self.stats.add(f"{kind}:{mode} {response.status_code}")
        if response.status_code not in (200, 202):
            return
        data = response.json()
        run_id, events_url = data["run_id"], data["events_url"]
        if follow == "cancel":
            self.stop.wait(self.rng.uniform(0.05, 0.9))
            r = self.http.post(f"/api/v1/chat/runs/{run_id}:cancel", headers=caller)
            self.stats.add(f"cancel {r.status_code}")
        elif follow == "status":
            self.stop.wait(self.rng.uniform(0.2, 2.0))
            r = self.http.get(f"/api/v1/chat/runs/{run_id}", headers=caller)
            self.stats.add(f"status {r.status_code}")
        elif follow == "done":
            self._subscribe(events_url, after=None, max_events=None)
        elif follow == "resume":
            last = None
            for _ in range(3):  # read a few events, drop the connection, resume after the last one seen
                last, finished = self._subscribe(events_url, after=last, max_events=self.rng.randint(1, 3))
                if finished:
                    break

    def _subscribe(self, events_url: str, *, after: int | None, max_events: int | None) -> tuple[int | None, bool]:
        """Reads the stream until ``done`` or ``max_events`` events; returns (last id seen, saw done)."""
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        deadline = time.monotonic() + self.args.stream_seconds
        seen = 0
        last = after
        buffer = b""
        timeout = httpx.Timeout(connect=5, read=self.args.stream_seconds, write=10, pool=10)
        with self.http.stream("GET", events_url, headers=headers, timeout=timeout) as response:
            self.stats.add(f"stream{' resume' if after is not None else ''} {response.status_code}")
            if response.status_code != 200:
                return last, response.status_code == 204
            for chunk in response.iter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    event_id, name = None, None
                    for line in block.split(b"\n"):
                        if line.startswith(b"id: "):
                            event_id = int(line[4:])
                        elif line.startswith(b"event: "):
                            name = line[7:]
                    if event_id is not None:
                        last = event_id
                    if name == b"done":
                        self.stats.add("stream saw done")
                        return last, True
                    if name == b"log":
                        seen += 1
                        if max_events is not None and seen >= max_events:
                            self.stats.add("stream dropped early")
                            return last, False
                if time.monotonic() > deadline or self.stop.is_set():
                    self.stats.add("stream cut (time)")
                    return last, False
        return last, False


# --- sampling -----------------------------------------------------------------------------


def parse_metrics(text: str) -> dict:
    out: dict = {"chatsvc_runs": {}}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "chatsvc_runs":
            status = dict(_LABEL.findall(labels)).get("status", "?")
            out["chatsvc_runs"][status] = out["chatsvc_runs"].get(status, 0) + int(value)
        elif name in ("chatsvc_greenlets", "chatsvc_run_feeds", "chatsvc_sse_connections",
                      "chatsvc_executor_queue_depth"):
            out[name] = int(value)
        elif name == "chatsvc_runs_finished_total":
            out["runs_finished_total"] = out.get("runs_finished_total", 0) + int(value)
    return out


class Sampler:
    def __init__(self, server: Server, args: argparse.Namespace, load_stats: Stats) -> None:
        self.server = server
        self.args = args
        self.load_stats = load_stats
        self.samples: list[dict] = []
        self.started = time.monotonic()
        self.redis = None
        if args.registry == "redis":
            import redis

            self.redis = redis.Redis.from_url(args.redis_url)

    def sample(self, phase: str) -> dict:
        t = time.monotonic() - self.started
        workers = []
        for pid in sorted(self.server.workers()):
            status = proc_status(pid)
            evaluators = children(pid)
            workers.append({
                "pid": pid, "rss_kb": status.get("VmRSS", -1), "hwm_kb": status.get("VmHWM", -1),
                "anon_kb": status.get("RssAnon", -1), "fds": fd_count(pid), "cpu_s": round(cpu_seconds(pid), 1),
                "evaluators": len(evaluators),
                "evaluators_rss_kb": sum(proc_status(c).get("VmRSS", 0) for c in evaluators),
            })
        sample = {"t": round(t, 1), "phase": phase, "workers": workers,
                  "requests": sum(v for k, v in self.load_stats.snapshot().items() if k.split(" ")[-1].isdigit())}
        try:
            sample["metrics"] = parse_metrics(httpx.get(self.server.url + "/metrics", timeout=20).text)
        except httpx.HTTPError as exc:
            sample["metrics"] = {"error": repr(exc)}
        if self.redis is not None:
            try:
                sample["redis_keys"] = sum(1 for _ in self.redis.scan_iter(match=self.server.prefix + "*", count=5000))
                sample["redis_used_memory_mb"] = round(self.redis.info("memory")["used_memory"] / 2**20, 1)
            except Exception as exc:  # noqa: BLE001
                sample["redis_keys"] = repr(exc)
        if self.args.diag:
            for pid in self.server.workers():
                os.kill(pid, signal.SIGUSR2)  # workers only: SIGUSR2 to the master would re-exec it
            sample["diag"] = True
        self.samples.append(sample)
        print_row(sample, header=len(self.samples) == 1)
        return sample


def print_row(sample: dict, *, header: bool) -> None:
    if header:
        print(f"{'t(s)':>6} {'phase':5} {'worker RSS MB':>15} {'fds':>9} {'eval MB':>8} {'greenl':>6} "
              f"{'feeds':>6} {'runs':>6} {'live':>5} {'sse':>4} {'finished':>8} {'requests':>8}", flush=True)
    workers = sample["workers"]
    m = sample.get("metrics", {})
    runs = m.get("chatsvc_runs", {})
    live = sum(v for k, v in runs.items() if k in ("queued", "running", "waiting"))
    extra = f"  redis keys {sample['redis_keys']} used {sample.get('redis_used_memory_mb')} MB" \
        if "redis_keys" in sample else ""
    print(f"{sample['t']:>6.0f} {sample['phase']:5} "
          f"{'/'.join('%.1f' % (w['rss_kb'] / 1024) for w in workers):>15} "
          f"{'/'.join(str(w['fds']) for w in workers):>9} "
          f"{sum(w['evaluators_rss_kb'] for w in workers) / 1024:>8.1f} "
          f"{m.get('chatsvc_greenlets', '-'):>6} {m.get('chatsvc_run_feeds', '-'):>6} "
          f"{sum(runs.values()):>6} {live:>5} {m.get('chatsvc_sse_connections', '-'):>4} "
          f"{m.get('runs_finished_total', '-'):>8} {sample['requests']:>8}{extra}", flush=True)


def write_outputs(out: str, meta: dict, samples: list[dict], counts: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out + ".json", "w") as fh:
        json.dump({"meta": meta, "samples": samples, "requests": counts}, fh, indent=1)
    with open(out + ".csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["t", "phase", "pid", "rss_kb", "anon_kb", "hwm_kb", "fds", "cpu_s", "evaluators",
                         "evaluators_rss_kb", "greenlets", "run_feeds", "runs_total", "runs_live",
                         "sse_connections", "runs_finished_total", "requests", "redis_keys"])
        for s in samples:
            m = s.get("metrics", {})
            runs = m.get("chatsvc_runs", {})
            for w in s["workers"]:
                writer.writerow([s["t"], s["phase"], w["pid"], w["rss_kb"], w["anon_kb"], w["hwm_kb"], w["fds"],
                                 w["cpu_s"], w["evaluators"], w["evaluators_rss_kb"], m.get("chatsvc_greenlets"),
                                 m.get("chatsvc_run_feeds"), sum(runs.values()),
                                 sum(v for k, v in runs.items() if k in ("queued", "running", "waiting")),
                                 m.get("chatsvc_sse_connections"), m.get("runs_finished_total"), s["requests"],
                                 s.get("redis_keys")])


# --- comparing two dumps (--diag) ------------------------------------------------------------


def compare_dumps(diag: Path, after_seconds: float, started_wall: float, until_wall: float = float("inf"),
                  top: int = 25) -> str:
    """Growth between the first dump of each worker taken ``after_seconds`` into the run and its last
    one before ``until_wall`` (the end of the load: the dumps after it show runs draining away)."""
    import tracemalloc

    lines: list[str] = []
    dumps: dict[int, list[dict]] = {}
    for path in sorted(diag.glob("*.json")):
        report = json.loads(path.read_text())
        report["path"] = path
        dumps.setdefault(report["pid"], []).append(report)
    for pid, reports in sorted(dumps.items()):
        reports.sort(key=lambda r: r["n"])
        later = [r for r in reports if r["time"] - started_wall >= after_seconds and r["time"] <= until_wall + 5]
        if len(later) < 2:
            lines.append(f"worker {pid}: fewer than two dumps after {after_seconds:.0f} s; nothing to compare")
            continue
        first, last = later[0], later[-1]
        minutes = (last["time"] - first["time"]) / 60
        lines.append(f"=== worker {pid}: dump {first['n']} (t={first['time'] - started_wall:.0f} s) -> "
                     f"dump {last['n']} (t={last['time'] - started_wall:.0f} s), {minutes:.1f} min ===")
        final = reports[-1]
        if "rss_kb_after_malloc_trim" in final:
            lines.append(f"last dump (t={final['time'] - started_wall:.0f} s): RSS {final['rss_kb'] / 1024:.1f} MB, "
                         f"{final['rss_kb_after_malloc_trim'] / 1024:.1f} MB after malloc_trim(0); gc objects "
                         f"{final['gc_objects']}; runs held "
                         f"{final['bookkeeping'].get('registry._runs', final['bookkeeping'].get('follower._runs'))}"
                         + (f"; tracemalloc traced {final['tracemalloc']['current'] / 2**20:.2f} MB"
                            if "tracemalloc" in final else ""))
        lines.append(f"RSS {first['rss_kb'] / 1024:.1f} -> {last['rss_kb'] / 1024:.1f} MB; gc objects "
                     f"{first['gc_objects']} -> {last['gc_objects']}; allocated blocks "
                     f"{first['allocated_blocks']} -> {last['allocated_blocks']}")
        if "tracemalloc" in first and "tracemalloc" in last:
            a, b = first["tracemalloc"]["current"], last["tracemalloc"]["current"]
            lines.append(f"tracemalloc traced {a / 2**20:.2f} -> {b / 2**20:.2f} MB "
                         f"({(b - a) / 1024 / max(minutes, 1e-9):+.1f} KB/min)")
        lines.append("gc-tracked objects by type, largest growth:")
        growth = Counter(last["by_type"])
        growth.subtract(first["by_type"])
        for name, delta in growth.most_common(15):
            if delta <= 0:
                break
            lines.append(f"  {delta:+8d}  ({delta / max(minutes, 1e-9):+8.0f}/min)  {name}  "
                         f"[{first['by_type'].get(name, 0)} -> {last['by_type'].get(name, 0)}]")
        lines.append("bookkeeping (first -> last):")
        for key, value in last["bookkeeping"].items():
            before = first["bookkeeping"].get(key)
            if key == "metrics.samples":
                changed = {k: (before.get(k) if isinstance(before, dict) else None, v) for k, v in value.items()
                           if not isinstance(before, dict) or before.get(k) != v}
                lines.append(f"  metrics samples changed: {changed or 'none'}")
            else:
                lines.append(f"  {key}: {before} -> {value}")
        tm_a, tm_b = first["path"].with_suffix(".tm"), last["path"].with_suffix(".tm")
        if tm_a.exists() and tm_b.exists():
            snap_a, snap_b = tracemalloc.Snapshot.load(str(tm_a)), tracemalloc.Snapshot.load(str(tm_b))
            lines.append(f"tracemalloc growth by source line (top {top}):")
            for stat in snap_b.compare_to(snap_a, "lineno")[:top]:
                frame = stat.traceback[0]
                lines.append(f"  {stat.size_diff / 1024:+9.1f} KB {stat.count_diff:+7d} blocks  "
                             f"({stat.size_diff / 1024 / max(minutes, 1e-9):+7.1f} KB/min)  "
                             f"{frame.filename}:{frame.lineno}  [now {stat.size / 1024:.0f} KB]")
            lines.append("tracemalloc growth by traceback (top 8):")
            for stat in snap_b.compare_to(snap_a, "traceback")[:8]:
                lines.append(f"  {stat.size_diff / 1024:+9.1f} KB {stat.count_diff:+7d} blocks "
                             f"[now {stat.size / 1024:.0f} KB in {stat.count} blocks]")
                for frame in stat.traceback.format(limit=12, most_recent_first=True):
                    lines.append("      " + frame)
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", choices=["memory", "redis"], default="memory")
    parser.add_argument("--minutes", type=float, default=8.0, help="minutes of load (default 8)")
    parser.add_argument("--idle-minutes", type=float, default=0.0, help="then minutes of sampling without load")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--rate", type=float, default=25.0, help="run starts per second, all kinds (default 25)")
    parser.add_argument("--concurrency", type=int, default=48,
                        help="client threads (default 48); a start finding them all busy is dropped")
    parser.add_argument("--list-every", type=float, default=2.0, help="seconds between GET /runs (default 2)")
    parser.add_argument("--stream-seconds", type=float, default=20.0, help="longest one SSE read lasts")
    parser.add_argument("--sync-read-timeout", type=float, default=40.0)
    parser.add_argument("--ttl", type=float, default=120.0, help="CHATSVC_RUN_TTL_SECONDS (default 120)")
    parser.add_argument("--max-active-per-caller", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="CHATSVC_WORKERS with --registry redis (default 2)")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra server environment (repeatable)")
    parser.add_argument("--diag", type=Path, help="serve with the SIGUSR2 dump wrapper; dumps go here")
    parser.add_argument("--tracemalloc-frames", type=int, default=12)
    parser.add_argument("--compare-after", type=float, help="seconds (default: TTL + 60)")
    parser.add_argument("--git-ref", help="serve a `git archive` of this commit of the checkout (e.g. HEAD), "
                        "not the working tree (which someone may be editing)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.csv (default /tmp/soak-<registry>)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server log)")
    args = parser.parse_args()
    if args.registry == "memory":
        args.workers = 1
    out = args.out or f"/tmp/soak-{args.registry}"
    if args.diag:
        if args.diag.exists() and any(args.diag.iterdir()):
            raise SystemExit(f"--diag {args.diag} is not empty")
        args.diag.mkdir(parents=True, exist_ok=True)
        args.diag = args.diag.resolve()

    workdir = Path(tempfile.mkdtemp(prefix="chatsvc-soak-"))
    args.source = ROOT
    if args.git_ref:
        args.source = workdir / "src"
        args.source.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.git_ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(args.source)], input=archive.stdout, check=True)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.git_ref],
                                capture_output=True, text=True, check=True).stdout.strip()
        print(f"serving chatsvc at {args.git_ref} ({commit}) from {args.source}")
    server = Server(args, workdir)
    print(f"soak: {args.registry} registry, {args.workers} worker(s), TTL {args.ttl:g} s, {args.rate:g} runs/s "
          f"for {args.minutes:g} min + {args.idle_minutes:g} min idle, samples every {args.interval:g} s; "
          f"server {server.url}, log {server.log_path}", flush=True)
    seed = server.seed()
    load = None
    sampler = None
    started_wall = load_end_wall = time.time()
    try:
        server.start()
        started_wall = time.time()
        load = Load(server, seed, args)
        sampler = Sampler(server, args, load.stats)
        sampler.sample("start")
        load_thread = threading.Thread(target=load.run, args=(args.minutes * 60,), name="soak-load", daemon=True)
        load_thread.start()
        load_end = time.monotonic() + args.minutes * 60
        load_end_wall = time.time() + args.minutes * 60
        end = load_end + args.idle_minutes * 60
        next_sample = time.monotonic() + args.interval
        while time.monotonic() < end:
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
            if time.monotonic() >= next_sample - 0.01:
                sampler.sample("load" if time.monotonic() < load_end else "idle")
                next_sample += args.interval
            if server.process.poll() is not None:
                print(f"server exited ({server.process.returncode}); see {server.log_path}")
                break
        load.stop.set()
        load_thread.join(timeout=args.sync_read_timeout + 60)
        if args.diag:
            (args.diag / "trim").touch()  # the last dump also tries malloc_trim(0) (soak_gunicorn_conf.py)
        sampler.sample("end")
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        if load is not None:
            load.stop.set()
        if args.diag:
            time.sleep(3)  # let the last dump finish
        server.stop()
        deleted = server.delete_redis_keys()
        counts = load.stats.snapshot() if load else {}
        meta = {"registry": args.registry, "workers": args.workers, "ttl": args.ttl, "rate": args.rate,
                "minutes": args.minutes, "idle_minutes": args.idle_minutes, "interval": args.interval,
                "concurrency": args.concurrency, "redis_prefix": server.prefix if args.registry == "redis" else None,
                "started": started_wall, "server_log": str(server.log_path),
                "source": str(args.source), "git_ref": args.git_ref}
        if sampler is not None:
            write_outputs(out, meta, sampler.samples, counts)
            print(f"wrote {out}.json and {out}.csv")
        print("requests and outcomes:")
        for key, value in sorted(counts.items()):
            print(f"  {value:8d}  {key}")
        if deleted:
            print(f"deleted {deleted} Redis keys under {server.prefix}")
        if args.diag:
            report = compare_dumps(args.diag, args.compare_after if args.compare_after is not None else args.ttl + 60,
                                   started_wall, load_end_wall)
            (args.diag / "report.txt").write_text(report + "\n")
            print(report)
            print(f"(also in {args.diag / 'report.txt'})")
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

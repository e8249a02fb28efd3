"""Two real servers ("hosts") sharing one Redis and one database serve one set of runs (SPEC §12).

Each host is a gunicorn master with one gevent worker, so "the process that
executes a run" is known. Streams are read with httpx + httpx-sse, as a client would.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from tests.helpers.live_server import LiveServer
from tests.helpers.redis_support import RedisServer, delete_prefix, redis_url, unique_prefix
from tests.helpers.runs import poll

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

CHAT = "/api/v1/chat"
TIMEOUT = httpx.Timeout(15.0)


@dataclass
class Hosts:
    a: LiveServer
    b: LiveServer
    admin: dict[str, str]
    seed: dict[str, Any]
    nap_workflow_id: int  # input -> sleep 30 s

    def run(self, host: LiveServer, workflow_id: int, **body: Any) -> dict:
        rv = httpx.post(host.url + f"{CHAT}/workflows:run", headers=self.admin, timeout=TIMEOUT,
                        json={"workflow_id": workflow_id, "mode": "async", **body})
        assert rv.status_code == 202, rv.text
        return rv.json()

    def status(self, host: LiveServer, run_id: str) -> dict:
        rv = httpx.get(host.url + f"{CHAT}/runs/{run_id}", headers=self.admin, timeout=TIMEOUT)
        assert rv.status_code == 200, rv.text
        return rv.json()


def start_hosts(tmp_path: Path, url: str, prefix: str, **env: str) -> tuple[LiveServer, LiveServer]:
    shared = {"CHATSVC_REGISTRY_URL": url, "CHATSVC_REDIS_PREFIX": prefix, "CHATSVC_WORKERS": "1",
              "CHATSVC_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
              "CHATSVC_SSE_HEARTBEAT_SECONDS": "1", **env}
    a = LiveServer(tmp_path / "a", env=shared).start()
    try:
        b = LiveServer(tmp_path / "b", env=shared).start()
    except BaseException:
        a.stop()
        raise
    return a, b


def make_hosts(a: LiveServer, b: LiveServer) -> Hosts:
    seed = a.seed()
    admin = a.admin_headers(seed)
    return Hosts(a, b, admin, seed, b.nap_workflow(admin, seed["team_id"], 30))


@pytest.fixture
def hosts_env() -> dict[str, str]:
    """Extra settings for both hosts; override in a test with parametrize(indirect) if needed."""
    return {}


@pytest.fixture
def hosts(tmp_path, hosts_env) -> Iterator[Hosts]:
    url, prefix = redis_url(), unique_prefix()
    a, b = start_hosts(tmp_path, url, prefix, **hosts_env)
    try:
        yield make_hosts(a, b)
    finally:
        a.stop()
        b.stop()
        delete_prefix(url, prefix)


def read_items(url: str, headers: dict[str, str] | None = None, *, until: str | None = None,
               into: list | None = None) -> list:
    """SSE items of one connection until it closes (or until an event whose data contains `until`).

    With `into`, items are appended there as they arrive (for a reader in another thread).
    """
    items = [] if into is None else into
    with httpx.Client(timeout=TIMEOUT) as client, connect_sse(client, "GET", url, headers=headers or {}) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            items.append(sse)
            if until is not None and until in sse.data:
                break
    return items


def logs(items: list) -> list:
    return [sse for sse in items if sse.event == "log"]


def kill_host(server: LiveServer) -> None:
    """SIGKILL the master and its workers at once, as a lost host would go."""
    master = server.process.pid
    pids = [master] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == master]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(10)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_a_run_started_on_one_host_is_seen_streamed_resumed_and_cancelled_on_the_other(hosts):
    body = hosts.run(hosts.a, hosts.nap_workflow_id)
    run_id = body["run_id"]
    poll(lambda: hosts.status(hosts.b, run_id)["status"], lambda s: s == "running", timeout=10)
    listed = httpx.get(hosts.b.url + f"{CHAT}/runs", headers=hosts.admin).json()
    assert listed[0]["run_id"] == run_id  # newest first, from the other host

    # Stream on B until the sleeping node started, then drop the connection.
    first = read_items(hosts.b.url + body["events_url"], until='"node_key":"nap"')
    first_logs = logs(first)
    last_seen = int(first_logs[-1].id)
    assert [int(sse.id) for sse in first_logs] == list(range(1, last_seen + 1))

    # Resume on A right after it, and cancel on B while A streams.
    resumed: list = []
    reader = threading.Thread(target=lambda: resumed.extend(
        read_items(hosts.a.url + body["events_url"], {"Last-Event-ID": str(last_seen)})))
    reader.start()
    time.sleep(0.5)
    cancelled_at = time.monotonic()
    rv = httpx.post(hosts.b.url + f"{CHAT}/runs/{run_id}:cancel", headers=hosts.admin)
    assert rv.status_code == 202, rv.text
    reader.join(15)
    assert not reader.is_alive()
    assert time.monotonic() - cancelled_at < 3  # the executing host stopped the sleep within 1 s

    rest = logs(resumed)
    assert [int(sse.id) for sse in rest] == list(range(last_seen + 1, last_seen + 1 + len(rest)))  # no gap, no repeat
    done = resumed[-1]
    assert done.event == "done" and done.json()["status"] == "cancelled"
    assert int(done.id) == last_seen + len(rest) + 1
    assert hosts.status(hosts.a, run_id)["status"] == "cancelled"
    # A reconnect after `done`, on either host, is told to stop.
    for host in (hosts.a, hosts.b):
        rv = httpx.get(host.url + body["events_url"], headers={"Last-Event-ID": done.id})
        assert rv.status_code == 204


def test_many_subscribers_across_both_hosts_get_identical_sequences(hosts):
    body = hosts.run(hosts.b, hosts.seed["workflow_id"], starting_inputs=hosts.seed["starting_inputs"])
    urls = [host.url + body["events_url"] for host in (hosts.a, hosts.b) for _ in range(10)]
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        results = list(pool.map(read_items, urls))
    expected = [(sse.id, sse.event, sse.data) for sse in results[0]]
    assert expected[-1][1] == "done" and '"status":"succeeded"' in expected[-1][2]
    ids = [int(sse.id) for sse in logs(results[0])]
    assert ids == list(range(1, len(ids) + 1))
    for result in results:
        assert [(sse.id, sse.event, sse.data) for sse in result] == expected


@pytest.mark.parametrize("hosts_env", [{"CHATSVC_RUN_LEASE_SECONDS": "2"}])
def test_a_killed_host_has_its_run_failed_by_lease_and_other_subscribers_get_done(hosts):
    body = hosts.run(hosts.a, hosts.nap_workflow_id)
    seen: list = []
    reader = threading.Thread(target=read_items, args=(hosts.b.url + body["events_url"],), kwargs={"into": seen})
    reader.start()
    poll(lambda: [sse.data for sse in seen], lambda data: any('"node_key":"nap"' in d for d in data), timeout=10)

    killed_at = time.monotonic()
    kill_host(hosts.a)
    reader.join(20)
    assert not reader.is_alive(), "the subscriber on the other host never got done"
    assert time.monotonic() - killed_at < 10

    orphaned = [sse for sse in logs(seen) if '"message":"run_orphaned"' in sse.data]
    assert len(orphaned) == 1 and orphaned[0].json()["level"] == "error"
    done = seen[-1].json()
    assert seen[-1].event == "done" and done["status"] == "failed" and done["error"]["type"] == "WorkerLost"
    info = hosts.status(hosts.b, body["run_id"])
    assert info["status"] == "failed" and info["error"]["type"] == "WorkerLost"


@pytest.mark.parametrize("hosts_env", [{"CHATSVC_GRACEFUL_TIMEOUT": "8"}])
def test_sigterm_lets_short_runs_finish_ends_the_rest_and_hands_streams_over(hosts, tmp_path):
    short = hosts.run(hosts.a, hosts.b.nap_workflow(hosts.admin, hosts.seed["team_id"], 3, name="Short nap"))
    long = hosts.run(hosts.a, hosts.nap_workflow_id)
    for body in (short, long):
        poll(lambda: hosts.status(hosts.b, body["run_id"])["status"], lambda s: s == "running", timeout=10)

    # A subscriber on the stopping host: its stream closes without `done` and resumes on B.
    on_a: list = []
    reader = threading.Thread(target=read_items, args=(hosts.a.url + long["events_url"],), kwargs={"into": on_a})
    reader.start()
    poll(lambda: len(logs(on_a)), lambda n: n >= 3, timeout=10)

    stopping_at = time.monotonic()
    hosts.a.process.send_signal(signal.SIGTERM)
    reader.join(5)
    assert not reader.is_alive() and on_a and on_a[-1].event != "done"
    resumed = read_items(hosts.b.url + long["events_url"], {"Last-Event-ID": on_a[-1].id})

    assert hosts.a.process.wait(20) is not None
    assert time.monotonic() - stopping_at < 12
    assert hosts.status(hosts.b, short["run_id"])["status"] == "succeeded"  # finished within the grace
    info = hosts.status(hosts.b, long["run_id"])
    assert info["status"] == "failed" and info["error"]["type"] == "ShuttingDown"
    ids = [int(sse.id) for sse in logs(on_a) + logs(resumed)]
    assert ids == list(range(1, len(ids) + 1))
    assert resumed[-1].event == "done" and resumed[-1].json()["error"]["type"] == "ShuttingDown"


def test_redis_down_gives_503_closes_streams_and_recovers(tmp_path):
    redis_server = RedisServer()
    redis_server.start()
    a = LiveServer(tmp_path / "a", env={"CHATSVC_REGISTRY_URL": redis_server.url, "CHATSVC_WORKERS": "1",
                                         "CHATSVC_SSE_HEARTBEAT_SECONDS": "1"}).start()
    try:
        hosts = make_hosts(a, a)
        body = hosts.run(a, hosts.nap_workflow_id)
        seen: list = []
        reader = threading.Thread(target=read_items, args=(a.url + body["events_url"],), kwargs={"into": seen})
        reader.start()
        poll(lambda: len(logs(seen)), lambda n: n >= 3, timeout=10)

        redis_server.stop()
        reader.join(10)
        assert not reader.is_alive(), "an open stream stayed open while Redis was down"
        started = time.monotonic()
        assert httpx.get(a.url + "/readyz", timeout=10).status_code == 503
        for method, path in [("GET", f"{CHAT}/runs"), ("GET", f"{CHAT}/runs/{body['run_id']}"),
                             ("POST", f"{CHAT}/workflows:run")]:
            rv = httpx.request(method, a.url + path, headers=hosts.admin, timeout=10,
                               json={"workflow_id": hosts.nap_workflow_id} if method == "POST" else None)
            assert rv.status_code == 503, (path, rv.status_code, rv.text)
            assert rv.headers["Retry-After"] and rv.json()["code"] == 503
        assert time.monotonic() - started < 15

        redis_server.start()  # same port, empty: the service recovers without a restart
        poll(lambda: httpx.get(a.url + "/readyz", timeout=10).status_code, lambda code: code == 200, timeout=15)
        fresh = hosts.run(a, hosts.seed["workflow_id"], starting_inputs=hosts.seed["starting_inputs"])
        items = read_items(a.url + fresh["events_url"])
        assert items[-1].event == "done" and items[-1].json()["status"] == "succeeded"
    finally:
        a.stop()
        redis_server.stop()

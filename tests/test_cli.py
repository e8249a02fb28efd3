"""The ``chatsvc`` console script (SPEC §11), through click's runner and one real ``serve``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path
import sys
import time

import httpx
import pytest
from sqlalchemy import create_engine, func, inspect, select

from chatsvc.cli import main
from chatsvc.extensions import db
from chatsvc.models import (
    Edge,
    Expert,
    ExpertService,
    Membership,
    Node,
    Service,
    Team,
    User,
    Workflow,
    WorkflowService,
)

API = "/api/v1"


def run(runner, *args: str):
    """Invoke the CLI and insist that it succeeded."""
    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_json(runner, *args: str) -> dict:
    return json.loads(run(runner, *args).stdout)


def fails(runner, *args: str, message: str):
    """The command exits non-zero with a one-line message, not a traceback."""
    result = runner.invoke(main, list(args))
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert message in result.output, result.output
    return result


def login(client, email: str, password: str) -> dict[str, str]:
    rv = client.post(f"{API}/auth/login", json={"email": email, "password": password})
    assert rv.status_code == 200, rv.get_json()
    return {"Authorization": f"Bearer {rv.get_json()['access_token']}"}


def test_help_needs_no_database(runner, monkeypatch):
    monkeypatch.setenv("CHATSVC_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = run(runner, "--help")
    for command in ("init-db", "create-user", "create-team", "create-service", "token", "demo-data", "serve"):
        assert command in result.output


def test_init_db_creates_the_tables_and_can_run_again(runner, make_config):
    engine = create_engine(make_config().database_url)
    assert inspect(engine).get_table_names() == []
    for _ in range(2):
        assert "database ready" in run(runner, "init-db").output
    tables = set(inspect(engine).get_table_names())
    assert {"users", "teams", "memberships", "services", "experts", "workflows", "nodes", "edges",
            "expert_services", "workflow_services"} <= tables
    engine.dispose()


@pytest.mark.parametrize("flags, is_admin", [([], False), (["--admin"], True)], ids=["user", "admin"])
def test_create_user(runner, client, flags, is_admin):
    created = run_json(runner, "create-user", "Grace@Example.com", "--password", "long enough", *flags)
    assert created["email"] == "grace@example.com" and created["is_admin"] is is_admin
    assert isinstance(created["id"], int)
    headers = login(client, "grace@example.com", "long enough")
    assert client.get(f"{API}/users", headers=headers).status_code == (200 if is_admin else 403)


def test_create_team_with_admin(runner, client):
    user = run_json(runner, "create-user", "lead@example.com", "--password", "long enough")
    team = run_json(runner, "create-team", "Research", "--admin", "LEAD@example.com")
    assert team["name"] == "Research" and isinstance(team["id"], int)
    headers = login(client, "lead@example.com", "long enough")
    members = client.get(f"{API}/teams/{team['id']}/members", headers=headers).get_json()
    assert [(m["user_id"], m["role"]) for m in members] == [(user["id"], "admin")]
    # without --admin the team has no members
    bare = run_json(runner, "create-team", "Bare")
    rv = client.get(f"{API}/teams/{bare['id']}/members", headers=headers)
    assert rv.status_code == 403


def test_create_service_prints_a_working_key(runner, client):
    team = run_json(runner, "create-team", "Bots")
    service = run_json(runner, "create-service", str(team["id"]), "bot-1")
    assert service["team_id"] == team["id"] and service["name"] == "bot-1"
    key = service["api_key"]
    rv = client.get(f"{API}/teams/{team['id']}", headers={"X-API-Key": key})
    assert rv.status_code == 200 and rv.get_json()["name"] == "Bots"
    assert client.get(f"{API}/experts", headers={"X-API-Key": key + "x"}).status_code == 401


def test_token_prints_a_working_jwt(runner, client):
    run(runner, "create-user", "root@example.com", "--password", "long enough", "--admin")
    token = run(runner, "token", "ROOT@example.com").stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    rv = client.get(f"{API}/users", headers={"Authorization": f"Bearer {token}"})
    assert rv.status_code == 200
    assert [u["email"] for u in rv.get_json()] == ["root@example.com"]


def row_counts() -> dict[str, int]:
    db.session.expire_all()
    models = (User, Team, Membership, Service, Expert, Workflow, Node, Edge, ExpertService, WorkflowService)
    return {m.__tablename__: db.session.scalar(select(func.count()).select_from(m)) for m in models}


def test_demo_data_is_idempotent_and_usable(runner, client, ctx):
    first = run_json(runner, "demo-data")
    for field in ("admin_email", "admin_password", "service_api_key", "expert_id", "workflow_id"):
        assert first[field], field
    counts = row_counts()
    assert counts["users"] == 2 and counts["teams"] == 1 and counts["services"] == 1
    assert counts["experts"] == 1 and counts["workflows"] == 1 and counts["nodes"] >= 2

    # A second run (a restart of `serve --demo`) prints the same key: what it printed before works.
    second = run_json(runner, "demo-data")
    assert row_counts() == counts
    same = ("admin_email", "admin_password", "team_id", "service_id", "expert_id", "workflow_id", "service_api_key")
    assert {k: second[k] for k in same} == {k: first[k] for k in same}
    key = {"X-API-Key": second["service_api_key"]}
    assert client.get(f"{API}/experts/{second['expert_id']}", headers=key).status_code == 200
    assert client.get(f"{API}/workflows/{second['workflow_id']}", headers=key).status_code == 200
    key_file = os.path.join(os.environ["CHATSVC_INSTANCE_PATH"], "demo-service-key")
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"

    # Without the kept key (a new instance folder) the key is rotated, and the old one stops working.
    os.remove(key_file)
    third = run_json(runner, "demo-data")
    assert third["service_api_key"] != first["service_api_key"]
    assert client.get(f"{API}/experts", headers={"X-API-Key": third["service_api_key"]}).status_code == 200
    assert client.get(f"{API}/experts", headers=key).status_code == 401
    admin = login(client, second["admin_email"], second["admin_password"])
    rv = client.get(f"{API}/workflows/{second['workflow_id']}", headers=admin)
    assert rv.status_code == 200 and len(rv.get_json()["nodes"]) == counts["nodes"]
    assert rv.get_json()["example_input"] and client.get(  # the Chat page pre-fills these
        f"{API}/experts/{second['expert_id']}", headers=admin).get_json()["example_input"]
    assert client.get(f"{API}/users", headers=admin).status_code == 200
    member = login(client, second["member_email"], second["member_password"])  # printed, and it works
    assert client.get(f"{API}/users", headers=member).status_code == 403


def test_errors_exit_cleanly_with_a_message(runner, subtests):
    run(runner, "create-user", "taken@example.com", "--password", "long enough")
    run(runner, "create-team", "Taken")
    cases = {
        "duplicate user": (["create-user", "TAKEN@example.com", "--password", "long enough"], "taken@example.com"),
        "short password": (["create-user", "new@example.com", "--password", "short"], "assword"),
        "duplicate team": (["create-team", "Taken"], "Taken"),
        "unknown team admin": (["create-team", "New", "--admin", "nobody@example.com"], "nobody@example.com"),
        "unknown team": (["create-service", "987654", "bot"], "987654"),
        "token for nobody": (["token", "nobody@example.com"], "nobody@example.com"),
        "team id not a number": (["create-service", "abc", "bot"], "abc"),
        "missing password": (["create-user", "x@example.com"], "--password"),
    }
    for name, (args, message) in cases.items():
        with subtests.test(name):
            fails(runner, *args, message=message)


@pytest.mark.parametrize("command", [["init-db"], ["serve", "--port", "1"]])
def test_missing_jwt_secret_outside_development_is_a_clean_error(runner, monkeypatch, command):
    """`serve` refuses before starting gunicorn, so no worker boots into the error."""
    monkeypatch.delenv("CHATSVC_JWT_SECRET")
    fails(runner, *command, message="CHATSVC_JWT_SECRET")


# --- a real `chatsvc serve --demo` ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.server
def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "?"


def test_serve_demo_answers_the_printed_curl(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSVC_")}
    env["CHATSVC_INSTANCE_PATH"] = str(tmp_path / "instance")
    # Started from a folder holding a `chatsvc/` directory (say, a checkout's parent):
    # that folder is first on gunicorn's sys.path and must not shadow the package.
    (tmp_path / "chatsvc").mkdir()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            # The console script, as a user runs it (`python -m` would put the folder on sys.path itself).
            [os.path.join(os.path.dirname(sys.executable), "chatsvc"), "serve", "--demo", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"serve exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no /healthz within 60 s:\n{log_path.read_text()}"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

        output = log_path.read_text()
        printed = json.loads(output[output.index("{\n"):output.index("\n}\n") + 2])
        curl = re.search(r"curl -s -H 'X-API-Key: (\S+)' (http://\S+/api/v1/experts/(\d+))\n", output)
        assert curl, output
        key, expert_url, expert_id = curl.group(1), curl.group(2), int(curl.group(3))
        assert key == printed["service_api_key"] and expert_id == printed["expert_id"]
        assert expert_url.startswith(url + "/")

        rv = httpx.get(expert_url, headers={"X-API-Key": key}, timeout=10)
        assert rv.status_code == 200, rv.text
        assert rv.json()["id"] == expert_id and rv.json()["name"]
        assert httpx.get(expert_url, timeout=10).status_code == 401
        assert (tmp_path / "instance" / "chatsvc.db").exists()  # the demo's SQLite, in the instance folder
        # The demo's set-up ran in this very process before it became gunicorn's master: none
        # of its evaluator processes is left over as a <defunct> child of the master.
        zombies = [pid for pid in _children(process.pid) if _state(pid) == "Z"]
        assert not zombies, f"defunct children of the gunicorn master: {zombies}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                pytest.fail(f"serve did not stop on SIGTERM:\n{log_path.read_text()}")
    assert process.returncode == 0, log_path.read_text()

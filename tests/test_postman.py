"""The Postman collection in docs/ runs green with newman against a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.live_server import LiveServer
from tests.helpers.support import need

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "docs" / "postman" / "chat.postman_collection.json"
NEWMAN = "newman@6"
NPM_CACHE = ROOT / ".cache" / "npm"  # git-ignored; npx installs newman here once


@pytest.mark.timeout(300)
def test_postman_collection_passes_with_newman(tmp_path):
    npx = shutil.which("npx")
    need(npx is not None, "Node.js (npx) not installed, needed for newman")
    with LiveServer(tmp_path) as server:
        seeded = server.seed()
        variables = {
            "baseUrl": server.url,
            "email": seeded["admin_email"],
            "password": seeded["admin_password"],
            "apiKey": seeded["service_api_key"],
            # expertId and workflowId are left to the collection's list requests to set.
        }
        report_file = tmp_path / "newman.json"
        command = [npx, "--yes", NEWMAN, "run", str(COLLECTION), "--bail", "--color", "off",
                   "--reporters", "cli,json", "--reporter-json-export", str(report_file)]
        for name, value in variables.items():
            command += ["--env-var", f"{name}={value}"]
        env = {**os.environ, "npm_config_cache": str(NPM_CACHE), "npm_config_update_notifier": "false"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    stats = json.loads(report_file.read_text())["run"]["stats"]
    requests = len(json.loads(COLLECTION.read_text())["item"])
    assert stats["requests"] == {"total": requests, "pending": 0, "failed": 0}, output
    assert stats["assertions"]["failed"] == 0 and stats["assertions"]["total"] >= requests, output

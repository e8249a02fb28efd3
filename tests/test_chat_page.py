"""The Chat page end to end: Chromium (Playwright) against a real gunicorn + gevent chatsvc.

Screenshots go to test-artifacts/ (git-ignored) at laptop and phone widths.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.helpers.live_server import LiveServer
from tests.helpers.support import need

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000  # generous deadline for any one UI expectation; they pass in well under 1 s
LONG_SLEEP_SECONDS = 20

# Colours of chat.css's log panel (--log-info, --log-warn), as getComputedStyle reports them.
LOG_INFO_RGB = "rgb(121, 192, 255)"
LOG_WARN_RGB = "rgb(227, 179, 65)"
MUTED_RGB = "rgb(87, 96, 106)"  # --muted: a cancel is a neutral end, not an error

# Records, for every line appended to the log, what #run-status and #conn-state said at
# that moment: proof that lines arrived while the run was still going.
RECORD_LOG_LINES = """() => {
  window.__logLines = [];
  new MutationObserver((mutations) => {
    for (const m of mutations) for (const node of m.addedNodes) {
      window.__logLines.push({
        message: node.dataset.message,
        nodeKey: (node.textContent.match(/"node_key": "([^"]+)"/) || [])[1] || null,
        runStatus: document.getElementById("run-status").textContent,
        conn: document.getElementById("conn-state").textContent,
      });
    }
  }).observe(document.getElementById("log"), { childList: true });
}"""


# Runs before the page's script: every EventSource records the id of each `log` event it
# receives, as the browser saw them on the wire.
RECORD_SSE_IDS = """
window.__sseIds = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) {
    super(...args);
    this.addEventListener("log", (e) => window.__sseIds.push(e.lastEventId));
  }
};
"""


@pytest.fixture(scope="module")
def sync_playwright_api():
    need(os.path.exists(CHROMIUM), "Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    return sync_playwright, expect


@pytest.fixture(scope="module")
def browser(sync_playwright_api) -> Iterator:
    sync_playwright, _ = sync_playwright_api
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def expect(sync_playwright_api):
    _, expect = sync_playwright_api
    expect.set_options(timeout=TIMEOUT_MS)
    return expect


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("chat-page")) as server:
        yield server


@pytest.fixture(scope="module")
def demo(server) -> dict:
    return server.seed()


@pytest.fixture(scope="module")
def admin_headers(server, demo) -> dict[str, str]:
    rv = httpx.post(server.url + "/api/v1/auth/login",
                    json={"email": demo["admin_email"], "password": demo["admin_password"]})
    assert rv.status_code == 200, rv.text
    return {"Authorization": f"Bearer {rv.json()['access_token']}"}


@pytest.fixture(scope="module")
def long_workflow(server, demo, admin_headers) -> dict:
    """input -> sleep 20 s -> echo, created through the API as the demo admin."""
    rv = httpx.post(server.url + "/api/v1/workflows", headers=admin_headers, json={
        "team_id": demo["team_id"],
        "name": "Long nap",
        "description": "Sleeps long enough to be cancelled from the page.",
        "nodes": [
            {"key": "start", "node_type": "input", "metadata": {}},
            {"key": "nap", "node_type": "sleep", "metadata": {"seconds": LONG_SLEEP_SECONDS}},
            {"key": "after", "node_type": "echo", "metadata": {}},
        ],
        "edges": [{"source": "start", "target": "nap"}, {"source": "nap", "target": "after"}],
    })
    assert rv.status_code == 201, rv.text
    return rv.json()


def screenshot(page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def sse_connections(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(r"^chatsvc_sse_connections (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def sign_in(page, server, demo, expect) -> None:
    """Sign in with the keyboard only: type, Tab, type, Enter."""
    page.goto(server.url + "/")
    expect(page.locator("#signin-view")).to_be_visible()
    expect(page.locator("#app-view")).to_be_hidden()
    page.locator("#email").focus()
    page.keyboard.type(demo["admin_email"])
    page.keyboard.press("Tab")
    expect(page.locator("#password")).to_be_focused()
    page.keyboard.type(demo["admin_password"])
    page.keyboard.press("Enter")
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#user-email")).to_have_text(demo["admin_email"])
    expect(page.locator("#error")).to_be_hidden()


def choose(page, kind: str, target_id: int, expect) -> None:
    page.locator(f"#kind-{kind}").check()
    expect(page.locator("#target option", has_text=f"(#{target_id})")).to_have_count(1)
    page.locator("#target").select_option(str(target_id))


@pytest.fixture
def laptop_page(browser) -> Iterator:
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def phone_page(browser) -> Iterator:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = context.new_page()
    yield page
    context.close()


def test_wrong_password_shows_the_error(laptop_page, server, demo, expect):
    page = laptop_page
    page.goto(server.url + "/")
    page.locator("#email").fill(demo["admin_email"])
    page.locator("#password").fill("not the password")
    page.locator("#sign-in").click()
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("Wrong email or password")
    expect(page.locator("#app-view")).to_be_hidden()
    screenshot(page, "chat-signin-error-1280")


def test_api_docs_page_renders_from_local_assets(laptop_page, server, expect):
    """Swagger UI at /api/v1/docs draws every chat operation; nothing is fetched from elsewhere."""
    page = laptop_page
    external: list[str] = []

    def local_only(route, request) -> None:
        if request.url.startswith(server.url + "/") or request.url.startswith("data:"):
            route.continue_()
        else:
            external.append(request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(server.url + "/api/v1/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("chatsvc")
    for path in ("/api/v1/chat/experts:run", "/api/v1/chat/workflows:run", "/api/v1/chat/runs/{run_id}/events"):
        expect(page.locator(f'.opblock-summary-path[data-path="{path}"]')).to_have_count(1)
    assert not external, external
    screenshot(page, "api-docs-1280", full_page=False)


def test_workflow_run_streams_live_and_ends_done(laptop_page, server, demo, expect):
    page = laptop_page
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    sign_in(page, server, demo, expect)
    choose(page, "workflow", demo["workflow_id"], expect)
    expect(page.locator("#target-nodes li")).to_have_count(6)
    page.locator("#inputs").fill(json.dumps(demo["starting_inputs"], indent=2))
    expect(page.locator("#inputs-hint")).to_have_text("Valid JSON object.")
    page.evaluate(RECORD_LOG_LINES)

    page.locator("#run").click()

    # Live: lines arrive while the run is going (the demo's `pause` node sleeps 1 s) ...
    pause_start = page.locator('#log .log-line[data-message="node_start"]', has_text='"node_key": "pause"')
    expect(pause_start).to_be_visible()
    # ... then the done state.
    expect(page.locator("#conn-state")).to_have_text("done")
    expect(page.locator("#run-status")).to_have_text("succeeded")
    lines = page.evaluate("window.__logLines")
    during_run = [ln for ln in lines if ln["message"] == "node_start" and ln["nodeKey"] == "pause"]
    assert during_run and during_run[0]["runStatus"] == "running" and during_run[0]["conn"] == "live", lines
    assert lines[-1]["message"] == "done", lines

    steps = page.locator("#steps .step")
    expect(steps).to_have_count(6)
    for i in range(6):
        expect(steps.nth(i)).to_have_attribute("data-status", "succeeded")
        expect(steps.nth(i).locator(".step-duration")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.locator('#steps .step[data-key="pause"] .step-duration')).to_have_text(re.compile(r"^1\d{3} ms$"))
    expect(page.locator("#result .result-item")).to_have_count(6)
    expect(page.locator('#result .result-item[data-key="advice"] pre')).to_contain_text("(stubbed)")
    expect(page.locator('#result .result-item[data-key="greeting"] pre')).to_contain_text("Hello Ada and Grace!")

    # Levels are coloured; the log follows the newest line; the stream was closed on `done`.
    info_level = page.locator('#log .log-line[data-level="info"] .log-level').first
    expect(info_level).to_have_css("color", LOG_INFO_RGB)
    at_bottom = page.evaluate("(() => { const l = document.getElementById('log');"
                              " return l.scrollHeight - l.scrollTop - l.clientHeight < 24; })()")
    assert at_bottom
    assert page.evaluate("state.run.es.readyState") == 2  # EventSource.CLOSED
    assert page.locator("#run").is_enabled() and page.locator("#cancel").is_disabled()
    expect(page.locator("#error")).to_be_hidden()
    assert not console_errors, console_errors
    screenshot(page, "chat-workflow-done-1280")
    assert sse_connections(server) == 0


def test_expert_run_with_keyboard_and_json_validation(phone_page, server, demo, expect):
    page = phone_page
    sign_in(page, server, demo, expect)
    choose(page, "expert", demo["expert_id"], expect)
    expect(page.locator("#base-field")).to_be_visible()

    inputs = page.locator("#inputs")
    inputs.fill('{"city": "Lisbon",\n "days": }')
    expect(page.locator("#inputs-hint")).to_have_text("Invalid JSON at line 2, column 10: unexpected \"}\".")
    expect(inputs).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#run")).to_be_disabled()
    inputs.fill("[1, 2]")
    expect(page.locator("#inputs-hint")).to_contain_text("Must be a JSON object")
    expect(page.locator("#run")).to_be_disabled()
    inputs.fill(json.dumps(demo["starting_inputs"]))
    expect(page.locator("#inputs-hint")).to_have_text("Valid JSON object.")
    expect(page.locator("#run")).to_be_enabled()

    inputs.focus()
    page.keyboard.press("Control+Enter")  # runs without the mouse

    expect(page.locator("#conn-state")).to_have_text("done")
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator("#stream")).to_have_text("(stubbed)")
    expect(page.locator("#steps .step")).to_have_count(4)
    for status in page.locator("#steps .step").evaluate_all("els => els.map(e => e.dataset.status)"):
        assert status == "succeeded"
    expect(page.locator('#log .log-line[data-message="prompt_rendered"]')).to_have_count(1)
    expect(page.locator('#log .log-line[data-message="assistant_stub_sent"]')).to_have_count(1)
    expect(page.locator('#result .result-item[data-role="user"] pre')).to_contain_text("3-day trip to Lisbon")
    expect(page.locator('#result .result-item[data-role="assistant"] pre')).to_have_text("(stubbed)")

    # Nothing sticks out sideways on a phone.
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page is {overflow}px wider than the phone screen"
    page.set_viewport_size(PHONE)
    screenshot(page, "chat-expert-done-390")


def test_the_demo_expert_runs_with_its_prefilled_example_and_no_template_warning(laptop_page, server, demo, expect):
    page = laptop_page
    sign_in(page, server, demo, expect)
    choose(page, "expert", demo["expert_id"], expect)
    expect(page.locator("#inputs")).to_have_value(re.compile(r'"city": "Lisbon"'))  # from example_input
    expect(page.locator("#inputs-hint")).to_have_text("Valid JSON object.")
    page.locator("#run").click()
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator('#result .result-item[data-role="user"] pre')).to_contain_text("3-day trip to Lisbon")
    expect(page.locator('#result .result-item[data-role="user"] pre')).not_to_contain_text("{{")
    expect(page.locator("#result .result-error")).to_have_count(0)  # no "Warnings: ..." line
    expect(page.locator('#log .log-line[data-level="warn"]')).to_have_count(0)


def test_on_a_phone_the_log_comes_into_view_while_a_run_streams(phone_page, server, demo, expect):
    page = phone_page
    sign_in(page, server, demo, expect)
    choose(page, "workflow", demo["workflow_id"], expect)
    expect(page.locator("#inputs")).to_have_value(re.compile(r'"travellers"'))
    expect(page.locator("#log")).not_to_be_in_viewport()  # below the form on a phone
    page.locator("#run").click()
    pause_start = page.locator('#log .log-line[data-message="node_start"]', has_text='"node_key": "pause"')
    expect(pause_start).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#log")).to_be_in_viewport()
    screenshot(page, "chat-workflow-streaming-390", full_page=False)
    expect(page.locator("#run-status")).to_have_text("succeeded")
    # Event data wraps between items, not inside a key.
    data = page.locator('#log .log-line[data-message="node_output"] .log-data').first
    expect(data).to_contain_text('"node_key": "start"')


class CutFirstStream:
    """Route handler: the page's first events request gets the real events up to the `nap`
    node_start and then ends (as a dropped connection would); later requests reach the
    server untouched, so EventSource's reconnect resumes with Last-Event-ID. (Playwright
    does not show that header: Chromium adds it below the interception layer.)"""

    RETRY_MS = 2500  # how long the page shows "reconnecting" before the browser retries

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.last_seq: int | None = None
        self.later_requests = 0

    def __call__(self, route, request) -> None:
        if self.last_seq is not None:
            self.later_requests += 1
            route.continue_()
            return
        blocks, block = [], []
        with httpx.stream("GET", request.url, timeout=10) as stream:  # the token is in the URL
            for line in stream.iter_lines():
                if line:
                    block.append(line)
                    continue
                if block and block[0].startswith("id: "):
                    blocks.append("\n".join(block) + "\n\n")
                    if '"message":"node_start"' in block[-1] and '"node_key":"nap"' in block[-1]:
                        self.last_seq = int(block[0].removeprefix("id: "))
                        break
                block = []
        assert self.last_seq is not None, blocks
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                      body=f"retry: {self.RETRY_MS}\n\n" + "".join(blocks))


def test_cancel_a_long_run_from_the_page_after_a_reconnect(laptop_page, server, demo, long_workflow, expect):
    page = laptop_page
    page.add_init_script(RECORD_SSE_IDS)
    cut = CutFirstStream(server)
    page.route("**/api/v1/chat/runs/*/events?*", cut)
    sign_in(page, server, demo, expect)
    choose(page, "workflow", long_workflow["id"], expect)
    page.locator("#inputs").fill('{"question": "how long?"}')
    page.locator("#run").click()

    nap_start = page.locator('#log .log-line[data-message="node_start"]', has_text='"node_key": "nap"')
    expect(nap_start).to_be_visible()
    # The first stream ended without `done`: the page says so, then EventSource resumes.
    expect(page.locator("#conn-state")).to_have_text("reconnecting", timeout=cut.RETRY_MS)
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#conn-state")).to_have_text("live")
    assert cut.later_requests == 1
    expect(page.locator('#steps .step[data-key="nap"]')).to_have_attribute("data-status", "running")
    expect(page.locator("#run")).to_be_disabled()
    screenshot(page, "chat-workflow-running-1280")

    page.locator("#cancel").click()

    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=(LONG_SLEEP_SECONDS - 5) * 1000)
    expect(page.locator("#conn-state")).to_have_text("done")
    expect(page.locator('#steps .step[data-key="start"]')).to_have_attribute("data-status", "succeeded")
    expect(page.locator('#steps .step[data-key="nap"]')).to_have_attribute("data-status", "cancelled")
    expect(page.locator('#steps .step[data-key="after"]')).not_to_have_attribute("data-status", "succeeded")
    done_line = page.locator('#log .log-line[data-message="done"]')
    expect(done_line).to_have_attribute("data-level", "warn")
    expect(done_line.locator(".log-level")).to_have_css("color", LOG_WARN_RGB)
    expect(page.locator("#cancel")).to_be_disabled()
    expect(page.locator("#run")).to_be_enabled()
    screenshot(page, "chat-workflow-cancelled-1280")

    expect(page.locator("#error")).to_be_hidden()  # a cancel the user asked for is no error
    expect(page.locator("#run-ended")).to_have_text("Cancelled, as you asked.")
    expect(page.locator('#steps .step[data-key="nap"] .step-note')).to_have_css("color", MUTED_RGB)
    # The server resumed after Last-Event-ID: the browser received every event exactly once,
    # in order (a replay from the start would repeat 1..last_seq), and the page shows each once.
    received = [int(i) for i in page.evaluate("window.__sseIds")]
    assert received == list(range(1, len(received) + 1)) and len(received) > cut.last_seq, received
    shown = page.locator("#log .log-line[data-seq]").evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert shown == received
    assert cut.later_requests == 1  # no reconnect after `done`

    runs = httpx.get(server.url + "/api/v1/chat/runs", headers=page_token_headers(page)).json()
    assert runs[0]["target_id"] == long_workflow["id"] and runs[0]["status"] == "cancelled", runs[0]


def page_token_headers(page) -> dict[str, str]:
    """The page's own session token (from sessionStorage): the page really is signed in."""
    token = page.evaluate("sessionStorage.getItem('chatsvc.token')")
    assert token
    return {"Authorization": f"Bearer {token}"}

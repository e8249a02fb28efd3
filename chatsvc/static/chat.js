// chatsvc Chat page: sign in, pick an expert or workflow, run it, watch the live log.
// Everything the server sends is untrusted: it is only ever written with textContent.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "chatsvc.token";
const EMAIL_KEY = "chatsvc.email";
const FINAL_STATUSES = ["succeeded", "failed", "cancelled"];
const EXPERT_PHASES = [
  ["start", "Run started"],
  ["render", "Render prompt"],
  ["llm", "Model reply"],
  ["finish", "Finish"],
];
const MAX_DATA_CHARS = 300;
const POLL_INTERVAL_MS = 2000;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  email: sessionStorage.getItem(EMAIL_KEY) || "",
  items: { expert: [], workflow: [] },
  formValid: false,
  run: null, // {id, kind, es, statusUrl, done, lastSeq, startTs}
  steps: new Map(), // step key -> <li class="step">
  followLog: true,
};

class ApiError extends Error {
  constructor(message, status, errors, retryAfter) {
    super(message);
    this.status = status;
    this.errors = errors;
    this.retryAfter = retryAfter;
  }
}

// ---------- small helpers ----------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function asText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function formatTime(ts) {
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date();
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function parseEventData(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return { level: "warn", message: "unparsable_event", data: { raw } };
  }
}

// Marshmallow errors are nested objects of lists: flatten to "field.sub: message" lines.
function flattenErrors(errors, prefix = "") {
  const label = (msg) => (prefix ? `${prefix}: ${msg}` : String(msg));
  if (Array.isArray(errors)) {
    return errors.flatMap((e) => (e && typeof e === "object" ? flattenErrors(e, prefix) : [label(e)]));
  }
  if (errors && typeof errors === "object") {
    return Object.entries(errors).flatMap(([key, value]) => flattenErrors(value, prefix ? `${prefix}.${key}` : key));
  }
  return [label(errors)];
}

// ---------- API ----------

async function api(method, url, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(`Network error: ${err.message}`, 0);
  }
  const payload = await response.json().catch(() => null);
  if (response.ok) return payload;
  const message = (payload && payload.message) || `${response.status} ${response.statusText}`;
  const error = new ApiError(message, response.status, payload && payload.errors, response.headers.get("Retry-After"));
  if (response.status === 401 && state.token) {
    signOut(`Your session has ended (${message}). Please sign in again.`);
    error.reported = true;
  }
  throw error;
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  box.hidden = !error;
  if (!error) return;
  if (typeof error === "string") {
    box.append(el("p", null, error));
    return;
  }
  box.append(el("p", null, error.message));
  if (error.retryAfter) box.append(el("p", null, `Try again in ${error.retryAfter} s.`));
  if (error.errors) {
    const list = el("ul");
    for (const line of flattenErrors(error.errors)) list.append(el("li", null, line));
    box.append(list);
  }
}

function report(error) {
  if (!error.reported) showError(error);
}

// ---------- sign in / out ----------

function showView(signedIn) {
  $("signin-view").hidden = signedIn;
  $("app-view").hidden = !signedIn;
  $("who").hidden = !signedIn;
  $("user-email").textContent = state.email;
}

async function signIn(event) {
  event.preventDefault();
  showError(null);
  $("sign-in").disabled = true;
  const email = $("email").value.trim();
  try {
    const body = await api("POST", `${API}/auth/login`, { email, password: $("password").value });
    state.token = body.access_token;
    state.email = email;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    sessionStorage.setItem(EMAIL_KEY, email);
    $("password").value = "";
    await enterApp();
  } catch (err) {
    report(err);
  } finally {
    $("sign-in").disabled = false;
  }
}

function signOut(message) {
  closeStream();
  state.run = null;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  resetPanel(null);
  showView(false);
  showError(message || null);
  $("email").value = state.email;
  (state.email ? $("password") : $("email")).focus();
}

async function enterApp() {
  showView(true);
  const [experts, workflows] = await Promise.all([
    api("GET", `${API}/experts?per_page=100`),
    api("GET", `${API}/workflows?per_page=100`),
  ]);
  state.items = { expert: experts || [], workflow: workflows || [] };
  fillTargets();
}

// ---------- choosing what to run ----------

function currentKind() {
  return $("kind-workflow").checked ? "workflow" : "expert";
}

function selectedItem() {
  const id = $("target").value;
  return state.items[currentKind()].find((item) => String(item.id) === id) || null;
}

function fillTargets() {
  const kind = currentKind();
  const items = state.items[kind];
  const select = $("target");
  select.replaceChildren();
  for (const item of items) select.append(new Option(`${item.name} (#${item.id})`, String(item.id)));
  if (!items.length) select.append(new Option(`No ${kind}s available to you`, ""));
  select.disabled = !items.length;
  $("target-label").textContent = kind === "expert" ? "Expert" : "Workflow";
  $("inputs-label").textContent = kind === "expert" ? "Input params (JSON object)" : "Starting inputs (JSON object)";
  $("base-field").hidden = kind !== "expert";
  showTargetInfo();
  prefillInputs();
  validateForm();
}

// The selected expert's or workflow's example input, so a first run sends something useful.
function prefillInputs() {
  const item = selectedItem();
  const example = item && item.example_input;
  $("inputs").value = example && typeof example === "object" ? JSON.stringify(example, null, 2) : "{}";
}

function showTargetInfo() {
  const item = selectedItem();
  const nodes = $("target-nodes");
  nodes.replaceChildren();
  $("target-description").textContent = item ? item.description || "(no description)" : "";
  $("target-meta").textContent = "";
  if (!item) return;
  if (currentKind() === "expert") {
    const base = item.base && Object.keys(item.base).length ? ` · default base ${JSON.stringify(item.base)}` : "";
    $("target-meta").textContent = `Model: ${item.model_name}${base}`;
  } else {
    for (const node of topoOrder(item.nodes || [], item.edges || [])) {
      nodes.append(el("li", null, `${node.key} · ${node.node_type}`));
    }
  }
}

// Kahn's algorithm with ties broken by node id (or list position), as the server orders them.
function topoOrder(nodes, edges) {
  const rank = new Map(nodes.map((n, i) => [n.key, n.id ?? i]));
  const indegree = new Map(nodes.map((n) => [n.key, 0]));
  const next = new Map(nodes.map((n) => [n.key, []]));
  for (const { source, target } of edges) {
    if (!next.has(source) || !indegree.has(target)) continue;
    next.get(source).push(target);
    indegree.set(target, indegree.get(target) + 1);
  }
  const byKey = new Map(nodes.map((n) => [n.key, n]));
  const ready = nodes.filter((n) => indegree.get(n.key) === 0).map((n) => n.key);
  const order = [];
  while (ready.length) {
    ready.sort((a, b) => rank.get(a) - rank.get(b));
    const key = ready.shift();
    order.push(byKey.get(key));
    for (const target of next.get(key)) {
      indegree.set(target, indegree.get(target) - 1);
      if (indegree.get(target) === 0) ready.push(target);
    }
  }
  return order.concat(nodes.filter((n) => !order.includes(n))); // a cycle: list the rest anyway
}

// ---------- JSON fields ----------

// JSON.parse's messages differ by browser and often omit the position, so find it ourselves:
// a small recursive-descent scan that returns {at, what?} for the first syntax error.
const JSON_WS = /[ \t\n\r]*/y;
const JSON_STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const JSON_SCALAR = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;

function findJsonError(text) {
  let i = 0;
  const fail = (what) => { throw { at: i, what }; };
  const match = (re) => {
    re.lastIndex = i;
    const m = re.exec(text);
    if (!m) fail(re === JSON_STRING && text[i] === '"' ? "string not closed, or a raw control character in it" : undefined);
    i += m[0].length;
  };
  const skipWs = () => match(JSON_WS);
  const expect = (ch) => { if (text[i] !== ch) fail(); i += 1; };
  const items = (close, item) => {
    i += 1;
    skipWs();
    if (text[i] === close) { i += 1; return; }
    for (;;) {
      item();
      skipWs();
      if (text[i] !== ",") break;
      i += 1;
    }
    expect(close);
  };
  const value = () => {
    skipWs();
    if (text[i] === "{") items("}", () => { skipWs(); match(JSON_STRING); skipWs(); expect(":"); value(); });
    else if (text[i] === "[") items("]", value);
    else if (text[i] === '"') match(JSON_STRING);
    else match(JSON_SCALAR);
  };
  try {
    value();
    skipWs();
    if (i < text.length) fail();
    return null;
  } catch (error) {
    return typeof error.at === "number" ? error : null; // anything else: e.g. too deeply nested
  }
}

function describeJsonError(text, err) {
  const found = findJsonError(text);
  if (!found) return `Invalid JSON: ${err.message}`;
  const lines = text.slice(0, found.at).split("\n");
  const where = `line ${lines.length}, column ${lines[lines.length - 1].length + 1}`;
  const what = found.what
    || (found.at >= text.length ? "unexpected end of input" : `unexpected ${JSON.stringify(text[found.at])}`);
  return `Invalid JSON at ${where}: ${what}.`;
}

// Returns {value} or {error}; an empty field means {}.
function parseJsonObject(text) {
  if (!text.trim()) return { value: {} };
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { error: describeJsonError(text, err) };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { error: 'Must be a JSON object, like {"key": "value"}.' };
  }
  return { value };
}

function checkJsonField(id, emptyHint) {
  const field = $(id);
  const hint = $(`${id}-hint`);
  const parsed = parseJsonObject(field.value);
  field.setAttribute("aria-invalid", parsed.error ? "true" : "false");
  hint.className = `hint ${parsed.error ? "invalid" : field.value.trim() ? "valid" : ""}`;
  hint.textContent = parsed.error || (field.value.trim() ? "Valid JSON object." : emptyHint);
  return parsed;
}

// Validates the form, updates hints and the Run button; returns the parsed fields or null.
function validateForm() {
  const inputs = checkJsonField("inputs", "Empty means {}.");
  const isExpert = currentKind() === "expert";
  const base = isExpert ? checkJsonField("base", "Optional: leave empty for the expert's defaults.") : { value: {} };
  state.formValid = !inputs.error && !base.error;
  updateButtons();
  return state.formValid ? { inputs: inputs.value, base: base.value } : null;
}

function runIsLive() {
  return Boolean(state.run && !state.run.done);
}

function updateButtons() {
  $("run").disabled = !state.formValid || !$("target").value || runIsLive();
  $("cancel").disabled = !runIsLive() || Boolean(state.run && state.run.cancelRequested);
}

// ---------- running ----------

async function startRun(event) {
  event.preventDefault();
  const fields = validateForm();
  const item = selectedItem();
  if (!fields || !item || runIsLive()) return;
  const kind = currentKind();
  const body = kind === "expert"
    ? { expert_id: item.id, input_params: fields.inputs, base: fields.base, mode: "async" }
    : { workflow_id: item.id, starting_inputs: fields.inputs, mode: "async" };
  closeStream();
  state.run = null;
  resetPanel(kind, item);
  showError(null);
  $("run").disabled = true;
  setRunStatus("submitting");
  try {
    const accepted = await api("POST", `${API}/chat/${kind}s:run`, body);
    openStream(kind, accepted);
  } catch (err) {
    setRunStatus("");
    report(err);
  }
  updateButtons();
}

// On a narrow screen the log column sits below the form: show it while the run goes.
function bringLogIntoView() {
  const column = document.querySelector(".log-col");
  const rect = column.getBoundingClientRect();
  if (rect.top >= 0 && rect.top < window.innerHeight * 0.5) return; // already in view
  column.scrollIntoView({ block: "start", behavior: "smooth" });
}

function openStream(kind, accepted) {
  const run = {
    id: accepted.run_id,
    kind,
    statusUrl: accepted.status_url || `${API}/chat/runs/${encodeURIComponent(accepted.run_id)}`,
    done: false,
    cancelRequested: false,
    lastSeq: 0,
    startTs: {},
  };
  state.run = run;
  $("run-id").textContent = `(${run.id})`;
  setRunStatus(accepted.status || "queued");
  setConn("connecting");
  bringLogIntoView();

  const es = new EventSource(accepted.events_url);
  run.es = es;
  es.onopen = () => {
    if (state.run === run && !run.done) setConn("live");
  };
  es.addEventListener("log", (msg) => {
    if (state.run === run) handleLogEvent(run, parseEventData(msg.data));
  });
  es.addEventListener("done", (msg) => {
    es.close(); // the server closes the stream after `done`; do not let the browser reconnect
    if (state.run === run) finishRun(run, parseEventData(msg.data));
  });
  es.onerror = () => {
    if (state.run !== run || run.done) return;
    if (es.readyState === EventSource.CLOSED) pollStatus(run);
    else setConn("reconnecting");
  };
}

function closeStream() {
  if (state.run && state.run.es) state.run.es.close();
}

// The browser gave up on the stream (it does not retry after an HTTP error): poll the run
// status until it is final, so the page still ends with the right status and result.
async function pollStatus(run) {
  setConn("polling");
  while (state.run === run && !run.done) {
    let status;
    try {
      status = await api("GET", run.statusUrl);
    } catch (err) {
      if (state.run !== run) return;
      run.done = true; // stop treating it as live so a new run can start
      setConn("disconnected");
      report(err);
      updateButtons();
      return;
    }
    if (state.run !== run || run.done) return;
    if (FINAL_STATUSES.includes(status.status)) {
      finishRun(run, status);
      return;
    }
    if (!run.cancelRequested) setRunStatus(status.status);
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

async function cancelRun() {
  const run = state.run;
  if (!run || run.done) return;
  run.cancelRequested = true;
  updateButtons();
  try {
    await api("POST", `${API}/chat/runs/${encodeURIComponent(run.id)}:cancel`);
    if (!run.done) setRunStatus("cancelling");
  } catch (err) {
    if (err.status === 409) return; // already finished: the `done` event is on its way
    run.cancelRequested = false;
    report(err);
    updateButtons();
  }
}

function setConn(text) {
  const node = $("conn-state");
  node.textContent = text;
  node.dataset.state = text;
}

function setRunStatus(text) {
  const node = $("run-status");
  node.textContent = text;
  node.dataset.status = text;
}

// ---------- the log panel ----------

function resetPanel(kind, item) {
  $("log").replaceChildren();
  $("result").replaceChildren();
  $("stream").textContent = "";
  $("stream-box").hidden = true;
  $("run-id").textContent = "";
  $("jump-latest").hidden = true;
  state.followLog = true;
  setRunStatus("");
  setConn("idle");
  $("steps").replaceChildren();
  state.steps.clear();
  if (kind === "expert") {
    for (const [key, label] of EXPERT_PHASES) addStep(key, label, "");
  } else if (kind === "workflow") {
    for (const node of topoOrder(item.nodes || [], item.edges || [])) addStep(node.key, node.key, node.node_type);
  }
}

function addStep(key, label, type) {
  const li = el("li", "step");
  li.dataset.key = key;
  li.dataset.status = "pending";
  const name = el("span", "step-name", label);
  if (type) name.append(el("span", "step-type", type));
  li.append(name, el("span", "step-status", "pending"), el("span", "step-duration"), el("span", "step-note"));
  $("steps").append(li);
  state.steps.set(key, li);
  return li;
}

// Moves a step to `status`; durations come from the server or from the event timestamps.
function setStep(run, key, status, { ts, durationMs, note, type } = {}) {
  if (key === undefined || key === null) return;
  const li = state.steps.get(key) || addStep(key, key, type || "");
  if (status === "running") {
    if (li.dataset.status === "running") return;
    run.startTs[key] = ts;
  } else if (durationMs == null && ts && run.startTs[key]) {
    durationMs = Math.round((ts - run.startTs[key]) * 1000);
  }
  li.dataset.status = status;
  li.querySelector(".step-status").textContent = status;
  if (durationMs != null) li.querySelector(".step-duration").textContent = `${durationMs} ms`;
  if (note) li.querySelector(".step-note").textContent = note;
}

function handleLogEvent(run, event) {
  if (typeof event.seq === "number") {
    if (event.seq <= run.lastSeq) return; // already shown (replayed after a reconnect)
    run.lastSeq = event.seq;
  }
  if (!run.done) setConn("live");
  appendLogLine(event);
  updateStepsFromEvent(run, event);
}

function updateStepsFromEvent(run, event) {
  const d = event.data || {};
  const ts = event.ts;
  const expert = run.kind === "expert";
  switch (event.message) {
    case "run_started":
      setRunStatus("running");
      if (expert) {
        setStep(run, "start", "succeeded", { ts });
        setStep(run, "render", "running", { ts });
      }
      break;
    // An expert node of a workflow emits these too: its step is the node's, so the
    // expert phases are only updated for expert runs.
    case "prompt_rendered":
      if (expert) {
        setStep(run, "render", "succeeded", { ts });
        setStep(run, "llm", "running", { ts });
      }
      break;
    case "assistant_delta":
      if (expert) setStep(run, "llm", "running", { ts });
      appendStream(d.text);
      break;
    case "assistant_reply":
    case "assistant_stub_sent":
      if (expert) setStep(run, "llm", "succeeded", { ts });
      $("stream").textContent = asText(d.content ?? "");
      $("stream-box").hidden = false;
      break;
    case "node_start":
      setStep(run, d.node_key, "running", { ts, type: d.node_type });
      break;
    case "node_output":
      setStep(run, d.node_key, "succeeded", { ts, durationMs: d.duration_ms });
      break;
    case "node_error":
      setStep(run, d.node_key, "failed", {
        ts, durationMs: d.duration_ms, note: d.exception ? `${d.exception.type}: ${d.exception.message}` : "",
      });
      break;
    case "node_skipped":
      setStep(run, d.node_key, "skipped");
      break;
    case "run_finished":
      if (expert) setStep(run, "finish", d.status || "succeeded", { durationMs: d.duration_ms });
      break;
    default:
      break;
  }
}

function appendStream(text) {
  if (typeof text !== "string") return;
  const stream = $("stream");
  stream.textContent += text;
  $("stream-box").hidden = false;
  stream.scrollTop = stream.scrollHeight;
}

// Compact JSON with a space after each comma and colon outside strings, so long data
// wraps between items, not in the middle of a key or value.
function readableJson(value) {
  let out = "";
  let inString = false;
  let escaped = false;
  for (const ch of JSON.stringify(value)) {
    out += ch;
    if (inString) {
      if (escaped) escaped = false;
      else if (ch === "\\") escaped = true;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === "," || ch === ":") out += " ";
  }
  return out;
}

function appendLogLine(event) {
  const log = $("log");
  const line = el("div", "log-line");
  const level = ["info", "warn", "error"].includes(event.level) ? event.level : "info";
  line.dataset.level = level;
  line.dataset.message = event.message || "";
  if (event.seq !== undefined) line.dataset.seq = event.seq;
  line.append(el("time", "log-time", formatTime(event.ts)), el("span", "log-level", level),
    el("span", "log-message", event.message || ""));
  if (event.data && Object.keys(event.data).length) {
    const full = readableJson(event.data);
    const data = el("span", "log-data", full.length > MAX_DATA_CHARS ? `${full.slice(0, MAX_DATA_CHARS)}…` : full);
    data.title = full;
    line.append(data);
  }
  log.append(line);
  if (state.followLog) log.scrollTop = log.scrollHeight;
  else $("jump-latest").hidden = false;
}

// Follow new lines only while the reader is at the bottom of the log.
function onLogScroll() {
  const log = $("log");
  state.followLog = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  $("jump-latest").hidden = state.followLog;
}

function jumpToLatest() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
  state.followLog = true;
  $("jump-latest").hidden = true;
  log.focus();
}

// ---------- finishing ----------

function finishRun(run, done) {
  run.done = true;
  setConn("done");
  setRunStatus(done.status || "unknown");
  const level = done.status === "succeeded" ? "info" : done.status === "failed" ? "error" : "warn";
  appendLogLine({ ts: Date.now() / 1000, level, message: "done", data: { status: done.status } });
  settleSteps(run, done);
  renderResult(done.result);
  // A cancel is what the user asked for: a neutral note, the status and the steps say it, no error banner.
  if (done.status === "cancelled") {
    const note = el("p", "run-ended", run.cancelRequested ? "Cancelled, as you asked." : "Run cancelled.");
    note.id = "run-ended";
    note.setAttribute("role", "status");
    $("result").prepend(note);
  }
  if (done.error && done.status !== "cancelled") showError(`Run ${done.status}: ${errorText(done.error)}`);
  updateButtons();
}

function errorText(error) {
  if (typeof error === "string") return error;
  if (error && error.message) return error.type ? `${error.type}: ${error.message}` : error.message;
  return JSON.stringify(error);
}

// Apply the final step list, then close out anything the stream left pending or running.
function settleSteps(run, done) {
  const steps = done.result && Array.isArray(done.result.steps) ? done.result.steps : [];
  for (const step of steps) {
    setStep(run, step.node_key, step.status, {
      durationMs: step.duration_ms, note: step.error ? errorText(step.error) : "", type: step.node_type,
    });
  }
  const endTs = Date.now() / 1000;
  for (const [key, li] of state.steps) {
    if (li.dataset.status === "pending") setStep(run, key, "skipped");
    else if (li.dataset.status === "running") {
      const status = FINAL_STATUSES.includes(done.status) ? done.status : "failed";
      setStep(run, key, status, { ts: endTs });
    }
  }
}

function renderResult(result) {
  const box = $("result");
  box.replaceChildren();
  if (!result) {
    box.append(el("p", "muted", "No result."));
    return;
  }
  if (Array.isArray(result.messages)) {
    for (const message of result.messages) {
      const item = el("div", "result-item");
      item.dataset.role = message.role;
      item.append(el("div", "result-head", message.role), el("pre", null, asText(message.content)));
      box.append(item);
    }
    if (result.warnings && result.warnings.length) {
      box.append(el("p", "result-error", `Warnings: ${JSON.stringify(result.warnings)}`));
    }
  } else if (Array.isArray(result.steps)) {
    for (const step of result.steps) {
      const item = el("div", "result-item");
      item.dataset.key = step.node_key;
      item.dataset.status = step.status;
      const duration = step.duration_ms != null ? ` · ${step.duration_ms} ms` : "";
      item.append(el("div", "result-head", `${step.node_key} · ${step.node_type} · ${step.status}${duration}`));
      if (step.output !== undefined && step.output !== null) item.append(el("pre", null, JSON.stringify(step.output, null, 2)));
      if (step.error) item.append(el("p", "result-error", errorText(step.error)));
      box.append(item);
    }
  } else {
    box.append(el("pre", null, JSON.stringify(result, null, 2)));
  }
}

// ---------- wiring ----------

function submitOnCtrlEnter(event) {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("run").disabled) {
    event.preventDefault();
    $("run-form").requestSubmit();
  }
}

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("kind-expert").addEventListener("change", fillTargets);
  $("kind-workflow").addEventListener("change", fillTargets);
  $("target").addEventListener("change", () => {
    showTargetInfo();
    prefillInputs();
    validateForm();
  });
  for (const id of ["inputs", "base"]) {
    $(id).addEventListener("input", validateForm);
    $(id).addEventListener("keydown", submitOnCtrlEnter);
  }
  $("run-form").addEventListener("submit", startRun);
  $("cancel").addEventListener("click", cancelRun);
  $("log").addEventListener("scroll", onLogScroll);
  $("jump-latest").addEventListener("click", jumpToLatest);

  $("email").value = state.email;
  validateForm();
  if (state.token) {
    showView(true);
    enterApp().catch(report);
  } else {
    showView(false);
  }
}

init();

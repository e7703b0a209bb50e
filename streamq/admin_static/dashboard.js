// The streamq dashboard: polls the admin API with the token kept in sessionStorage.
// Everything from the server is shown with textContent, never as HTML: payloads and
// reasons are user data.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "streamq-admin-token";
const $ = (id) => document.getElementById(id);

let selected = null; // the stream whose dead letters are shown
let previous = null; // the last outcome counters, for rates
let timer = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    if (response.status === 401) signOut(data.error);
    throw new ApiError(response.status, data.error || response.statusText);
  }
  return data;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function button(text, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

// -- signing in -------------------------------------------------------------------------

function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  timer = null;
  previous = null;
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("status").textContent = "not signed in";
  if (typeof reason === "string") say(reason, true);
}

function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return signOut();
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  say("");
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

// -- the stream overview ------------------------------------------------------------------

async function refresh() {
  let snapshot, outcomes;
  try {
    [snapshot, outcomes] = await Promise.all([api("GET", "/api/stats"), api("GET", "/api/outcomes")]);
  } catch (error) {
    if (error.status !== 401) $("status").textContent = `offline: ${error.message}`;
    return;
  }
  $("status").textContent = "live";
  $("updated").textContent = `at ${new Date(snapshot.server_time_ms).toLocaleTimeString()}`;
  const rates = ratesSince(previous, outcomes);
  previous = outcomes;
  drawStreams(snapshot.streams, rates);
}

function ratesSince(before, now) {
  const rates = new Map();
  if (!before) return rates;
  const seconds = (now.server_time_ms - before.server_time_ms) / 1000;
  if (seconds <= 0) return rates;
  const old = new Map(before.streams.map((s) => [s.stream, s]));
  for (const s of now.streams) {
    const o = old.get(s.stream);
    if (!o) continue;
    rates.set(s.stream, {
      done: (s.done - o.done) / seconds,
      failed: (s.retried - o.retried + s.dead - o.dead) / seconds,
    });
  }
  return rates;
}

function drawStreams(streams, rates) {
  const body = $("streams").tBodies[0];
  body.replaceChildren();
  $("no-streams").hidden = streams.length > 0;
  for (const s of streams) {
    const row = body.insertRow();
    row.dataset.stream = s.stream;
    if (s.stream === selected) row.className = "selected";
    const name = row.insertCell();
    name.append(button(s.stream, () => showDead(s.stream), "link"));
    for (const value of [s.depth, s.waiting, s.pending, s.delayed, s.retrying]) {
      cell(row, String(value));
    }
    cell(row, String(s.dead), s.dead > 0 ? "dead bad" : "dead");
    cell(row, String(s.consumers), "consumers");
    cell(row, s.oldest_pending_age_s === null ? "-" : `${s.oldest_pending_age_s.toFixed(1)} s`);
    const rate = rates.get(s.stream);
    cell(row, rate ? rate.done.toFixed(1) : "-", "rate-done");
    cell(row, rate ? rate.failed.toFixed(1) : "-", "rate-failed");
  }
}

// -- one job ------------------------------------------------------------------------------

async function searchJob(event) {
  event.preventDefault();
  const id = $("job-id").value.trim();
  await (id.startsWith("flow:") ? showFlow(id) : showJob(id));
}

// A flow: its state, and each step's state, job (a link to show it) and result or error.
async function showFlow(id) {
  const box = $("job");
  box.replaceChildren();
  let flow;
  try {
    flow = await api("GET", `/api/flows/${encodeURIComponent(id)}`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  say("");
  const head = document.createElement("p");
  head.id = "flow-state";
  head.textContent = `${flow.id}: ${flow.state}`;
  const table = document.createElement("table");
  table.id = "flow-steps";
  const header = table.createTHead().insertRow();
  for (const name of ["step", "state", "after", "job", "result / error"]) {
    const th = document.createElement("th");
    th.textContent = name;
    header.append(th);
  }
  const body = table.createTBody();
  for (const step of Object.values(flow.steps)) {
    const row = body.insertRow();
    row.dataset.step = step.name;
    cell(row, step.name);
    cell(row, step.state, "state");
    cell(row, step.after.join(", ") || "-");
    const job = row.insertCell();
    job.append(button(step.job, () => showJob(step.job)));
    const outcome = step.error ?? (step.result === null ? "-" : JSON.stringify(step.result));
    cell(row, outcome);
  }
  box.append(head, table);
}

async function showJob(id) {
  const box = $("job");
  box.replaceChildren();
  let job;
  try {
    job = await api("GET", `/api/jobs/${encodeURIComponent(id)}`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  say("");
  const list = document.createElement("dl");
  list.id = "job-fields";
  const when = (ms) => (ms === null ? "-" : new Date(ms).toISOString());
  const fields = [
    ["id", job.id], ["state", job.state], ["attempt", job.attempt],
    ["priority", job.priority], ["key", job.key ?? "-"], ["account", job.account ?? "-"],
    ["enqueued", when(job.enqueued_at_ms)], ["scheduled", when(job.run_at_ms)],
    ["started", when(job.started_at_ms)], ["finished", when(job.finished_at_ms)],
    ["worker", job.consumer ?? "-"], ["error", job.error ?? "-"],
    ["result", job.result === null ? "-" : JSON.stringify(job.result)],
    ["payload", job.payload === null ? "-" : JSON.stringify(job.payload)],
  ];
  for (const [name, value] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dd.dataset.field = name;
    list.append(dt, dd);
  }
  box.append(list);
  const actions = document.createElement("p");
  actions.className = "actions";
  if (["dead", "cancelled", "expired"].includes(job.state)) {
    actions.append(button("Retry", () => act(`/api/jobs/${encodeURIComponent(job.id)}/retry`, job.id)));
  }
  if (!["done", "dead", "cancelled", "expired"].includes(job.state)) {
    actions.append(
      button("Cancel", () => act(`/api/jobs/${encodeURIComponent(job.id)}/cancel`, job.id), "danger"),
    );
  }
  box.append(actions);
}

async function act(path, id) {
  try {
    const answer = await api("POST", path);
    say(`${answer.id}: ${answer.outcome}`);
  } catch (error) {
    say(error.message, true);
  }
  await showJob(id);
}

// -- dead letters -------------------------------------------------------------------------

async function showDead(stream, after = null) {
  selected = stream;
  for (const row of $("streams").tBodies[0].rows) {
    row.className = row.dataset.stream === stream ? "selected" : "";
  }
  const query = new URLSearchParams({ count: "50" });
  if (after) query.set("after", after);
  let page;
  try {
    page = await api("GET", `/api/streams/${encodeURIComponent(stream)}/dead?${query}`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  $("dead-panel").hidden = false;
  $("dead-stream").textContent = stream;
  const body = $("dead").tBodies[0];
  if (!after) body.replaceChildren();
  for (const letter of page.letters) {
    const row = body.insertRow();
    row.dataset.entry = letter.entry_id;
    if (letter.job_id) row.dataset.job = letter.job_id;
    cell(row, letter.entry_id);
    cell(row, letter.job_id ?? "(not a streamq job)");
    cell(row, letter.reason);
    const payload = letter.job_id ? JSON.stringify(letter.payload) : JSON.stringify(letter.fields);
    cell(row, payload, "payload").title = payload;
    const actions = row.insertCell();
    if (letter.job_id) actions.append(button("Retry", () => replay(stream, [letter.entry_id])));
  }
  $("no-dead").hidden = body.rows.length > 0;
  const more = $("more-dead");
  more.hidden = page.next === null;
  more.onclick = () => showDead(stream, page.next);
}

async function replay(stream, ids) {
  const body = ids === null ? { all: true } : { ids };
  try {
    const answer = await api("POST", `/api/streams/${encodeURIComponent(stream)}/dead/replay`, body);
    const skipped = answer.skipped ? `, ${answer.skipped} not replayable` : "";
    say(`${stream}: ${answer.replayed} queued again${skipped}`);
  } catch (error) {
    say(error.message, true);
  }
  await showDead(stream);
  await refresh();
}

async function purgeDead() {
  const stream = selected;
  if (!stream || !confirm(`Delete every dead letter of ${stream}? They cannot be retried after.`)) {
    return;
  }
  try {
    const answer = await api("POST", `/api/streams/${encodeURIComponent(stream)}/dead/purge`);
    say(`${stream}: ${answer.purged} dead letters deleted`);
  } catch (error) {
    say(error.message, true);
  }
  await showDead(stream);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("job-search").addEventListener("submit", searchJob);
  $("retry-all").addEventListener("click", () => selected && replay(selected, null));
  $("purge-dead").addEventListener("click", purgeDead);
  start();
});

// The streamq dashboard: one page, routed by the URL's hash (#/jobs/<id> can be pasted in a
// chat), calling the admin API with the token kept in sessionStorage.
//
// Everything from the server is user data (payloads, account names, errors): it reaches the
// page only as text nodes (textContent, createTextNode) and attribute values, never as HTML.
// No element here is built from a string of markup, so a payload holding "<script>" is shown
// as those characters. The server's Content-Security-Policy (default-src 'self') backs this
// up: no inline script or style attribute would run even if some slipped through.
//
// No build step and no library: Intl.DateTimeFormat and Intl.RelativeTimeFormat format times
// in the viewer's zone, sparklines are inline SVG made with createElementNS.

const TOKEN_KEY = "streamq-admin-token";
const OVERVIEW_REFRESH_MS = 5000;
const WORKERS_REFRESH_MS = 5000;
const PAGE_SIZE = 25;
const STATES = [
  "scheduled", "queued", "running", "retrying", "paused",
  "held", "dead", "done", "cancelled", "expired",
];
const FINISHED = ["done", "dead", "cancelled", "expired"];
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const session = { me: null, timer: null, generation: 0 };

// -- building elements: text only ---------------------------------------------------------

// h("a", {href: "#/"}, "text", child): attributes by setAttribute (never an on* handler),
// children as nodes or text. The one way this file makes elements.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...flat(children));
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...flat(children));
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) throw new Error(`no inline handlers: ${name}`);
    el.setAttribute(name, value === true ? "" : String(value));
  }
}

function flat(children) {
  return children
    .flat(Infinity)
    .filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
}

function button(text, onClick, attrs = {}) {
  const b = h("button", { type: "button", ...attrs }, text);
  b.addEventListener("click", onClick);
  return b;
}

const enc = encodeURIComponent;
// Ids keep their ":" in links (x:1a2b-…, flow:…), so a pasted link reads as the id it opens.
const idPart = (id) => enc(id).replaceAll("%3A", ":");
const jobHref = (id) => `#/jobs/${idPart(id)}`;
const flowHref = (id) => `#/flows/${idPart(id)}`;
const listHref = (stream, params) => {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
  return `#/streams/${enc(stream)}/jobs?${query}`;
};
const jobLink = (id) => (id ? h("a", { href: jobHref(id), class: "job-link" }, id) : "-");

// -- times: the viewer's zone, and how far from now ------------------------------------------

const absolute = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium", timeStyle: "medium",
});
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const UNITS = [
  ["day", 86_400_000], ["hour", 3_600_000], ["minute", 60_000], ["second", 1000],
];

function relative(ms, now = Date.now()) {
  const diff = ms - now;
  for (const [unit, size] of UNITS) {
    if (Math.abs(diff) >= size || unit === "second") {
      return relativeFormat.format(Math.round(diff / size), unit);
    }
  }
  return "";
}

// A <time>: the moment in the viewer's zone and how far it is from now; ISO in its title.
function when(ms) {
  if (ms === null || ms === undefined) return "-";
  const iso = new Date(ms).toISOString();
  return h("time", { datetime: iso, title: iso },
    `${absolute.format(ms)} (${relative(ms)})`);
}

function duration(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 0)} s`;
  let left = Math.floor(ms / 1000);
  const parts = [];
  for (const [label, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    const n = Math.floor(left / size);
    left -= n * size;
    if (n) parts.push(`${n} ${label}`);
    if (parts.length) {
      // The unit after the first shown, when not zero: "2 h 5 min", "2 h", never "2 h 5 s".
      const next = Math.floor(left / (size === 86400 ? 3600 : size === 3600 ? 60 : 1));
      if (size > 1 && next) parts.push(`${next} ${size === 86400 ? "h" : size === 3600 ? "min" : "s"}`);
      break;
    }
  }
  return parts.join(" ");
}

// -- the API ------------------------------------------------------------------------------

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

const canWrite = () => session.me !== null && session.me.role === "read-write";

// Asks before an action that destroys or runs something again; resolves to false if not.
// With askReason, resolves to the reason typed (possibly "") instead of true.
function confirmAction(text, { confirmLabel = "Confirm", askReason = false } = {}) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = confirmLabel;
  $("confirm-reason").hidden = !askReason;
  $("confirm-reason-input").value = "";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") resolve(false);
      else resolve(askReason ? $("confirm-reason-input").value.trim() : true);
    }, { once: true });
    dialog.showModal();
    (askReason ? $("confirm-reason-input") : $("confirm-no")).focus();
  });
}

// Runs a write, says how it went, then shows the current page again with fresh data.
async function act(call, describe) {
  try {
    const answer = await call();
    say(describe(answer));
  } catch (error) {
    say(error.status === 403 ? `refused: ${error.message}` : error.message, true);
  }
  await render({ keepMessage: true });
}

// -- signing in ---------------------------------------------------------------------------

function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopTimer();
  session.me = null;
  session.generation += 1;
  $("view").hidden = true;
  $("view").replaceChildren();
  for (const id of ["sign-out", "nav", "find"]) $(id).hidden = true;
  $("sign-in").hidden = false;
  $("status").textContent = "not signed in";
  $("who").textContent = "";
  if (typeof reason === "string") say(reason, true);
}

async function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return signOut();
  try {
    session.me = await api("GET", "/api/me");
  } catch (error) {
    if (error.status === 401) return;
    // A server without /api/me has one token, which may do everything.
    session.me = { name: null, role: error.status === 404 ? "read-write" : "read-only" };
  }
  $("sign-in").hidden = true;
  for (const id of ["sign-out", "nav", "find"]) $(id).hidden = false;
  $("view").hidden = false;
  $("status").textContent = "live";
  const role = session.me.role === "read-write" ? "read-write" : "read-only";
  $("who").textContent = session.me.name ? `${session.me.name} (${role})` : role;
  say("");
  await render();
}

// -- routing ------------------------------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const mark = raw.indexOf("?");
  const path = mark < 0 ? raw : raw.slice(0, mark);
  const params = new URLSearchParams(mark < 0 ? "" : raw.slice(mark + 1));
  const parts = path.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  return { parts, params };
}

function pick({ parts, params }) {
  const [first, second, third] = parts;
  if (parts.length === 0 || (first === "streams" && parts.length === 1)) {
    return { name: "streams", view: overview, refresh: OVERVIEW_REFRESH_MS };
  }
  if (first === "streams" && third === "jobs" && parts.length === 3) {
    return { name: "streams", view: () => jobList(second, params) };
  }
  if (first === "streams" && third === "accounts" && parts.length === 3) {
    return { name: "streams", view: () => accounts(second, params) };
  }
  if (first === "jobs" && parts.length === 2) return { name: "job", view: () => jobPage(second) };
  if (first === "flows" && parts.length === 2) return { name: "flow", view: () => flowPage(second) };
  if (first === "workers" && parts.length === 1) {
    return { name: "workers", view: workersPage, refresh: WORKERS_REFRESH_MS };
  }
  return { name: "none", view: async () => [h("h2", {}, "No such page"), h("p", {}, h("a", { href: "#/" }, "Back to the streams"))] };
}

function stopTimer() {
  clearTimeout(session.timer);
  session.timer = null;
}

// Draws the page the hash names. A later navigation wins over an earlier slow load.
async function render({ keepMessage = false, quiet = false } = {}) {
  if (!session.me) return;
  stopTimer();
  const generation = ++session.generation;
  const chosen = pick(route());
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.nav === chosen.name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  let nodes;
  try {
    nodes = await chosen.view();
    $("status").textContent = "live";
  } catch (error) {
    if (error.status === 401) return;
    nodes = [h("h2", {}, "Cannot show this page"), h("p", { class: "error" }, error.message)];
    $("status").textContent = error.status >= 500 || !error.status ? `offline: ${error.message}` : "live";
  }
  if (generation !== session.generation) return;
  const view = $("view");
  // A refresh must not pull the keyboard focus away from where the user is.
  const focused = quiet && view.contains(document.activeElement) ? focusKey(document.activeElement) : null;
  view.replaceChildren(...flat([nodes]));
  if (!keepMessage && !quiet) say("");
  if (focused) {
    const again = view.querySelector(focused);
    if (again) again.focus();
  } else if (!quiet) {
    const heading = view.querySelector("h2");
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
  }
  if (chosen.refresh) {
    session.timer = setTimeout(() => render({ keepMessage: true, quiet: true }), chosen.refresh);
  }
}

function focusKey(el) {
  if (el.id) return `#${CSS.escape(el.id)}`;
  const href = el.getAttribute("href");
  if (href) return `${el.tagName.toLowerCase()}[href="${CSS.escape(href)}"]`;
  return null;
}

// -- streams overview ---------------------------------------------------------------------

const SERIES = [
  { field: "done", label: "done/s", rate: true },
  { field: "failed", label: "failed/s", rate: true },
  { field: "retried", label: "retried/s", rate: true },
  { field: "depth", label: "depth", rate: false },
  { field: "lateness_p99_ms", label: "p99 lateness (ms)", rate: false },
];

// The series move a point a minute: read again every 30 s, not on each 5 s refresh.
const SERIES_FRESH_MS = 30_000;
const seriesCache = new Map();

async function seriesOf(stream) {
  const kept = seriesCache.get(stream);
  if (kept && Date.now() - kept.at < SERIES_FRESH_MS) return kept.value;
  const value = await api("GET", `/api/streams/${enc(stream)}/series?minutes=60`).catch((error) => error);
  seriesCache.set(stream, { at: Date.now(), value });
  return value;
}

async function overview() {
  const snapshot = await api("GET", "/api/stats");
  const series = await Promise.all(snapshot.streams.map((st) => seriesOf(st.stream)));
  const cards = snapshot.streams.map((st, i) => streamCard(st, series[i]));
  return [
    h("h2", {}, "Streams ", h("small", {}, `at ${absolute.format(snapshot.server_time_ms)}`)),
    cards.length ? h("div", { class: "cards" }, cards) : h("p", { id: "no-streams" }, "No streams yet: enqueue a job first."),
  ];
}

function streamCard(st, series) {
  const figures = [
    ["depth", st.depth, "waiting + running"],
    ["waiting", st.waiting, "not yet delivered to a worker"],
    ["running", st.pending, "delivered and not yet acknowledged"],
    ["delayed", st.delayed, "scheduled and retrying"],
    ["dead", st.dead, "dead letters"],
    ["workers", st.consumers, "consumers alive"],
    ["oldest running", st.oldest_pending_age_s === null ? "-" : `${st.oldest_pending_age_s.toFixed(1)} s`, "age of the oldest unacknowledged entry"],
  ];
  return h("section", { class: "panel stream-card", "data-stream": st.stream, "aria-labelledby": `stream-${st.stream}` },
    h("h3", { id: `stream-${st.stream}` },
      h("a", { href: listHref(st.stream, { state: "queued" }) }, st.stream)),
    h("dl", { class: "figures" }, figures.map(([name, value, title]) => h("div", {},
      h("dt", { title }, name),
      h("dd", { "data-figure": name, class: name === "dead" && value > 0 ? "bad" : null }, String(value))))),
    h("p", { class: "links" },
      h("a", { href: listHref(st.stream, { state: "scheduled" }) }, "Scheduled"),
      h("a", { href: listHref(st.stream, { state: "running" }) }, "Running"),
      h("a", { href: listHref(st.stream, { state: "dead" }) }, "Dead letters"),
      h("a", { href: `#/streams/${enc(st.stream)}/accounts` }, "Accounts")),
    sparklines(series));
}

function sparklines(series) {
  if (series instanceof Error) {
    return h("p", { class: "muted" }, `No history: ${series.message}`);
  }
  const bucket = series.bucket_seconds || 60;
  return h("div", { class: "sparks", "aria-label": "The last hour" },
    SERIES.map(({ field, label, rate }) => {
      const values = series.points.map((p) => {
        // A minute no worker reported is a gap, not a zero.
        if (p.sampled === false) return null;
        const v = p[field];
        return v === null || v === undefined ? null : rate ? v / bucket : v;
      });
      const known = values.filter((v) => v !== null);
      const last = known.length ? known[known.length - 1] : null;
      const max = known.length ? Math.max(...known) : null;
      const shown = (v) => (v === null ? "-" : Number.isInteger(v) ? String(v) : v.toFixed(2));
      const text = `${label} over the last hour: now ${shown(last)}, peak ${shown(max)}`;
      return h("figure", { class: "spark", "data-series": field },
        sparkline(values, max, text),
        h("figcaption", {}, h("span", { class: "spark-label" }, label), " ",
          h("span", { class: "spark-value" }, shown(last))));
    }));
}

// An inline SVG line of values (nulls break the line), scaled to its own peak.
function sparkline(values, max, text) {
  const width = 120, height = 32, pad = 2;
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const y = (v) => (height - pad - (max > 0 ? (v / max) * (height - 2 * pad) : 0)).toFixed(1);
  const runs = [];
  let current = [];
  values.forEach((v, i) => {
    if (v === null) {
      if (current.length) runs.push(current);
      current = [];
    } else current.push(`${(i * step).toFixed(1)},${y(v)}`);
  });
  if (current.length) runs.push(current);
  return s("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img", "aria-label": text, class: "spark-svg" },
    s("title", {}, text),
    s("line", { x1: 0, x2: width, y1: height - pad, y2: height - pad, class: "axis" }),
    runs.map((run) => run.length === 1
      ? s("circle", { cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: 1.5 })
      : s("polyline", { points: run.join(" ") })));
}

// -- job lists ----------------------------------------------------------------------------

// Which time a listing shows first, by state: what an operator sorts by in that state.
const LIST_TIME = {
  scheduled: ["due", "run_at_ms"], retrying: ["due", "run_at_ms"],
  queued: ["enqueued", "enqueued_at_ms"], paused: ["enqueued", "enqueued_at_ms"],
  held: ["enqueued", "enqueued_at_ms"], running: ["started", "started_at_ms"],
  done: ["finished", "finished_at_ms"], dead: ["finished", "finished_at_ms"],
  cancelled: ["finished", "finished_at_ms"], expired: ["finished", "finished_at_ms"],
};

async function jobList(stream, params) {
  const state = STATES.includes(params.get("state")) ? params.get("state") : "queued";
  const account = params.get("account") || "";
  const key = params.get("key") || "";
  const cursor = params.get("cursor") || "";
  // A page size named in the link is kept by the tabs, filters and pages it leads to.
  const sized = params.get("limit") || "";
  const limit = sized || String(PAGE_SIZE);
  const query = new URLSearchParams({ state, limit });
  if (account) query.set("account", account);
  if (key) query.set("key", key);
  if (cursor) query.set("cursor", cursor);
  const page = await api("GET", `/api/streams/${enc(stream)}/jobs?${query}`);
  const [timeLabel, timeField] = LIST_TIME[state];
  const showError = ["retrying", "dead", "expired", "cancelled"].includes(state);

  const tabs = h("nav", { class: "tabs", "aria-label": "Job states" },
    STATES.map((st) => h("a", {
      href: listHref(stream, { state: st, account, key, limit: sized }),
      "aria-current": st === state ? "page" : null,
      "data-state": st,
    }, st)));

  const filter = h("form", { id: "filter", class: "filter", role: "search" },
    h("label", { for: "filter-account" }, "Account"),
    h("input", { id: "filter-account", name: "account", autocomplete: "off" }),
    h("label", { for: "filter-key" }, "Key"),
    h("input", { id: "filter-key", name: "key", autocomplete: "off" }),
    h("button", { type: "submit" }, "Filter"),
    account || key ? h("a", { href: listHref(stream, { state, limit: sized }) }, "Clear filters") : null);
  filter.elements.account.value = account;
  filter.elements.key.value = key;
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = listHref(stream, {
      state, account: filter.elements.account.value.trim(), key: filter.elements.key.value.trim(),
      limit: sized,
    });
  });

  const columns = ["job", "account", "key", "priority", "attempt", timeLabel];
  if (showError) columns.push("error");
  if (state === "running") columns.push("worker");
  const deadActions = state === "dead" && canWrite();
  if (deadActions) columns.push("");
  const table = h("table", { id: "jobs", class: "list" },
    h("caption", { class: "visually-hidden" }, `${state} jobs of ${stream}`),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, page.jobs.map((job) => h("tr", { "data-job": job.id },
      h("td", { "data-label": "job" }, jobLink(job.id)),
      h("td", { "data-label": "account", class: "account" }, job.account ?? "-"),
      h("td", { "data-label": "key" }, job.key ?? "-"),
      h("td", { "data-label": "priority" }, job.priority),
      h("td", { "data-label": "attempt" }, String(job.attempt)),
      h("td", { "data-label": timeLabel, class: "time" }, when(job[timeField])),
      showError ? h("td", { "data-label": "error", class: "error-text" }, job.error ?? "-") : null,
      state === "running" ? h("td", { "data-label": "worker" }, job.consumer ?? "-") : null,
      deadActions ? h("td", {}, button("Retry", () => replayDead(stream, [job.id]), { "aria-label": `Retry ${job.id}` })) : null,
    ))));

  const pager = h("nav", { class: "pager", "aria-label": "Pages" },
    cursor ? h("a", { href: listHref(stream, { state, account, key, limit: sized }), id: "first-page" }, "First page") : null,
    page.cursor ? h("a", { href: listHref(stream, { state, account, key, limit: sized, cursor: page.cursor }), id: "next-page" }, "Next page") : null);

  return [
    h("h2", {}, `Jobs of ${stream}`, " ", h("small", {}, state)),
    h("p", { class: "links" },
      h("a", { href: "#/" }, "All streams"),
      h("a", { href: `#/streams/${enc(stream)}/accounts` }, "Accounts of this stream")),
    tabs,
    filter,
    deadActions ? h("p", { class: "actions" },
      button("Retry all", () => replayDead(stream, null), { id: "retry-all" }),
      button("Purge all", () => purgeDead(stream), { id: "purge-dead", class: "danger" })) : null,
    page.jobs.length ? h("div", { class: "scroll" }, table) : h("p", { id: "no-jobs" }, `No ${state} jobs${account || key ? " match these filters" : ""}.`),
    pager,
  ];
}

async function replayDead(stream, ids) {
  const what = ids === null ? `every dead letter of ${stream}` : ids.join(", ");
  if (!(await confirmAction(`Run ${what} again?`, { confirmLabel: "Run again" }))) return;
  await act(
    () => api("POST", `/api/streams/${enc(stream)}/dead/replay`, ids === null ? { all: true } : { ids }),
    (a) => `${stream}: ${a.replayed} queued again${a.skipped ? `, ${a.skipped} not replayable` : ""}`,
  );
}

async function purgeDead(stream) {
  const sure = await confirmAction(
    `Delete every dead letter of ${stream}? They cannot be retried after.`,
    { confirmLabel: "Delete all" },
  );
  if (!sure) return;
  await act(
    () => api("POST", `/api/streams/${enc(stream)}/dead/purge`),
    (a) => `${stream}: ${a.purged} dead letters deleted`,
  );
}

// -- one job ------------------------------------------------------------------------------

function pretty(value) {
  return h("pre", { class: "json" }, value === null || value === undefined ? "-" : JSON.stringify(value, null, 2));
}

function fields(list, id) {
  return h("dl", { id, class: "fields" }, list.map(([name, value]) => [
    h("dt", {}, name),
    h("dd", { "data-field": name }, value === null || value === undefined ? "-" : value),
  ]));
}

async function jobPage(id) {
  const [job, history] = await Promise.all([
    api("GET", `/api/jobs/${enc(id)}`),
    api("GET", `/api/jobs/${enc(id)}/events`),
  ]);
  const options = job.options && typeof job.options === "object" ? job.options : {};
  // A queued job a worker holds is "active" in its record's terms, listed as running.
  const listed = job.state === "active" ? "running" : job.state;
  const sections = [
    h("h2", {}, "Job ", h("span", { class: "mono" }, job.id), " ",
      h("span", { class: `badge state-${job.state}`, id: "job-state" }, job.state)),
    h("p", { class: "links" },
      h("a", { href: listHref(job.stream, { state: listed }), id: "job-list-link" }, `${listed} jobs of ${job.stream}`)),
    fields([
      ["id", job.id], ["stream", job.stream], ["state", job.state], ["attempt", String(job.attempt)],
      ["account", job.account], ["key", job.key],
      ["enqueued", when(job.enqueued_at_ms)], ["due", when(job.run_at_ms)],
      ["started", when(job.started_at_ms)], ["finished", when(job.finished_at_ms)],
      ["worker", job.consumer], ["cancel requested", job.cancel_requested ? "yes" : "no"],
      ["error", job.error],
    ], "job-fields"),
    canWrite() ? jobActions(job) : null,
    h("section", { "aria-labelledby": "payload-h" }, h("h3", { id: "payload-h" }, "Payload"), h("div", { id: "payload" }, pretty(job.payload))),
    h("section", { "aria-labelledby": "options-h" }, h("h3", { id: "options-h" }, "Options"),
      fields([["priority", job.priority], ["key", job.key], ["account", job.account],
        ...Object.entries(options).map(setting)], "job-options")),
    h("section", { "aria-labelledby": "result-h" }, h("h3", { id: "result-h" }, "Result"), h("div", { id: "result" }, pretty(job.result))),
    h("section", { "aria-labelledby": "attempts-h" }, h("h3", { id: "attempts-h" }, "Attempts"), attemptsList(job.attempts || [])),
    h("section", { "aria-labelledby": "events-h" }, h("h3", { id: "events-h" }, "Timeline"), timeline(job, history)),
  ];
  return sections;
}

// One of the job's own settings as a row: durations in ms shown as durations; a flow step's
// flow as a link to the flow's page.
function setting([name, value]) {
  if (name === "flow" && typeof value === "string") return [name, h("a", { href: flowHref(value) }, value)];
  if (name.endsWith("_ms") && typeof value === "number") return [name.slice(0, -3).replaceAll("_", " "), duration(value)];
  return [name.replaceAll("_", " "), typeof value === "object" ? JSON.stringify(value) : String(value)];
}

function attemptsList(attempts) {
  if (!attempts.length) return h("p", { id: "attempts" }, "No finished runs yet.");
  return h("ol", { id: "attempts", class: "attempts" }, attempts.map((a) => h("li", { "data-attempt": a.n },
    h("p", {}, h("strong", {}, `Attempt ${a.n}: `), h("span", { class: `badge state-${a.outcome}` }, a.outcome),
      a.worker ? ` on ${a.worker}` : "",
      a.started_at_ms ? [" · started ", when(a.started_at_ms)] : "",
      a.started_at_ms && a.finished_at_ms ? ` · took ${duration(a.finished_at_ms - a.started_at_ms)}` : ""),
    a.error ? h("p", { class: "error-text" }, a.error) : null,
    a.trace ? h("details", {}, h("summary", {}, "Traceback"), h("pre", { class: "trace" }, a.trace)) : null)));
}

// The job's events, from its stream's events (admin actions say which token acted); when none
// are kept any more (trimmed by the events' cap), what its record tells of its history.
function timeline(job, history) {
  let items;
  let note = null;
  if (history.events.length) {
    // A run's final event carries when its handler started (no "started" event is kept by
    // default): shown as a step of its own.
    items = history.events.flatMap((e) => [
      e.started_at_ms && e.type !== "started" ? [e.started_at_ms, "started", `attempt ${e.attempt}`] : null,
      [e.at_ms, e.type === "admin" ? `${e.action} by ${e.by}` : e.type,
        [e.type === "admin" ? e.detail : null, e.error].filter(Boolean).join(" · ")],
    ].filter(Boolean));
    if (!history.complete) {
      note = `Older events not searched: the latest ${history.scanned} events of ${job.stream} were.`;
    }
  } else {
    items = [[job.enqueued_at_ms, "enqueued", ""]];
    if (job.run_at_ms && job.run_at_ms !== job.enqueued_at_ms) items.push([job.run_at_ms, "due", ""]);
    for (const a of job.attempts || []) {
      if (a.started_at_ms) items.push([a.started_at_ms, `attempt ${a.n} started`, a.worker || ""]);
      if (a.finished_at_ms) items.push([a.finished_at_ms, `attempt ${a.n} ${a.outcome}`, a.error || ""]);
    }
    if (job.finished_at_ms) items.push([job.finished_at_ms, job.state, ""]);
    note = history.complete
      ? "No events of this job are kept any more (see the events' cap); this is what its record tells."
      : `None of the latest ${history.scanned} events of ${job.stream} is this job's; this is what its record tells.`;
  }
  items = items.filter(([at]) => at).sort((a, b) => a[0] - b[0]);
  return [
    h("ol", { id: "timeline", class: "timeline" }, items.map(([at, what, detail]) =>
      h("li", { "data-event": what }, when(at), " ", h("strong", {}, what), detail ? ` ${detail}` : ""))),
    note ? h("p", { id: "timeline-note", class: "muted" }, note) : null,
  ];
}

function jobActions(job) {
  const path = (action) => `/api/jobs/${enc(job.id)}/${action}`;
  const buttons = [];
  if (!FINISHED.includes(job.state)) {
    buttons.push(button("Cancel", async () => {
      if (!(await confirmAction(`Cancel ${job.id}? It will not run (or, running, not be retried).`, { confirmLabel: "Cancel the job" }))) return;
      await act(() => api("POST", path("cancel")), (a) => `${a.id}: ${a.outcome}`);
    }, { class: "danger", id: "cancel-job" }));
  }
  if (["scheduled", "retrying"].includes(job.state)) {
    buttons.push(button("Run now", () => act(() => api("POST", path("promote")), () => `${job.id}: due now`), { id: "promote-job" }));
  }
  if (["dead", "cancelled", "expired"].includes(job.state)) {
    buttons.push(button("Retry", async () => {
      if (!(await confirmAction(`Run ${job.id} again, its attempts reset?`, { confirmLabel: "Run again" }))) return;
      await act(() => api("POST", path("retry")), (a) => `${a.id}: ${a.outcome}`);
    }, { id: "retry-job" }));
  }
  if (job.state === "dead") {
    buttons.push(button("Replay dead letter", () => replayDead(job.stream, [job.id]), { id: "replay-job" }));
  }
  const parts = [h("h3", { id: "actions-h" }, "Actions"), h("p", { class: "actions" }, buttons)];
  if (["scheduled", "retrying"].includes(job.state)) parts.push(rescheduleForm(job));
  return h("section", { class: "job-actions", "aria-labelledby": "actions-h" }, parts);
}

// -- rescheduling: a wall time in a chosen zone, sent as ISO 8601 with its offset ------------

const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const pad = (n, width = 2) => String(n).padStart(width, "0");

// How far the zone's wall clock is ahead of UTC at that instant, in ms.
function zoneOffsetMs(zone, instantMs) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  }).formatToParts(instantMs);
  const get = (type) => Number(parts.find((p) => p.type === type).value);
  const wall = Date.UTC(get("year"), get("month") - 1, get("day"), get("hour"), get("minute"), get("second"));
  return wall - Math.floor(instantMs / 1000) * 1000;
}

// "2026-12-05T14:30" read in zone -> "2026-12-05T14:30:00+01:00"; null if not a time.
export function wallTimeToIso(local, zone) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(local);
  if (!m) return null;
  const [y, mo, d, hh, mi, ss = "0"] = m.slice(1);
  const wall = Date.UTC(+y, +mo - 1, +d, +hh, +mi, +ss);
  // Twice: the offset at the guessed instant, then at the instant it gives (DST edges).
  let offset = zoneOffsetMs(zone, wall);
  offset = zoneOffsetMs(zone, wall - offset);
  const minutes = Math.abs(offset) / 60000;
  const sign = offset < 0 ? "-" : "+";
  return `${y}-${mo}-${d}T${hh}:${mi}:${pad(+ss)}${sign}${pad(Math.floor(minutes / 60))}:${pad(minutes % 60)}`;
}

// An instant as the value of a datetime-local input, read in zone.
function isoWallTime(ms, zone) {
  const local = new Date(ms + zoneOffsetMs(zone, ms));
  return local.toISOString().slice(0, 16);
}

function rescheduleForm(job) {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  const choices = [...new Set([viewerZone, "UTC", ...zones])];
  const zone = h("select", { id: "reschedule-zone", name: "zone" },
    choices.map((z) => h("option", { value: z }, z === viewerZone ? `${z} (yours)` : z)));
  const startMs = job.run_at_ms && job.run_at_ms > Date.now() ? job.run_at_ms : Date.now() + 3_600_000;
  const input = h("input", { id: "reschedule-at", name: "at", type: "datetime-local", required: true, step: 60 });
  input.value = isoWallTime(startMs, viewerZone);
  const preview = h("output", { id: "reschedule-preview", for: "reschedule-at reschedule-zone" });
  const update = () => {
    const iso = wallTimeToIso(input.value, zone.value);
    preview.textContent = iso ? `${iso}: ${absolute.format(Date.parse(iso))} your time (${relative(Date.parse(iso))})` : "";
  };
  let lastZone = viewerZone;
  zone.addEventListener("change", () => {
    // The same instant, read in the new zone: changing the zone does not move the job.
    const iso = wallTimeToIso(input.value, lastZone);
    if (iso) input.value = isoWallTime(Date.parse(iso), zone.value);
    lastZone = zone.value;
    update();
  });
  input.addEventListener("input", update);
  update();
  const form = h("form", { id: "reschedule", class: "reschedule" },
    h("h4", {}, "Reschedule"),
    h("label", { for: "reschedule-at" }, "Run at"), input,
    h("label", { for: "reschedule-zone" }, "Time zone"), zone,
    h("button", { type: "submit" }, "Reschedule"),
    h("p", {}, preview));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const runAt = wallTimeToIso(input.value, zone.value);
    if (!runAt) return say("choose a date and a time", true);
    await act(
      () => api("POST", `/api/jobs/${enc(job.id)}/reschedule`, { run_at: runAt }),
      () => `${job.id}: due ${absolute.format(Date.parse(runAt))}`,
    );
  });
  return form;
}

// -- accounts -----------------------------------------------------------------------------

function windowList(windows) {
  if (!windows || !windows.length) return "no limits";
  return h("ul", { class: "windows" }, windows.map((w) => h("li", { "data-window": w.name },
    h("span", {}, `${w.name}: ${w.used} used of ${w.limit}`),
    h("meter", {
      min: 0, max: w.limit || 1, value: Math.min(w.used, w.limit || 1),
      high: (w.limit || 1) * 0.8, optimum: 0, "aria-label": `${w.name}: ${w.used} used`,
    }))));
}

// A stream's accounts: those the server knows to name (paused, held, with a token), or the
// one asked for by name (an account that only ever ran within its limits is in none).
async function accounts(stream, params) {
  const cursor = params.get("cursor") || "";
  const only = params.get("account") || "";
  const query = new URLSearchParams();
  if (cursor) query.set("cursor", cursor);
  if (only) query.set("account", only);
  const data = await api("GET", `/api/streams/${enc(stream)}/accounts?${query}`);
  const write = canWrite();
  const here = `#/streams/${enc(stream)}/accounts`;
  // Pausing by stream: the server takes a known stream where a platform may be named.
  const target = (account) => `/api/accounts/${enc(stream)}/${enc(account)}`;
  const rows = data.accounts.map((a) => {
    const status = a.reauth_required ? "sign-in needed" : a.paused ? "paused" : "active";
    return h("tr", { "data-account": a.account },
      h("th", { scope: "row", class: "account" }, h("a", { href: listHref(stream, { state: a.paused ? "paused" : "queued", account: a.account }) }, a.account)),
      h("td", { "data-label": "status" },
        h("span", { class: `badge status-${status.replace(/\W+/g, "-")}`, "data-field": "status" }, status),
        a.paused ? h("p", { class: "reason", "data-field": "reason" }, a.reason || "") : null,
        a.paused && a.paused_until_ms ? h("p", {}, "until ", when(a.paused_until_ms)) : null,
        a.parked ? h("p", {}, `${a.parked} job${a.parked === 1 ? "" : "s"} waiting`) : null),
      h("td", { "data-label": "windows" }, windowList(a.windows)),
      write ? h("td", {}, a.paused
        ? button("Resume", () => act(
          () => api("POST", `${target(a.account)}/resume`),
          (r) => `${a.account}: resumed, ${r.released} job${r.released === 1 ? "" : "s"} released`),
        { "aria-label": `Resume ${a.account}` })
        : button("Pause", async () => {
          const reason = await confirmAction(`Pause ${a.account} on ${stream}? Its jobs wait, using no attempts, until resumed.`, { confirmLabel: "Pause", askReason: true });
          if (reason === false) return;
          const body = reason ? { reason } : {};
          await act(() => api("POST", `${target(a.account)}/pause`, body), () => `${a.account}: paused`);
        }, { "aria-label": `Pause ${a.account}` })) : null);
  });
  const lookup = h("form", { id: "account-find", class: "filter", role: "search" },
    h("label", { for: "account-name" }, "Account"),
    h("input", { id: "account-name", name: "account", autocomplete: "off", required: true }),
    h("button", { type: "submit" }, "Show"),
    only ? h("a", { href: here }, "All known accounts") : null);
  lookup.elements.account.value = only;
  lookup.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = lookup.elements.account.value.trim();
    location.hash = name ? `${here}?${new URLSearchParams({ account: name })}` : here;
  });
  return [
    h("h2", {}, `Accounts of ${stream}`),
    h("p", { class: "links" }, h("a", { href: "#/" }, "All streams"), h("a", { href: listHref(stream, { state: "queued" }) }, "Jobs of this stream")),
    h("section", { "aria-labelledby": "platform-h" }, h("h3", { id: "platform-h" }, "Platform-wide limits"),
      h("div", { id: "platform-windows" }, windowList(data.platform_windows))),
    h("h3", {}, only ? `Account ${only}` : "Known accounts"),
    h("p", { class: "muted" }, "Listed: accounts paused, held behind the platform's limits, or with a token stored. Ask for any other by name."),
    lookup,
    rows.length ? h("div", { class: "scroll" }, h("table", { id: "accounts", class: "list" },
      h("caption", { class: "visually-hidden" }, `Accounts of ${stream}`),
      h("thead", {}, h("tr", {}, ["account", "status", "rate windows", write ? "" : null].filter((c) => c !== null).map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows))) : h("p", { id: "no-accounts" }, "No accounts to show."),
    h("nav", { class: "pager", "aria-label": "Pages" },
      cursor ? h("a", { href: here }, "First page") : null,
      data.next_cursor ? h("a", { href: `${here}?${new URLSearchParams({ cursor: data.next_cursor })}`, id: "next-page" }, "Next page") : null),
  ];
}

// -- workers ------------------------------------------------------------------------------

function holdingList(ids) {
  if (!ids.length) return "none";
  const shown = ids.slice(0, 10);
  return h("ul", { class: "held" }, shown.map((id) => h("li", {}, jobLink(id))),
    ids.length > shown.length ? h("li", {}, `and ${ids.length - shown.length} more`) : null);
}

async function workersPage() {
  const view = await api("GET", "/api/workers");
  const now = Date.now();
  const live = view.live.map((w) => h("tr", { "data-worker": w.consumer },
    h("th", { scope: "row", class: "mono" }, w.consumer),
    h("td", { "data-label": "host" }, w.host),
    h("td", { "data-label": "pid" }, String(w.pid)),
    h("td", { "data-label": "streams" }, (w.streams || []).map((st, i) => [i ? ", " : "", h("a", { href: listHref(st, { state: "running" }) }, st)])),
    h("td", { "data-label": "concurrency" }, String(w.concurrency)),
    h("td", { "data-label": "up for", title: new Date(w.started_at_ms).toISOString() }, duration(w.uptime_ms ?? now - w.started_at_ms)),
    h("td", { "data-label": "heartbeat" }, when(w.heartbeat_at_ms)),
    h("td", { "data-label": "done" }, String(w.done)),
    h("td", { "data-label": "failed", class: w.failed ? "bad" : null }, String(w.failed)),
    h("td", { "data-label": "holding" }, holdingList(w.holding || []))));
  const gone = view.gone.map((g) => h("li", { "data-worker": g.consumer },
    h("p", {}, h("strong", { class: "mono" }, g.consumer), ` on ${g.stream}`,
      g.card ? ` (${g.card.host}, pid ${g.card.pid}, last heard ` : " (",
      g.card ? when(g.card.heartbeat_at_ms) : "never wrote a card", ")",
      g.dropped_at_ms ? [", removed ", when(g.dropped_at_ms)] : ", silent"),
    g.reclaimed.length ? h("ul", {}, g.reclaimed.map((r) => h("li", {},
      `${r.jobs.length} job${r.jobs.length === 1 ? "" : "s"} reclaimed by ${r.by} `, when(r.at_ms), ": ",
      r.jobs.slice(0, 10).map((id, i) => [i ? ", " : "", jobLink(id)]),
      r.jobs.length > 10 ? ` and ${r.jobs.length - 10} more` : ""))) : h("p", { class: "muted" }, "Nothing reclaimed.")));
  const heads = ["worker", "host", "pid", "streams", "concurrency", "up for", "heartbeat", "done", "failed", "holding"];
  return [
    h("h2", {}, "Workers"),
    h("section", { "aria-labelledby": "live-h" }, h("h3", { id: "live-h" }, `Live (${view.live.length})`),
      live.length ? h("div", { class: "scroll" }, h("table", { id: "workers", class: "list" },
        h("thead", {}, h("tr", {}, heads.map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, live))) : h("p", { id: "no-workers" }, "No live workers.")),
    h("section", { "aria-labelledby": "gone-h" }, h("h3", { id: "gone-h" }, `Recently gone (${view.gone.length})`),
      gone.length ? h("ul", { id: "gone", class: "gone" }, gone) : h("p", {}, "None.")),
  ];
}

// -- flows --------------------------------------------------------------------------------

// Steps in columns by dependency depth: a step sits one column right of its deepest parent.
// The on_complete step names no parent but runs once every other step is final: a column of
// its own, last.
function layers(steps, onComplete) {
  const depth = new Map();
  const of = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name) || !steps[name]) return 0;
    seen.add(name);
    const after = steps[name].after || [];
    const d = after.length ? 1 + Math.max(...after.map((p) => of(p, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  const columns = [];
  for (const name of Object.keys(steps)) {
    if (name !== onComplete) (columns[of(name)] ||= []).push(steps[name]);
  }
  const drawn = columns.filter(Boolean);
  if (onComplete && steps[onComplete]) drawn.push([steps[onComplete]]);
  return drawn;
}

async function flowPage(id) {
  const flow = await api("GET", `/api/flows/${enc(id)}`);
  const columns = layers(flow.steps, flow.on_complete);
  const last = flow.on_complete ? flow.steps[flow.on_complete] : null;
  const graph = h("ol", { id: "flow-graph", class: "flow-graph", "aria-label": "Steps by dependency depth" },
    columns.map((column, depth) => h("li", { class: "layer" },
      h("span", { class: "visually-hidden" }, `Depth ${depth}: `),
      h("ul", {}, column.map((step) => h("li", { class: `step state-${step.state}`, "data-step": step.name },
        h("p", { class: "step-name" }, step.name),
        h("p", {}, h("span", { class: `badge state-${step.state}`, "data-field": "state" }, step.state)),
        h("p", {}, jobLink(step.job)),
        step === last ? h("p", { class: "muted" }, "after every step")
          : step.after.length ? h("p", { class: "muted" }, `after ${step.after.join(", ")}`) : null,
        step.error ? h("p", { class: "error-text" }, step.error) : null,
        step.result !== null && step.result !== undefined ? h("pre", { class: "json" }, JSON.stringify(step.result)) : null))))));
  return [
    h("h2", {}, "Flow ", h("span", { class: "mono" }, flow.id), " ",
      h("span", { class: `badge state-${flow.state}`, id: "flow-state" }, flow.state)),
    fields([["created", when(flow.created_at_ms)], ["finished", when(flow.finished_at_ms)],
      ["key", flow.key], ["then", last ? h("a", { href: jobHref(last.job), class: "job-link" }, last.name) : null]], "flow-fields"),
    graph,
  ];
}

// -- finding a job or a flow by id --------------------------------------------------------

function find(event) {
  event.preventDefault();
  const id = $("find-id").value.trim();
  if (!id) return;
  $("find-id").value = "";
  location.hash = id.startsWith("flow:") ? flowHref(id) : jobHref(id);
}

function boot() {
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("find").addEventListener("submit", find);
  // The skip link moves the focus without touching the hash, which names the page.
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    $("view").focus();
  });
  window.addEventListener("hashchange", () => render());
  start();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();

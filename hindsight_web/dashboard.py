"""The dashboard page served at ``GET {admin_path}/``.

One static HTML page with inline CSS and plain JavaScript: no build step, no CDN,
nothing fetched but the admin API of its own origin, so it works offline and under
the strict Content-Security-Policy the admin API serves it with (the page repeats
that policy in a ``<meta>`` tag, so it holds wherever the page is served from, and
allows there only its own script, by its hash).

It shows the statistics of every process (totals, requests and p95 latency per
minute of the recent window as a chart with a time axis, latency buckets, routes,
the slowest requests and sessions, requests, errors and slow ones per tag value),
the recent errors and releases of the window, what count rules fired (the key, its
count, the rules made, sample requests that open like any other) and how the alert
targets delivered it, a search over the window with a view of one request and its
records, a button that releases what the search found (after a confirmation that
says how many), the active rules with a remove button each (after a confirmation;
a count rule with what it counts and does and its top keys now, a tag rule with its
tags), and a form that adds a release, drop or detail rule; the API checks it and
its errors show next to the fields they name.

The page holds no data. It asks for the admin token once, keeps it in
``sessionStorage`` and sends it as ``Authorization: Bearer`` to the API, whose
base is the page's own path, normalised as the server reads it (``//_hindsight/``,
``/./_hindsight//`` and ``/%5Fhindsight/`` all give ``/_hindsight``), on the page's
own origin: it works under any ``admin_path`` and when the admin app is mounted
elsewhere, and the token goes nowhere else. It says which token is signed in
(``GET /whoami``); for a read-only token it offers no change (no form, buttons
disabled). Everything the API returns (paths and user ids are chosen by clients of
the app) goes into the page through ``textContent`` and DOM calls, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import html

__all__ = ["CSP", "page"]

_STYLE = """
:root { color-scheme: light dark; --muted: #888; --bar: #4a7fd4; --line: #e67e22;
        --error: #c0392b; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; }
[hidden] { display: none !important; }
header { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .4rem; }
h3 { font-size: .95rem; margin: 1rem 0 .3rem; }
code, td { font-variant-numeric: tabular-nums; }
.error { color: var(--error); }
#status, .muted { color: var(--muted); }
#totals { display: flex; gap: 2rem; margin: 0; }
#totals div { display: flex; flex-direction: column-reverse; }
#totals dd { font-size: 1.6rem; margin: 0; } #totals dt { color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #8884; }
td { max-width: 24rem; overflow-wrap: break-word; }
th button { all: unset; cursor: pointer; text-decoration: underline dotted; }
th[aria-sort=descending]::after { content: " \\25BC"; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
#histogram { display: flex; gap: 4px; align-items: flex-end; }
.col { display: flex; flex-direction: column; align-items: center; flex: 1; font-size: 12px; }
.track { height: 120px; width: 100%; display: flex; align-items: flex-end; }
.bar { width: 100%; background: var(--bar); min-height: 1px; }
#chart { display: block; width: 100%; max-width: 1100px; height: auto; }
#chart text { fill: currentColor; font-size: 11px; }
#chart .axis { stroke: currentColor; stroke-opacity: .6; }
#chart .grid { stroke: #8884; }
#chart .requests, .legend-requests { fill: var(--bar); color: var(--bar); }
#chart .p95 { fill: none; stroke: var(--line); stroke-width: 2; }
#chart .point, .legend-p95 { fill: var(--line); color: var(--line); }
#search { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: flex-end; }
#search label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
#search input { font: inherit; width: 10rem; }
#search [aria-invalid=true] { outline: 2px solid var(--error); }
#search-error:empty, #release-answer:empty { display: none; }
#rule-form fieldset { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: flex-start;
  border: 1px solid #8886; margin: 0 0 .5rem; }
#rule-form label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
#rule-form input, #rule-form select { font: inherit; width: 10rem; }
#rule-form [aria-invalid=true] { outline: 2px solid var(--error); }
.field-error { color: var(--error); max-width: 12rem; }
.field-error:empty, #rule-error:empty, #rule-answer:empty { display: none; }
.scroll { max-height: 28rem; overflow: auto; }
button.link { all: unset; cursor: pointer; text-decoration: underline; font-family: monospace; }
button.link:focus-visible { outline: 2px solid var(--bar); }
.samples { display: flex; flex-wrap: wrap; gap: 0 .6rem; font-size: 12px; }
ul.top-keys { margin: .2rem 0 0; padding-left: 1.2rem; }
#request { border: 1px solid #8886; padding: 0 1rem 1rem; margin-top: 1rem; }
#request-facts { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; }
#request-facts dt { color: var(--muted); } #request-facts dd { margin: 0; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; margin: .2rem 0; font-size: 12px; }
"""

_SCRIPT = """
"use strict";
// The API's base: the page's own path, normalised the way the server reads it (empty
// and "." segments dropped, ".." applied, escapes decoded then encoded again), so that
// the page opened at //_hindsight/, /./_hindsight//?x or /%5Fhindsight/ calls
// /_hindsight/... and never a protocol-relative //_hindsight/... (another host).
function basePath(pathname) {
  const parts = [];
  for (const raw of pathname.split("/")) {
    let part = raw;
    try { part = decodeURIComponent(raw); } catch (_) { /* a stray %: kept as it is */ }
    if (part === "" || part === ".") continue;
    if (part === "..") { parts.pop(); continue; }
    parts.push(part);
  }
  return parts.map((part) => "/" + encodeURIComponent(part)).join("");
}

const BASE = basePath(location.pathname);
const KEY = "hindsight-token";
const TEXT_COLUMNS = ["method", "route"];
const SEARCH_FIELDS = ["user_id", "path", "status", "message", "since", "until"];
const SEARCH_LIMIT = 1000;
const RULE_KEPT = ["action", "level", "ttl_s"];  // kept for the next rule once one is added
const RULE_FIELDS = [...RULE_KEPT, "note", "id", "path", "method", "user_id", "session_id",
  "client_ip", "header", "status", "duration_ms"];
const RULE_STRINGS = ["path", "user_id", "session_id", "client_ip"];
const RECENT = 20;
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = {sort: "p95_ms", desc: true, routes: [], busy: false, again: false,
               rulesAsked: 0, rulesShown: 0, searchAsked: 0, found: null, requestAsked: 0,
               openId: null, who: null};

class Refused extends Error {}

// An answer of the API other than success: its status and the fields it names.
class Failed extends Error {
  constructor(message, status, details) {
    super(message);
    this.status = status;
    this.details = Array.isArray(details) ? details : [];
  }
}

const token = () => sessionStorage.getItem(KEY);

// The URL of an API call: always of the page's own origin, the token goes nowhere else.
function apiUrl(path) {
  const url = new URL(BASE + path, location.origin);
  if (url.origin !== location.origin) throw new Error("refusing to call " + url.origin);
  return url;
}

async function api(method, path, body) {
  const init = {method, cache: "no-store", headers: {Authorization: "Bearer " + token()}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(apiUrl(path), init);
  if (response.status === 401) throw new Refused("token refused");
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const why = (data && data.error) || "HTTP " + response.status;
    throw new Failed(method + " " + path + ": " + why, response.status, data && data.details);
  }
  return data;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

const ms = (v) => v === null || v === undefined ? "\\u2013"
  : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms";
const bound = (v) => v >= 1000 ? v / 1000 + " s" : v + " ms";
const time = (iso) => iso ? el("time", new Date(iso).toLocaleTimeString(), {datetime: iso,
  title: iso}) : null;
const plural = (n, word) => n + " " + (n === 1 ? word : word.endsWith("s") ? word + "es"
  : word + "s");
const clock = (date) => date.toLocaleTimeString(undefined, {hour: "2-digit",
  minute: "2-digit"});
const round1 = (v) => String(Math.round(v * 10) / 10);
const seconds = (s) => s >= 3600 ? round1(s / 3600) + " h" : s >= 60 ? round1(s / 60) + " min"
  : round1(s) + " s";
const pairs = (fields) => Object.entries(fields || {}).map(([k, v]) => k + "=" + v).join(", ");

function tr(cells, data) {
  const row = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "\\u2013" : String(cell);
    row.append(td);
  }
  Object.assign(row.dataset, data || {});
  return row;
}

function fill(id, rows, empty) {
  const table = $(id);
  if (!rows.length) {
    const span = String(table.tHead.rows[0].cells.length);
    rows = [el("tr")];
    rows[0].append(el("td", empty || "none yet", {colspan: span, class: "muted"}));
  }
  table.tBodies[0].replaceChildren(...rows);
}

function showTotals(stats) {
  for (const name of ["requests", "errors", "slow", "releases"]) {
    $("total-" + name).textContent = String(stats[name]);
  }
  const processes = plural(stats.processes, "process");
  $("since").textContent = "window " + stats.window + " since " +
    new Date(stats.since).toLocaleString() + ", " + processes +
    (stats.stale ? " (the store cannot be read: other processes as last seen)" : "");
}

function showRoutes() {
  const key = state.sort, dir = state.desc ? -1 : 1;
  const rows = state.routes.slice().sort((a, b) =>
    dir * (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  fill("routes", rows.map((r) => tr([r.method, r.route, r.count, r.errors, r.slow,
    ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms), ms(r.max_ms)])));
  for (const th of $("routes").tHead.rows[0].cells) {
    const sorted = th.dataset.key === key;
    th.setAttribute("aria-sort", sorted ? (state.desc ? "descending" : "ascending") : "none");
  }
}

function showHistogram(h) {
  const top = Math.max(1, ...h.counts);
  $("histogram").replaceChildren(...h.counts.map((n, i) => {
    const label = i < h.bounds_ms.length ? "\\u2264 " + bound(h.bounds_ms[i])
      : "> " + bound(h.bounds_ms[i - 1]);
    const col = el("div", null, {class: "col", "data-testid": "histogram-bar",
      title: label + ": " + n + " requests"});
    const track = el("div", null, {class: "track"});
    const bar = el("div", null, {class: "bar"});
    bar.style.height = (100 * n / top) + "%";
    track.append(bar);
    col.append(el("span", n, {class: "count"}), track, el("span", label, {class: "label"}));
    return col;
  }));
}

// The smallest of 1, 2, 5, 10, 20, 50, ... that is at least `v`: the top of an axis.
function roundUp(v) {
  for (let step = 1; ; step *= 10) {
    for (const f of [1, 2, 5]) if (step * f >= v) return step * f;
  }
}

function showTimeline(t) {
  const slots = t.slots;
  const per = t.slot_s === 60 ? "minute" : t.slot_s + " s";
  const span = Math.round(t.slot_s * slots.length / 60);
  const total = slots.reduce((sum, s) => sum + s.requests, 0);
  $("chart-caption").replaceChildren(el("span", "Requests", {class: "legend-requests"}),
    " (bars) and ", el("span", "p95 latency", {class: "legend-p95"}), " (line) per " + per +
    " over the last " + span + " min: " + plural(total, "request") + " in " +
    plural(t.processes, "process") + (t.stale ? " (the store cannot be read: other " +
    "processes as last seen)" : "") + ".");
  const width = 900, height = 240, left = 56, right = 64, top = 28, bottom = 30;
  const plotW = width - left - right, plotH = height - top - bottom;
  const step = plotW / Math.max(1, slots.length);
  const most = roundUp(Math.max(1, ...slots.map((s) => s.requests)));
  const p95s = slots.filter((s) => s.p95_ms !== null).map((s) => s.p95_ms);
  const slowest = roundUp(Math.max(1, ...p95s));
  const yCount = (n) => top + plotH * (1 - n / most);
  const yMs = (v) => top + plotH * (1 - v / slowest);
  const xMid = (i) => left + step * (i + 0.5);
  const nodes = [];
  // the value axes: requests on the left, p95 on the right
  nodes.push(svg("text", {x: left, y: top - 12, "text-anchor": "middle",
    class: "legend-requests"}, "requests"));
  nodes.push(svg("text", {x: left + plotW, y: top - 12, "text-anchor": "middle",
    class: "legend-p95"}, "p95"));
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    nodes.push(svg("line", {x1: left, x2: left + plotW, y1: y, y2: y, class: "grid"}));
    if (Number.isInteger(most * f)) {
      nodes.push(svg("text", {x: left - 6, y: y + 4, "text-anchor": "end"}, most * f));
    }
    nodes.push(svg("text", {x: left + plotW + 6, y: y + 4}, ms(slowest * f)));
  }
  // bars: the requests of each slot
  slots.forEach((s, i) => {
    const y = yCount(s.requests);
    const bar = svg("rect", {x: left + step * (i + 0.15), y, width: step * 0.7,
      height: top + plotH - y, class: "requests", "data-testid": "chart-bar",
      "data-requests": s.requests, "data-at": s.at});
    bar.append(svg("title", {}, clock(new Date(s.at)) + ": " + plural(s.requests, "request") +
      ", " + plural(s.errors, "error") + (s.p95_ms === null ? "" : ", p95 " + ms(s.p95_ms))));
    nodes.push(bar);
  });
  // the p95 line, broken where a slot had no request, and a point on each slot that had
  const runs = [[]];
  slots.forEach((s, i) => {
    if (s.p95_ms === null) runs.push([]);
    else runs[runs.length - 1].push(xMid(i).toFixed(1) + "," + yMs(s.p95_ms).toFixed(1));
  });
  for (const run of runs.filter((r) => r.length)) {
    nodes.push(svg("polyline", {points: run.join(" "), class: "p95"}));
  }
  slots.forEach((s, i) => {
    if (s.p95_ms === null) return;
    const point = svg("circle", {cx: xMid(i), cy: yMs(s.p95_ms), r: 3.5, class: "point",
      "data-testid": "chart-point", "data-p95": s.p95_ms, "data-at": s.at});
    point.append(svg("title", {}, clock(new Date(s.at)) + ": p95 " + ms(s.p95_ms)));
    nodes.push(point);
  });
  // the time axis: a tick where each slot starts, a label on every few, the last one always
  const axis = svg("g", {class: "time-axis", "data-testid": "time-axis"});
  axis.append(svg("line", {x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH,
    class: "axis"}));
  const every = Math.ceil(slots.length / 8);
  slots.forEach((s, i) => {
    const x = left + step * i;
    axis.append(svg("line", {x1: x, x2: x, y1: top + plotH, y2: top + plotH + 4,
      class: "axis"}));
    if ((slots.length - 1 - i) % every === 0) {
      axis.append(svg("text", {x, y: top + plotH + 18, "text-anchor": "middle",
        "data-testid": "time-tick", "data-at": s.at}, clock(new Date(s.at))));
    }
  });
  nodes.push(axis);
  $("chart").replaceChildren(...nodes);
}

const statusOf = (r) => r.raised ? "raised " + r.raised : r.status;

function releasedOf(r) {
  if (r.released) return "released (" + r.reason + ")";
  if (r.suppressed) return "summary only (" + r.reason + ", over the release limit)";
  return "no";
}

function requestRow(r) {
  const open = el("button", r.request_id, {type: "button", class: "link",
    "data-testid": "open-request", title: "show this request and its records"});
  open.addEventListener("click", () => openRequest(r.request_id));
  return tr([time(r.at), open, r.method, r.path, statusOf(r), ms(r.duration_ms), r.user_id,
    r.records, releasedOf(r)], {requestId: r.request_id});
}

function showSlow(list) {
  fill("slow", list.map((r) => tr([r.request_id, r.method, r.path, r.route,
    statusOf(r), ms(r.duration_ms), ms(r.ttfb_ms), r.user_id, r.session_id, time(r.at),
    r.released ? "released (" + r.reason + ")" : "no"], {requestId: r.request_id})));
}

function showSessions(list) {
  fill("sessions", list.map((s) => {
    let action = null;
    if (s.user_id !== null && s.user_id !== undefined) {
      action = changeButton("detail 30 min", "detail", () => detail(s.user_id, action));
    }
    return tr([s.user_id, s.session, s.requests, s.slow, s.errors, ms(s.mean_ms),
      ms(s.p95_ms), ms(s.max_ms), time(s.last_seen), action],
      action ? {user: s.user_id} : {});
  }));
}

// Who is signed in: the name and access of the token (GET /whoami).
const mayChange = () => state.who !== null && state.who.access !== "read-only";
const READ_ONLY = "the token signed in is read-only";

function showWho() {
  const who = state.who;
  $("who").textContent = who ? "signed in as " + who.name + " (" + who.access + ")" : "";
  $("rule-form").hidden = !mayChange();
  $("read-only").hidden = !who || mayChange();
}

// A button that changes something: disabled, and saying why, for a read-only token.
function changeButton(text, testid, work) {
  const button = el("button", text, {type: "button", "data-testid": testid});
  button.addEventListener("click", work);
  if (!mayChange()) {
    button.disabled = true;
    button.title = READ_ONLY;
  }
  return button;
}

// One action of a count rule's "then": "detail 15 min", "alert security", "release".
function thenText(t) {
  if (t.alert !== undefined) return "alert " + t.alert;
  return [t.action, t.tags ? pairs(t.tags) : null, t.ttl_s ? seconds(t.ttl_s) : null,
    t.level ? "from " + t.level : null].filter((part) => part !== null).join(" ");
}

// What a count rule counts and does, and its keys with the highest counts now; a tag
// rule's tags; nothing for the others.
function counting(r) {
  if (r.action === "tag") return el("span", pairs(r.tags), {"data-testid": "rule-tags"});
  if (r.action !== "count") return null;
  const cell = el("div");
  cell.append(el("div", r.key + ": " + r.threshold + " in " + seconds(r.window_s) +
    ", then " + r.then.map(thenText).join(", "), {"data-testid": "rule-counts"}));
  const top = r.top_keys || [];
  const list = el("ul", null, {class: "top-keys", "data-testid": "top-keys",
    title: "the keys with the highest counts in the window now"});
  for (const k of top) {
    list.append(el("li", k.key + " (" + k.count + ")", {"data-testid": "top-key"}));
  }
  if (!top.length) list.append(el("li", "no key counted in the window", {class: "muted"}));
  cell.append(list);
  return cell;
}

function showRules(list) {
  fill("rules", list.map((r) => {
    const remove = changeButton("remove", "remove", () => removeRule(r.id, remove));
    const expires = r.expires_at ? new Date(r.expires_at).toLocaleString() + " (" +
      Math.ceil(r.ttl_s / 60) + " min left)" : "never";
    return tr([r.id, r.action + (r.dry_run ? " (dry run)" : ""), JSON.stringify(r.match),
      expires, r.hits, r.note, counting(r), remove], {ruleId: r.id});
  }));
}

// -- what count rules fired, the alert targets, the tags ----------------------------

// The sample requests of a firing: those the window still holds open as any request
// does (the API gives them a link); the others are their ids only.
function samples(list) {
  const cell = el("div", null, {class: "samples"});
  for (const s of list || []) {
    if (s.link) {
      const open = el("button", s.request_id, {type: "button", class: "link",
        "data-testid": "open-sample", title: "show this request and its records"});
      open.addEventListener("click", () => openRequest(s.request_id));
      cell.append(open);
    } else {
      cell.append(el("span", s.request_id, {class: "muted", "data-testid": "sample",
        title: "no longer in the window"}));
    }
  }
  return cell;
}

function lastError(t) {
  if (!t.last_error) return null;
  const cell = el("span", null, {class: "error", "data-testid": "last-error"});
  cell.append(el("span", t.last_error));
  if (t.last_error_at) cell.append(" (", time(t.last_error_at), ")");
  return cell;
}

function showAlerts(answer) {
  fill("alerts", answer.alerts.map((a) => tr([time(a.at), a.rule + (a.dry_run ?
    " (dry run: nothing done)" : ""), a.key_name + "=" + a.key, a.count + " / " + a.threshold,
    seconds(a.window_s), a.made.length ? a.made.join(", ") : null, samples(a.samples)],
    {rule: a.rule, key: a.key})), "no count rule fired");
  $("alerts-caption").textContent = "The newest firings of count rules (at most " + RECENT +
    "): the key that reached the threshold, its count in the window, the rules it made " +
    "and sample requests." + (answer.stale ? " The store cannot be read: as last read." : "");
  fill("alert-targets", answer.targets.map((t) => tr([t.id, t.type, t.url, t.sent, t.queued,
    t.failed, t.dropped, t.retries, lastError(t)], {target: t.id})),
    "no alert targets: the app's alerts option names none");
}

function showTags(answer) {
  fill("tags", answer.tags.map((t) => tr([t.tag, t.value, t.requests, t.errors, t.slow],
    {tag: t.tag, value: t.value})), "no request tagged: tag rules add fields to the requests " +
    "they match");
  $("tags-caption").textContent = "Requests, errors and slow ones per value of the fields " +
    "that tag rules add, since start, in " + plural(answer.processes, "process") +
    (answer.stale ? " (the store cannot be read: other processes as last seen)" : "") + ".";
}

async function loadRules() {
  const asked = ++state.rulesAsked;
  const answer = await api("GET", "/rules");
  if (asked > state.rulesShown) {  // an older answer arriving late must not win
    state.rulesShown = asked;
    showRules(answer.rules);
  }
}

// Errors (5xx) and released requests of the window, newest first: two searches, merged.
async function loadRecent() {
  const [errors, released] = await Promise.all([
    api("GET", "/requests?status=5xx&limit=" + RECENT),
    api("GET", "/requests?released=true&limit=" + RECENT)]);
  const seen = new Map();
  for (const r of [...errors.requests, ...released.requests]) {
    seen.set(r.request_id + " " + r.at, r);
  }
  const list = [...seen.values()].sort((a, b) => a.at < b.at ? 1 : a.at > b.at ? -1 : 0);
  fill("recent", list.slice(0, RECENT).map(requestRow), "none in the window");
  const complete = errors.complete && released.complete;
  $("recent-caption").textContent = "The newest " + RECENT + " errors and releases kept " +
    "in the window of " + plural(Math.min(errors.processes, released.processes), "process") +
    (complete ? "." : " (not every process answered: theirs are missing).");
}

async function refresh() {
  if (!token()) return;
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  const w = "window=" + encodeURIComponent($("window").value);
  try {
    if (state.who === null) {  // once per token: it also checks the token
      state.who = await api("GET", "/whoami");
      showWho();
    }
    const [stats, slow, sessions, timeline, alerts, tags] = await Promise.all([
      api("GET", "/stats?" + w), api("GET", "/stats/slow?limit=20&" + w),
      api("GET", "/stats/sessions?limit=20&" + w), api("GET", "/stats/timeline"),
      api("GET", "/alerts?limit=" + RECENT), api("GET", "/stats/tags"), loadRules(),
      loadRecent()]);
    showTotals(stats);
    showTimeline(timeline);
    state.routes = stats.routes;
    showRoutes();
    showHistogram(stats.histogram);
    showSlow(slow.requests);
    showSessions(sessions.sessions);
    showAlerts(alerts);
    showTags(tags);
    showDashboard(true);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) { failed(e); }
  state.busy = false;
  if (state.again) { state.again = false; refresh(); }
}

// -- the search over the window, and releasing what it found --------------------------

function searchError(details, message) {
  const named = new Set(details.map((d) => d.field));
  for (const name of SEARCH_FIELDS) {
    const input = $("search-" + name);
    if (named.has(name)) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  const text = details.length ? details.map((d) => d.field + ": " + d.error).join("; ")
    : message || "";
  $("search-error").textContent = text;
}

function releaseAnswer(text, error) {
  $("release-answer").textContent = text;
  $("release-answer").className = error ? "error" : "";
}

async function search(keepAnswer) {
  const asked = ++state.searchAsked;
  const params = new URLSearchParams();
  for (const name of SEARCH_FIELDS) {
    const value = $("search-" + name).value.trim();
    if (value) params.set(name, value);
  }
  const query = new URLSearchParams(params);
  query.set("limit", String(SEARCH_LIMIT));
  if (!keepAnswer) releaseAnswer("");
  $("search-summary").textContent = "searching\\u2026";
  let answer;
  try {
    answer = await api("GET", "/requests?" + query);
  } catch (e) {
    if (asked !== state.searchAsked) return;
    state.found = null;
    showFound();
    if (e instanceof Failed && e.status === 400) searchError(e.details, e.message);
    else failed(e);
    return;
  }
  if (asked !== state.searchAsked) return;  // a newer search was asked meanwhile
  searchError([]);
  state.found = {params, requests: answer.requests, processes: answer.processes,
                 complete: answer.complete};
  showFound();
}

function showFound() {
  const found = state.found;
  const button = $("release");
  if (!found) {
    $("search-summary").textContent = "";
    $("found").tBodies[0].replaceChildren();
    button.hidden = true;
    return;
  }
  const list = found.requests;
  const pending = list.filter((r) => !r.released).length;
  let text = plural(list.length, "request") + " found in the window of " +
    plural(found.processes, "process");
  if (!found.complete) text += " (not every process answered: theirs are missing)";
  if (list.length >= SEARCH_LIMIT) text += ", the newest " + SEARCH_LIMIT + " (more may match)";
  if (list.length) text += "; " + pending + " not released";
  $("search-summary").textContent = text + ".";
  button.hidden = pending === 0;
  button.disabled = !mayChange();
  button.title = mayChange() ? "" : READ_ONLY;
  button.textContent = "release " + plural(pending, "request");
  fill("found", list.map(requestRow), "no request in the window matches");
}

// A `status` filter (500, 5xx, 400-499, 500,502) as a rule's match value, as the API reads it.
function statusMatch(text) {
  const given = text.trim();
  const klass = /^([1-9])xx$/.exec(given);
  if (klass) return {gte: klass[1] * 100, lte: klass[1] * 100 + 99};
  const span = /^(\\d{3})-(\\d{3})$/.exec(given);
  if (span) return {gte: Number(span[1]), lte: Number(span[2])};
  const numbers = given.split(",").map((n) => n.trim() ? Number(n) : NaN);
  if (numbers.some(Number.isNaN)) return given;  // as typed: the API says what is wrong
  return numbers.length === 1 ? numbers[0] : numbers;
}

// The search as a release: the same filters, and the time from the oldest request found
// to the newest (1 ms more: "at" is shown to the millisecond), so that requests that
// arrive after the search are left alone.
function releaseBody(found) {
  const match = {};
  for (const name of ["user_id", "path", "message"]) {
    if (found.params.has(name)) match[name] = found.params.get(name);
  }
  if (found.params.has("status")) match.status = statusMatch(found.params.get("status"));
  const times = found.requests.map((r) => Date.parse(r.at));
  return {match, since: new Date(Math.min(...times)).toISOString(),
          until: new Date(Math.max(...times) + 1).toISOString(),
          note: "dashboard: released what a search of the window found"};
}

async function releaseFound() {
  const found = state.found;
  if (!found) return;
  const pending = found.requests.filter((r) => !r.released).length;
  if (!pending) return;
  const already = found.requests.length - pending;
  const question = "Release " + plural(pending, "request") + " that this search found? " +
    "Their records are written to the application's log now" +
    (already ? " (" + plural(already, "request") + " found were released already)" : "") +
    ".";
  if (!confirm(question)) return;
  const button = $("release");
  button.disabled = true;
  try {
    const answer = await api("POST", "/release", releaseBody(found));
    releaseAnswer("released " + answer.released + " in " +
      plural(answer.processes, "process") +
      (answer.complete ? "" : " (incomplete: not every process answered)"), false);
    await search(true);  // the requests found now show as released
    if (!$("request").hidden) openRequest(state.openId);
    refresh();
  } catch (e) {
    if (e instanceof Refused) failed(e);
    else releaseAnswer(String(e && e.message || e), true);
  }
  button.disabled = false;
}

// -- one request and its records ---------------------------------------------------

async function openRequest(id) {
  const asked = ++state.requestAsked;
  const segment = id !== "." && id !== "..";  // the URL parser folds those away
  let found = null;
  try {
    if (segment) found = await api("GET", "/requests/" + encodeURIComponent(id));
  } catch (e) {
    if (!(e instanceof Failed && e.status === 404)) { failed(e); return; }
  }
  if (found === null && (!segment || id.includes("/"))) {
    // no path (here) carries this id: its facts from a search, without its records
    try {
      const answer = await api("GET", "/requests?limit=1&request_id=" +
        encodeURIComponent(id));
      found = answer.requests.length ? {...answer.requests[0], records: null} : null;
    } catch (e) { failed(e); return; }
  }
  if (asked === state.requestAsked) showRequest(id, found);
}

const recordTime = (iso) => el("time", new Date(iso).toLocaleTimeString(undefined,
  {hour: "numeric", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3}),
  {datetime: iso, title: iso});

function showRequest(id, r) {
  state.openId = id;
  $("request").hidden = false;
  $("request-title").textContent = "Request " + id;
  const facts = [];
  let note = "";
  if (r === null) {
    note = "It is not in the window (any more): the window keeps a request for a while " +
      "after it ended.";
  } else {
    const shown = [["method", r.method], ["path", r.path], ["route", r.route],
      ["status", statusOf(r)], ["duration", ms(r.duration_ms)], ["user", r.user_id],
      ["session", r.session_id], ["client", r.client_ip], ["started", time(r.at)],
      ["released", releasedOf(r)]];
    if (r.fields && Object.keys(r.fields).length) shown.push(["fields", JSON.stringify(r.fields)]);
    for (const [name, value] of shown) {
      const dd = el("dd", value instanceof Node ? null : value === null ? "\\u2013" : value);
      if (value instanceof Node) dd.append(value);
      facts.push(el("dt", name), dd);
    }
    if (r.records === null) {
      note = "Its records cannot be shown: its id cannot be part of a path to this server.";
    } else if (!r.records.length) {
      note = r.released ? "The window no longer holds its records: they were written to " +
        "the application's log when it was released." : "It kept no records.";
    }
  }
  $("request-facts").replaceChildren(...facts);
  $("request-note").textContent = note;
  const records = r && r.records ? r.records : [];
  $("records").hidden = !records.length;
  $("records").tBodies[0].replaceChildren(...records.map((rec) => {
    const message = el("div");
    message.append(el("span", rec.message));
    for (const more of [rec.exc_text, rec.stack_info]) if (more) message.append(el("pre", more));
    const fields = rec.fields && Object.keys(rec.fields).length
      ? JSON.stringify(rec.fields) : null;
    return tr([recordTime(rec.time), rec.level, rec.logger, message,
      rec.pathname + ":" + rec.lineno + " in " + rec.func, fields], {level: rec.level});
  }));
  $("request").scrollIntoView({block: "nearest"});
}

// -- actions, the token -------------------------------------------------------------

function notice(text, error) {
  $("notice").textContent = text;
  $("notice").className = error ? "error" : "";
}

function failed(e) {
  if (e instanceof Refused) {
    sessionStorage.removeItem(KEY);
    askToken("The token was refused (401). Enter the admin token again.", true);
  } else {
    notice(String(e && e.message || e), true);
  }
}

async function act(button, work) {
  button.disabled = true;
  try { notice(await work()); } catch (e) { failed(e); }
  button.disabled = false;
  if (token()) loadRules().catch(failed);
}

function detail(user, button) {
  act(button, async () => {
    const body = {ttl_s: 1800};
    // "." and ".." cannot travel as a path segment: the URL parser folds them away.
    const rule = user === "." || user === ".."
      ? await api("POST", "/rules", {action: "detail", match: {user_id: user}, ...body})
      : await api("POST", "/users/" + encodeURIComponent(user) + "/detail", body);
    return "Detail logging on for user " + user + " for 30 min (rule " + rule.id + ").";
  });
}

function removeRule(id, button) {
  if (!confirm("Remove rule " + id + "?")) return;
  act(button, async () => {
    await api("DELETE", "/rules/" + encodeURIComponent(id));
    return "Removed rule " + id + ".";
  });
}

// -- adding a rule -------------------------------------------------------------------

// A number as typed, or the text itself: the API names the field if it is no number.
const numberOr = (text) => text !== "" && Number.isFinite(Number(text)) ? Number(text) : text;

// "> 300", ">= 300", "< 50" or "300" (more than 300) as a number range.
function durationMatch(text) {
  const [, op, value] = /^(>=|<=|>|<)?\\s*(.*)$/.exec(text);
  const names = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"};
  return {[names[op || ">"]]: numberOr(value)};
}

// "X-Tenant: acme" as {"X-Tenant": "acme"}; without a colon, as typed (the API refuses it).
function headerMatch(text) {
  const colon = text.indexOf(":");
  if (colon < 0) return text;
  return {[text.slice(0, colon).trim()]: text.slice(colon + 1).trim()};
}

// The form as a rule in the API's format; what it cannot read is sent as typed.
function ruleBody() {
  const value = (name) => $("rule-" + name).value.trim();
  const rule = {action: value("action"), match: {}};
  for (const name of RULE_STRINGS) if (value(name)) rule.match[name] = value(name);
  if (value("method")) rule.match.method = value("method").toUpperCase();
  if (value("header")) rule.match.header = headerMatch(value("header"));
  if (value("status")) rule.match.status = statusMatch(value("status"));
  if (value("duration_ms")) rule.match.duration_ms = durationMatch(value("duration_ms"));
  if (value("ttl_s")) rule.ttl_s = numberOr(value("ttl_s"));
  if (value("note")) rule.note = value("note");
  if (value("id")) rule.id = value("id");
  if (rule.action === "detail") rule.level = value("level");
  return rule;
}

// The API's errors next to the fields they name ("match.duration_ms.gt": duration_ms);
// the others, or the message when it names none, under the form.
function ruleErrors(details, message) {
  const byField = new Map();
  const rest = [];
  for (const d of details) {
    const name = String(d.field).replace(/^match\\./, "").split(".")[0];
    if (RULE_FIELDS.includes(name)) byField.set(name, [...(byField.get(name) || []), d.error]);
    else rest.push(d.field + ": " + d.error);
  }
  for (const name of RULE_FIELDS) {
    const errors = byField.get(name);
    $("rule-error-" + name).textContent = errors ? errors.join("; ") : "";
    if (errors) $("rule-" + name).setAttribute("aria-invalid", "true");
    else $("rule-" + name).removeAttribute("aria-invalid");
  }
  if (byField.size) rest.unshift("The rule was not added: see the fields marked.");
  $("rule-error").textContent = rest.length ? rest.join(" ") : message || "";
}

function showLevel() {
  $("rule-level-field").hidden = $("rule-action").value !== "detail";
}

async function addRule() {
  const rule = ruleBody();
  if (!Object.keys(rule.match).length &&
      !confirm("This " + rule.action + " rule matches every request. Add it?")) return;
  const button = $("rule-submit");
  button.disabled = true;
  ruleErrors([]);
  $("rule-answer").textContent = "";
  try {
    const made = await api("POST", "/rules", rule);
    $("rule-answer").textContent = "Added " + made.action + " rule " + made.id + ".";
    for (const name of RULE_FIELDS) if (!RULE_KEPT.includes(name)) $("rule-" + name).value = "";
    await loadRules();
  } catch (e) {
    if (e instanceof Failed) ruleErrors(e.details, e.message);
    else failed(e);
  }
  button.disabled = false;
}

function showDashboard(on) {
  $("dashboard").hidden = !on;
  $("controls").hidden = !on;
  $("token-form").hidden = on;
}

function askToken(message, refused) {
  showDashboard(false);
  for (const table of document.querySelectorAll("main table")) table.tBodies[0].replaceChildren();
  $("histogram").replaceChildren();
  $("chart").replaceChildren();
  $("chart-caption").replaceChildren();
  for (const id of ["recent-caption", "alerts-caption", "tags-caption"]) $(id).textContent = "";
  state.found = null;
  state.searchAsked++;
  state.requestAsked++;
  state.who = null;
  showWho();
  ruleErrors([]);
  $("rule-answer").textContent = "";
  showFound();
  searchError([]);
  releaseAnswer("");
  $("request").hidden = true;
  $("request-facts").replaceChildren();
  notice("");
  $("status").textContent = "";
  $("token-message").textContent = message;
  $("token-message").className = refused ? "error" : "";
  $("token").focus();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  $("token-message").textContent = "checking the token\\u2026";
  $("token-message").className = "";
  refresh();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  askToken("Token forgotten. Enter the admin token to see the dashboard.", false);
});
$("refresh").addEventListener("click", refresh);
$("window").addEventListener("change", refresh);
$("routes").tHead.addEventListener("click", (ev) => {
  const th = ev.target.closest("th[data-key]");
  if (!th) return;
  const key = th.dataset.key;
  state.desc = key === state.sort ? !state.desc : !TEXT_COLUMNS.includes(key);
  state.sort = key;
  showRoutes();
});
$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  search(false);
});
$("release").addEventListener("click", releaseFound);
$("rule-action").addEventListener("change", showLevel);
$("rule-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  addRule();
});
$("request-close").addEventListener("click", () => { $("request").hidden = true; });
showLevel();
setInterval(() => { if (!document.hidden) refresh(); }, 5000);
if (token()) {
  $("token-form").hidden = true;
  $("status").textContent = "loading\\u2026";
  refresh();
} else {
  askToken("Enter the admin token to see the dashboard.", false);
}
"""


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


# Only the page's own script runs: by its hash, so that neither an inline event handler
# (onerror=...) nor a script element that found its way into the page would run, even
# under a header that allows 'unsafe-inline'. (frame-ancestors has no effect in a
# <meta> policy: the admin's header says it.)
CSP = (
    f"default-src 'none'; script-src 'sha256-{_sha256(_SCRIPT)}'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'"
)

_REQUEST_COLUMNS = "".join(
    f"<th>{name}</th>"
    for name in (
        "time",
        "request id",
        "method",
        "path",
        "status",
        "duration",
        "user",
        "records",
        "released",
    )
)


def _rule_field(name: str, label: str, placeholder: str = "") -> str:
    """One input of the rule form, with the place where the API's error for it goes."""
    hint = f' placeholder="{html.escape(placeholder)}"' if placeholder else ""
    return (
        f'<label>{label} <input id="rule-{name}" data-testid="rule-{name}"{hint}>'
        f'<span class="field-error" id="rule-error-{name}" data-testid="rule-error-{name}">'
        "</span></label>"
    )


def _rule_select(name: str, label: str, options: tuple[str, ...], wrapper: str = "") -> str:
    shown = "".join(f'<option value="{o}">{o}</option>' for o in options)
    around = f' id="{wrapper}"' if wrapper else ""
    return (
        f'<label{around}>{label} <select id="rule-{name}" data-testid="rule-{name}">{shown}'
        f'</select><span class="field-error" id="rule-error-{name}" '
        f'data-testid="rule-error-{name}"></span></label>'
    )


# Start-time keys first; status and duration are known only when the request ends, so a
# detail rule (looked up when the request starts) may not use them: the API says so.
_RULE_FORM = f"""<form id="rule-form" autocomplete="off" data-testid="rule-form" hidden>
  <fieldset><legend>rule</legend>
    {_rule_select("action", "action", ("release", "drop", "detail"))}
    {_rule_select("level", "level (detail)", ("DEBUG", "INFO", "WARNING"), "rule-level-field")}
    {_rule_field("ttl_s", "ttl_s (empty: until removed)", "3600")}
    {_rule_field("note", "note", "ticket 4711")}
    {_rule_field("id", "id (empty: a new one)", "checkout-slow")}
  </fieldset>
  <fieldset><legend>match: every field given (* in a path matches anything)</legend>
    {_rule_field("path", "path", "/checkout/*")}
    {_rule_field("method", "method", "POST")}
    {_rule_field("user_id", "user id")}
    {_rule_field("session_id", "session id")}
    {_rule_field("client_ip", "client ip", "10.0.0.0/8")}
    {_rule_field("header", "header", "X-Tenant: acme")}
    {_rule_field("status", "status (not detail)", "500, 5xx, 400-499")}
    {_rule_field("duration_ms", "duration ms (not detail)", "> 300")}
  </fieldset>
  <button type="submit" id="rule-submit" data-testid="rule-submit">add rule</button>
  <p id="rule-error" class="error" role="alert" data-testid="rule-error"></p>
  <p id="rule-answer" role="status" data-testid="rule-answer"></p>
</form>"""

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>hindsight-web __ADMIN_PATH__</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
  <h1>hindsight-web <code>__ADMIN_PATH__</code></h1>
  <span id="controls" hidden>
    <label>window
      <select id="window" data-testid="window">
        <option value="all">all</option><option value="recent">recent</option>
      </select>
    </label>
    <button type="button" id="refresh" data-testid="refresh">refresh</button>
    <button type="button" id="forget" data-testid="forget">forget token</button>
  </span>
  <span id="who" data-testid="who"></span>
  <span id="status" role="status"></span>
</header>
<noscript><p class="error">The dashboard needs JavaScript.</p></noscript>
<form id="token-form" method="post" autocomplete="off" data-testid="token-form">
  <p id="token-message" data-testid="token-message"></p>
  <label>admin token <input id="token" type="password" data-testid="token"></label>
  <button type="submit" data-testid="token-submit">open</button>
</form>
<p id="notice" role="status" data-testid="notice"></p>
<main id="dashboard" hidden>
  <dl id="totals">
    <div><dt>requests</dt><dd id="total-requests" data-testid="total-requests"></dd></div>
    <div><dt>errors</dt><dd id="total-errors" data-testid="total-errors"></dd></div>
    <div><dt>slow</dt><dd id="total-slow" data-testid="total-slow"></dd></div>
    <div><dt>releases</dt><dd id="total-releases" data-testid="total-releases"></dd></div>
  </dl>
  <p id="since" class="muted" data-testid="since"></p>
  <h2>Requests per minute</h2>
  <p id="chart-caption" class="muted" data-testid="chart-caption"></p>
  <svg id="chart" data-testid="chart" viewBox="0 0 900 240" role="img"
    aria-labelledby="chart-caption"></svg>
  <h2>Recent errors and releases</h2>
  <p id="recent-caption" class="muted" data-testid="recent-caption"></p>
  <div class="scroll">
    <table id="recent" data-testid="recent">
      <thead><tr>{_REQUEST_COLUMNS}</tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <h2>Alerts</h2>
  <p id="alerts-caption" class="muted" data-testid="alerts-caption"></p>
  <div class="scroll">
    <table id="alerts" data-testid="alerts">
      <thead><tr><th>time</th><th>rule</th><th>key</th><th>count</th><th>window</th>
        <th>rules made</th><th>sample requests</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <h3>Alert targets</h3>
  <p class="muted">How the process that answered delivered its alerts (each process sends
    those it fires).</p>
  <table id="alert-targets" data-testid="alert-targets">
    <thead><tr><th>target</th><th>type</th><th>url</th><th>sent</th><th>queued</th>
      <th>failed</th><th>dropped</th><th>retries</th><th>last error</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Search the window</h2>
  <form id="search" autocomplete="off" data-testid="search">
    <label>user <input id="search-user_id" data-testid="search-user_id"></label>
    <label>path (* matches anything)
      <input id="search-path" data-testid="search-path" placeholder="/checkout/*"></label>
    <label>status
      <input id="search-status" data-testid="search-status" placeholder="500, 5xx, 400-499">
    </label>
    <label>message contains <input id="search-message" data-testid="search-message"></label>
    <label>since
      <input id="search-since" data-testid="search-since" placeholder="-15m, 2026-11-30T14:00Z">
    </label>
    <label>until <input id="search-until" data-testid="search-until" placeholder="now"></label>
    <button type="submit" data-testid="search-submit">search</button>
  </form>
  <p id="search-error" class="error" role="alert" data-testid="search-error"></p>
  <p><span id="search-summary" role="status" data-testid="search-summary"></span>
    <button type="button" id="release" data-testid="release" hidden>release</button></p>
  <p id="release-answer" role="status" data-testid="release-answer"></p>
  <div class="scroll">
    <table id="found" data-testid="found">
      <thead><tr>{_REQUEST_COLUMNS}</tr></thead>
      <tbody></tbody>
    </table>
  </div>
  <section id="request" data-testid="request" hidden>
    <h2><span id="request-title" data-testid="request-title"></span>
      <button type="button" id="request-close" data-testid="request-close">close</button></h2>
    <dl id="request-facts" data-testid="request-facts"></dl>
    <p id="request-note" class="muted" data-testid="request-note"></p>
    <table id="records" data-testid="records">
      <thead><tr><th>time</th><th>level</th><th>logger</th><th>message</th><th>where</th>
        <th>fields</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <h2>Latency</h2>
  <div id="histogram" data-testid="histogram"></div>
  <h2>Routes</h2>
  <table id="routes" data-testid="routes">
    <thead><tr>
      <th data-key="method"><button type="button">method</button></th>
      <th data-key="route"><button type="button">route</button></th>
      <th data-key="count"><button type="button">count</button></th>
      <th data-key="errors"><button type="button">errors</button></th>
      <th data-key="slow"><button type="button">slow</button></th>
      <th data-key="p50_ms"><button type="button">p50</button></th>
      <th data-key="p95_ms"><button type="button">p95</button></th>
      <th data-key="p99_ms"><button type="button">p99</button></th>
      <th data-key="max_ms"><button type="button">max</button></th>
    </tr></thead>
    <tbody></tbody>
  </table>
  <h2>Slowest requests</h2>
  <table id="slow" data-testid="slow">
    <thead><tr><th>request id</th><th>method</th><th>path</th><th>route</th><th>status</th>
      <th>duration</th><th>ttfb</th><th>user</th><th>session</th><th>time</th>
      <th>released</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Slowest sessions</h2>
  <table id="sessions" data-testid="sessions">
    <thead><tr><th>user</th><th>session</th><th>requests</th><th>slow</th><th>errors</th>
      <th>mean</th><th>p95</th><th>max</th><th>last seen</th><th></th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Tags</h2>
  <p id="tags-caption" class="muted" data-testid="tags-caption"></p>
  <table id="tags" data-testid="tags">
    <thead><tr><th>tag</th><th>value</th><th>requests</th><th>errors</th><th>slow</th></tr>
    </thead>
    <tbody></tbody>
  </table>
  <h2>Active rules</h2>
  <table id="rules" data-testid="rules">
    <thead><tr><th>id</th><th>action</th><th>match</th><th>expires</th><th>hits</th>
      <th>note</th><th>counts, tags</th><th></th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Add a rule</h2>
  <p id="read-only" class="muted" data-testid="read-only" hidden>The token signed in is
    read-only: it may look, not add or remove rules.</p>
{_RULE_FORM}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def page(admin_path: str) -> bytes:
    """The dashboard's HTML for an admin API answering at `admin_path`.

    Args:
        admin_path: shown in the title only; the page calls the API at its own
            path, so it also works where the admin app is mounted elsewhere.

    Example::

        body = page("/_hindsight")  # served as text/html; charset=utf-8
    """
    shown = html.escape(admin_path or "/", quote=True)
    return _PAGE.replace("__ADMIN_PATH__", shown).encode("utf-8")

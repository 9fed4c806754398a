"""The dashboard page served at ``GET {admin_path}/``.

One static HTML page with inline CSS and plain JavaScript: no build step, no CDN,
nothing fetched but the admin API of its own origin, so it works offline and under
the strict Content-Security-Policy the admin API serves it with (the page repeats
that policy in a ``<meta>`` tag, so it holds wherever the page is served from).

The page holds no data. It asks for the admin token once, keeps it in
``sessionStorage`` and sends it as ``Authorization: Bearer`` to the API, whose
base is the page's own path: it works under any ``admin_path`` and when the admin
app is mounted elsewhere. Everything the API returns (paths and user ids are
chosen by clients of the app) goes into the page through ``textContent`` and DOM
calls, never as HTML.
"""

from __future__ import annotations

import html

__all__ = ["page"]

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)

_STYLE = """
:root { color-scheme: light dark; --muted: #888; --bar: #4a7fd4; --error: #c0392b; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; }
header { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .4rem; }
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
"""

_SCRIPT = """
"use strict";
const BASE = location.pathname.replace(/\\/+$/, "");
const KEY = "hindsight-token";
const TEXT_COLUMNS = ["method", "route"];
const $ = (id) => document.getElementById(id);
const state = {sort: "p95_ms", desc: true, routes: [], busy: false, again: false,
               rulesAsked: 0, rulesShown: 0};

class Refused extends Error {}

const token = () => sessionStorage.getItem(KEY);

async function api(method, path, body) {
  const init = {method, cache: "no-store", headers: {Authorization: "Bearer " + token()}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, init);
  if (response.status === 401) throw new Refused("token refused");
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const why = (data && data.error) || "HTTP " + response.status;
    throw new Error(method + " " + path + ": " + why);
  }
  return data;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

const ms = (v) => v === null || v === undefined ? "\\u2013"
  : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms";
const bound = (v) => v >= 1000 ? v / 1000 + " s" : v + " ms";
const time = (iso) => iso ? el("time", new Date(iso).toLocaleTimeString(), {datetime: iso,
  title: iso}) : null;

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

function fill(id, rows) {
  const table = $(id);
  if (!rows.length) {
    const span = String(table.tHead.rows[0].cells.length);
    rows = [el("tr")];
    rows[0].append(el("td", "none yet", {colspan: span, class: "muted"}));
  }
  table.tBodies[0].replaceChildren(...rows);
}

function showTotals(stats) {
  for (const name of ["requests", "errors", "slow", "releases"]) {
    $("total-" + name).textContent = String(stats[name]);
  }
  const processes = stats.processes === 1 ? "1 process" : stats.processes + " processes";
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

function showSlow(list) {
  fill("slow", list.map((r) => tr([r.request_id, r.method, r.path, r.route,
    r.raised ? "raised " + r.raised : r.status,
    ms(r.duration_ms), ms(r.ttfb_ms), r.user_id, r.session_id, time(r.at),
    r.released ? "released (" + r.reason + ")" : "no"], {requestId: r.request_id})));
}

function showSessions(list) {
  fill("sessions", list.map((s) => {
    let action = null;
    if (s.user_id !== null && s.user_id !== undefined) {
      action = el("button", "detail 30 min", {type: "button", "data-testid": "detail"});
      action.addEventListener("click", () => detail(s.user_id, action));
    }
    return tr([s.user_id, s.session, s.requests, s.slow, s.errors, ms(s.mean_ms),
      ms(s.p95_ms), ms(s.max_ms), time(s.last_seen), action],
      action ? {user: s.user_id} : {});
  }));
}

function showRules(list) {
  fill("rules", list.map((r) => {
    const remove = el("button", "remove", {type: "button", "data-testid": "remove"});
    remove.addEventListener("click", () => removeRule(r.id, remove));
    const expires = r.expires_at ? new Date(r.expires_at).toLocaleString() + " (" +
      Math.ceil(r.ttl_s / 60) + " min left)" : "never";
    return tr([r.id, r.action + (r.dry_run ? " (dry run)" : ""), JSON.stringify(r.match),
      expires, r.hits, r.note, remove], {ruleId: r.id});
  }));
}

async function loadRules() {
  const asked = ++state.rulesAsked;
  const answer = await api("GET", "/rules");
  if (asked > state.rulesShown) {  // an older answer arriving late must not win
    state.rulesShown = asked;
    showRules(answer.rules);
  }
}

async function refresh() {
  if (!token()) return;
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  const w = "window=" + encodeURIComponent($("window").value);
  try {
    const [stats, slow, sessions] = await Promise.all([api("GET", "/stats?" + w),
      api("GET", "/stats/slow?limit=20&" + w), api("GET", "/stats/sessions?limit=20&" + w),
      loadRules()]);
    showTotals(stats);
    state.routes = stats.routes;
    showRoutes();
    showHistogram(stats.histogram);
    showSlow(slow.requests);
    showSessions(sessions.sessions);
    showDashboard(true);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) { failed(e); }
  state.busy = false;
  if (state.again) { state.again = false; refresh(); }
}

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
  act(button, async () => {
    await api("DELETE", "/rules/" + encodeURIComponent(id));
    return "Removed rule " + id + ".";
  });
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
setInterval(() => { if (!document.hidden) refresh(); }, 5000);
if (token()) {
  $("token-form").hidden = true;
  $("status").textContent = "loading\\u2026";
  refresh();
} else {
  askToken("Enter the admin token to see the dashboard.", false);
}
"""

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
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
  <h2>Active rules</h2>
  <table id="rules" data-testid="rules">
    <thead><tr><th>id</th><th>action</th><th>match</th><th>expires</th><th>hits</th>
      <th>note</th><th></th></tr></thead>
    <tbody></tbody>
  </table>
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

// Agora web UI: reads the cluster's summary and a page each of agents and
// tasks (never the whole state: at 10,000 agents and 200,000 tasks that is
// tens of megabytes a look, for the browser and the master alike), follows
// /api/v1/events, and shows a task's log by following
// /api/v1/tasks/{id}/files/read. When the batch
// framework is up, its jobs come from /batch/v1/jobs; when the services
// framework is, its apps from /services/v1/apps. With several masters it
// remembers them all (/api/v1/masters) and, when the one that served the
// page stops answering, moves to whichever leads now. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (n) => (Math.round(n * 100) / 100).toString();
const res = (r) => Object.entries(r || {}).map(([k, v]) => `${k}:${typeof v === "number" ? fmt(v) : v}`).join(" ") || "–";

// A token in the address (`agora dev` prints such a link) becomes the
// session's cookie and leaves the address bar. The cookie is SameSite=Strict:
// other sites' pages cannot make the browser use it.
function keepToken(token) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `agora_token=${encodeURIComponent(token)}; path=/; SameSite=Strict${secure}`;
}
{
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    keepToken(decodeURIComponent(m[1]));
    window.history.replaceState(null, "", location.pathname + location.search);
  }
}

function showLogin() {
  $("login").hidden = false;
  $("live").textContent = "signed out";
  $("live").classList.remove("on");
}

// What the last refresh read: the summary, the frameworks, and the pages
// of agents and tasks shown.
let view = null;
const PAGE = 100;
const pages = { agents: 0, tasks: 0 }; // offsets
const history = []; // {t, used, offered} as fractions of cpus
let log = { task: null, file: "stdout", offset: 0, timer: null };

// The UI's reads accept what the master published in the last second:
// its looks then cost the master's core nothing (see Freshness in
// master/src/http.rs).
async function getJSON(url) {
  const r = await fetch(url, { headers: { "Cache-Control": "max-age=1" } });
  if (r.status === 401) showLogin();
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function sum(kind, field) {
  return view?.summary.resources[field]?.[kind] || 0;
}

function renderBars() {
  const kinds = ["cpus", "mem", "disk"];
  $("bars").innerHTML = kinds.map((k) => {
    const total = sum(k, "total"), used = sum(k, "used"), offered = sum(k, "offered");
    if (!total) return "";
    const pu = (100 * used) / total, po = (100 * offered) / total;
    return `<div class="bar"><div class="label"><span>${k}</span><span>${fmt(used)} used · ${fmt(offered)} offered · ${fmt(total - used - offered)} free of ${fmt(total)}</span></div>
      <div class="track"><div class="used" style="width:${pu}%"></div><div class="offered" style="width:${po}%"></div></div></div>`;
  }).join("");
  const s = view.summary;
  const states = Object.entries(s.tasks.by_state).map(([k, n]) => `${n.toLocaleString()} ${esc(k.replace("TASK_", "").toLowerCase())}`).join(", ");
  const statuses = Object.entries(s.agents.by_status).map(([k, n]) => `${n.toLocaleString()} ${esc(k)}`).join(", ");
  const many = (n, what) => `${n.toLocaleString()} ${what}${n === 1 ? "" : "s"}`;
  $("counts").textContent = `${many(s.agents.total, "agent")}${statuses ? ` (${statuses})` : ""} · ${many(s.frameworks.total, "framework")} · ${many(s.tasks.total, "task")}${states ? ` (${states})` : ""}`;
}

function renderChart() {
  const c = $("chart"), g = c.getContext("2d");
  const w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  const horizon = 5 * 60 * 1000, now = Date.now();
  const pts = history.filter((p) => now - p.t <= horizon);
  for (const [field, color] of [["used", "#2f6fde"], ["offered", "#f0a030"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    pts.forEach((p, i) => {
      const x = w - ((now - p.t) / horizon) * w, y = h - p[field] * (h - 4) - 2;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

function usage(u) {
  if (!u) return "–";
  return `${fmt(u.cpu_seconds)} cpu·s, ${fmt(u.memory_bytes / 1048576)} MiB, ${u.pids} pids`;
}

// "101–200 of 10,000" and the buttons to move a page either way.
function renderPager(kind, page) {
  const from = page.total ? page.offset + 1 : 0, to = page.offset + page[kind].length;
  $(`${kind}-pager`).innerHTML = `<span>${from.toLocaleString()}–${to.toLocaleString()} of ${page.total.toLocaleString()}</span>
    <button data-page="${kind}" data-step="-1"${page.offset ? "" : " disabled"}>‹ previous</button>
    <button data-page="${kind}" data-step="1"${to < page.total ? "" : " disabled"}>next ›</button>`;
}

function renderAgents() {
  const page = view.agents;
  $("agent-rows").innerHTML = page.agents.map((a) => `<tr data-agent="${esc(a.id)}">
    <td>${esc(a.hostname)}</td><td>${esc(a.status)}${a.draining ? " (draining)" : ""}</td>
    <td>${esc(res(a.resources.used))} / ${esc(res(a.resources.total))}</td>
    <td>${esc(Object.entries(a.attributes).map(([k, v]) => `${k}=${v}`).join(" "))}</td>
    <td>${a.task_count}</td>
    <td>${usage(a.usage)}</td>
    <td><button data-drain="${esc(a.id)}" data-on="${a.draining}">${a.draining ? "undrain" : "drain"}</button></td></tr>`).join("");
  renderPager("agents", page);
}

function renderFrameworks(roles) {
  const share = Object.fromEntries((roles || []).map((r) => [r.role, r.dominant_share]));
  $("framework-rows").innerHTML = view.frameworks.map((f) => `<tr>
    <td>${f.webui_url ? `<a href="${esc(f.webui_url)}">${esc(f.name)}</a>` : esc(f.name)}</td><td>${esc(f.role)}</td><td>${fmt(100 * (share[f.role] || 0))}% of role</td>
    <td>${f.active ? "yes" : "no"}</td><td>${f.task_count}</td><td>${esc(res(f.used))}</td></tr>`).join("");
}

function renderTasks() {
  const page = view.tasks;
  const host = (id) => page.hostnames?.[id] || id;
  $("task-rows").innerHTML = page.tasks.map((t) => `<tr class="clickable" data-task="${esc(t.id)}">
    <td>${esc(t.id)}</td><td class="state ${esc(t.state)}">${esc(t.state)}</td><td>${esc(host(t.agent_id))}</td>
    <td>${esc(res(t.resources))}</td><td class="msg">${esc(t.message)}</td></tr>`).join("");
  renderPager("tasks", page);
}

const when = (ms) => (ms ? new Date(ms).toLocaleString() : "–");

// Jobs of the batch framework, if one is registered (the master relays
// /batch/ to it); the section stays hidden otherwise.
async function refreshJobs() {
  let jobs = null;
  try { jobs = (await getJSON("/batch/v1/jobs")).jobs; } catch (_) { jobs = null; }
  $("jobs").hidden = $("jobs-link").hidden = !jobs;
  if (!jobs) return;
  $("job-rows").innerHTML = jobs.slice(-500).reverse().map((j) => `<tr class="clickable" data-job="${esc(j.id)}"${j.latest_task ? ` data-task="${esc(j.latest_task)}"` : ""}>
    <td>${esc(j.id)}</td><td class="state ${esc(j.state)}">${esc(j.state)}</td><td>${j.runs}</td>
    <td>${esc(j.schedule || "–")}</td><td>${esc(when(j.next_fire))}</td>
    <td class="msg">${j.latest_run ? `#${j.latest_run} ${esc(j.latest_state)} ${esc(j.latest_message || "")}` : "–"}</td></tr>`).join("");
}

// Apps of the services framework, if one is registered (the master relays
// /services/ to it): counts, the deployment's progress, why instances wait,
// and where the healthy ones answer. Hidden otherwise.
async function refreshApps() {
  let apps = null;
  try { apps = (await getJSON("/services/v1/apps")).apps; } catch (_) { apps = null; }
  $("apps").hidden = $("apps-link").hidden = !apps;
  if (!apps) return;
  const details = await Promise.all(apps.slice(0, 200).map((a) =>
    getJSON(`/services/v1/apps/${a.id.split("/").map(encodeURIComponent).join("/")}/endpoints`).catch(() => ({ endpoints: [] }))));
  $("app-rows").innerHTML = apps.slice(0, 200).map((a, i) => {
    const c = a.instances;
    const d = a.deployment;
    const dep = d ? `#${d.id} ${esc(d.kind)} → v${d.to_version}: ${esc(d.state)}${d.state === "RUNNING" ? "" : ` — ${esc(d.message)}`}` : "–";
    const waiting = a.waiting && a.waiting.reasons
      ? Object.entries(a.waiting.reasons).map(([r, n]) => `${esc(r)} (${n})`).join("; ") : "–";
    const eps = (details[i].endpoints || []).map((e) => `${esc(e.host)}:${e.port}`).join(" ") || "–";
    const port = a.service_port ? ` <span class="muted">lb :${a.service_port}</span>` : "";
    return `<tr data-app="${esc(a.id)}"><td>${esc(a.id)}${port}</td><td class="state ${esc(a.status)}">${esc(a.status)}</td>
      <td>v${a.version}</td><td>${c.healthy} / ${c.running} / ${c.wanted}</td><td class="msg">${dep}</td>
      <td class="msg waiting">${waiting}</td><td class="msg endpoints">${eps}</td></tr>`;
  }).join("");
}

// Every master, as the last answer listed them.
let masters = [];

async function rememberMasters() {
  try {
    const m = await getJSON("/api/v1/masters");
    if (Array.isArray(m.masters) && m.masters.length) masters = m.masters;
  } catch (_) { /* keep the last list */ }
}

// This page's master is gone: ask the others who leads, and go there.
async function findLeader() {
  for (const m of masters) {
    if (m === location.origin) continue;
    try {
      const r = await fetch(`${m}/api/v1/leader`, { signal: AbortSignal.timeout(2000) });
      const { leader } = await r.json();
      if (leader && leader !== location.origin) {
        location.href = `${leader}/${location.hash}`;
        return true;
      }
    } catch (_) { /* that one is gone too */ }
  }
  return false;
}

function tasksURL() {
  const q = $("task-filter").value.trim();
  return `/api/v1/tasks?offset=${pages.tasks}&limit=${PAGE}${q ? `&q=${encodeURIComponent(q)}` : ""}`;
}

// One refresh at a time; one asked for meanwhile runs when it ends.
let refreshing = null, again = false, lastRefresh = 0;
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  lastRefresh = Date.now();
  refreshing = load().finally(() => {
    refreshing = null;
    if (again) { again = false; refresh(); }
  });
  return refreshing;
}

async function load() {
  refreshJobs();
  refreshApps();
  rememberMasters();
  try {
    const [summary, f, r, agents, tasks] = await Promise.all([
      getJSON("/api/v1/summary"), getJSON("/api/v1/frameworks"), getJSON("/api/v1/roles"),
      getJSON(`/api/v1/agents?offset=${pages.agents}&limit=${PAGE}`), getJSON(tasksURL()),
    ]);
    view = { summary, frameworks: f.frameworks, agents, tasks };
    const total = sum("cpus", "total") || 1;
    history.push({ t: Date.now(), used: sum("cpus", "used") / total, offered: sum("cpus", "offered") / total });
    while (history.length > 2000) history.shift();
    renderBars(); renderChart(); renderAgents(); renderFrameworks(r.roles); renderTasks();
  } catch (e) {
    $("live").textContent = `error: ${e.message}`;
    // A network error (not an HTTP one): the master may be gone.
    if (e instanceof TypeError) await findLeader();
  }
}

// Each event asks for a refresh; they are taken at most one a second.
const EVENT_REFRESH_SPACING = 1000;
let pending = null;
function refreshSoon() {
  if (pending) return;
  const wait = Math.max(200, lastRefresh + EVENT_REFRESH_SPACING - Date.now());
  pending = setTimeout(() => { pending = null; refresh(); }, wait);
}

async function followLog() {
  if (!log.task) return;
  try {
    const url = `/api/v1/tasks/${encodeURIComponent(log.task)}/files/read?path=${log.file}&offset=${log.offset}&length=65536`;
    const chunk = await getJSON(url);
    if (chunk.data) {
      $("log-text").textContent += chunk.data;
      log.offset = chunk.offset + new TextEncoder().encode(chunk.data).length;
    }
  } catch (e) {
    $("log-text").dataset.error = e.message;
  }
  log.timer = setTimeout(followLog, 1000);
}

function openLog(task, file = "stdout") {
  clearTimeout(log.timer);
  log = { task, file, offset: 0, timer: null };
  $("log").hidden = false;
  $("log-task").textContent = task;
  $("log-text").textContent = "";
  document.querySelectorAll(".tabs [data-file]").forEach((b) => b.classList.toggle("on", b.dataset.file === file));
  followLog();
}

function fromHash() {
  const m = location.hash.match(/^#task=([^&]+)(?:&file=(stdout|stderr))?/);
  if (m) openLog(decodeURIComponent(m[1]), m[2] || "stdout");
}

document.addEventListener("click", async (e) => {
  const row = e.target.closest("[data-task]");
  if (row) { location.hash = `task=${encodeURIComponent(row.dataset.task)}`; return; }
  const tab = e.target.closest("[data-file]");
  if (tab && log.task) { openLog(log.task, tab.dataset.file); return; }
  if (e.target.id === "log-close") { clearTimeout(log.timer); log.task = null; $("log").hidden = true; window.history.replaceState(null, "", "#tasks"); return; }
  const pager = e.target.closest("[data-page]");
  if (pager && view) {
    const kind = pager.dataset.page;
    pages[kind] = Math.max(0, pages[kind] + Number(pager.dataset.step) * PAGE);
    refresh();
    return;
  }
  const drain = e.target.closest("[data-drain]");
  if (drain) {
    const action = drain.dataset.on === "true" ? "undrain" : "drain";
    await fetch(`/api/v1/agents/${encodeURIComponent(drain.dataset.drain)}/${action}`, { method: "POST", body: "{}" });
    refresh();
  }
});
let filtering = null;
$("task-filter").addEventListener("input", () => {
  clearTimeout(filtering);
  filtering = setTimeout(() => { pages.tasks = 0; refresh(); }, 300);
});
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  keepToken($("login-token").value.trim());
  location.reload();
});
window.addEventListener("hashchange", fromHash);

// Every kind of event but task updates, which come by the ten thousand a
// second on a busy cluster: tasks are read a page at a time, every two
// seconds.
const EVENT_TYPES = ["agent_added", "agent_reregistered", "agent_disconnected", "agent_unreachable", "agent_drained", "agent_undrained", "agent_removed", "framework_added", "framework_disconnected", "framework_removed", "role_weight_changed"];
const events = new EventSource(`/api/v1/events?types=${EVENT_TYPES.join(",")}`);
events.onopen = () => { $("live").textContent = "live"; $("live").classList.add("on"); };
events.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); refreshSoon(); };
for (const name of [...EVENT_TYPES, "lagged"]) events.addEventListener(name, refreshSoon);
setInterval(refreshSoon, 2000);
refresh().then(fromHash);

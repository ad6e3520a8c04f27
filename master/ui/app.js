// Agora web UI: reads /api/v1/state, follows /api/v1/events, and shows a
// task's log by following /api/v1/tasks/{id}/files/read. When the batch
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

let state = null;
const history = []; // {t, used, offered} as fractions of cpus
let log = { task: null, file: "stdout", offset: 0, timer: null };

async function getJSON(url) {
  const r = await fetch(url);
  if (r.status === 401) showLogin();
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function sum(kind, field) {
  return (state?.agents || []).filter((a) => a.status !== "unreachable").reduce((s, a) => s + (a.resources[field][kind] || 0), 0);
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

function renderAgents() {
  const tasksOn = (id) => state.tasks.filter((t) => t.agent_id === id && ["TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"].includes(t.state)).length;
  $("agent-rows").innerHTML = state.agents.map((a) => `<tr data-agent="${esc(a.id)}">
    <td>${esc(a.hostname)}</td><td>${esc(a.status)}${a.draining ? " (draining)" : ""}</td>
    <td>${esc(res(a.resources.used))} / ${esc(res(a.resources.total))}</td>
    <td>${esc(Object.entries(a.attributes).map(([k, v]) => `${k}=${v}`).join(" "))}</td>
    <td>${tasksOn(a.id)}</td>
    <td>${usage(state.usage?.[a.id])}</td>
    <td><button data-drain="${esc(a.id)}" data-on="${a.draining}">${a.draining ? "undrain" : "drain"}</button></td></tr>`).join("");
}

function renderFrameworks(roles) {
  const share = Object.fromEntries((roles || []).map((r) => [r.role, r.dominant_share]));
  $("framework-rows").innerHTML = state.frameworks.map((f) => `<tr>
    <td>${f.webui_url ? `<a href="${esc(f.webui_url)}">${esc(f.name)}</a>` : esc(f.name)}</td><td>${esc(f.role)}</td><td>${fmt(100 * (share[f.role] || 0))}% of role</td>
    <td>${f.active ? "yes" : "no"}</td><td>${f.task_count}</td><td>${esc(res(f.used))}</td></tr>`).join("");
}

function renderTasks() {
  const q = $("task-filter").value.trim().toLowerCase();
  const host = (id) => state.agents.find((a) => a.id === id)?.hostname || id;
  const rows = state.tasks.filter((t) => !q || [t.id, t.state, host(t.agent_id), t.message].join(" ").toLowerCase().includes(q));
  $("task-rows").innerHTML = rows.map((t) => `<tr class="clickable" data-task="${esc(t.id)}">
    <td>${esc(t.id)}</td><td class="state ${esc(t.state)}">${esc(t.state)}</td><td>${esc(host(t.agent_id))}</td>
    <td>${esc(res(t.resources))}</td><td class="msg">${esc(t.message)}</td></tr>`).join("");
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

async function refresh() {
  refreshJobs();
  refreshApps();
  rememberMasters();
  try {
    const [s, r, a] = await Promise.all([getJSON("/api/v1/state"), getJSON("/api/v1/roles"), getJSON("/api/v1/agents")]);
    state = s;
    state.usage = Object.fromEntries(a.agents.map((x) => [x.id, x.usage]));
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

let pending = null;
function refreshSoon() {
  if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 200);
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
  const drain = e.target.closest("[data-drain]");
  if (drain) {
    const action = drain.dataset.on === "true" ? "undrain" : "drain";
    await fetch(`/api/v1/agents/${encodeURIComponent(drain.dataset.drain)}/${action}`, { method: "POST", body: "{}" });
    refresh();
  }
});
$("task-filter").addEventListener("input", () => state && renderTasks());
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  keepToken($("login-token").value.trim());
  location.reload();
});
window.addEventListener("hashchange", fromHash);

const events = new EventSource("/api/v1/events");
events.onopen = () => { $("live").textContent = "live"; $("live").classList.add("on"); };
events.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); refreshSoon(); };
events.onmessage = refreshSoon;
for (const name of ["agent_added", "agent_reregistered", "agent_disconnected", "agent_unreachable", "agent_drained", "agent_undrained", "framework_added", "framework_disconnected", "framework_removed", "task_updated", "role_weight_changed"]) {
  events.addEventListener(name, refreshSoon);
}
setInterval(refresh, 2000);
refresh().then(fromHash);

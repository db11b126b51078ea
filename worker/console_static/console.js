// The kie-covers console: reads /console/api/... every few seconds and draws it.
// Plain JavaScript, no framework, no build step; text goes in with textContent only.
"use strict";

const API = "/console/api";
const STATES = ["queued", "submitted", "succeeded", "failed"];
let refreshMs = 2000;
let serverSkewS = 0; // server clock minus ours, seconds
const selected = new Set();

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function csrfToken() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("covers_csrf="));
  return found ? found.slice("covers_csrf=".length) : "";
}

function say(text, isError) {
  const box = $("message");
  if (!box) return;
  box.textContent = text || "";
  box.classList.toggle("error", Boolean(isError));
}

async function getJson(path) {
  const answer = await fetch(API + path, { credentials: "same-origin" });
  if (answer.status === 401) { window.location.assign("/console/login"); throw new Error("log in"); }
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.detail || answer.statusText);
  return body;
}

async function postJson(path, payload) {
  const answer = await fetch(API + path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: JSON.stringify(payload),
  });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.detail || answer.statusText);
  return body;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString();
}

function nowS() { return Date.now() / 1000 + serverSkewS; }

// --- the cluster ------------------------------------------------------------------

function drawCounts(o) {
  const box = $("counts");
  box.replaceChildren();
  const cards = STATES.map((s) => [s, o.jobs[s]]);
  cards.push(["due", o.due_jobs], ["notices pending", o.pending_notices],
    ["quarantined", o.quarantined], ["live workers", o.workers.length]);
  for (const [label, value] of cards) {
    const card = el("div", null, "card");
    card.dataset.count = label;
    card.append(el("span", value, "value"), el("span", label, "label"));
    box.append(card);
  }
}

function drawWaiting(o) {
  const body = $("waiting").tBodies[0];
  body.replaceChildren();
  const rows = Object.entries(o.waiting).filter(([, w]) => w.count > 0);
  for (const [reason, w] of rows) {
    const tr = el("tr");
    tr.dataset.reason = reason;
    tr.append(el("td", reason.replace(/_/g, " ")), el("td", w.count, "num"),
      el("td", age(w.oldest_age_s), "num"));
    body.append(tr);
  }
  $("waiting-none").hidden = rows.length > 0;
}

function fact(list, term, value, cls) {
  const dd = el("dd", value, cls);
  list.append(el("dt", term), dd);
  return dd;
}

function drawLimiter(o) {
  const list = $("limiter");
  list.replaceChildren();
  for (const use of o.limiters) {
    const full = use.limit && use.granted >= use.limit;
    fact(list, use.name, `${use.granted} of ${use.limit} in the last ${use.window_s} s`,
      full ? "warn" : "").id = "limiter-" + use.name;
  }
  if (o.pause) {
    fact(list, "paused", `${o.pause.reason.replace(/_/g, " ")}, ${age(o.pause.left_s)} left`,
      "bad").id = "limiter-pause";
  } else {
    fact(list, "paused", "no").id = "limiter-pause";
  }
  const credits = o.credits;
  const held = credits.held ? `held (${credits.held.replace(/_/g, " ")})` : "not held";
  fact(list, "credits", held, credits.held ? "bad" : "").id = "limiter-credits";
  const checked = credits.checked_at
    ? `${credits.left} left, checked ${age(nowS() - credits.checked_at)} ago`
    : "never checked";
  fact(list, "last check", checked).id = "limiter-checked";
  const slots = o.recent_slots;
  if (slots.count) {
    const lanes = Object.entries(slots.lanes).map(([lane, n]) => `${lane} ${n}`);
    fact(list, `last ${slots.count} slots`, lanes.join(" · ")).id = "limiter-slots";
    const tenants = slots.tenants.map((t) => `${t.tenant === null ? "(no tenant)" : t.tenant} ${t.slots}`);
    fact(list, "by tenant", tenants.join(" · ")).id = "limiter-tenants";
  } else {
    fact(list, "slots", "none handed out lately").id = "limiter-slots";
  }
}

function fillKinds(kinds) {
  const select = $("kind");
  if (select.options.length > 1) return;
  for (const kind of kinds) {
    const option = el("option", kind);
    option.value = kind;
    select.append(option);
  }
}

function failureQuery() {
  const params = new URLSearchParams();
  const kind = $("kind").value;
  const code = $("code").value.trim();
  const since = $("since").value;
  if (kind) params.set("kind", kind);
  if (code) params.set("code", code);
  if (since) params.set("since", String(Math.floor(nowS() - Number(since))));
  return params.toString();
}

function drawFailures(answer) {
  const body = $("failures").tBodies[0];
  body.replaceChildren();
  const shown = new Set();
  for (const job of answer.failures) {
    shown.add(job.job_id);
    const error = job.error || {};
    const tr = el("tr");
    tr.dataset.jobId = job.job_id;
    tr.dataset.kind = error.kind || "";
    const box = el("input");
    box.type = "checkbox";
    box.checked = selected.has(job.job_id);
    box.setAttribute("aria-label", "select " + job.job_id);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(job.job_id); else selected.delete(job.job_id);
      updateButtons();
    });
    const link = el("a", job.job_id.slice(0, 8) + "…", "mono");
    link.href = "/console/jobs/" + encodeURIComponent(job.job_id);
    link.title = job.job_id;
    const retry = el("button", "Retry");
    retry.type = "button";
    retry.className = "row-retry";
    retry.addEventListener("click", () => retryIds([job.job_id]));
    const cells = [el("td"), el("td"), el("td", error.kind), el("td", error.code ?? "–", "num"),
      el("td", error.message, "wide"), el("td", when(job.last_failed_at)), el("td")];
    cells[0].append(box);
    cells[1].append(link);
    cells[6].append(retry);
    tr.append(...cells);
    body.append(tr);
  }
  for (const id of [...selected]) if (!shown.has(id)) selected.delete(id);
  $("failures-total").textContent = String(answer.total);
  $("failures-none").hidden = answer.failures.length > 0;
  updateButtons();
}

function updateButtons() {
  $("retry-selected").disabled = selected.size === 0;
  $("forget-selected").disabled = selected.size === 0;
  const all = $("select-all");
  const rows = $("failures").tBodies[0].rows.length;
  all.checked = rows > 0 && selected.size === rows;
}

async function refreshCluster() {
  const [summary, failures] = await Promise.all([
    getJson("/overview"), getJson("/failures?" + failureQuery())]);
  serverSkewS = summary.now - Date.now() / 1000;
  refreshMs = summary.refreshSeconds * 1000;
  $("logout").hidden = !summary.login;
  fillKinds(summary.kinds);
  drawCounts(summary.overview);
  drawWaiting(summary.overview);
  drawLimiter(summary.overview);
  drawFailures(failures);
}

async function retryIds(ids) {
  say("retrying…");
  try {
    const answer = await postJson("/retry", { jobIds: ids });
    const refused = answer.results.filter((r) => r.result !== "ok");
    say(`${answer.queued} queued again` +
      (refused.length ? `; ${refused.length} not: ${refused.map((r) => r.result).join(", ")}` : ""),
      refused.length > 0);
    for (const id of ids) selected.delete(id);
    await refresh();
  } catch (error) { say(String(error.message || error), true); }
}

async function forgetIds(ids, after) {
  if (!window.confirm(`Forget ${ids.length} failed job(s)? Their records are deleted.`)) return;
  say("forgetting…");
  try {
    const answer = await postJson("/forget", { jobIds: ids });
    say(`${answer.forgotten} forgotten`);
    for (const id of ids) selected.delete(id);
    if (after) after(); else await refresh();
  } catch (error) { say(String(error.message || error), true); }
}

// --- one job ------------------------------------------------------------------------

function pageJobId() {
  const match = window.location.pathname.match(/^\/console\/jobs\/([^/]+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function describe(entry) {
  const skip = new Set(["at", "event"]);
  const parts = [];
  for (const [key, value] of Object.entries(entry)) {
    if (skip.has(key)) continue;
    if (key === "until") parts.push(`until ${new Date(value).toLocaleTimeString()}`);
    else parts.push(`${key} ${value}`);
  }
  return parts.join(", ");
}

function drawJob(answer) {
  const job = answer.record;
  $("job-id").textContent = job.job_id;
  const state = $("job-state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  $("job-retry").disabled = job.state !== "failed";
  $("job-forget").disabled = job.state !== "failed";
  const list = $("job-record");
  list.replaceChildren();
  const shown = ["music_task_id", "cover_task_id", "state", "waiting_for", "priority", "tenant",
    "attempts", "polls", "retry_rounds", "created_at", "submitted_at", "finished_at",
    "first_failed_at", "last_failed_at", "callback_url"];
  for (const key of shown) {
    let value = job[key];
    if (value === null || value === undefined || value === "") value = "–";
    else if (key.endsWith("_at")) value = when(value);
    fact(list, key.replace(/_/g, " "), value).dataset.field = key;
  }
  const error = $("job-error");
  if (job.error) {
    error.className = "bad";
    error.textContent = `${job.error.kind} (code ${job.error.code ?? "none"}): ` +
      `${job.error.message}` + (job.error.retryable ? " — retryable" : " — not retryable");
  } else { error.className = "quiet"; error.textContent = "none"; }
  const notice = answer.notice;
  $("job-notice").textContent = notice.status.replace(/_/g, " ") +
    (notice.at ? ` at ${when(notice.at)}` : "") + (notice.reason ? ` — ${notice.reason}` : "");
  drawImages(job);
  drawTimeline(answer.timeline);
}

function drawImages(job) {
  const box = $("job-images");
  const urls = (job.images || []).filter((u) => /^https?:\/\//.test(u));
  if (box.dataset.urls !== urls.join(" ")) { // redraw only on change: no flicker
    box.dataset.urls = urls.join(" ");
    box.replaceChildren();
    urls.forEach((url, n) => {
      const link = el("a");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      const img = el("img");
      img.src = url;
      img.alt = `cover image ${n + 1}`;
      img.loading = "lazy";
      img.referrerPolicy = "no-referrer";
      link.append(img);
      box.append(link);
    });
    if (!urls.length) box.append(el("span", "none yet", "quiet"));
  }
  const stored = $("job-stored");
  stored.replaceChildren();
  for (const copy of job.stored_images || []) {
    stored.append(el("li", Object.entries(copy).map(([k, v]) => `${k}: ${v}`).join(", "),
      "mono"));
  }
  if (job.images_error) stored.append(el("li", job.images_error, "bad"));
  if (!stored.children.length) stored.append(el("li", "none", "quiet"));
}

function drawTimeline(entries) {
  const list = $("job-timeline");
  list.replaceChildren();
  for (const entry of entries) {
    const li = el("li");
    li.dataset.event = entry.event;
    li.append(el("span", new Date(entry.at).toLocaleTimeString(), "quiet"),
      el("span", entry.event, "event"), el("span", describe(entry), "detail"));
    list.append(li);
  }
  if (!entries.length) list.append(el("li", "nothing recorded", "quiet"));
}

async function refreshJob(jobId) {
  try {
    drawJob(await getJson("/jobs/" + encodeURIComponent(jobId)));
  } catch (error) {
    say(String(error.message || error), true);
  }
}

// --- wiring ---------------------------------------------------------------------------

async function refresh() {
  const jobId = pageJobId();
  try {
    if (jobId) await refreshJob(jobId); else await refreshCluster();
    document.body.dataset.refreshedAt = String(Date.now());
  } catch (error) {
    say("not refreshed: " + String(error.message || error), true);
  }
}

function loop() {
  refresh().finally(() => window.setTimeout(loop, refreshMs));
}

function wireCluster() {
  for (const id of ["kind", "since"]) $(id).addEventListener("change", refresh);
  $("code").addEventListener("input", refresh);
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("retry-selected").addEventListener("click", () => retryIds([...selected]));
  $("forget-selected").addEventListener("click", () => forgetIds([...selected]));
  $("retry-all").addEventListener("click", async () => {
    const kind = $("kind").value;
    const code = $("code").value.trim();
    say("retrying…");
    try {
      const payload = { allRetryable: true };
      if (kind) payload.kind = kind;
      if (code) payload.code = code;
      const answer = await postJson("/retry", payload);
      say(`${answer.queued} queued again`);
      await refresh();
    } catch (error) { say(String(error.message || error), true); }
  });
  $("select-all").addEventListener("change", (event) => {
    for (const row of $("failures").tBodies[0].rows) {
      const box = row.querySelector("input[type=checkbox]");
      box.checked = event.target.checked;
      if (box.checked) selected.add(row.dataset.jobId); else selected.delete(row.dataset.jobId);
    }
    updateButtons();
  });
}

function wireJob(jobId) {
  $("job-retry").addEventListener("click", () => retryIds([jobId]));
  $("job-forget").addEventListener("click",
    () => forgetIds([jobId], () => window.location.assign("/console")));
}

function wireCommon() {
  $("search").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (!text) return;
    try {
      const found = await getJson("/search?q=" + encodeURIComponent(text));
      window.location.assign("/console/jobs/" + encodeURIComponent(found.jobId));
    } catch (error) { say(String(error.message || error), true); }
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrfToken() } });
    window.location.assign("/console/login");
  });
}

function start() {
  if (document.body.dataset.page === "login") {
    $("login-failed").hidden = !new URLSearchParams(window.location.search).has("failed");
    return;
  }
  wireCommon();
  const jobId = pageJobId();
  $(jobId ? "job" : "dashboard").hidden = false;
  if (jobId) wireJob(jobId); else wireCluster();
  loop();
}

document.addEventListener("DOMContentLoaded", start);

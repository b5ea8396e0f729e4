// The /pacs-sync dashboard: plain JavaScript, no build step, no third-party code.
// The token lives in sessionStorage (this tab only) and goes with every call as a bearer token.
// Every value from the API is written with textContent, never as HTML.
"use strict";

(() => {
  const API = "/api/v1/pacs-sync";
  const TOKEN_KEY = "pacs-sync-token";
  const STATUS_EVERY_MS = 2000;
  const AUDIT_EVERY_MS = 5000;
  const CHART_POINTS = 90;

  let token = sessionStorage.getItem(TOKEN_KEY);
  let me = null;
  let timers = [];
  let samples = [];

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
      this.body = body;
    }
  }

  async function call(method, path, body) {
    const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(API + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (response.status === 401) {
      signOut((data && data.message) || "the token is no longer valid");
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (className) td.className = className;
    return td;
  }

  function num(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { hour12: false });
  }

  function badge(text, state) {
    const span = document.createElement("span");
    span.className = `badge state-${state}`;
    span.textContent = text;
    return span;
  }

  // ---- sign in / out ----

  async function signIn(candidate) {
    token = candidate.trim();
    $("login-error").textContent = "";
    try {
      me = await call("GET", "/whoami");
    } catch (err) {
      token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      $("login-error").textContent = `Sign-in failed: ${err.message}`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("who-subject").textContent = me.subject;
    $("who-role").textContent = me.role;
    $("who-expires").textContent = `token expires ${when(me.expires_at)}`;
    $("who").hidden = false;
    $("login").hidden = true;
    $("dashboard").hidden = false;
    applyPermissions();
    start();
  }

  function signOut(reason) {
    for (const t of timers) clearInterval(t);
    timers = [];
    samples = [];
    token = null;
    me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("dashboard").hidden = true;
    $("who").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = reason ? `Signed out: ${reason}` : "";
  }

  function allowed(permission) {
    return !!me && me.permissions.includes(permission);
  }

  function applyPermissions() {
    for (const node of document.querySelectorAll("[data-needs]")) {
      const ok = allowed(node.dataset.needs);
      if (node.tagName === "SECTION") node.hidden = !ok;
      else node.disabled = !ok;
    }
  }

  function start() {
    refreshStatus();
    refreshJobs();
    if (allowed("view_audit")) refreshAudit();
    if (allowed("view_connection")) loadConnection();
    timers.push(setInterval(refreshStatus, STATUS_EVERY_MS));
    timers.push(setInterval(refreshJobs, STATUS_EVERY_MS));
    if (allowed("view_audit")) timers.push(setInterval(refreshAudit, AUDIT_EVERY_MS));
  }

  // ---- status ----

  async function refreshStatus() {
    let status;
    try {
      status = await call("GET", "/sync/status");
      $("status-error").textContent = "";
    } catch (err) {
      if (err.status !== 401) $("status-error").textContent = `Status unavailable: ${err.message}`;
      return;
    }
    const stages = $("stages");
    stages.replaceChildren(
      ...Object.entries(status.stages).map(([name, s]) => {
        const errorCount = Object.values(s.errors).reduce((a, b) => a + b, 0);
        const b = badge(`${name} ${s.state}` + (errorCount ? ` · ${errorCount} errors` : ""), s.state);
        b.id = `stage-${name}`;
        b.title = s.error || Object.entries(s.errors).map(([c, n]) => `${c}: ${n}`).join(", ") || "no errors";
        return b;
      }),
    );
    const body = $("entities-body");
    body.replaceChildren(
      ...status.entities.map((e) => {
        const tr = document.createElement("tr");
        tr.id = `entity-${e.entity}`;
        tr.dataset.state = e.state;
        const state = document.createElement("td");
        state.appendChild(badge(e.state, e.state));
        const live = cell(num(e.rows.live), "num");
        live.id = `entity-${e.entity}-live`;
        live.dataset.value = String(e.rows.live);
        const written = cell(num(e.written), "num");
        written.id = `entity-${e.entity}-written`;
        written.dataset.value = String(e.written ?? 0);
        const progress = document.createElement("td");
        const job = e.progress.job;
        const ratio = job ? job.ratio : e.progress.snapshot;
        const known = ratio !== null && ratio !== undefined;
        if (job || (known && ratio < 1)) {
          const bar = document.createElement("progress");
          bar.max = 1;
          if (known) bar.value = ratio; // no value: an indeterminate bar while the job has not reported
          progress.appendChild(bar);
          const share = known ? ` ${Math.round(ratio * 100)}%` : "";
          progress.append(job ? `${share} job ${job.job_id} ${job.state}` : `${share} snapshot`);
        } else {
          progress.textContent = "–";
        }
        tr.append(
          cell(e.entity), state, live, cell(num(e.rows.deleted), "num"), cell(num(e.events), "num"),
          written, cell(num(e.invalid), "num"), cell(num(e.dlq), "num"),
          cell(num(e.lag), "num"), cell(`${seconds(e.latency.mean_s)} / ${seconds(e.latency.p95_s)}`),
          cell(e.last_position), cell(when(e.last_synced_at)), progress,
        );
        return tr;
      }),
    );
    $("refreshed").textContent = `updated ${when(status.generated_at)}`;
    addSample(status);
  }

  function addSample(status) {
    const sum = (pick) => {
      const values = status.entities.map(pick).filter((v) => v !== null && v !== undefined);
      return values.length ? values.reduce((a, b) => a + b, 0) : null;
    };
    samples.push({
      t: Date.parse(status.generated_at) / 1000,
      written: sum((e) => e.written),
      rows: sum((e) => e.rows.live + e.rows.deleted),
      latSum: sum((e) => e.latency.sum_s),
      latCount: sum((e) => e.latency.count),
    });
    if (samples.length > CHART_POINTS + 1) samples.shift();
    drawChart();
  }

  function chartPoints() {
    const points = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const dt = b.t - a.t;
      if (dt <= 0) continue;
      const moved = a.written !== null && b.written !== null ? b.written - a.written : Math.abs(b.rows - a.rows);
      const dCount = a.latCount !== null && b.latCount !== null ? b.latCount - a.latCount : 0;
      const latency = dCount > 0 ? (b.latSum - a.latSum) / dCount : null;
      points.push({ t: b.t, rate: Math.max(moved, 0) / dt, latency });
    }
    return points;
  }

  function drawChart() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 960, height = canvas.clientHeight || 220;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const pad = { l: 56, r: 56, t: 12, b: 24 };
    const w = width - pad.l - pad.r, h = height - pad.t - pad.b;
    const points = chartPoints();
    const css = getComputedStyle(document.documentElement);
    const colours = { rate: css.getPropertyValue("--accent").trim(), latency: css.getPropertyValue("--latency").trim() };
    g.strokeStyle = "#dde3e9";
    g.fillStyle = "#66727f";
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + (h * i) / 4;
      g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + w, y); g.stroke();
    }
    if (points.length < 1) {
      g.fillText("collecting samples…", pad.l + 8, pad.t + 16);
      return;
    }
    const maxRate = Math.max(1, ...points.map((p) => p.rate));
    const lats = points.map((p) => p.latency).filter((v) => v !== null);
    const maxLat = Math.max(0.001, ...lats);
    const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * w;
    g.textAlign = "right";
    g.fillText(maxRate.toFixed(maxRate < 10 ? 1 : 0), pad.l - 6, pad.t + 8);
    g.fillText("0", pad.l - 6, pad.t + h);
    g.textAlign = "left";
    g.fillText(lats.length ? `${maxLat.toFixed(maxLat < 10 ? 2 : 0)} s` : "– s", pad.l + w + 6, pad.t + 8);
    g.fillText(`${Math.round(t1 - t0)} s`, pad.l, pad.t + h + 16);
    const line = (key, max, colour) => {
      g.strokeStyle = colour;
      g.lineWidth = 2;
      g.beginPath();
      let open = false;
      for (const p of points) {
        if (p[key] === null) { open = false; continue; }
        const y = pad.t + h - (p[key] / max) * h;
        if (open) g.lineTo(x(p.t), y); else g.moveTo(x(p.t), y);
        open = true;
      }
      g.stroke();
    };
    line("rate", maxRate, colours.rate);
    line("latency", maxLat, colours.latency);
  }

  // ---- jobs and audit ----

  async function refreshJobs() {
    let data;
    try { data = await call("GET", "/sync/jobs?limit=10"); } catch (_) { return; }
    $("jobs-body").replaceChildren(
      ...data.jobs.map((j) => {
        const tr = document.createElement("tr");
        tr.id = `job-${j.job_id}`;
        tr.dataset.state = j.state;
        const state = document.createElement("td");
        state.className = "job-state";
        state.appendChild(badge(j.state, j.state));
        const detail = document.createElement("td");
        if (j.error) detail.append(j.error);
        if (j.output_tail) {
          const d = document.createElement("details");
          const s = document.createElement("summary");
          s.textContent = "output";
          const pre = document.createElement("pre");
          pre.textContent = j.output_tail;
          d.append(s, pre);
          detail.append(d);
        }
        tr.append(
          cell(j.job_id), cell(j.kind), cell(j.entities.join(", ")), state, cell(j.trigger),
          cell(j.requested_by), cell(when(j.started_at)), cell(when(j.finished_at)), cell(j.exit_code), detail,
        );
        return tr;
      }),
    );
  }

  async function refreshAudit() {
    let data;
    try { data = await call("GET", "/audit?limit=15"); } catch (_) { return; }
    $("audit-body").replaceChildren(
      ...data.entries.map((a) => {
        const tr = document.createElement("tr");
        const outcome = document.createElement("td");
        outcome.appendChild(badge(a.outcome, a.outcome === "succeeded" ? "succeeded" : a.outcome === "started" ? "running" : "failed"));
        tr.append(cell(when(a.at)), cell(a.actor), cell(a.role), cell(a.action), cell(a.target), outcome);
        return tr;
      }),
    );
  }

  async function startSync(kind) {
    const entities = [...document.querySelectorAll("input[name=entity]:checked")].map((i) => i.value);
    const message = $("sync-message");
    if (!entities.length) { message.textContent = "Choose at least one entity."; return; }
    message.textContent = `Starting ${kind} sync…`;
    try {
      const job = await call("POST", "/sync/start", { sync_type: kind, entities });
      message.textContent = `Job ${job.job_id} (${job.kind}) started.`;
      refreshJobs();
    } catch (err) {
      message.textContent = err.status === 409 ? `Refused: ${err.message}` : `Could not start: ${err.message}`;
    }
  }

  // ---- connection ----

  function connectionBody(includePassword) {
    const body = {
      host: $("conn-host").value.trim(),
      port: Number($("conn-port").value),
      database: $("conn-database").value.trim(),
      username: $("conn-username").value.trim(),
      encrypt: $("conn-encrypt").checked,
    };
    const password = $("conn-password").value;
    if (includePassword || password) body.password = password;
    return body;
  }

  async function loadConnection() {
    try {
      const c = await call("GET", "/connection");
      if (!c.saved) { $("conn-saved").textContent = "No connection settings saved yet (the configured ones apply)."; return; }
      $("conn-host").value = c.host;
      $("conn-port").value = c.port;
      $("conn-database").value = c.database;
      $("conn-username").value = c.username;
      $("conn-encrypt").checked = c.encrypt;
      $("conn-saved").textContent = `Saved by ${c.updated_by} at ${when(c.updated_at)}; password ${c.password_set ? "set" : "not set"}.`;
    } catch (err) {
      $("conn-saved").textContent = `Connection settings unavailable: ${err.message}`;
    }
  }

  async function testConnection() {
    const message = $("conn-message");
    message.textContent = "Testing…";
    try {
      const r = await call("POST", "/test-connection", connectionBody(false));
      message.textContent = r.ok ? `OK in ${r.seconds.toFixed(2)} s` : `${r.code}: ${r.cause}`;
      message.className = r.ok ? "state-succeeded" : "error";
    } catch (err) {
      message.textContent = `${err.code || "error"}: ${err.message}`;
      message.className = "error";
    }
  }

  async function saveConnection() {
    const message = $("conn-message");
    try {
      await call("PUT", "/connection", connectionBody(true));
      $("conn-password").value = "";
      message.textContent = "Saved (encrypted).";
      message.className = "state-succeeded";
      loadConnection();
    } catch (err) {
      message.textContent = `${err.code || "error"}: ${err.message}`;
      message.className = "error";
    }
  }

  // ---- wiring ----

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      signIn($("token-input").value);
    });
    $("logout-button").addEventListener("click", () => signOut(""));
    for (const button of document.querySelectorAll("button[data-sync]")) {
      button.addEventListener("click", () => startSync(button.dataset.sync));
    }
    $("conn-test").addEventListener("click", testConnection);
    $("conn-save").addEventListener("click", saveConnection);
    window.addEventListener("resize", drawChart);
    if (token) signIn(token);
  });
})();

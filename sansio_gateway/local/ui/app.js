// The status page: asks for an admin key once, keeps it in sessionStorage,
// and redraws from /admin/overview every second.  Every value reaches the
// page through textContent, never parsed as markup: model names come from backends.
"use strict";

(function () {
  const KEY_NAME = "sansio-gateway.admin-key";
  const REFRESH_MS = 1000;
  let timer = null;
  let generation = 0;

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function fmtMs(value) {
    return value === null || value === undefined ? "–" : `${value.toFixed(1)} ms`;
  }

  function fmtTime(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    return new Date(seconds * 1000).toLocaleTimeString();
  }

  function fmtNum(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString();
  }

  function showLogin(message) {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("updated").textContent = "not connected";
    $("admin-key").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
  }

  function replaceRows(table, rows) {
    const body = $(table).tBodies[0];
    body.replaceChildren(...rows);
  }

  function backendRow(b) {
    const row = el("tr");
    row.dataset.backend = b.name;
    row.append(el("td", b.name), el("td", b.kind), el("td", b.url));
    const breaker = el("td");
    const badge = el("span", b.circuit, `badge circuit state-${b.circuit}`);
    breaker.append(badge);
    row.append(breaker);
    const probe = b.last_probe;
    let probeText = "not yet";
    if (probe) {
      probeText = `${probe.ok ? "ok" : "failed"} at ${fmtTime(probe.at)}`;
      if (probe.latency_ms !== null) probeText += ` (${fmtMs(probe.latency_ms)})`;
      if (probe.error) probeText += `: ${probe.error}`;
    }
    row.append(el("td", probeText, "probe"));
    const rate = b.error_rate === null ? "–" : `${(b.error_rate * 100).toFixed(1)}% of ${b.requests}`;
    row.append(el("td", rate, "num"), el("td", fmtMs(b.latency_ms.p50), "num"),
      el("td", fmtMs(b.latency_ms.p99), "num"));
    return row;
  }

  function modelRow(m) {
    const row = el("tr");
    row.dataset.model = m.name;
    row.append(el("td", m.name, "model-name"), el("td", m.backend), el("td", m.target),
      el("td", m.fallbacks.length ? m.fallbacks.join(", ") : "–"));
    return row;
  }

  function userRow(u) {
    const row = el("tr");
    row.dataset.user = u.user;
    row.append(el("td", u.user));
    const limits = el("td");
    if (!u.limits.length) limits.textContent = "none";
    for (const limit of u.limits) {
      // A per-minute limit's use is measured against its burst (what can
      // pass at once); the day quota and concurrency against the limit.
      const ceiling = limit.burst === null ? limit.limit : limit.burst;
      const used = limit.used === null ? "?" : fmtNum(limit.used);
      const full = limit.used !== null && limit.used >= ceiling;
      const text = limit.burst === null
        ? `${limit.name}: ${used} / ${fmtNum(limit.limit)}`
        : `${limit.name}: ${used} / ${fmtNum(limit.burst)} burst (${fmtNum(limit.limit)}/min)`;
      limits.append(el("span", text, full ? "limit full" : "limit"));
    }
    row.append(limits);
    row.append(el("td", u.rate_limited, "num rate-limited"));
    const today = u.today.quota === null
      ? `${fmtNum(u.tokens)} (no quota)`
      : `${fmtNum(u.today.tokens)} / ${fmtNum(u.today.quota)}`;
    row.append(el("td", today, "num today"), el("td", u.in_flight, "num"),
      el("td", u.requests, "num"));
    return row;
  }

  function sparkline(id, values) {
    const canvas = $(id);
    const ctx = canvas.getContext("2d");
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(1, ...values);
    const step = values.length > 1 ? w / (values.length - 1) : w;
    ctx.strokeStyle = id === "spark-errors" ? "#c62828" : "#2f6fb3";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = i * step;
      const y = h - 2 - (v / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }

  function render(data) {
    $("in-flight-requests").textContent = data.in_flight.requests;
    $("in-flight-streams").textContent = data.in_flight.streams;
    for (const name of ["requests", "tokens", "errors"]) {
      const values = data.series[name];
      sparkline(`spark-${name}`, values);
      $(`last-${name}`).textContent =
        `now ${fmtNum(values[values.length - 1])}, peak ${fmtNum(Math.max(0, ...values))} (30 min)`;
    }
    replaceRows("backends", data.backends.map(backendRow));
    replaceRows("models", data.models.map(modelRow));
    replaceRows("users", data.users.map(userRow));
    const store = data.limit_store.error ? ` – limit store: ${data.limit_store.error}` : "";
    $("fetch-error").textContent = store;
    $("updated").textContent = `updated ${fmtTime(data.now)}`;
  }

  async function refresh(mine) {
    const key = sessionStorage.getItem(KEY_NAME);
    if (!key) {
      showLogin("");
      return;
    }
    try {
      const response = await fetch("/admin/overview", {
        headers: { Authorization: `Bearer ${key}` },
        credentials: "omit",
        cache: "no-store",
        referrerPolicy: "no-referrer",
      });
      if (mine !== generation) return;
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(KEY_NAME);
        showLogin(response.status === 401 ? "That key was not accepted." : "That key is not an admin key.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      if (mine !== generation) return;
      showDashboard();
      render(data);
    } catch (err) {
      if (mine !== generation) return;
      $("fetch-error").textContent = `Refresh failed: ${err.message}`;
    }
    timer = setTimeout(() => refresh(mine), REFRESH_MS);
  }

  function start() {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    refresh(generation);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("admin-key");
      const key = input.value.trim();
      input.value = "";
      if (!key) return;
      sessionStorage.setItem(KEY_NAME, key);
      $("login-error").textContent = "";
      start();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_NAME);
      showLogin("");
    });
    start();
  });
})();

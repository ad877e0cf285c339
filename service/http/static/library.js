// Library tagging progress: queue, totals, the last files tagged and the errors.
"use strict";

const MAX_ROWS = 20;
const theme = new URLSearchParams(location.search).get("theme") === "light" ? "light" : "dark";
document.documentElement.dataset.theme = theme;
let recent = [];
let failed = [];

function fileName(path) {
  const parts = String(path).split("/");
  return parts[parts.length - 1] || path;
}

function when(row) {
  if (row.ts) return clockTime(row.ts);
  if (row.tagged_at) return new Date(row.tagged_at).toLocaleString();
  return "";
}

function genreCell(row) {
  if (row.music === false) return "no music";
  if (!row.top) return "";
  return row.uncertain ? `${escapeHtml(row.top)} (uncertain)` : escapeHtml(row.top);
}

function renderTables() {
  document.getElementById("recent").innerHTML = recent.length ? recent.map((r) =>
    `<tr class="${r.uncertain ? "uncertain" : ""}"><td class="path" title="${escapeHtml(r.path)}">${escapeHtml(fileName(r.path))}</td>` +
    `<td class="top">${genreCell(r)}</td><td>${r.confidence != null ? percent(r.confidence) : ""}</td>` +
    `<td class="muted">${escapeHtml(when(r))}</td></tr>`).join("")
    : `<tr><td colspan="4" class="muted">nothing tagged yet</td></tr>`;
  document.getElementById("failed").innerHTML = failed.length ? failed.map((r) =>
    `<tr><td class="path" title="${escapeHtml(r.path)}">${escapeHtml(fileName(r.path))}</td><td class="error">${escapeHtml(r.error)}</td></tr>`).join("")
    : `<tr><td colspan="2" class="muted">no errors</td></tr>`;
}

function renderTotals(totals) {
  if (!totals) return;
  document.getElementById("queue").textContent = totals.pending ?? 0;
  document.getElementById("tagged").textContent = totals.tagged ?? 0;
  document.getElementById("errors").textContent = totals.error ?? 0;
}

function renderStatus(status, totals) {
  renderTotals(totals);
  if (!status) return;
  if (!totals) document.getElementById("queue").textContent = status.queue_depth;
  document.getElementById("session").textContent = `${status.tagged} / ${status.errors}`;
  document.getElementById("speed").textContent = status.realtime_factor ? status.realtime_factor.toFixed(1) : "0";
  document.getElementById("uptime").textContent =
    `daemon up ${ago(status.uptime_s)} · ${status.model} on ${status.provider} · ` +
    `${status.dropped_messages} messages dropped by slow consumers`;
  // Each output of the daemon (ZeroMQ, this page, a text file, Icecast...): what it delivered, lost, failed.
  document.getElementById("sinks").textContent = Object.entries(status.sinks || {}).map(([name, c]) =>
    `${name}: ${c.delivered} delivered` + (c.dropped ? `, ${c.dropped} dropped` : "") +
    (c.errors ? `, ${c.errors} errors (last: ${c.last_error})` : "") +
    (c.suspended_s ? `, suspended for ${c.suspended_s} s` : "")).join(" · ");
  const blocked = document.getElementById("blocked");
  blocked.textContent = status.library || "";  // the library cannot be written: why, and since when
  blocked.hidden = !status.library;
}

connectFeed({
  snapshot(message) {
    document.getElementById("model").textContent = message.model ? `model ${message.model}` : "";
    recent = message.library.recent.slice(0, MAX_ROWS);  // newest first
    failed = message.library.errors.slice(0, MAX_ROWS);
    renderTables();
    renderStatus(message.library.status, message.library.totals);
  },
  track(message) {
    if (message.ok) recent = [message, ...recent].slice(0, MAX_ROWS);
    else failed = [message, ...failed].slice(0, MAX_ROWS);
    renderTables();
    renderTotals(message.library_totals);
  },
  status(message) {
    renderStatus(message, message.library_totals);
  },
});

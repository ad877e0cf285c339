// The daemon's event feed (Server-Sent Events on /events), reconnecting by itself.
// connectFeed({snapshot, live, genre_changed, track, status}) calls each handler with the parsed
// message; a snapshot arrives first on every (re)connection. The #connection element says whether
// the page is live, and its data-state is "connected", "connecting" or "disconnected".
"use strict";

const FEED_KINDS = ["snapshot", "live", "genre_changed", "track", "status"];
const RETRY_MS = 2000;       // after the browser gave up on a stream (an HTTP error, say)
const SILENCE_MS = 20000;    // status heartbeats come every few seconds: this long without one is a dead feed

function connectFeed(handlers) {
  const indicator = document.getElementById("connection");
  let source = null;
  let lastMessage = Date.now();
  let retryTimer = null;

  function show(state, text) {
    indicator.dataset.state = state;
    indicator.textContent = text;
    document.documentElement.dataset.connection = state;
  }

  function reopen(delay) {
    if (source) source.close();
    source = null;
    clearTimeout(retryTimer);
    retryTimer = setTimeout(open, delay);
  }

  function open() {
    show(indicator.dataset.state === "disconnected" ? "disconnected" : "connecting",
         indicator.dataset.state === "disconnected" ? "disconnected from the daemon — reconnecting…" : "connecting…");
    source = new EventSource("/events");
    source.onopen = () => { lastMessage = Date.now(); show("connected", "live"); };
    source.onerror = () => {
      show("disconnected", "disconnected from the daemon — reconnecting…");
      if (source && source.readyState === EventSource.CLOSED) reopen(RETRY_MS);
    };
    for (const kind of FEED_KINDS) {
      source.addEventListener(kind, (event) => {
        lastMessage = Date.now();
        if (indicator.dataset.state !== "connected") show("connected", "live");
        const handler = handlers[kind];
        if (handler) handler(JSON.parse(event.data));
      });
    }
  }

  setInterval(() => {
    if (source && source.readyState === EventSource.OPEN && Date.now() - lastMessage > SILENCE_MS) {
      show("disconnected", "no news from the daemon — reconnecting…");
      reopen(0);
    }
  }, 1000);
  open();
}

// Helpers shared by the pages.
function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function percent(p) {
  return `${Math.round(100 * p)} %`;
}

function ago(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function clockTime(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

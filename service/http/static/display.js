// The live display: per source, the current genre (it changes only when the daemon announces a
// change that held), the running top-k bars, the uncertain / no music states, the time since the
// last change and the recent changes. A capture whose device delivers no audio (the status heartbeat's
// live.<source>.stalled_s) shows "no audio" instead of its last genre and bars, until audio comes again.
"use strict";

const NO_MUSIC = "no music";
const params = new URLSearchParams(location.search);
const options = {
  source: params.get("source") || "",
  top: Math.max(1, parseInt(params.get("top") || "5", 10) || 5),
  theme: params.get("theme") === "light" ? "light" : "dark",
  overlay: ["1", "true", "yes"].includes((params.get("overlay") || "").toLowerCase()),
};
document.documentElement.dataset.theme = options.theme;
if (options.overlay) document.documentElement.classList.add("overlay");

const sources = new Map();  // name → {live, current, history, stalled, element}
let clockOffset = 0;         // browser clock − daemon clock, seconds

function serverNow() {
  return Date.now() / 1000 - clockOffset;
}

function wanted(name) {
  return !options.source || options.source === name;
}

function sourceState(name) {
  let state = sources.get(name);
  if (!state) {
    const element = document.getElementById("source-template").content.firstElementChild.cloneNode(true);
    element.dataset.source = name;
    element.querySelector(".source-name").textContent = name;
    document.getElementById("sources").appendChild(element);
    document.getElementById("no-sources").hidden = true;
    state = {live: null, current: null, history: [], stalled: null, element};
    sources.set(name, state);
  }
  return state;
}

function firstEstimate(live) {
  if (!live || !live.ensemble) return null;
  const names = Object.keys(live.ensemble);
  return names.length ? live.ensemble[names[0]] : null;
}

function isNoMusic(change) {
  return change.music === false || change.current === NO_MUSIC;
}

function render(state) {
  const el = state.element;
  const genre = el.querySelector(".genre");
  const badge = el.querySelector(".badge");
  const current = state.current;
  let mode = "waiting";
  let text = "listening…";
  if (state.stalled !== null) {
    // Its last genre and bars are no longer what the source plays: the device delivers nothing.
    el.dataset.state = "stalled";
    el.dataset.now = "";
    genre.textContent = "no audio";
    genre.title = "";
    badge.textContent = `the input has delivered no audio for ${Math.round(state.stalled)} s`;
    const bars = el.querySelector(".bars");
    bars.innerHTML = "";
    bars.dataset.html = "";
    renderHistory(state);
    tick(state);
    return;
  }
  if (current && isNoMusic(current)) {
    mode = "nomusic";
    text = NO_MUSIC;
  } else if (current && current.uncertain) {
    mode = "uncertain";
    text = "uncertain";
  } else if (current) {
    mode = "genre";
    text = current.current;
  }
  el.dataset.state = mode;
  if (genre.textContent !== text) genre.textContent = text;
  genre.title = current && mode === "uncertain" ? `maybe ${current.current}` : "";

  // What the stream sounds like right now (the big genre waits for a change to hold).
  const live = state.live;
  const estimate = firstEstimate(live);
  let note = "";
  el.dataset.now = "";
  if (live && live.music === false) {
    note = "no music now";
    el.dataset.now = "nomusic";
  } else if (estimate && estimate.uncertain) {
    note = `uncertain now (maybe ${estimate.top}, ${percent(estimate.confidence)})`;
    el.dataset.now = "uncertain";
  } else if (mode === "genre" && estimate && estimate.top === current.current) {
    note = percent(estimate.confidence);
  } else if (mode === "genre") {
    note = percent(current.confidence);
  } else if (mode === "uncertain") {
    note = `maybe ${current.current}`;  // the large type never says an uncertain genre
  }
  badge.textContent = note;

  const bars = el.querySelector(".bars");
  const rows = [];
  if (estimate) {
    const scores = Object.entries(estimate.scores).slice(0, options.top);
    for (const [label, score] of scores) {
      const decided = (estimate.decided || []).includes(label);
      rows.push(`<li class="bar${decided ? " decided" : ""}" data-label="${escapeHtml(label)}">` +
        `<span class="label">${escapeHtml(label)}</span>` +
        `<span class="track"><span class="fill" style="width:${(100 * score).toFixed(1)}%"></span></span>` +
        `<span class="value">${percent(score)}</span></li>`);
    }
  }
  const html = rows.join("");
  if (bars.dataset.html !== html) {
    bars.innerHTML = html;
    bars.dataset.html = html;
  }

  renderHistory(state);
}

function renderHistory(state) {
  const history = state.element.querySelector(".history ol");
  history.innerHTML = state.history.map((c) =>
    `<li><time>${clockTime(c.ts)}</time> ${escapeHtml(c.previous_uncertain ? `maybe ${c.previous}` : c.previous || "—")} → ` +
    `<strong>${escapeHtml(isNoMusic(c) ? NO_MUSIC : c.current)}</strong>` +
    `${c.uncertain ? " <em>(uncertain)</em>" : ` <span class="muted">${percent(c.confidence)}</span>`}</li>`).join("");
  tick(state);
}

function tick(state) {
  const since = state.element.querySelector(".since");
  since.textContent = state.current && state.stalled === null ? `for ${ago(serverNow() - state.current.ts)}` : "";
}

// The status heartbeat's word on each live source: stalled (no audio for stalled_s seconds) or not.
function applyStatus(status) {
  for (const [name, live] of Object.entries((status && status.live) || {})) {
    if (!wanted(name)) continue;
    const stalled = typeof live.stalled_s === "number" ? live.stalled_s : null;
    if (stalled === null && !sources.has(name)) continue;  // nothing to say of a source not seen yet
    const state = sourceState(name);
    if (state.stalled !== stalled) {
      state.stalled = stalled;
      render(state);
    }
  }
}

connectFeed({
  snapshot(message) {
    clockOffset = Date.now() / 1000 - message.server_ts;
    document.getElementById("model").textContent = message.model ? `model ${message.model}` : "";
    for (const state of sources.values()) state.element.remove();
    sources.clear();
    document.getElementById("no-sources").hidden = false;
    for (const [name, s] of Object.entries(message.sources)) {
      if (!wanted(name)) continue;
      const state = sourceState(name);
      state.live = s.live;
      state.current = s.current;
      state.history = s.history;
      render(state);
    }
    applyStatus(message.library && message.library.status);
  },
  live(message) {
    if (!wanted(message.source)) return;
    const state = sourceState(message.source);
    state.live = message;
    state.stalled = null;  // audio again
    render(state);
  },
  status(message) {
    applyStatus(message);
  },
  genre_changed(message) {
    if (!wanted(message.source)) return;
    const state = sourceState(message.source);
    state.current = message;
    state.history = [message, ...state.history].slice(0, 10);
    render(state);
  },
});

setInterval(() => { for (const state of sources.values()) tick(state); }, 1000);

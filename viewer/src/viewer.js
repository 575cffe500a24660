// The share page's script. The HTML already holds the whole transcript at some seq, and the
// snapshot it was rendered from; this script resumes from that seq (WebSocket, or SSE when
// WebSocket fails), applies events strictly in seq order, re-renders only what changed, and
// reconnects by itself after a network loss or a server restart. It also replays the log.

import { Model } from "./model.js";
import { opencodeEl, opencodeMeta, sessionDiffEl, sessionInfoEls } from "./opencode.js";
import { localiseTimes, messageEl } from "./render.js";

const $ = (id) => document.getElementById(id);
const body = document.body;
const sessionId = body.dataset.session;
const params = new URLSearchParams(location.search);
const token = params.get("token");
const transcript = $("transcript");

// --- the view -------------------------------------------------------------------------

/** The article of any message: opencode's markup, or the generic one. */
function articleEl(message, key, context, open) {
  if (opencodeMeta(message)) return opencodeEl(message, key, context, open);
  return messageEl(message, key, open && open.calls);
}

/** Bring #transcript in line with `model`, touching only messages whose revision moved. */
function reconcile(model, full) {
  const follow = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
  if (full) {
    // The page may have shown another model (replay, live): redraw the headers too.
    model.headerDirty = true;
    model.sessionDirty = true;
  }
  if (full || model.reordered) {
    arrange(model);
  } else {
    for (const id of model.dirty) {
      const message = model.messages.get(id);
      const node = transcript.querySelector(`article.msg[data-id="${CSS.escape(String(id))}"]`);
      if (node) replace(node, message, model.key(id), model.context);
      else transcript.append(articleEl(message, model.key(id), model.context));
    }
  }
  model.dirty.clear();
  model.reordered = false;
  renderHeader(model);
  if (follow && !full) window.scrollTo(0, document.documentElement.scrollHeight);
}

/** Make #transcript hold exactly the model's articles in display order: existing articles
 * are moved, not rebuilt, and re-rendered only when their revision moved. */
function arrange(model) {
  const nodes = new Map();
  for (const node of transcript.children) nodes.set(node.dataset.id, node);
  let cursor = transcript.firstElementChild;
  for (const id of model.order()) {
    const message = model.messages.get(id);
    const key = model.key(id);
    let node = nodes.get(String(id));
    if (node) {
      nodes.delete(String(id));
      if (node.dataset.rev !== key) replace(node, message, key, model.context);
    } else {
      node = articleEl(message, key, model.context);
    }
    if (node === cursor) cursor = cursor.nextElementSibling;
    else transcript.insertBefore(node, cursor);
  }
  for (const node of nodes.values()) node.remove();
}

/** Update an article in place: swapping the element itself would make the browser restyle
 * every other article of a long transcript, and streaming would drop frames. */
function replace(node, message, key, context) {
  const open = {
    calls: new Set([...node.querySelectorAll("details.tool[open]")].map((d) => d.dataset.call)),
    fold: node.querySelector("details.oc-fold[open]") !== null,
  };
  const fresh = articleEl(message, key, context, open);
  if (node.className !== fresh.className) node.className = fresh.className;
  node.dataset.rev = key;
  const old = [...node.children];
  [...fresh.children].forEach((child, i) => {
    if (i >= old.length) node.append(child);
    else if (!same(old[i], child)) old[i].replaceWith(child);
  });
  old.slice(fresh.children.length).forEach((child) => child.remove());
}

/** A message body is compared by its markup, which is quicker than node by node. */
function same(old, fresh) {
  if (old.classList.contains("body") && fresh.classList.contains("body")) {
    return old.innerHTML === fresh.innerHTML;
  }
  return old.isEqualNode(fresh);
}

function renderHeader(model) {
  if (!model.headerDirty) return;
  model.headerDirty = false;
  const title = String(model.info.title || "Untitled session");
  if ($("title").textContent !== title) {
    $("title").textContent = title;
    document.title = `${title} · agentsync`;
  }
  const status = String(model.status);
  $("status").textContent = status;
  $("status").className = `status status-${status.replace(/[^a-z-]/gi, "")}`;
  $("seq").textContent = `${model.seq} events`;
  renderSession(model);
  body.dataset.rendered = String(model.seq);
}

/** #session-info (models, totals) and #session-diff (changed files) of opencode sessions;
 * what the reader expanded in the list of changes stays expanded. */
function renderSession(model) {
  if (!model.sessionDirty) return;
  model.sessionDirty = false;
  const info = $("session-info");
  const freshInfo = info.cloneNode(false);
  freshInfo.append(...sessionInfoEls(model.info, model.messages.values()));
  freshInfo.hidden = !freshInfo.firstChild;
  if (!info.isEqualNode(freshInfo)) info.replaceWith(freshInfo);

  const diff = $("session-diff");
  const shown = diff.querySelector("details.oc-diffs");
  const open = shown && {
    all: shown.open,
    files: new Set(
      [...shown.querySelectorAll("details.oc-diff-file[open] .oc-diff-name")].map((n) => n.textContent),
    ),
  };
  const freshDiff = diff.cloneNode(false);
  const list = sessionDiffEl(model.info, open);
  if (list) freshDiff.append(list);
  freshDiff.hidden = !list;
  if (!diff.isEqualNode(freshDiff)) diff.replaceWith(freshDiff);
}

// Rendering waits for the next frame so a burst of tokens costs one layout; the timer
// covers background tabs, where animation frames do not run.
let scheduled = false;
let current = null; // the model on screen: the live one, or a replay's
function schedule() {
  if (scheduled) return;
  scheduled = true;
  const run = () => {
    if (!scheduled) return;
    scheduled = false;
    reconcile(current, false);
  };
  requestAnimationFrame(run);
  setTimeout(run, 250);
}

function show(model) {
  current = model;
  scheduled = false;
  reconcile(model, true);
}

// --- live updates ---------------------------------------------------------------------

const boot = JSON.parse($("snapshot").textContent);
let generation = 0;
const live = { model: new Model(boot, generation) };
current = live.model;
const viewerName = (() => {
  try {
    let name = localStorage.getItem("agentsync-name");
    if (!name) {
      name = `guest-${Math.random().toString(36).slice(2, 6)}`;
      localStorage.setItem("agentsync-name", name);
    }
    return name;
  } catch {
    return "guest";
  }
})();

function setConn(state, text) {
  const conn = $("conn");
  conn.className = `conn conn-${state}`;
  conn.textContent = text;
  body.dataset.conn = state;
}

function setWatchers(participants) {
  const names = (participants || []).map((p) => String(p.name));
  $("watchers").textContent = `${names.length} watching`;
  $("watchers").title = names.join(", ");
}

function resetLive(snapshot) {
  generation += 1;
  live.model = new Model(snapshot, generation);
  if (!replay.active) show(live.model);
}

/** Apply events in seq order; false when one is missing (the caller resumes from seq). */
function applyEvents(events) {
  const model = live.model;
  for (const event of events) {
    if (event.seq <= model.seq) continue; // already applied: a resume overlaps, never doubles
    if (event.seq !== model.seq + 1) return false;
    model.apply(event);
  }
  if (!replay.active) schedule();
  return true;
}

const connection = {
  ws: null,
  sse: null,
  attempts: 0,
  wsFailures: 0,
  stopped: false,
};

function reconnectLater() {
  if (connection.stopped) return;
  const delay = Math.min(5000, 250 * 2 ** connection.attempts) * (0.5 + Math.random() / 2);
  connection.attempts += 1;
  setConn("reconnecting", "reconnecting…");
  setTimeout(connect, delay);
}

function terminal(reason) {
  connection.stopped = true;
  setConn("ended", reason || "this share is no longer available");
}

function connect() {
  if (connection.stopped) return;
  if (connection.wsFailures >= 2 && typeof EventSource !== "undefined") connectSse();
  else connectWs();
}

function connectWs() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/sessions/${encodeURIComponent(sessionId)}/ws`);
  connection.ws = ws;
  let greeted = false;
  ws.onopen = () => {
    const model = live.model;
    const hello = { op: "hello", since: model.seq, epoch: model.epoch, name: viewerName };
    if (token) hello.token = token;
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    if (!greeted) {
      greeted = true;
      connection.attempts = 0;
      connection.wsFailures = 0;
      setConn("live", "live");
    }
    if (frame.participants) setWatchers(frame.participants);
    if (frame.op === "init") resetLive(frame.snapshot);
    else if (frame.op === "events") {
      if (frame.epoch && live.model.epoch && frame.epoch !== live.model.epoch) {
        ws.close(4000, "epoch changed");
      } else if (!applyEvents(frame.events)) {
        ws.close(4000, "gap"); // resume from the last applied seq
      }
    }
  };
  ws.onclose = (event) => {
    connection.ws = null;
    if (event.code >= 4500 && event.code < 5000) {
      terminal(event.reason);
      return;
    }
    if (!greeted) connection.wsFailures += 1;
    reconnectLater();
  };
}

function connectSse() {
  const model = live.model;
  const query = new URLSearchParams({ since: String(model.seq), epoch: model.epoch || "" });
  if (token) query.set("token", token);
  const source = new EventSource(`/v1/sessions/${encodeURIComponent(sessionId)}/stream?${query}`);
  connection.sse = source;
  source.onopen = () => {
    connection.attempts = 0;
    setConn("live", "live (SSE)");
  };
  source.addEventListener("init", (event) => resetLive(JSON.parse(event.data)));
  source.onmessage = (event) => {
    if (!applyEvents([JSON.parse(event.data)])) {
      source.close();
      connectSse();
    }
  };
  source.addEventListener("error", (event) => {
    if (event.data) {
      source.close();
      terminal(JSON.parse(event.data).error.message);
    } else if (source.readyState === EventSource.CLOSED) {
      // The server answered with an error status; try WebSocket again after a pause.
      connection.wsFailures = 0;
      reconnectLater();
    } else {
      setConn("reconnecting", "reconnecting…");
    }
  });
}

// --- replay ---------------------------------------------------------------------------

const MAX_GAP = 2000; // ms of recorded silence replayed at most, before the speed factor

const replay = {
  active: false,
  header: null,
  events: [],
  times: [], // replay-clock ms at which each event plays
  index: 0, // events[0..index) are applied
  model: null,
  playing: false,
  clock: 0,
  last: 0,
};

async function loadExport() {
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const response = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}/export${query}`);
  if (!response.ok) throw new Error(`export failed: ${response.status}`);
  const lines = (await response.text()).split("\n").filter((line) => line);
  replay.header = JSON.parse(lines[0]);
  replay.events = lines.slice(1).map((line) => JSON.parse(line));
  let t = 0;
  replay.times = replay.events.map((event, i) => {
    if (i > 0) t += Math.min(Math.max(event.ts - replay.events[i - 1].ts, 0), MAX_GAP);
    return t;
  });
}

function emptyModel() {
  return new Model({ session: replay.header.session, messages: [], status: "idle", seq: 0 }, "r");
}

function seek(index) {
  if (index < replay.index || replay.model === null) {
    replay.model = emptyModel();
    replay.index = 0;
  }
  while (replay.index < index) replay.model.apply(replay.events[replay.index++]);
  replay.clock = replay.index > 0 ? replay.times[replay.index - 1] : 0;
  current = replay.model;
  reconcile(replay.model, true);
  updateReplayControls();
}

const fmt = (ms) => `${Math.floor(ms / 60000)}:${pad2(Math.floor(ms / 1000) % 60)}`;
const pad2 = (n) => String(n).padStart(2, "0");

function updateReplayControls() {
  const total = replay.events.length;
  $("replay-scrubber").max = String(total);
  $("replay-scrubber").value = String(replay.index);
  const end = total ? replay.times[total - 1] : 0;
  $("replay-position").textContent = `${fmt(replay.clock)} / ${fmt(end)} · ${replay.index} / ${total}`;
  $("replay-play").textContent = replay.playing ? "Pause" : "Play";
  body.dataset.replayIndex = String(replay.index);
}

function tick(now) {
  if (!replay.playing) return;
  const speed = Number($("replay-speed").value) || 1;
  replay.clock += (now - replay.last) * speed;
  replay.last = now;
  let moved = false;
  while (replay.index < replay.events.length && replay.times[replay.index] <= replay.clock) {
    replay.model.apply(replay.events[replay.index++]);
    moved = true;
  }
  if (moved) reconcile(replay.model, false);
  if (replay.index >= replay.events.length) replay.playing = false;
  updateReplayControls();
  if (replay.playing) requestAnimationFrame(tick);
}

function play() {
  if (replay.index >= replay.events.length) seek(0);
  replay.playing = true;
  replay.last = performance.now();
  updateReplayControls();
  requestAnimationFrame(tick);
}

async function enterReplay() {
  $("replay-toggle").disabled = true;
  try {
    await loadExport();
  } catch (error) {
    $("replay-toggle").textContent = "Replay unavailable";
    return;
  } finally {
    $("replay-toggle").disabled = false;
  }
  replay.active = true;
  replay.model = null;
  body.classList.add("replaying");
  $("replay").hidden = false;
  $("replay-toggle").hidden = true;
  seek(0);
}

function exitReplay() {
  replay.active = false;
  replay.playing = false;
  body.classList.remove("replaying");
  $("replay").hidden = true;
  $("replay-toggle").hidden = false;
  delete body.dataset.replayIndex;
  live.model.headerDirty = true;
  show(live.model);
}

// --- wiring ---------------------------------------------------------------------------

function copyLink() {
  const done = () => {
    $("copy-link").textContent = "Copied";
    setTimeout(() => ($("copy-link").textContent = "Copy link"), 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(location.href).then(done, () => {});
    return;
  }
  const field = document.createElement("textarea");
  field.value = location.href;
  document.body.append(field);
  field.select();
  document.execCommand("copy");
  field.remove();
  done();
}

function start() {
  localiseTimes(transcript);
  $("copy-link").hidden = false;
  $("copy-link").addEventListener("click", copyLink);
  if (token) $("download").href += `?token=${encodeURIComponent(token)}`;
  $("replay-toggle").hidden = false;
  $("replay-toggle").addEventListener("click", enterReplay);
  $("replay-exit").addEventListener("click", exitReplay);
  $("replay-play").addEventListener("click", () => {
    if (replay.playing) {
      replay.playing = false;
      updateReplayControls();
    } else play();
  });
  $("replay-scrubber").addEventListener("input", (event) => {
    replay.playing = false;
    seek(Number(event.target.value));
  });
  body.dataset.rendered = String(live.model.seq);
  window.addEventListener("online", () => {
    if (!connection.ws && !connection.sse) connect();
  });
  setConn("connecting", "connecting…");
  connect();
}

start();

// opencode sessions on the share page: the client twin of
// src/agentsync/server/web/opencode_view.py, which documents the markup. Both must build
// the same elements with the same text, down to the digits of counts, costs and durations.
// Everything from the session goes in through textContent; markdown through markdown().

import { clock, el, markdown, toolEl } from "./render.js";

const LIMIT = 1e15;
const YEAR_10000 = 253402300800000; // ms
const TOOL_STATES = {
  pending: ["pending", "running"],
  running: ["pending", "running"],
  completed: ["ok", "done"],
  error: ["error", "error"],
};
const PATH_TOOLS = new Set(["read", "edit", "write", "multiedit", "list"]);
const PATTERN_TOOLS = new Set(["grep", "glob"]);
const OPEN_DIFFS = 8;
const MINUS = "\u2212";

const isDict = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const dict = (v) => (isDict(v) ? v : {});
const dicts = (items) => (Array.isArray(items) ? items.filter(isDict) : []);
const str = (v) => (typeof v === "string" ? v : "");
const number = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const own = (obj, key) => (Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined);

/** What rendering a part needs from the session (see opencode_view.Context). */
export function contextOf(info) {
  const session = dict(own(dict(dict(info).metadata), "opencode.session"));
  const directory = session.directory;
  return { directory: typeof directory === "string" ? directory.replace(/\/+$/, "") : "" };
}

/** metadata.opencode of an opencode message or part, else null. */
export function opencodeMeta(message) {
  const meta = dict(dict(message).metadata).opencode;
  return isDict(meta) && (meta.kind === "message" || meta.kind === "part") ? meta : null;
}

/** The article of an opencode message or part; `open` = {calls: Set, fold: bool} keeps
 * what the reader expanded expanded. */
export function opencodeEl(message, key, context, open) {
  const meta = opencodeMeta(message);
  const role = str(message.role);
  const article = el("article");
  let classes;
  if (meta.kind === "message") {
    classes = "oc-message";
    messageInner(article, message, role, dict(meta.info));
  } else {
    classes = partInner(article, message, dict(meta.part), context || { directory: "" }, open);
  }
  article.className = `msg role-${role.replace(/[^a-z]/g, "")} oc ${classes}`;
  article.dataset.id = String(message.id);
  article.dataset.rev = key;
  return article;
}

// --- one opencode message: the group's header -------------------------------------------

function messageInner(article, message, role, info) {
  const out = [el("span", "role", role)];
  const agent = str(info.agent) || str(info.mode);
  if (agent) out.push(span("oc-agent", agent, "agent"));
  const model = modelId(info);
  if (model) out.push(span("oc-model", model, "model"));
  out.push(tokensEl(info.tokens), costEl(info.cost, "cost"));
  const times = dict(info.time);
  const created = moment(times.created);
  const when = clock(created !== null ? created : message.ts);
  if (when) {
    const time = el("time", null, when.text);
    time.dateTime = when.iso;
    out.push(time);
  }
  const took = elapsed(times.created, times.completed);
  if (took) out.push(span("oc-duration", took, "duration"));
  const failed = isError(info.error);
  if (role === "assistant" && times.completed == null && !failed) {
    out.push(span("oc-working", "working…"));
  }
  article.append(row(el("header"), out));
  if (typeof message.content === "string" && message.content) {
    article.append(body(message.content));
  }
  if (failed) article.append(errorEl(info.error));
}

function modelId(info) {
  const model = dict(info.model);
  const provider = str(info.providerID) || str(model.providerID);
  const id = str(info.modelID) || str(model.modelID);
  return [provider, id].filter((p) => p).join("/");
}

function errorEl(error) {
  let name;
  let text;
  if (isDict(error)) {
    name = str(error.name) || "error";
    text = str(dict(error.data).message) || str(error.message);
  } else {
    name = "error";
    text = str(error);
  }
  return row(el("div", "oc-error"), [
    span("oc-error-name", name),
    text ? span("oc-error-message", text) : null,
  ]);
}

// --- one part ---------------------------------------------------------------------------

/** Fills `article` with a part; returns the article's classes. */
function partInner(article, message, part, context, open) {
  const kind = part.type;
  const text = typeof message.content === "string" ? message.content : "";
  if (kind === "text") {
    article.append(body(text));
    return `oc-part part-text${part.synthetic === true ? " oc-synthetic" : ""}`;
  }
  if (kind === "reasoning") {
    const times = dict(part.time);
    const done = times.end != null;
    const took = done ? elapsed(times.start, times.end) : "";
    const details = el("details", "oc-fold");
    if (open && open.fold) details.open = true;
    const summary = row(el("summary"), [
      span("oc-fold-label", done ? "Reasoning" : "Thinking…"),
      took ? span("oc-duration", took, "duration") : null,
    ]);
    details.append(summary, body(text));
    article.append(details);
    return "oc-part part-reasoning";
  }
  if (kind === "tool") {
    toolInner(article, message, part, context, open);
    return "oc-part part-tool";
  }
  if (kind === "step-start") return "oc-part part-step-start";
  if (kind === "step-finish") {
    const reason = str(part.reason);
    article.append(
      line(
        span("oc-kind", "step"),
        reason ? span("oc-reason", reason, "finish reason") : null,
        tokensEl(part.tokens),
        costEl(part.cost, "cost"),
      ),
    );
    return "oc-part part-step-finish";
  }
  if (kind === "patch") {
    const files = Array.isArray(part.files) ? part.files.filter((f) => typeof f === "string") : [];
    const names = files.map((f) => relPath(f, context.directory)).join(", ");
    article.append(line(span("oc-kind", "changed:"), span("oc-files", names, files.join("\n"))));
    return "oc-part part-patch";
  }
  if (kind === "file") {
    article.append(line(...fileEls(part)));
    return "oc-part part-file";
  }
  article.append(line(...otherEls(part)));
  return "oc-part part-other";
}

function toolInner(article, message, part, context, open) {
  const calls = dicts(message.toolCalls);
  const results = new Map(dicts(message.toolResults).map((r) => [r.toolCallId, r]));
  if (!calls.length && !results.size) {
    article.append(line(span("oc-kind", "tool"), span("tool-name", str(part.tool) || "tool")));
    return;
  }
  const isOpen = (id) => Boolean(open && open.calls && open.calls.has(String(id)));
  for (const call of calls) {
    const result = results.get(call.id);
    results.delete(call.id);
    const state = dict(call.state);
    const options = {
      state: own(TOOL_STATES, str(state.status)),
      summary: toolSummary(call, context.directory),
      extra: toolDiff(state),
    };
    article.append(toolEl(call, result, isOpen(call.id), options));
  }
  for (const result of results.values()) {
    article.append(toolEl(null, result, isOpen(result.toolCallId)));
  }
}

/** The gist of a tool call: a command, a path, a pattern; else opencode's title. */
export function toolSummary(call, directory = "") {
  const name = str(call.name);
  const args = dict(call.arguments);
  let gist = "";
  if (name === "bash") gist = str(args.command);
  else if (PATH_TOOLS.has(name)) gist = relPath(str(args.filePath) || str(args.path), directory);
  else if (PATTERN_TOOLS.has(name)) gist = str(args.pattern);
  else if (name === "webfetch") gist = str(args.url);
  else if (name === "task") gist = str(args.description);
  return gist || str(dict(call.state).title);
}

function toolDiff(state) {
  const diff = dict(state.metadata).diff;
  if (typeof diff !== "string" || !diff) return null;
  return [el("div", "tool-label", "diff"), diffEl(diff)];
}

function fileEls(part) {
  const url = str(part.url);
  const name = str(part.filename) || "file";
  let shown;
  const lowered = url.toLowerCase();
  if (lowered.startsWith("http://") || lowered.startsWith("https://")) {
    shown = el("a", "oc-filename", name);
    shown.href = url;
    shown.target = "_blank";
    shown.rel = "noopener noreferrer nofollow";
  } else {
    shown = span("oc-filename", name);
  }
  const mime = str(part.mime);
  return [span("oc-kind", "file:"), shown, mime ? span("oc-mime", mime) : null];
}

function otherEls(part) {
  const kind = str(part.type) || "part";
  let detail;
  if (kind === "retry") {
    const error = dict(part.error);
    detail = str(dict(error.data).message) || str(error.name);
  } else {
    detail = str(part.description) || str(part.name);
  }
  return [span("oc-kind", kind), detail ? span("oc-detail", detail) : null];
}

// --- the session: model, totals and changed files ----------------------------------------

/** The children of #session-info; none for a session that is not opencode's. */
export function sessionInfoEls(info, messages) {
  const meta = dict(dict(info).metadata);
  if (own(meta, "opencode.session") === undefined && own(meta, "opencode.model") === undefined) {
    return [];
  }
  const session = dict(own(meta, "opencode.session"));
  const out = [];
  const seen = new Set();
  for (const model of dicts(own(meta, "opencode.model"))) {
    const id = ident(model);
    const name = str(model.name) || id;
    if (name && !seen.has(id)) {
      seen.add(id);
      out.push(span("oc-model", name, id || "model"));
    }
  }
  if (!out.length) {
    const id = ident(dict(session.model));
    if (id) out.push(span("oc-model", id, "model"));
  }
  const [cost, tokens] = usage(messages);
  if (tokens !== null) out.push(tokensEl(tokens, "total tokens"));
  if (cost !== null) out.push(costEl(cost, "total cost"));
  const version = str(session.version);
  if (version) out.push(span("oc-version", `opencode ${version}`));
  return spaced(out);
}

/** [total cost, total tokens shaped like one message's] over the assistant messages. */
export function usage(messages) {
  let cost = null;
  let sums = null;
  for (const message of messages) {
    const meta = opencodeMeta(message);
    if (meta === null || meta.kind !== "message" || message.role !== "assistant") continue;
    const info = dict(meta.info);
    const spent = number(info.cost);
    if (spent !== null && spent >= 0) cost = cost === null ? spent : cost + spent;
    const tokens = dict(info.tokens);
    const cache = dict(tokens.cache);
    const found = {
      input: whole(tokens.input),
      output: whole(tokens.output),
      reasoning: whole(tokens.reasoning),
      read: whole(cache.read),
      write: whole(cache.write),
    };
    if (found.input === null && found.output === null) continue;
    sums = sums || { input: 0, output: 0, reasoning: 0, read: 0, write: 0 };
    for (const [key, value] of Object.entries(found)) sums[key] += value || 0;
  }
  if (sums === null) return [cost, null];
  const total = {
    input: sums.input,
    output: sums.output,
    reasoning: sums.reasoning,
    cache: { read: sums.read, write: sums.write },
  };
  return [cost, total];
}

/** The content of #session-diff, or null; `open` = {all: bool, files: Set of names} as
 * the reader left them, or null for the defaults. */
export function sessionDiffEl(info, open) {
  const diffs = dicts(own(dict(dict(info).metadata), "opencode.session_diff"));
  if (!diffs.length) return null;
  let added = 0;
  let removed = 0;
  const list = el("ul", "oc-diff-files");
  for (const diff of diffs) {
    const plus = whole(diff.additions) || 0;
    const minus = whole(diff.deletions) || 0;
    added += plus;
    removed += minus;
    const status = str(diff.status);
    const name = str(diff.file) || "?";
    const details = el("details", "oc-diff-file");
    if (open && open.files.has(name)) details.open = true;
    const summary = row(el("summary"), [
      span("oc-diff-name", name),
      status ? span("oc-diff-status", status) : null,
      span("oc-add", `+${plus}`),
      span("oc-del", `${MINUS}${minus}`),
    ]);
    details.append(summary);
    const patch = str(diff.patch);
    if (patch) details.append(diffEl(patch));
    const item = el("li");
    item.append(details);
    list.append(item);
  }
  const all = el("details", "oc-diffs");
  if (open ? open.all : diffs.length <= OPEN_DIFFS) all.open = true;
  const summary = row(el("summary"), [
    span("oc-kind", "changes"),
    span("oc-count", `${diffs.length} file${diffs.length === 1 ? "" : "s"}`),
    span("oc-add", `+${added}`),
    span("oc-del", `${MINUS}${removed}`),
  ]);
  all.append(summary, list);
  return all;
}

/** A unified diff in a pre.oc-diff, one span per changed, hunk or header line. */
export function diffEl(patch) {
  const pre = el("pre", "oc-diff");
  let plain = "";
  patch.split("\n").forEach((text, i) => {
    if (i > 0) plain += "\n";
    const css = diffClass(text);
    if (!css) {
      plain += text;
      return;
    }
    if (plain) pre.append(plain);
    plain = "";
    pre.append(el("span", css, text));
  });
  if (plain) pre.append(plain);
  return pre;
}

function diffClass(text) {
  if (["+++", "---", "Index:", "==="].some((p) => text.startsWith(p))) return "d-meta";
  if (text.startsWith("@@")) return "d-hunk";
  if (text.startsWith("+")) return "d-add";
  if (text.startsWith("-")) return "d-del";
  return "";
}

// --- formats: the same digits as opencode_view.py ----------------------------------------

export function whole(value) {
  const n = number(value);
  if (n === null || n < 0 || n >= LIMIT) return null;
  return Math.floor(n);
}

export function count(n) {
  if (n < 1000) return String(n);
  const [unit, scale] = n < 1000000 ? ["k", 100] : ["M", 100000];
  const tenths = Math.floor(n / scale);
  const units = Math.floor(tenths / 10);
  const tenth = tenths % 10;
  return tenth === 0 ? `${units}${unit}` : `${units}.${tenth}${unit}`;
}

export function money(value) {
  const n = number(value);
  if (n === null || n < 0 || n >= LIMIT) return "";
  return `$${(n + 0).toFixed(4)}`;
}

export function duration(ms) {
  if (ms < 1000) return `${ms}ms`;
  if (ms < 60000) return `${Math.floor(ms / 1000)}.${Math.floor((ms % 1000) / 100)}s`;
  return `${Math.floor(ms / 60000)}m ${Math.floor((ms % 60000) / 1000)}s`;
}

export function relPath(path, directory) {
  if (directory && path.startsWith(`${directory}/`)) return path.slice(directory.length + 1);
  return path;
}

function elapsed(start, end) {
  const first = whole(start);
  const last = whole(end);
  if (first === null || last === null || last < first) return "";
  return duration(last - first);
}

function moment(value) {
  const ms = whole(value);
  return ms !== null && ms < YEAR_10000 ? ms : null;
}

function isError(error) {
  return isDict(error) || (typeof error === "string" && error !== "");
}

function tokensEl(raw, label = "tokens") {
  const tokens = dict(raw);
  const input = whole(tokens.input);
  const output = whole(tokens.output);
  if (input === null && output === null) return null;
  const reasoning = whole(tokens.reasoning);
  const cache = dict(tokens.cache);
  let text = `${count(input || 0)} in · ${count(output || 0)} out`;
  if (reasoning) text += ` · ${count(reasoning)} reasoning`;
  const numbers = [
    ["input", input],
    ["output", output],
    ["reasoning", reasoning],
    ["cache read", whole(cache.read)],
    ["cache write", whole(cache.write)],
  ];
  const title = `${label}: ${numbers
    .filter(([, n]) => n !== null)
    .map(([name, n]) => `${n} ${name}`)
    .join(", ")}`;
  return span("oc-tokens", text, title);
}

function costEl(value, title) {
  const text = money(value);
  return text ? span("oc-cost", text, title) : null;
}

function ident(model) {
  return [str(model.providerID), str(model.id)].filter((p) => p).join("/");
}

function body(text) {
  const node = el("div", "body md");
  node.innerHTML = markdown(text);
  return node;
}

function line(...pieces) {
  return row(el("div", "oc-line"), pieces);
}

/** `parent` holding the pieces that are there, a space apart (see _row). */
function row(parent, pieces) {
  parent.append(...spaced(pieces));
  return parent;
}

function spaced(pieces) {
  const out = [];
  for (const piece of pieces) {
    if (!piece) continue;
    if (out.length) out.push(" ");
    out.push(piece);
  }
  return out;
}

function span(className, text, title) {
  const node = el("span", className, text);
  if (title) node.title = title;
  return node;
}

// Markdown, highlighting and the message markup: the client twin of
// src/agentsync/server/web/render.py (opencode's messages and parts: opencode.js). Content
// is untrusted: markdown-it runs with raw HTML off and images shown as links, links are
// limited to http(s)/mailto, and DOMPurify sanitises the result with an allow-list before
// it touches the DOM.

import MarkdownIt from "markdown-it";
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import go from "highlight.js/lib/languages/go";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdownLang from "highlight.js/lib/languages/markdown";
import plaintext from "highlight.js/lib/languages/plaintext";
import python from "highlight.js/lib/languages/python";
import ruby from "highlight.js/lib/languages/ruby";
import rust from "highlight.js/lib/languages/rust";
import shell from "highlight.js/lib/languages/shell";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";

const LANGUAGES = {
  bash, c, cpp, css, diff, go, java, javascript, json, markdown: markdownLang, plaintext,
  python, ruby, rust, shell, sql, typescript, xml, yaml,
};
for (const [name, lang] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, lang);

const MAX_HIGHLIGHT = 64 * 1024;

function safeLink(url) {
  const lowered = url.trim().toLowerCase();
  if ((lowered.startsWith("#") || lowered.startsWith("/")) && !lowered.startsWith("//")) {
    return true;
  }
  return ["http:", "https:", "mailto:"].some((scheme) => lowered.startsWith(scheme));
}

const md = new MarkdownIt("commonmark", {
  html: false,
  highlight(code, lang) {
    const name = (lang || "").split(/\s+/)[0];
    if (!name || code.length > MAX_HIGHLIGHT || !hljs.getLanguage(name)) return "";
    return hljs.highlight(code, { language: name, ignoreIllegals: true }).value;
  },
});
md.enable(["table", "strikethrough"]);
md.disable("image");
md.validateLink = safeLink;

const PURIFY = {
  ALLOWED_TAGS: [
    "a", "p", "br", "hr", "em", "strong", "s", "code", "pre", "span", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "start"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#|\/(?!\/))/i,
};
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// Finished messages never change again: their HTML is computed once.
const cache = new Map();

export function markdown(text) {
  let out = cache.get(text);
  if (out === undefined) {
    out = DOMPurify.sanitize(md.render(text), PURIFY);
    if (cache.size > 4000) cache.clear();
    cache.set(text, out);
  }
  return out;
}

function pretty(value) {
  if (typeof value === "string") return value;
  if (value === undefined) return "null";
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

const pad = (n) => String(n).padStart(2, "0");

export function clock(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return null;
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return null;
  return { iso: d.toISOString(), text: `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` };
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function toolState(result) {
  if (!result) return ["pending", "running"];
  if (result.error) return ["error", "error"];
  return ["ok", "done"];
}

/** details.tool of one call and its result; `options` as tool_html's keywords: `state`
 * overrides [css state, label], `summary` is a one-line gist, `extra` more tool-io nodes. */
export function toolEl(call, result, open, options = {}) {
  const callId = call ? call.id : result.toolCallId;
  const [state, label] = options.state || toolState(result);
  const details = el("details", `tool state-${state}`);
  details.dataset.call = String(callId);
  if (open) details.open = true;
  const summary = el("summary");
  summary.append(el("span", "tool-name", String((call && call.name) || "tool result")));
  if (options.summary) summary.append(el("span", "tool-summary", options.summary));
  summary.append(el("span", "tool-state", label));
  details.append(summary);
  const io = el("div", "tool-io");
  if (call) {
    io.append(el("div", "tool-label", "arguments"));
    io.append(el("pre", "tool-args", pretty(call.arguments)));
  }
  if (result) {
    io.append(el("div", "tool-label", result.error ? "error" : "result"));
    const output = result.error && !result.output ? result.error : result.output;
    io.append(el("pre", "tool-out", pretty(output)));
  }
  if (options.extra) io.append(...options.extra);
  details.append(io);
  return details;
}

const dicts = (items) => (Array.isArray(items) ? items.filter((i) => i && typeof i === "object") : []);

/** The <article> of one message; `openCalls` keeps expanded tool calls expanded. */
export function messageEl(message, key, openCalls) {
  const role = String(message.role || "");
  const article = el("article", `msg role-${role.replace(/[^a-z]/g, "")}`);
  article.dataset.id = String(message.id);
  article.dataset.rev = key;
  const header = el("header");
  header.append(el("span", "role", role));
  const when = clock(message.ts);
  if (when) {
    const time = el("time", null, when.text);
    time.dateTime = when.iso;
    header.append(time);
  }
  article.append(header);
  const body = el("div", "body md");
  body.innerHTML = typeof message.content === "string" ? markdown(message.content) : "";
  article.append(body);
  const results = new Map(dicts(message.toolResults).map((r) => [r.toolCallId, r]));
  for (const call of dicts(message.toolCalls)) {
    const result = results.get(call.id);
    results.delete(call.id);
    article.append(toolEl(call, result, openCalls && openCalls.has(String(call.id))));
  }
  for (const result of results.values()) {
    article.append(toolEl(null, result, openCalls && openCalls.has(String(result.toolCallId))));
  }
  return article;
}

/** Times rendered by the server are UTC; show them in the reader's time zone. */
export function localiseTimes(root) {
  for (const time of root.querySelectorAll("article.msg time[datetime]")) {
    const when = clock(Date.parse(time.dateTime));
    if (when) time.textContent = when.text;
  }
}

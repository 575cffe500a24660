// The session as the page knows it: the fold of SPEC.md §1, the same as session.py's
// SessionState. Every change bumps the touched message's revision, so the view re-renders
// exactly the messages that changed. A model folded from seq 0 gives each message the same
// revision at the same seq, which is what lets replay scrub by re-folding.
//
// It also keeps the display order, render.py's display_order: messages stably sorted by
// metadata.order, a message without one taking the key of the one before it in the
// session. A new message usually goes last; one that sorts earlier (an opencode part whose
// message came long ago) is inserted in place and flags `reordered`.

import { contextOf, opencodeMeta } from "./opencode.js";

function normalise(data, ts) {
  return {
    ...data,
    content: typeof data.content === "string" ? data.content : "",
    toolCalls: Array.isArray(data.toolCalls) ? [...data.toolCalls] : [],
    toolResults: Array.isArray(data.toolResults) ? [...data.toolResults] : [],
    ts: ts ?? data.ts,
  };
}

/** metadata.order of a message, or null. */
function orderOf(message) {
  const metadata = message ? message.metadata : null;
  const isDict = metadata !== null && typeof metadata === "object" && !Array.isArray(metadata);
  const order = isDict ? metadata.order : undefined;
  return typeof order === "string" ? order : null;
}

const isHeader = (message) => {
  const meta = message ? opencodeMeta(message) : null;
  return meta !== null && meta.kind === "message";
};

function upsert(items, key, item) {
  const i = items.findIndex((existing) => existing && existing[key] === item[key]);
  if (i >= 0) items[i] = item;
  else items.push(item);
}

export class Model {
  /** `generation` names this fold; it is part of every revision key the view stores. */
  constructor(snapshot, generation) {
    this.generation = generation;
    this.info = { ...(snapshot.session || {}) };
    this.status = snapshot.status || "idle";
    this.seq = snapshot.seq || 0;
    this.epoch = snapshot.epoch || null;
    this.messages = new Map();
    for (const m of snapshot.messages || []) this.messages.set(m.id, normalise(m));
    this.context = contextOf(this.info); // what rendering a part needs from the session
    this.revisions = new Map();
    this.dirty = new Set();
    this.headerDirty = true;
    this.sessionDirty = true; // #session-info and #session-diff
    this.sortAll();
    this.reordered = false; // the page shows a fresh model's order, or is redrawn whole
  }

  /** Message ids in display order. */
  order() {
    return this.ordered;
  }

  sortAll() {
    this.keys = new Map();
    let inherited = "";
    for (const [id, message] of this.messages) {
      const own = orderOf(message);
      if (own !== null) inherited = own;
      this.keys.set(id, inherited);
    }
    this.lastKey = inherited;
    const keys = this.keys;
    this.ordered = [...this.messages.keys()].sort((a, b) => {
      const x = keys.get(a);
      const y = keys.get(b);
      return x < y ? -1 : x > y ? 1 : 0;
    });
    this.reordered = true;
  }

  /** Put a message that is new, and so last in the session, into the display order. */
  place(id) {
    const own = orderOf(this.messages.get(id));
    const key = own !== null ? own : this.lastKey;
    this.lastKey = key;
    this.keys.set(id, key);
    const ordered = this.ordered;
    if (!ordered.length || key >= this.keys.get(ordered[ordered.length - 1])) {
      ordered.push(id);
      return;
    }
    let low = 0;
    let high = ordered.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.keys.get(ordered[mid]) <= key) low = mid + 1;
      else high = mid;
    }
    ordered.splice(low, 0, id);
    this.reordered = true;
  }

  key(id) {
    return `${this.generation}.${this.revisions.get(id) || 0}`;
  }

  touch(id) {
    this.revisions.set(id, (this.revisions.get(id) || 0) + 1);
    this.dirty.add(id);
  }

  /** Parts show paths relative to the session's directory: when it changes, re-render
   * every opencode article. */
  updateContext() {
    const context = contextOf(this.info);
    if (context.directory === this.context.directory) return;
    this.context = context;
    for (const [id, message] of this.messages) if (opencodeMeta(message)) this.touch(id);
  }

  /** Fold one event; events must come in seq order (the caller checks). */
  apply(event) {
    const data = event.data || {};
    switch (event.type) {
      case "message": {
        const previous = this.messages.get(data.id);
        this.messages.set(data.id, normalise(data, event.ts));
        if (previous === undefined) this.place(data.id);
        else if (orderOf(previous) !== orderOf(data)) this.sortAll();
        if (isHeader(previous) || isHeader(data)) this.sessionDirty = true;
        this.touch(data.id);
        break;
      }
      case "message.delta": {
        const m = this.messages.get(data.id);
        if (m) {
          m.content += data.delta;
          this.touch(data.id);
        }
        break;
      }
      case "tool_call":
      case "tool_result": {
        const m = this.messages.get(data.messageId);
        if (m) {
          const { messageId, ...item } = data;
          if (event.type === "tool_call") upsert(m.toolCalls, "id", item);
          else upsert(m.toolResults, "toolCallId", item);
          this.touch(data.messageId);
        }
        break;
      }
      case "status":
        this.status = data.status;
        this.headerDirty = true;
        break;
      case "session.update":
        if (data.title != null) this.info.title = data.title;
        if (data.metadata != null) this.info.metadata = { ...(this.info.metadata || {}), ...data.metadata };
        this.headerDirty = true;
        this.sessionDirty = true;
        this.updateContext();
        break;
      default:
        break;
    }
    this.seq = event.seq;
    this.headerDirty = true;
  }
}

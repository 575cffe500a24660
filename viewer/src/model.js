// The session as the page knows it: the fold of SPEC.md §1, the same as session.py's
// SessionState. Every change bumps the touched message's revision, so the view re-renders
// exactly the messages that changed. A model folded from seq 0 gives each message the same
// revision at the same seq, which is what lets replay scrub by re-folding.

function normalise(data, ts) {
  return {
    ...data,
    content: typeof data.content === "string" ? data.content : "",
    toolCalls: Array.isArray(data.toolCalls) ? [...data.toolCalls] : [],
    toolResults: Array.isArray(data.toolResults) ? [...data.toolResults] : [],
    ts: ts ?? data.ts,
  };
}

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
    this.revisions = new Map();
    this.dirty = new Set();
    this.headerDirty = true;
  }

  key(id) {
    return `${this.generation}.${this.revisions.get(id) || 0}`;
  }

  touch(id) {
    this.revisions.set(id, (this.revisions.get(id) || 0) + 1);
    this.dirty.add(id);
  }

  /** Fold one event; events must come in seq order (the caller checks). */
  apply(event) {
    const data = event.data || {};
    switch (event.type) {
      case "message":
        this.messages.set(data.id, normalise(data, event.ts));
        this.touch(data.id);
        break;
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
        break;
      default:
        break;
    }
    this.seq = event.seq;
    this.headerDirty = true;
  }
}

"""opencode's share protocol as agentsync events. No I/O.

opencode's share client (config ``enterprise.url``) syncs *items*, ``{type, data}``, where
``type`` is ``session``, ``message``, ``part``, ``session_diff`` or ``model``, and an item
replaces the earlier one with the same key (:func:`item_key`). agentsync keeps one ordered
log per session instead, so a sync becomes the events that turn the session's current
state into one holding the new items:

======================  ==================================================================
opencode item           agentsync events
======================  ==================================================================
``session``             ``session.update``: its title, and ``metadata["opencode.session"]``
other session-level     ``session.update``: ``metadata["opencode.<type>"]`` (``session_diff``,
items                   ``model``, and types a later opencode adds)
``message/<id>``        ``message`` id ``<id>``, its role, no content, ``metadata.opencode =
                        {"kind": "message", "info": <item>}``
``part/<mid>/<id>``     ``message`` id ``<id>`` with the role of message ``<mid>`` and
                        ``metadata.opencode = {"kind": "part", "part": <item without its
                        text or state>}``; the text of ``text`` and ``reasoning`` parts is the
                        message's content (text that grew is a ``message.delta``); a
                        ``tool`` part's state is a ``tool_call`` (input as ``arguments``, the
                        rest as ``state``) and, once finished, a ``tool_result``
======================  ==================================================================

Every message also carries ``metadata.order``: ``<mid>`` for a message, ``<mid>/<id>`` for
a part. opencode's ids sort by creation time, so a viewer that sorts by ``order`` shows each
part under its message, in order, whatever order the items arrived in (a re-share sends all
messages first, then all parts). A ``status`` event says ``thinking`` while an assistant
message is unfinished and ``idle`` after. :func:`merged_items` inverts the mapping for
``GET /api/share/<id>/data``, which ``opencode import`` reads.

An item that would make an event larger than the event size limit has its longest strings
cut (with a note saying so) rather than being refused: opencode never re-sends a batch the
server refused, so refusing would lose the batch's other items too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from agentsync.protocol import InvalidEvent, NewEvent, PayloadTooLarge, parse_event

META: Final = "opencode"  # the key of a message's opencode metadata
SESSION_PREFIX: Final = "opencode."  # session metadata keys: opencode.session, opencode.model …
TEXT_PARTS: Final = frozenset({"text", "reasoning"})
FINISHED: Final = frozenset({"completed", "error"})
_ITEM_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_TRUNCATED = "\n…[cut by agentsync: {n} more characters did not fit the event size limit]"


@dataclass(frozen=True, slots=True)
class Item:
    """One validated sync item."""

    type: str
    data: Any

    @property
    def key(self) -> str:
        return item_key(self.type, self.data)


def item_key(kind: str, data: Any) -> str:
    """The key under which opencode's client coalesces an item."""
    if kind == "message":
        return f"message/{data['id']}"
    if kind == "part":
        return f"part/{data['messageID']}/{data['id']}"
    return kind


def _require_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 128 or "\x00" in value:
        raise InvalidEvent(f"{where}: {key!r} must be a string of 1 to 128 characters")
    return value


def parse_items(obj: Any, *, max_items: int) -> list[Item]:
    """Validate the ``data`` array of a sync; the whole sync is refused on the first bad
    item, so a sync is stored entirely or not at all."""
    if not isinstance(obj, list):
        raise InvalidEvent("'data' must be a JSON array of {type, data} items", code="wrong_type")
    if len(obj) > max_items:
        raise PayloadTooLarge(f"a sync holds at most {max_items} items, got {len(obj)}")
    items: list[Item] = []
    for i, raw in enumerate(obj):
        where = f"data[{i}]"
        if not isinstance(raw, dict) or "data" not in raw:
            raise InvalidEvent(f"{where}: an item must be an object {{type, data}}")
        kind = raw.get("type")
        if not isinstance(kind, str) or not _ITEM_TYPE.match(kind):
            raise InvalidEvent(f"{where}: 'type' must be a lowercase name such as 'part'")
        data = raw["data"]
        if kind in ("session", "message", "part"):
            if not isinstance(data, dict):
                raise InvalidEvent(f"{where}: the data of a {kind} item must be an object")
            _require_str(data, "id", where)
            if kind == "message":
                _require_str(data, "role", where)
            elif kind == "part":
                _require_str(data, "messageID", where)
                _require_str(data, "type", where)
        items.append(Item(kind, data))
    return items


def _rank(item: Item) -> tuple[int, str]:
    """Session-level items first, then messages and parts in creation order."""
    if item.type == "message":
        return (1, item.data["id"])
    if item.type == "part":
        return (1, f"{item.data['messageID']}/{item.data['id']}")
    return (0, "")


class Translator:
    """Turns one sync into events against the session's current state.

    ``info`` and ``messages`` are the session's committed state (``SessionState``). With
    ``deltas`` off (several nodes may write the share), grown text is sent whole, which
    is right whatever another node stored meanwhile.
    """

    def __init__(
        self,
        info: Mapping[str, Any],
        messages: Mapping[str, dict[str, Any]],
        status: str,
        *,
        max_event_bytes: int,
        deltas: bool = True,
    ) -> None:
        self.info = info
        self.messages = messages
        self.status = status
        self.max_event_bytes = max_event_bytes
        self.deltas = deltas
        self.events: list[dict[str, Any]] = []
        self._metadata: dict[str, Any] = {}
        self._title: str | None = None
        self._roles: dict[str, str] = {}  # message id -> role, as of this sync
        self._unfinished: dict[str, bool] = {}  # assistant message id -> not completed

    def translate(self, items: Iterable[Item]) -> list[NewEvent]:
        # An item replaces an earlier one with its key, also within one sync: keep the last
        # (a delta computed from two versions of one part would double the text).
        latest = {item.key: item for item in items}
        for item in sorted(latest.values(), key=_rank):
            if item.type == "message":
                self._message(item.data)
            elif item.type == "part":
                self._part(item.data)
            else:
                self._session_item(item)
        session_events: list[dict[str, Any]] = []
        if self._metadata or self._title is not None:
            update: dict[str, Any] = {"metadata": self._metadata} if self._metadata else {}
            if self._title is not None:
                update["title"] = self._title
            session_events.append({"type": "session.update", "data": update})
        status = self._status()
        if status != self.status:
            self.events.append({"type": "status", "data": {"status": status}})
        return [self._event(raw, i) for i, raw in enumerate(session_events + self.events)]

    # items

    def _session_item(self, item: Item) -> None:
        key = SESSION_PREFIX + item.type
        if self.info.get("metadata", {}).get(key) == item.data and key not in self._metadata:
            return
        self._metadata[key] = item.data
        if item.type == "session":
            title = item.data.get("title")
            if isinstance(title, str) and title != self.info.get("title"):
                self._title = title[:500]

    def _message(self, info: dict[str, Any]) -> None:
        message_id = info["id"]
        role = _role(info["role"])
        self._roles[message_id] = role
        if role == "assistant":
            time_ = info.get("time")
            done = isinstance(time_, dict) and time_.get("completed") is not None
            self._unfinished[message_id] = not done and not info.get("error")
        held = self.messages.get(message_id)
        if held is not None and held.get("metadata", {}).get(META, {}).get("info") == info:
            return
        if held is None:
            # Parts that arrived before their message took a guessed role: fix it.
            prefix = f"{message_id}/"
            for message in list(self.messages.values()):
                if message.get("role") != role and str(
                    message.get("metadata", {}).get("order", "")
                ).startswith(prefix):
                    self._part(_part(message))
        self.events.append(
            {
                "type": "message",
                "data": {
                    "id": message_id,
                    "role": role,
                    "content": "",
                    "metadata": {"order": message_id, META: {"kind": "message", "info": info}},
                },
            }
        )

    def _part(self, part: dict[str, Any]) -> None:
        part_id = part["id"]
        parent = part["messageID"]
        role = self._roles.get(parent) or self.messages.get(parent, {}).get("role", "assistant")
        kind = part["type"]
        moved = ("text",) if kind in TEXT_PARTS else ("state",) if kind == "tool" else ()
        rest = {k: v for k, v in part.items() if k not in moved}
        text = part.get("text") if kind in TEXT_PARTS else None
        content = text if isinstance(text, str) else ""
        held = self.messages.get(part_id)
        held_meta = held.get("metadata", {}).get(META, {}) if held is not None else {}
        fresh = held is None or held_meta.get("part") != rest or held.get("role") != role
        if not fresh and held is not None and content != held.get("content", ""):
            old = held.get("content", "")
            if self.deltas and content.startswith(old) and old:
                delta = {"id": part_id, "delta": content[len(old) :]}
                self.events.append({"type": "message.delta", "data": delta})
            else:
                fresh = True
        if fresh:
            message = {
                "id": part_id,
                "role": role,
                "content": content,
                "metadata": {"order": f"{parent}/{part_id}", META: {"kind": "part", "part": rest}},
            }
            self.events.append({"type": "message", "data": message})
        state = part.get("state")
        if kind == "tool" and isinstance(state, dict):
            self._tool(part_id, part, state, fresh, held)

    def _tool(
        self,
        part_id: str,
        part: dict[str, Any],
        state: dict[str, Any],
        fresh: bool,
        held: dict[str, Any] | None,
    ) -> None:
        call_id = str(part.get("callID") or part_id)
        call = {
            "messageId": part_id,
            "id": call_id,
            "name": str(part.get("tool") or "tool"),
            "arguments": state.get("input", {}),
            "state": {k: v for k, v in state.items() if k not in ("input", "output", "error")},
        }
        old_calls = [] if fresh or held is None else held.get("toolCalls", [])
        if fresh or not any(_same(c, call) for c in old_calls):
            self.events.append({"type": "tool_call", "data": call})
        if state.get("status") not in FINISHED and "output" not in state and "error" not in state:
            return
        result: dict[str, Any] = {"messageId": part_id, "toolCallId": call_id}
        if "output" in state:
            result["output"] = state["output"]
        if "error" in state:
            result["error"] = state["error"]
        old_results = [] if fresh or held is None else held.get("toolResults", [])
        if fresh or not any(_same(r, result) for r in old_results):
            self.events.append({"type": "tool_result", "data": result})

    # the rest

    def _status(self) -> str:
        unfinished = dict(self._unfinished)
        for message_id, message in self.messages.items():
            if message_id in unfinished or message.get("role") != "assistant":
                continue
            meta = message.get("metadata", {}).get(META, {})
            if meta.get("kind") == "message":
                info = meta.get("info", {})
                time_ = info.get("time") if isinstance(info, dict) else None
                done = isinstance(time_, dict) and time_.get("completed") is not None
                unfinished[message_id] = not done and not info.get("error")
        if not unfinished:
            return self.status
        return "thinking" if any(unfinished.values()) else "idle"

    def _event(self, raw: dict[str, Any], index: int) -> NewEvent:
        raw["data"] = fit(raw["data"], self.max_event_bytes - 512)
        return parse_event(raw, index)


def _role(role: str) -> str:
    return role if role in ("user", "assistant") else "system"


def _same(held: dict[str, Any], new: dict[str, Any]) -> bool:
    """``held`` (from the state, without messageId) equals ``new`` (an event's data)."""
    return all(held.get(k) == v for k, v in new.items() if k != "messageId") and len(held) == (
        len(new) - 1
    )


def fit(data: dict[str, Any], limit: int) -> dict[str, Any]:
    """``data`` itself when it encodes to at most ``limit`` bytes; otherwise a copy whose
    longest strings are cut, each with a note, until it fits."""
    size = len(orjson.dumps(data))
    if size <= limit:
        return data
    copy: dict[str, Any] = orjson.loads(orjson.dumps(data))
    for _ in range(64):
        path, longest = _longest_string(copy)
        if path is None or len(longest) < 256:
            break
        keep = max(0, len(longest) - (size - limit) - 256)
        _set(copy, path, longest[:keep] + _TRUNCATED.format(n=len(longest) - keep))
        size = len(orjson.dumps(copy))
        if size <= limit:
            return copy
    raise PayloadTooLarge(f"an item does not fit the event size limit of {limit} bytes")


def _longest_string(obj: Any) -> tuple[list[Any] | None, str]:
    best: tuple[list[Any] | None, str] = (None, "")
    stack: list[tuple[list[Any], Any]] = [([], obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if len(value) > len(best[1]):
                best = (path, value)
        elif isinstance(value, dict):
            stack.extend(([*path, k], v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(([*path, i], v) for i, v in enumerate(value))
    return best


def _set(obj: Any, path: Sequence[Any], value: Any) -> None:
    for step in path[:-1]:
        obj = obj[step]
    obj[path[-1]] = value


# --- display order -------------------------------------------------------------------


def display_order(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` stably sorted by ``metadata.order``; a message without one takes the
    key of the nearest preceding message that has one ("" before the first). Keys compare
    by UTF-16 code units, as JavaScript compares strings, so the page's script puts a live
    message exactly where a fresh load of the page would."""
    inherited = b""
    keyed: list[tuple[bytes, dict[str, Any]]] = []
    for message in messages:
        own = order_of(message)
        if own is not None:
            inherited = own.encode("utf-16-be", "surrogatepass")
        keyed.append((inherited, message))
    keyed.sort(key=lambda pair: pair[0])
    return [message for _, message in keyed]


def order_of(message: dict[str, Any]) -> str | None:
    metadata = message.get("metadata")
    order = metadata.get("order") if isinstance(metadata, dict) else None
    return order if isinstance(order, str) else None


# --- back to opencode's items ----------------------------------------------------------


def merged_items(snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The items of a session as opencode would hold them after every sync so far:
    ``[session, messages and parts in creation order, other session-level items]``."""
    info = snapshot["session"]
    metadata = info.get("metadata", {})
    head: list[dict[str, Any]] = []
    tail: list[dict[str, Any]] = []
    for key, value in metadata.items():
        if not key.startswith(SESSION_PREFIX):
            continue
        kind = key[len(SESSION_PREFIX) :]
        (head if kind == "session" else tail).append({"type": kind, "data": value})
    items: list[dict[str, Any]] = []
    for message in display_order(snapshot["messages"]):
        oc = message.get("metadata", {}).get(META)
        if not isinstance(oc, dict):
            continue
        if oc.get("kind") == "message":
            items.append({"type": "message", "data": oc["info"]})
        elif oc.get("kind") == "part":
            items.append({"type": "part", "data": _part(message)})
    return head + items + tail


def _part(message: Mapping[str, Any]) -> dict[str, Any]:
    part: dict[str, Any] = dict(message["metadata"][META]["part"])
    if part.get("type") in TEXT_PARTS:
        part["text"] = message.get("content", "")
    calls = message.get("toolCalls") or []
    if part.get("type") == "tool" and calls:
        call = calls[0]
        state = dict(call.get("state") or {})
        state["input"] = call.get("arguments", {})
        for result in message.get("toolResults") or []:
            if result.get("toolCallId") == call.get("id"):
                for key in ("output", "error"):
                    if key in result:
                        state[key] = result[key]
        part["state"] = state
    return part

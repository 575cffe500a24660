"""Wire types of agentsync: events, frames, errors and close codes. No I/O.

Everything that crosses the wire is defined here once, so the server, the SDK and the
tests agree on it. Errors carry their HTTP status and WebSocket close code, so an edge
adapter never invents either (see SPEC.md §3).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from websockets.frames import Frame, Opcode

from agentsync.values import value

# --- close codes -----------------------------------------------------------------------
# 4000-4499: "reconnect and resume from (epoch, seq)". 4500-4999: "do not retry".
CLOSE_SERVER_SHUTDOWN: Final = 4000
CLOSE_SLOW_CONSUMER: Final = 4001
CLOSE_OVERLOADED: Final = 4002
CLOSE_TOO_MANY_CONNECTIONS: Final = 4003
CLOSE_RATE_LIMITED: Final = 4029
CLOSE_PROTOCOL_ERROR: Final = 4500
CLOSE_UNAUTHORIZED: Final = 4501
CLOSE_FORBIDDEN: Final = 4503
CLOSE_NOT_FOUND: Final = 4504
CLOSE_GONE: Final = 4510
CLOSE_TOO_LARGE: Final = 4513


def is_resumable(close_code: int) -> bool:
    """True when a client should reconnect and resume after this close code."""
    return 4000 <= close_code < 4500 or close_code in (1001, 1006, 1011, 1012, 1013)


# --- errors ----------------------------------------------------------------------------


class AgentsyncError(Exception):
    """An error with everything an edge needs to report it.

    ``status`` is the HTTP status, ``code`` a stable machine-readable string, and
    ``close_code`` the WebSocket close code used when the error ends a connection.
    """

    status: int = 400
    code: str = "bad_request"
    close_code: int = CLOSE_PROTOCOL_ERROR

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(AgentsyncError):
    status, code, close_code = 400, "bad_request", CLOSE_PROTOCOL_ERROR


class Unauthorized(AgentsyncError):
    status, code, close_code = 401, "unauthorized", CLOSE_UNAUTHORIZED


class Forbidden(AgentsyncError):
    status, code, close_code = 403, "forbidden", CLOSE_FORBIDDEN


class NotFound(AgentsyncError):
    status, code, close_code = 404, "not_found", CLOSE_NOT_FOUND


class Conflict(AgentsyncError):
    status, code, close_code = 409, "conflict", CLOSE_PROTOCOL_ERROR


class Gone(AgentsyncError):
    status, code, close_code = 410, "gone", CLOSE_GONE


class PayloadTooLarge(AgentsyncError):
    status, code, close_code = 413, "too_large", CLOSE_TOO_LARGE


class InvalidEvent(AgentsyncError):
    status, code, close_code = 422, "invalid_event", CLOSE_PROTOCOL_ERROR


class RateLimited(AgentsyncError):
    status, code, close_code = 429, "rate_limited", CLOSE_RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyConnections(AgentsyncError):
    status, code, close_code = 429, "too_many_connections", CLOSE_TOO_MANY_CONNECTIONS

    retry_after = 5.0


class Unavailable(AgentsyncError):
    status, code, close_code = 503, "unavailable", CLOSE_OVERLOADED


# --- events ----------------------------------------------------------------------------

EVENT_TYPES: Final = frozenset(
    {"message", "message.delta", "tool_call", "tool_result", "status", "session.update"}
)
ROLES: Final = frozenset({"user", "assistant", "system", "tool"})
MAX_ID_LENGTH: Final = 128
MAX_DEPTH: Final = 32  # nesting of an event's data; deeper is refused (422)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(nbytes: int = 16) -> str:
    """A random URL-safe id; 16 bytes give 128 bits of entropy."""
    return secrets.token_urlsafe(nbytes)


_EVENT_ID_PREFIX = secrets.token_urlsafe(9)
_event_counter = itertools.count(1)


def new_event_id() -> str:
    """An id for an event submitted without one: unique, not secret, and cheap (a random
    per-process prefix and a counter) since it is made for every such event."""
    return f"{_EVENT_ID_PREFIX}.{next(_event_counter):x}"


# @value, not frozen: these are made for every event on the ingest path.
@value
class NewEvent:
    """An event as a writer submitted it, validated, before it has a seq."""

    id: str
    type: str
    ts: int
    data: dict[str, Any]


@dataclass(slots=True)
class Event:
    """An accepted event. ``encoded`` is its JSON envelope, made once and reused."""

    seq: int
    id: str
    type: str
    ts: int
    data: dict[str, Any]
    encoded: bytes

    @classmethod
    def make(cls, seq: int, new: NewEvent) -> Event:
        envelope = {"seq": seq, "id": new.id, "type": new.type, "ts": new.ts, "data": new.data}
        return cls(seq, new.id, new.type, new.ts, new.data, orjson.dumps(envelope))

    @classmethod
    def from_stored(cls, seq: int, id: str, type: str, ts: int, data_json: bytes) -> Event:
        data = orjson.loads(data_json)
        envelope = b'{"seq":%d,"id":%s,"type":%s,"ts":%d,"data":%s}' % (
            seq,
            orjson.dumps(id),
            orjson.dumps(type),
            ts,
            data_json,
        )
        return cls(seq, id, type, ts, data, envelope)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "type": self.type, "ts": self.ts, "data": self.data}


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise InvalidEvent(f"{where}: missing field {key!r}", code="missing_field")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidEvent(
            f"{where}: field {key!r} must be {name}, got {type(value).__name__}",
            code="wrong_type",
        )
    return value


def _optional(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if obj.get(key) is None:
        return None
    return _require(obj, key, kind, where)


def _shallow(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` containers."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return True


def _check_id(value: str, where: str) -> None:
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"{where}: ids must be 1 to {MAX_ID_LENGTH} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold it: refuse it the same on every store
        raise InvalidEvent(f"{where}: ids may not contain the NUL character")


def validate_data(type_: str, data: dict[str, Any], where: str) -> None:
    """Check the shape of ``data`` for an event of ``type_`` (SPEC.md §1)."""
    if type_ == "message":
        _check_id(_require(data, "id", str, where), where)
        role = _require(data, "role", str, where)
        if role not in ROLES:
            raise InvalidEvent(f"{where}: role must be one of {sorted(ROLES)}, got {role!r}")
        _optional(data, "content", str, where)
        _optional(data, "toolCalls", list, where)
        _optional(data, "toolResults", list, where)
        _optional(data, "metadata", dict, where)
    elif type_ == "message.delta":
        _check_id(_require(data, "id", str, where), where)
        _require(data, "delta", str, where)
    elif type_ == "tool_call":
        _check_id(_require(data, "messageId", str, where), where)
        _check_id(_require(data, "id", str, where), where)
        _require(data, "name", str, where)
    elif type_ == "tool_result":
        _check_id(_require(data, "messageId", str, where), where)
        _check_id(_require(data, "toolCallId", str, where), where)
    elif type_ == "status":
        _require(data, "status", str, where)
    elif type_ == "session.update":
        _optional(data, "title", str, where)
        _optional(data, "metadata", dict, where)


def parse_event(obj: Any, index: int = 0) -> NewEvent:
    """Validate one submitted event ``{id?, type, data, ts?}``."""
    where = f"events[{index}]"
    if not isinstance(obj, dict):
        raise InvalidEvent(f"{where}: an event must be a JSON object", code="wrong_type")
    type_ = _require(obj, "type", str, where)
    if type_ not in EVENT_TYPES:
        raise InvalidEvent(
            f"{where}: unknown event type {type_!r}; expected one of {sorted(EVENT_TYPES)}",
            code="unknown_type",
        )
    data = _require(obj, "data", dict, where)
    validate_data(type_, data, where)
    if not _shallow(data, MAX_DEPTH):
        raise InvalidEvent(f"{where}: data is nested deeper than {MAX_DEPTH} levels")
    event_id = _optional(obj, "id", str, where)
    if event_id is None:
        event_id = new_event_id()
    _check_id(event_id, where)
    ts = _optional(obj, "ts", int, where)
    if ts is None:
        ts = now_ms()
    elif not 0 <= ts < 2**53:
        raise InvalidEvent(f"{where}: ts must be milliseconds since the epoch")
    return NewEvent(event_id, type_, ts, data)


def parse_events(obj: Any, *, max_batch: int) -> list[NewEvent]:
    """Validate a batch ``[event, ...]``; an empty batch is an error."""
    if not isinstance(obj, list):
        raise BadRequest("'events' must be a JSON array", code="wrong_type")
    if not obj:
        raise BadRequest("'events' must hold at least one event")
    if len(obj) > max_batch:
        raise PayloadTooLarge(f"a batch holds at most {max_batch} events, got {len(obj)}")
    return [parse_event(item, i) for i, item in enumerate(obj)]


def decode_json(body: bytes) -> Any:
    """Parse a request body, turning every failure into a clear 400."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not valid JSON (UTF-8): {exc}", code="malformed_json"
        ) from exc


# --- frames ----------------------------------------------------------------------------


def events_frame(encoded_events: list[bytes]) -> bytes:
    """One ``events`` frame from already-encoded events, joined without re-encoding."""
    return b'{"op":"events","events":[' + b",".join(encoded_events) + b"]}"


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def ws_text_frame(payload: bytes) -> bytes:
    """A complete unmasked WebSocket text frame: serialized once, written to many readers."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])

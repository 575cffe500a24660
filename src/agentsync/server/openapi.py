"""The OpenAPI document of agentsync's HTTP API, served at /openapi.json.

Hand-written, so that it says what the API promises (SPEC.md §1 and §3) rather than what
a framework inferred: every route, every parameter with its bounds, every event type with
its data fields (as :func:`agentsync.protocol.validate_data` checks them), and every
status a route can answer with. The test suite fuzzes the running server against this
document (tests/fuzz), so a status missing here, or a response that does not match its
schema, fails CI.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse

from agentsync import __version__
from agentsync.protocol import EVENT_TYPES, MAX_ID_LENGTH, ROLES

Schema = dict[str, Any]

MAX_SEQ: Final = 2**53  # since/seq bound of GET /events and /stream
MAX_LIMIT: Final = 10_000
MAX_WAIT: Final = 60  # seconds of long-poll
JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """Optional fields may also be null: the server treats null as absent."""
    return {"anyOf": [schema, {"type": "null"}]}


_ID: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}

# --- what a client sends: events and their data (SPEC.md §1) ---------------------------

_DATA: Final[dict[str, Schema]] = {
    "message": {
        "type": "object",
        "description": "A message; inserts it, or replaces the message with that id.",
        "required": ["id", "role"],
        "properties": {
            "id": _ID,
            "role": {"type": "string", "enum": sorted(ROLES)},
            "content": _nullable({"type": "string"}),
            "toolCalls": _nullable({"type": "array", "items": {}}),
            "toolResults": _nullable({"type": "array", "items": {}}),
            "metadata": _nullable({"type": "object"}),
        },
    },
    "message.delta": {
        "type": "object",
        "description": "Appends `delta` to the content of message `id` (streamed tokens). "
        "The message must exist (422 `unknown_message` otherwise).",
        "required": ["id", "delta"],
        "properties": {"id": _ID, "delta": {"type": "string"}},
    },
    "tool_call": {
        "type": "object",
        "description": "Adds or replaces a tool call on message `messageId`.",
        "required": ["messageId", "id", "name"],
        "properties": {
            "messageId": _ID,
            "id": _ID,
            "name": {"type": "string"},
            "arguments": {"description": "any JSON value"},
        },
    },
    "tool_result": {
        "type": "object",
        "description": "Adds or replaces the result of tool call `toolCallId`.",
        "required": ["messageId", "toolCallId"],
        "properties": {
            "messageId": _ID,
            "toolCallId": _ID,
            "output": {"description": "any JSON value"},
            "error": {"description": "any JSON value"},
        },
    },
    "status": {
        "type": "object",
        "description": 'The session status: "thinking", "idle" or any string.',
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "session.update": {
        "type": "object",
        "description": "Updates the session info.",
        "properties": {
            "title": _nullable({"type": "string"}),
            "metadata": _nullable({"type": "object"}),
        },
    },
}
assert set(_DATA) == EVENT_TYPES


def _new_event(type_: str) -> Schema:
    return {
        "type": "object",
        "required": ["type", "data"],
        "properties": {
            "id": {
                **_ID,
                "description": "Idempotency key: re-sending an id the session holds returns "
                "its original seq and stores nothing. Made up by the server when absent.",
            },
            "type": {"type": "string", "enum": [type_]},
            "ts": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_SEQ - 1,
                "description": "Milliseconds since the Unix epoch; the server's clock if absent.",
            },
            "data": _ref("Data_" + type_.replace(".", "_")),
        },
    }


def _schemas() -> dict[str, Schema]:
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "minLength": 1,
                            "description": "Stable machine-readable code, e.g. `malformed_json`, "
                            "`missing_field`, `wrong_type`, `unknown_type`, `unknown_message`, "
                            "`epoch_changed`, `seq_ahead`, `too_large`, `rate_limited`.",
                        },
                        "message": {"type": "string", "minLength": 1},
                    },
                }
            },
        },
        "NewEvent": {
            "description": "An event as a writer submits it (SPEC.md §1).",
            "oneOf": [_ref("NewEvent_" + t.replace(".", "_")) for t in sorted(EVENT_TYPES)],
        },
        "AppendRequest": {
            "type": "object",
            "required": ["events"],
            "properties": {
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "items": _ref("NewEvent"),
                    "description": "At most --max-batch events (default 1000; 413 above); "
                    "each at most --max-event-bytes encoded (default 256 KiB; 413 above). "
                    "All are stored or none is.",
                }
            },
        },
        "AppendResult": {
            "type": "object",
            "required": ["seqs", "last_seq", "epoch"],
            "properties": {
                "seqs": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1},
                    "description": "One seq per submitted event, in order (the original seq "
                    "for an id the session already held).",
                },
                "last_seq": {"type": "integer", "minimum": 0},
                "epoch": {"type": "string"},
            },
        },
        "Event": {
            "type": "object",
            "description": "An accepted event: the envelope every reader receives.",
            "required": ["seq", "id", "type", "ts", "data"],
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "id": {"type": "string"},
                "type": {"type": "string", "enum": sorted(EVENT_TYPES)},
                "ts": {"type": "integer", "minimum": 0},
                "data": {"type": "object"},
            },
        },
        "EventPage": {
            "type": "object",
            "required": ["events", "last_seq", "epoch"],
            "properties": {
                "events": {"type": "array", "items": _ref("Event")},
                "last_seq": {"type": "integer", "minimum": 0},
                "epoch": {"type": "string"},
            },
        },
        "Snapshot": {
            "type": "object",
            "description": "The session's materialized state at `seq`.",
            "required": ["session", "messages", "status", "seq", "epoch"],
            "properties": {
                "session": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "title": {"type": "string"},
                        "created_at": {"type": "integer"},
                        "expires_at": {"type": ["integer", "null"]},
                        "read": {"type": "string", "enum": ["public", "token"]},
                        "metadata": {"type": "object"},
                    },
                },
                "messages": {"type": "array", "items": {"type": "object"}},
                "status": {"type": "string"},
                "seq": {"type": "integer", "minimum": 0},
                "epoch": {"type": "string"},
            },
        },
        "CreateShareRequest": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 500},
                "ttl_seconds": _nullable(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 365 * 24 * 3600,
                        "description": "Lifetime; at most --max-ttl-seconds (default 1 year); "
                        "--default-ttl-seconds (30 days) when absent or null.",
                    }
                ),
                "read": {
                    "type": "string",
                    "enum": ["public", "token"],
                    "default": "public",
                    "description": "`public`: anyone with the link reads; `token`: reading "
                    "needs the returned `read_token` (or the secret).",
                },
            },
        },
        "ShareCreated": {
            "type": "object",
            "required": ["session_id", "share_url", "secret", "expires_at", "read", "epoch"],
            "properties": {
                "session_id": {"type": "string", "minLength": 16},
                "share_url": {"type": "string"},
                "secret": {
                    "type": "string",
                    "description": "The write secret; shown once, stored only as a hash.",
                },
                "read_token": {"type": "string", "description": "Only for `read: token` shares."},
                "expires_at": {"type": ["integer", "null"]},
                "read": {"type": "string", "enum": ["public", "token"]},
                "epoch": {"type": "string"},
                "imported": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Import only: the number of events imported.",
                },
            },
        },
        "SseEvent": {
            "type": "object",
            "description": (
                "One Server-Sent Event. Without `event` (i.e. `message`), `data` is an "
                "Event and `id` its seq; `init` carries the Snapshot (`id` = its seq); "
                "`error` carries an Error and ends the stream (e.g. the share was deleted). "
                "The stream starts with `retry: 1000` and sends `: keepalive` comments "
                "when idle."
            ),
            "required": ["data"],
            "properties": {
                "event": {"type": "string", "enum": ["message", "init", "error"]},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {"type": "string", "contentMediaType": JSON},
                "retry": {"type": "integer", "minimum": 0},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
            "additionalProperties": True,
        },
    }
    for type_, data in _DATA.items():
        key = type_.replace(".", "_")
        schemas["Data_" + key] = data
        schemas["NewEvent_" + key] = _new_event(type_)
    return schemas


# --- responses ---------------------------------------------------------------------------

_ERROR_TEXT: Final[dict[int, str]] = {
    400: "Malformed request: body not JSON (UTF-8), wrong shape, or a parameter out of bounds.",
    401: "Missing credentials: send `Authorization: Bearer <secret or read token>`.",
    403: "Wrong secret or read token.",
    404: "No share with that id.",
    409: "Seq or epoch conflict: `since` beyond the log, or `epoch` is not the log's epoch "
    "(re-read the snapshot).",
    410: "The share was deleted or has expired.",
    413: "Too large: body, batch or event over its limit.",
    422: "Invalid event: unknown type, missing or mistyped field, unknown message.",
    429: "Rate limited; retry after `Retry-After` seconds.",
    503: "Unavailable: the store could not take the write, or the node is not ready.",
}


def _error(status: int) -> Schema:
    response: Schema = {
        "description": _ERROR_TEXT[status],
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "required": True,
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _responses(ok: dict[str, Schema], *errors: int) -> dict[str, Schema]:
    out = dict(ok)
    for status in (*errors, 429):
        out[str(status)] = _error(status)
    return out


# --- parameters ----------------------------------------------------------------------------

_SESSION_ID: Final[Schema] = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "description": "The share's id (random, URL-safe).",
    "schema": {"type": "string", "minLength": 1},
}
_TOKEN: Final[Schema] = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "The read token or the secret, for clients that cannot set headers "
    "(browsers); `Authorization: Bearer` is preferred.",
    "schema": {"type": "string"},
}
_SINCE: Final[Schema] = {
    "name": "since",
    "in": "query",
    "required": False,
    "description": "Return events after this seq (default 0).",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
}
_EPOCH: Final[Schema] = {
    "name": "epoch",
    "in": "query",
    "required": False,
    "description": "The epoch the client's `since` belongs to.",
    "schema": {"type": "string"},
}

Security = list[dict[str, list[str]]]
_READ_SECURITY: Final[Security] = [{}, {"bearerAuth": []}]  # public shares need nothing
_WRITE_SECURITY: Final[Security] = [{"bearerAuth": []}]
_OPERATOR_SECURITY: Final[Security] = [{}, {"bearerAuth": []}]  # an operator key if configured


def _paths() -> dict[str, Schema]:
    read_errors = (400, 401, 403, 404, 410)
    return {
        "/v1/shares": {
            "post": {
                "operationId": "createShare",
                "summary": "Create a share",
                "security": _OPERATOR_SECURITY,
                "requestBody": {
                    "required": False,
                    "content": {JSON: {"schema": _ref("CreateShareRequest")}},
                },
                "responses": _responses(
                    {"201": _json("The share; keep `secret` to write.", _ref("ShareCreated"))},
                    400,
                    401,
                    403,
                    413,
                ),
            }
        },
        "/v1/shares/{session_id}": {
            "parameters": [_SESSION_ID],
            "delete": {
                "operationId": "deleteShare",
                "summary": "Delete a share: its log, snapshots and archives; live readers "
                "are closed",
                "security": _WRITE_SECURITY,
                "responses": _responses(
                    {"204": {"description": "Deleted."}}, 400, 401, 403, 404, 410
                ),
            },
        },
        "/v1/sessions/import": {
            "post": {
                "operationId": "importSession",
                "summary": "A new share from an export (JSON Lines)",
                "security": _OPERATOR_SECURITY,
                "parameters": [
                    {
                        "name": "read",
                        "in": "query",
                        "required": False,
                        "description": "Read policy of the new share.",
                        "schema": {"type": "string", "enum": ["public", "token"]},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "description": "What GET /export returns: a header line "
                    '`{"format": "agentsync.export/1", "session": {...}, ...}`, then one '
                    "event per line. At most 16 x --max-body-bytes.",
                    "content": {NDJSON: {"schema": {"type": "string"}}},
                },
                "responses": _responses(
                    {"201": _json("The new share.", _ref("ShareCreated"))},
                    400,
                    401,
                    403,
                    413,
                    422,
                    503,
                ),
            }
        },
        "/v1/sessions/{session_id}/events": {
            "parameters": [_SESSION_ID],
            "post": {
                "operationId": "appendEvents",
                "summary": "Append a batch of events",
                "security": _WRITE_SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("AppendRequest")}},
                },
                "responses": _responses(
                    {"200": _json("Stored durably; one seq per event.", _ref("AppendResult"))},
                    400,
                    401,
                    403,
                    404,
                    409,
                    410,
                    413,
                    422,
                    503,
                ),
            },
            "get": {
                "operationId": "listEvents",
                "summary": "A page of events after `since`; long-polls up to `wait` seconds "
                "when there is none",
                "security": _READ_SECURITY,
                "parameters": [
                    _SINCE,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Most events returned (default 1000).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "Seconds to wait for an event when none is after "
                        "`since` (default 0).",
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                    },
                    _EPOCH,
                    _TOKEN,
                ],
                "responses": _responses(
                    {"200": _json("Events in seq order.", _ref("EventPage"))},
                    *read_errors,
                    409,
                ),
            },
        },
        "/v1/sessions/{session_id}": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "getSnapshot",
                "summary": "The session's snapshot, with `seq` and `epoch`",
                "security": _READ_SECURITY,
                "parameters": [_TOKEN],
                "responses": _responses(
                    {"200": _json("The snapshot.", _ref("Snapshot"))}, *read_errors
                ),
            },
        },
        "/v1/sessions/{session_id}/stream": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "streamEvents",
                "summary": "Server-Sent Events: `init` (the snapshot) or a catch-up, then "
                "live events; each event's `id:` is its seq",
                "security": _READ_SECURITY,
                "parameters": [
                    _SINCE,
                    _EPOCH,
                    _TOKEN,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this seq (takes precedence over `since`).",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": _responses(
                    {
                        "200": {
                            "description": "An endless event stream.",
                            "content": {"text/event-stream": {"schema": _ref("SseEvent")}},
                        }
                    },
                    *read_errors,
                ),
            },
        },
        "/v1/sessions/{session_id}/export": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "exportSession",
                "summary": "The whole log as JSON Lines: a header line, then one event per line",
                "security": _READ_SECURITY,
                "parameters": [_TOKEN],
                "responses": _responses(
                    {
                        "200": {
                            "description": "The export, streamed.",
                            "content": {NDJSON: {"schema": {"type": "string"}}},
                        }
                    },
                    *read_errors,
                ),
            },
        },
        "/share/{session_id}": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "sharePage",
                "summary": "The web viewer",
                "security": _READ_SECURITY,
                "parameters": [_TOKEN],
                "responses": _responses(
                    {
                        "200": {
                            "description": "The viewer page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                    *read_errors,
                ),
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": _responses({"200": _json("Alive.", _ref("Health"))}),
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store answers and the node is not draining",
                "security": [],
                "responses": {
                    "200": _json("Ready.", _ref("Health")),
                    "503": _json("Not ready (store down, or draining).", _ref("Health")),
                    "429": _error(429),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": [],
                "responses": _responses(
                    {
                        "200": {
                            "description": "Prometheus text format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    }
                ),
            }
        },
        "/v1/admin/shares": {
            "get": {
                "operationId": "adminListShares",
                "summary": "Operator: every live share, by id, a page at a time",
                "security": _OPERATOR_SECURITY,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _responses(
                    {"200": _json("A page of shares.", _ADMIN_PAGE)}, 400, 401, 403
                ),
            }
        },
        "/v1/admin/shares/{session_id}": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "adminShowShare",
                "summary": "Operator: one share (never its secret or token)",
                "security": _OPERATOR_SECURITY,
                "responses": _responses(
                    {"200": _json("The share.", _ADMIN_SHARE)}, 400, 401, 403, 404
                ),
            },
            "delete": {
                "operationId": "adminDeleteShare",
                "summary": "Operator: delete any share",
                "security": _OPERATOR_SECURITY,
                "responses": _responses({"204": {"description": "Deleted."}}, 400, 401, 403, 404),
            },
        },
        "/v1/admin/shares/{session_id}/expire": {
            "parameters": [_SESSION_ID],
            "post": {
                "operationId": "adminExpireShare",
                "summary": "Operator: expire a share now (410 from then on)",
                "security": _OPERATOR_SECURITY,
                "responses": _responses({"204": {"description": "Expired."}}, 400, 401, 403, 404),
            },
        },
        **_opencode_paths(),
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": _responses({"200": _json("OpenAPI 3.1.", {"type": "object"})}),
            }
        },
    }


def _opencode_paths() -> dict[str, Schema]:
    """opencode's share API (``enterprise.url``; see server/opencode.py). The secret
    travels in the JSON body, as opencode sends it."""
    secret = {"secret": {"type": "string", "description": "The share's write secret."}}
    item = {
        "type": "object",
        "required": ["type", "data"],
        "properties": {
            "type": {
                "type": "string",
                "description": "session, message, part, session_diff, model",
            },
            "data": {"description": "opencode's object (an array for session_diff and model)."},
        },
    }
    return {
        "/api/share": {
            "post": {
                "operationId": "opencodeCreateShare",
                "summary": "opencode: create a public share for an opencode session",
                "security": _OPERATOR_SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["sessionID"],
                                "properties": {"sessionID": {"type": "string", "minLength": 1}},
                            }
                        }
                    },
                },
                "responses": _responses(
                    {
                        "200": _json(
                            "The share: `url` is the viewer page.",
                            {
                                "type": "object",
                                "required": ["id", "secret", "url"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "secret": {"type": "string"},
                                    "url": {"type": "string"},
                                },
                            },
                        )
                    },
                    400,
                    401,
                    403,
                    413,
                ),
            }
        },
        "/api/share/{session_id}/sync": {
            "parameters": [_SESSION_ID],
            "post": {
                "operationId": "opencodeSync",
                "summary": "opencode: upsert items; each becomes events of the share's log",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["secret", "data"],
                                "properties": {
                                    **secret,
                                    "data": {"type": "array", "items": item},
                                },
                            }
                        }
                    },
                },
                "responses": _responses(
                    {
                        "200": _json(
                            "Stored durably (no seqs when nothing changed).",
                            {
                                "type": "object",
                                "required": ["seqs", "last_seq"],
                                "properties": {
                                    "seqs": {"type": "array", "items": {"type": "integer"}},
                                    "last_seq": {"type": "integer"},
                                },
                            },
                        )
                    },
                    400,
                    401,
                    403,
                    404,
                    410,
                    413,
                    422,
                    503,
                ),
            },
        },
        "/api/share/{session_id}/data": {
            "parameters": [_SESSION_ID],
            "get": {
                "operationId": "opencodeData",
                "summary": "opencode: the merged items (what `opencode import` reads)",
                "security": _READ_SECURITY,
                "responses": _responses(
                    {"200": _json("The items.", {"type": "array", "items": item})},
                    400,
                    401,
                    403,
                    404,
                    410,
                ),
            },
        },
        "/api/share/{session_id}": {
            "parameters": [_SESSION_ID],
            "delete": {
                "operationId": "opencodeDeleteShare",
                "summary": "opencode: unshare (204 also when already deleted or expired)",
                "security": [],
                "requestBody": {
                    "required": False,
                    "content": {JSON: {"schema": {"type": "object", "properties": secret}}},
                },
                "responses": _responses(
                    {"204": {"description": "Deleted, or was already."}}, 400, 401, 403, 404
                ),
            },
        },
    }


_ADMIN_SHARE: Schema = {
    "type": "object",
    "required": ["session_id", "title", "created_at", "read", "epoch", "loaded", "readers"],
    "properties": {
        "session_id": {"type": "string"},
        "title": {"type": "string"},
        "created_at": {"type": "integer"},
        "expires_at": {"type": ["integer", "null"]},
        "read": {"type": "string", "enum": ["public", "token"]},
        "epoch": {"type": "string"},
        "loaded": {"type": "boolean"},
        "readers": {"type": "integer"},
        "seq": {"type": "integer"},
    },
}
_ADMIN_PAGE: Schema = {
    "type": "object",
    "required": ["shares", "next", "total"],
    "properties": {
        "shares": {"type": "array", "items": _ADMIN_SHARE},
        "next": {"type": ["string", "null"]},
        "total": {"type": "integer"},
    },
}


def openapi_schema() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentsync",
            "version": __version__,
            "description": "Real-time sync and sharing of AI coding-agent sessions. Errors "
            'are `{"error": {"code", "message"}}`. The WebSocket API '
            "(`/v1/sessions/{session_id}/ws`) is described in the README.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The share's write secret (writes, delete), or its read "
                    "token or secret (reading a `token` share).",
                }
            },
        },
    }


_CACHED: dict[str, Any] | None = None


async def openapi_endpoint(request: Request) -> JSONResponse:
    global _CACHED
    if _CACHED is None:
        _CACHED = openapi_schema()
    return JSONResponse(_CACHED)

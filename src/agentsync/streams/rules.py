"""The rules of Durable Streams that need no I/O: offsets, headers, decisions, framing.

Theory of operation:

* A stream is a sequence of **units**, one per accepted append (a PUT's initial body is
  unit 1). The position after unit ``seq`` is the offset ``f"{0:016d}_{seq:016d}"``: fixed
  width, so lexicographic order is numeric order, and ``0000000000000000_0000000000000000``
  is the start, as the official conformance suite assumes. The first field stays 0 (room
  for a compaction generation).
* Every decision that must be atomic with the data (closed, content type, idempotent
  producer epoch/seq, ``Stream-Seq``) is made by :func:`decide_append` on a snapshot of the
  stream's row, inside the store's write job, so the store writes the unit and the new
  producer state together or not at all, in the order the jobs were queued.
* Refusals are :class:`StreamError` with their HTTP status and the protocol's headers
  (``Stream-Closed``, ``Producer-Epoch``, ``Producer-Expected-Seq``…).

The observable behaviour follows the reference server (npm ``@durable-streams/server``)
and PROTOCOL.md of github.com/durable-streams/durable-streams.
"""

from __future__ import annotations

import base64
import codecs
import functools
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from agentsync.protocol import AgentsyncError
from agentsync.values import value

OFFSET_WIDTH: Final = 16
START: Final = 0  # the seq before the first unit
NOW: Final = -1  # the "now" sentinel (the tail, whatever it is)
MAX_SAFE_INTEGER: Final = 2**53 - 1
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
JSON_TYPE: Final = "application/json"

# Used with fullmatch: "$" would let a trailing newline through; [0-9], not \d (Unicode).
_OFFSET: Final = re.compile(r"([0-9]+)_([0-9]+)")
_TTL: Final = re.compile(r"0|[1-9][0-9]*")
_DIGITS: Final = re.compile(r"[0-9]+")
_MEDIA_TYPE: Final = re.compile(r"^[\w.+-]+/[\w.+-]+")
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")

# Stream-Cursor: 20 s intervals since this epoch, as the reference server counts them.
CURSOR_EPOCH_MS: Final = int(datetime(2024, 10, 9, tzinfo=UTC).timestamp() * 1000)
CURSOR_INTERVAL_S: Final = 20
CURSOR_JITTER_S: Final = (1, 3600)

# Caching of catch-up responses: a range that ends before the tail never changes.
CACHE_IMMUTABLE: Final = "public, max-age=60, stale-while-revalidate=300"
CACHE_AT_TAIL: Final = "no-cache"
CACHE_NONE: Final = "no-store"


class StreamError(AgentsyncError):
    """A refusal with its HTTP status and the protocol headers that go with it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.headers = headers or {}


def bad_request(message: str, code: str = "bad_request") -> StreamError:
    return StreamError(400, code, message)


def not_found(path: str) -> StreamError:
    return StreamError(404, "not_found", f"no stream at {path!r}")


def gone(path: str) -> StreamError:
    """A soft-deleted stream: deleted (or expired) while forks still read through it."""
    return StreamError(
        410, "stream_gone", f"stream {path!r} was deleted; its forks still read its data"
    )


# --- offsets ---------------------------------------------------------------------------


def offset_of(seq: int) -> str:
    """The offset after unit ``seq`` (``seq`` 0: the start of the stream)."""
    return f"{0:0{OFFSET_WIDTH}d}_{seq:0{OFFSET_WIDTH}d}"


def parse_offset(values: list[str]) -> int | None:
    """The ``offset`` query parameter(s) as the seq to read after, :data:`NOW`, or None
    when absent. ``-1`` is the start; empty, repeated or malformed values are 400."""
    if not values:
        return None
    if len(values) > 1:
        raise bad_request("give one 'offset' query parameter, not several", "bad_offset")
    raw = values[0]
    if raw == "":
        raise bad_request("the 'offset' query parameter is empty", "bad_offset")
    if raw == "-1":
        return START
    if raw == "now":
        return NOW
    m = _OFFSET.fullmatch(raw)
    if m is None or int(m.group(1)) != 0:
        raise bad_request(f"{raw!r} is not an offset this server issued", "bad_offset")
    return int(m.group(2))


# --- request headers -------------------------------------------------------------------


def is_true(value: str | None) -> bool:
    """``Stream-Closed`` counts only when it says ``true`` (any case); anything else is
    ignored, never an error."""
    return value is not None and value.strip().lower() == "true"


@functools.lru_cache(maxsize=256)  # a handful of distinct headers; every append asks
def media_type(content_type: str | None) -> str:
    """The comparable part of a content type: ``Application/JSON; charset=utf-8`` ->
    ``application/json``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    return media_type(content_type) == JSON_TYPE


def has_media_type(header: str | None) -> bool:
    """The header names a ``type/subtype`` (else a PUT gets the default, a fork its
    source's)."""
    return header is not None and _MEDIA_TYPE.match(header.strip()) is not None


def create_content_type(header: str | None) -> str:
    """A PUT's content type, kept verbatim; absent or not ``type/subtype``: octet-stream."""
    if header is None or not has_media_type(header):
        return DEFAULT_CONTENT_TYPE
    return header.strip()


def parse_ttl(value: str | None) -> int | None:
    """``Stream-TTL``: seconds, ``0|[1-9][0-9]*`` only (no sign, leading zero, fraction)."""
    if value is None:
        return None
    if not _TTL.fullmatch(value) or len(value) > 15:
        raise bad_request(
            f"Stream-TTL must be a whole number of seconds below 10^15, got {value[:40]!r}"
        )
    return int(value)


def parse_expires_at(value: str | None) -> int | None:
    """``Stream-Expires-At`` (RFC 3339) in ms since the epoch; no zone means UTC."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise bad_request(f"Stream-Expires-At must be an RFC 3339 time, got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@value
class Producer:
    """An idempotent producer's claim on one append: ``(id, epoch, seq)``."""

    id: str
    epoch: int
    seq: int


def parse_producer(producer_id: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    """``Producer-Id``/``-Epoch``/``-Seq``: all or none; a non-empty id and decimal
    integers up to 2^53-1."""
    given = [h is not None for h in (producer_id, epoch, seq)]
    if not any(given):
        return None
    if not all(given):
        raise bad_request(
            "Producer-Id, Producer-Epoch and Producer-Seq must be sent together",
            "bad_producer",
        )
    assert producer_id is not None and epoch is not None and seq is not None
    if producer_id == "":
        raise bad_request("Producer-Id must not be empty", "bad_producer")
    numbers = []
    for name, raw in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if not _DIGITS.fullmatch(raw) or int(raw) > MAX_SAFE_INTEGER:
            raise bad_request(f"{name} must be an integer from 0 to 2^53-1", "bad_producer")
        numbers.append(int(raw))
    return Producer(producer_id, numbers[0], numbers[1])


def initial_unit(content_type: str, body: bytes | None) -> bytes | None:
    """A PUT's body as its first unit (None: no unit), once the content type is known."""
    if not body:
        return None
    if is_json(content_type):
        return json_unit(body, initial=True) or None
    return body


# --- JSON mode -------------------------------------------------------------------------


def json_unit(body: bytes, *, initial: bool) -> bytes:
    """A JSON-mode body as one stored unit: its values re-encoded and comma-joined, a
    top-level array flattened one level. ``[]`` is an empty unit on create (``initial``)
    and 400 on append; invalid JSON is 400."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("the body is not valid JSON", "invalid_json") from None
    if isinstance(value, list):
        if not value:
            if initial:
                return b""
            raise bad_request("an empty JSON array appends nothing", "empty_array")
        return b",".join(orjson.dumps(v) for v in value)
    return orjson.dumps(value)


def json_body(units: list[bytes]) -> bytes:
    """Units of a JSON stream as the one array a read returns."""
    return b"[" + b",".join(u for u in units if u) + b"]"


# --- the stream's row and the decisions on it ------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """Units ``after < seq <= up_to`` of stream ``stream_id``: a piece of a read."""

    stream_id: int
    after: int
    up_to: int


@dataclass(frozen=True, slots=True)
class Fork:
    """What a fork was created from. Its own units follow ``offset`` in the source's seq
    space; ``inherited`` (root first) is where the seqs up to ``offset`` are stored, fixed
    at creation: the streams named there are kept (soft-deleted at worst) while it lives."""

    source_path: str
    source_id: int
    offset: int
    sub_offset: int
    inherited: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class ForkRequest:
    """``Stream-Forked-From`` (as a stream path), ``-Fork-Offset`` (None: the source's
    tail) and ``-Fork-Sub-Offset`` (0: none)."""

    source: str
    offset: int | None
    sub_offset: int


@value
class StreamState:
    """One stream as its store row holds it. ``id`` changes with every (re-)creation, so a
    re-created path never matches old ETags or producer state."""

    id: int
    path: str
    content_type: str
    ttl_seconds: int | None
    expires_at: str | None  # Stream-Expires-At as given (echoed by HEAD)
    expires_at_ms: int | None
    created_at: int
    accessed_at: int  # as last persisted; the node keeps a fresher value in memory
    tail: int  # seq of the last unit; 0 when empty
    closed: bool
    closed_by: Producer | None  # the producer tuple that closed it, for dedup
    stream_seq: str | None  # the highest Stream-Seq accepted
    fork: Fork | None = None
    refs: int = 0  # forks created from it that still exist (soft-deleted ones too)
    deleted: bool = False  # soft-deleted: 410 to everyone, kept for its forks' reads

    def expired(self, now_ms: int, accessed_ms: int = 0) -> bool:
        """Past ``Stream-Expires-At``, or idle for ``Stream-TTL`` (from the later of the
        stored and the in-memory access time)."""
        if self.expires_at_ms is not None and now_ms >= self.expires_at_ms:
            return True
        if self.ttl_seconds is not None:
            last = max(self.accessed_at, accessed_ms)
            return now_ms >= last + self.ttl_seconds * 1000
        return False

    @property
    def is_json(self) -> bool:
        return is_json(self.content_type)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    content_type: str | None  # None only for a fork: its source's
    ttl_seconds: int | None
    expires_at: str | None
    expires_at_ms: int | None
    closed: bool
    body: bytes | None  # the initial body as sent; see initial_unit
    fork: ForkRequest | None = None


def same_config(state: StreamState, req: CreateRequest) -> bool:
    """A repeated PUT is idempotent (200) when it asks for what exists, else 409. A
    fork's request is compared after :func:`forks.resolve` filled in what it inherits;
    an omitted fork offset matches any, sub-offset 0 is no sub-offset."""
    if (state.fork is None) != (req.fork is None):
        return False
    if (
        state.fork is not None
        and req.fork is not None
        and (
            state.fork.source_path != req.fork.source
            or (req.fork.offset is not None and req.fork.offset != state.fork.offset)
            or req.fork.sub_offset != state.fork.sub_offset
        )
    ):
        return False
    return (
        (req.content_type is None or media_type(state.content_type) == media_type(req.content_type))
        and state.ttl_seconds == req.ttl_seconds
        and state.expires_at == req.expires_at
        and state.closed == req.closed
    )


def created_headers(state: StreamState) -> dict[str, str]:
    headers = {"content-type": state.content_type, "stream-next-offset": offset_of(state.tail)}
    if state.closed:
        headers["stream-closed"] = "true"
    return headers


@value
class AppendRequest:
    """A POST, checked for form by the edge. ``unit`` None means close-only (empty body
    with ``Stream-Closed: true``); ``body_error`` is a body the edge could not turn into a
    unit (invalid JSON, ``[]``), refused only if nothing with precedence refuses first."""

    unit: bytes | None
    content_type: str | None
    stream_seq: str | None
    producer: Producer | None
    close: bool
    body_error: StreamError | None = None


@value
class ProducerState:
    epoch: int
    seq: int  # the highest seq accepted in this epoch


@value
class Write:
    """Accepted: store ``unit`` (if any) as the next unit, then the rest, atomically."""

    unit: bytes | None
    producer_state: ProducerState | None
    stream_seq: str | None
    close: bool


@value
class Duplicate:
    """An idempotent producer's retry of an append the stream already holds: 204,
    nothing stored. ``seq`` is the highest accepted, not the request's."""

    epoch: int
    seq: int
    closed: bool  # answer with Stream-Closed: true


def closed_by_json(producer: Producer | None) -> str | None:
    """The ``closed_by`` column: the producer tuple that closed a stream, as JSON."""
    if producer is None:
        return None
    return orjson.dumps([producer.id, producer.epoch, producer.seq]).decode()


def appended_state(
    state: StreamState, req: AppendRequest, plan: Write | None, now_ms: int
) -> StreamState:
    """The row an append leaves behind (``plan`` None: a duplicate, which only touches
    ``accessed_at``); the stores write exactly this, so they need not read it back."""
    # Spelled out: dataclasses.replace costs more than the SQL it saves (the hot path).
    accessed_at = max(state.accessed_at, now_ms)
    tail, closed, closed_by, stream_seq = state.tail, state.closed, state.closed_by, None
    if plan is None:
        stream_seq = state.stream_seq
    else:
        tail += plan.unit is not None
        if plan.close and not closed:
            closed, closed_by = True, req.producer
        stream_seq = plan.stream_seq
    return StreamState(
        state.id,
        state.path,
        state.content_type,
        state.ttl_seconds,
        state.expires_at,
        state.expires_at_ms,
        state.created_at,
        accessed_at,
        tail,
        closed,
        closed_by,
        stream_seq,
        state.fork,
        state.refs,
        state.deleted,
    )


def _closed_error(state: StreamState) -> StreamError:
    return StreamError(
        409,
        "stream_closed",
        f"stream {state.path!r} is closed",
        {"stream-closed": "true", "stream-next-offset": offset_of(state.tail)},
    )


def decide_producer(current: ProducerState | None, claim: Producer) -> ProducerState | Duplicate:
    """Kafka-style idempotent producer validation: the state to store if accepted, a
    :class:`Duplicate`, or a StreamError (403 stale epoch, 400 new epoch not at seq 0,
    409 sequence gap)."""
    if current is None or claim.epoch > current.epoch:
        if current is not None and claim.seq != 0:
            raise StreamError(
                400, "bad_producer_epoch", "a new Producer-Epoch must start at Producer-Seq 0"
            )
        if claim.seq != 0:
            raise _gap(0, claim.seq)
        return ProducerState(claim.epoch, 0)
    if claim.epoch < current.epoch:
        raise StreamError(
            403,
            "stale_producer_epoch",
            f"Producer-Epoch {claim.epoch} is older than the current {current.epoch}",
            {"producer-epoch": str(current.epoch)},
        )
    if claim.seq <= current.seq:
        return Duplicate(current.epoch, current.seq, closed=False)
    if claim.seq == current.seq + 1:
        return ProducerState(claim.epoch, claim.seq)
    raise _gap(current.seq + 1, claim.seq)


def _gap(expected: int, received: int) -> StreamError:
    return StreamError(
        409,
        "producer_seq_gap",
        f"Producer-Seq {received} skips ahead; expected {expected}",
        {"producer-expected-seq": str(expected), "producer-received-seq": str(received)},
    )


def decide_append(
    state: StreamState, current: ProducerState | None, req: AppendRequest
) -> Write | Duplicate:
    """What an append does to ``state`` (the producer's state ``current``).

    Precedence, as the reference server: closed (the tuple that closed it is a
    duplicate, anything else 409), then content type (not for close-only), then the
    producer, then ``Stream-Seq``, then the body itself.
    """
    claim = req.producer
    if state.closed:
        if claim is not None and claim == state.closed_by:
            return Duplicate(claim.epoch, claim.seq, closed=True)
        if claim is None and req.unit is None:
            return Write(None, None, state.stream_seq, close=True)  # closing again: no-op
        raise _closed_error(state)
    if (
        req.unit is not None
        and req.content_type is not None
        and media_type(req.content_type) != media_type(state.content_type)
    ):
        raise StreamError(
            409,
            "content_type_mismatch",
            f"the stream holds {state.content_type}, not {req.content_type}",
        )
    producer_state: ProducerState | None = None
    if claim is not None:
        decided = decide_producer(current, claim)
        if isinstance(decided, Duplicate):
            return Duplicate(decided.epoch, decided.seq, closed=req.unit is None)
        producer_state = decided
    stream_seq = state.stream_seq
    if req.unit is not None and req.stream_seq is not None:
        if stream_seq is not None and req.stream_seq <= stream_seq:
            raise StreamError(
                409,
                "stream_seq_conflict",
                f"Stream-Seq {req.stream_seq!r} is not above {stream_seq!r}",
            )
        stream_seq = req.stream_seq
    if req.body_error is not None:
        raise req.body_error
    return Write(req.unit, producer_state, stream_seq, req.close)


def append_headers(
    state: StreamState, req: AppendRequest, outcome: Write | Duplicate
) -> dict[str, str]:
    """The success headers of an append, given the state after it."""
    headers: dict[str, str] = {}
    if isinstance(outcome, Duplicate):
        if outcome.closed:
            headers["stream-next-offset"] = offset_of(state.tail)
            headers["stream-closed"] = "true"
        headers["producer-epoch"] = str(outcome.epoch)
        headers["producer-seq"] = str(outcome.seq)
        return headers
    headers["stream-next-offset"] = offset_of(state.tail)
    if req.producer is not None:
        headers["producer-epoch"] = str(req.producer.epoch)
        headers["producer-seq"] = str(req.producer.seq)
    if state.closed:
        headers["stream-closed"] = "true"
    return headers


def append_status(req: AppendRequest, outcome: Write | Duplicate) -> int:
    """200 for a producer's new append, 204 for everything else that succeeds."""
    if isinstance(outcome, Write) and req.producer is not None and req.unit is not None:
        return 200
    return 204


# --- reads -----------------------------------------------------------------------------


def etag(stream_id: int, start: str, end: str, closed: bool) -> str:
    """A catch-up response's ETag; changes with the range, the incarnation and closing."""
    return f'"{stream_id}:{start}:{end}{":c" if closed else ""}"'


def response_cursor(client_cursor: str | None, now_ms: int, rng: random.Random) -> str:
    """``Stream-Cursor``: the current 20 s interval, or, when the client already holds
    that one or a later one, strictly more (with jitter), so CDN-collapsed long-polls
    never cycle between cached responses."""
    current = (now_ms - CURSOR_EPOCH_MS) // (CURSOR_INTERVAL_S * 1000)
    if not client_cursor:
        return str(current)
    try:
        theirs = int(client_cursor)
    except ValueError:
        return str(current)
    if theirs < current:
        return str(current)
    jitter_s = rng.randint(*CURSOR_JITTER_S)
    return str(theirs + max(1, -(-jitter_s // CURSOR_INTERVAL_S)))


# --- SSE -------------------------------------------------------------------------------


def sse_uses_base64(content_type: str) -> bool:
    """Text and JSON go as text; everything else base64 (``Stream-SSE-Data-Encoding``)."""
    media = media_type(content_type)
    return not (media.startswith("text/") or media == JSON_TYPE)


def sse_event(kind: str, payload: str) -> bytes:
    """One SSE event. Each line of ``payload`` (CR, LF or CRLF) gets its own ``data:``
    line, so no payload can end the event or inject another."""
    lines = _LINE_BREAK.split(payload)
    return (f"event: {kind}\n" + "".join(f"data:{line}\n" for line in lines) + "\n").encode()


def sse_data(
    content_type: str,
    units: list[bytes],
    text: codecs.IncrementalDecoder | None = None,
    *,
    final: bool = False,
) -> bytes:
    """The ``data`` event for a batch of units: one JSON array, base64 or text. ``text``:
    the connection's UTF-8 decoder, which holds a character split across two appends
    until its last bytes arrive (the next batch), rather than mangling both halves."""
    if is_json(content_type):
        return sse_event("data", json_body(units).decode())
    raw = b"".join(units)
    if sse_uses_base64(content_type):
        return sse_event("data", base64.b64encode(raw).decode("ascii"))
    if text is not None:
        return sse_event("data", text.decode(raw, final))
    return sse_event("data", raw.decode("utf-8", "replace"))


def text_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("replace")


def sse_control(next_seq: int, cursor: str, *, up_to_date: bool, closed: bool) -> bytes:
    """The ``control`` event after each batch; a closed stream's last one carries
    ``streamClosed`` and no cursor."""
    control: dict[str, Any] = {"streamNextOffset": offset_of(next_seq)}
    if closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = cursor
        if up_to_date:
            control["upToDate"] = True
    return sse_event("control", orjson.dumps(control).decode())

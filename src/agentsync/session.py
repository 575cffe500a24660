"""The per-session core: seq, idempotency, the snapshot fold, readers. No I/O.

Theory of operation
-------------------
A :class:`Session` is the single authority for one session's log on this node. Writers
hand it batches of validated :class:`NewEvent`; it answers with a :class:`Prepared` batch
whose events carry the next seqs. The caller stores the batch durably and only then calls
:meth:`Session.commit`, which folds the events into the :class:`SessionState`, appends them
to the in-memory backlog and makes them visible to readers. Invariants (SPEC.md §2):

1. Seqs are dense: every prepared event gets ``next_seq``; a batch that fails to store is
   rolled back with :meth:`Session.abort` before anything later was prepared, or the whole
   session is discarded and reloaded from the store.
2. Order: batches commit in the order they were prepared; readers only ever see committed
   events, so every reader sees seqs 1, 2, 3 ... with no gap and no duplicate.
3. Idempotency: an event id the session holds (committed or in flight) maps to its seq;
   re-sending it returns that seq and prepares nothing new.
4. Resume: a reader arriving with ``(epoch, since)`` gets a catch-up from ``since`` when the
   epoch matches and ``since`` is in the log; otherwise a snapshot first.
5. Bounded resources: the backlog keeps the newest events only (by count and by bytes); a
   reader whose cursor falls out of it is told to resume from the store or is cut off.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentsync.protocol import (
    Conflict,
    Event,
    InvalidEvent,
    NewEvent,
    PayloadTooLarge,
    events_frame,
)

# --- the snapshot fold -----------------------------------------------------------------


class SessionState:
    """The materialized session: info, ordered messages with tool calls, status, seq."""

    __slots__ = ("_deltas", "info", "messages", "seq", "status")

    def __init__(self, info: dict[str, Any]) -> None:
        self.info: dict[str, Any] = dict(info)
        self.info.setdefault("metadata", {})
        self.messages: dict[str, dict[str, Any]] = {}
        self.status: str = "idle"
        self.seq: int = 0
        # Streamed deltas not yet joined into their message's content: appending to a
        # growing string per token would make a long message quadratic to build.
        self._deltas: dict[str, list[str]] = {}

    def check(
        self, event: NewEvent, new_message_ids: set[str], in_flight: Container[str] = ()
    ) -> None:
        """Raise InvalidEvent when ``event`` refers to a message that does not exist in
        the state, earlier in its batch (``new_message_ids``) or in a batch prepared
        before it and not committed yet (``in_flight``)."""
        if event.type in ("message.delta", "tool_call", "tool_result"):
            key = "id" if event.type == "message.delta" else "messageId"
            message_id = event.data[key]
            if (
                message_id not in self.messages
                and message_id not in new_message_ids
                and message_id not in in_flight
            ):
                raise InvalidEvent(
                    f"{event.type} refers to message {message_id!r}, which the session "
                    "does not hold; send a 'message' event with that id first",
                    code="unknown_message",
                )
        elif event.type == "message":
            new_message_ids.add(event.data["id"])

    def apply(self, event: Event) -> None:
        """Fold one committed event (the table of SPEC.md §1)."""
        data = event.data
        kind = event.type
        if kind == "message":
            # Shallow copies suffice: the fold replaces items, it never edits them in place.
            message = dict(data)
            message["content"] = data.get("content") or ""
            message["toolCalls"] = list(data.get("toolCalls") or [])
            message["toolResults"] = list(data.get("toolResults") or [])
            message["ts"] = event.ts
            self.messages[data["id"]] = message
            self._deltas.pop(data["id"], None)
        elif kind == "message.delta":
            parts = self._deltas.get(data["id"])
            if parts is None:
                self._deltas[data["id"]] = [data["delta"]]
            else:
                parts.append(data["delta"])
        elif kind == "tool_call":
            call = {k: v for k, v in data.items() if k != "messageId"}
            _upsert(self.messages[data["messageId"]]["toolCalls"], "id", call)
        elif kind == "tool_result":
            result = {k: v for k, v in data.items() if k != "messageId"}
            _upsert(self.messages[data["messageId"]]["toolResults"], "toolCallId", result)
        elif kind == "status":
            self.status = data["status"]
        elif kind == "session.update":
            if data.get("title") is not None:
                self.info["title"] = data["title"]
            if data.get("metadata") is not None:
                self.info["metadata"] = {**self.info.get("metadata", {}), **data["metadata"]}
        self.seq = event.seq

    def _join_deltas(self) -> None:
        for message_id, parts in self._deltas.items():
            message = self.messages[message_id]
            message["content"] = (message.get("content") or "") + "".join(parts)
        self._deltas.clear()

    def to_json(self, epoch: str) -> dict[str, Any]:
        self._join_deltas()
        return {
            "session": self.info,
            "messages": list(self.messages.values()),
            "status": self.status,
            "seq": self.seq,
            "epoch": epoch,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SessionState:
        state = cls(obj["session"])
        state.messages = {m["id"]: m for m in obj["messages"]}
        state.status = obj["status"]
        state.seq = obj["seq"]
        return state


def _upsert(items: list[dict[str, Any]], key: str, item: dict[str, Any]) -> None:
    for i, existing in enumerate(items):
        if existing.get(key) == item.get(key):
            items[i] = item
            return
    items.append(item)


# --- the backlog of recent encoded events ---------------------------------------------

FRAME_BYTES = 1 << 20  # a frame carries about this much at most, whatever its event count


class Backlog:
    """The newest committed events, kept encoded for catch-up and fan-out."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[Event] = deque()
        self._bytes = 0

    def extend(self, events: Sequence[Event]) -> None:
        self._events.extend(events)
        self._bytes += sum([len(event.encoded) for event in events])
        while self._events and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            self._bytes -= len(self._events.popleft().encoded)

    def after(self, seq: int, limit: int, max_bytes: int = FRAME_BYTES) -> list[Event] | None:
        """Events with seq > ``seq``, at most ``limit`` of them and about ``max_bytes``
        (always at least one), or None if some of them were dropped already."""
        if not self._events:
            return None
        first = self._events[0].seq
        if seq + 1 < first:
            return None
        start = seq + 1 - first
        if start >= len(self._events):
            return []
        end = min(len(self._events), start + limit)
        out: list[Event] = []
        size = 0
        for i in range(start, end):
            event = self._events[i]
            size += len(event.encoded)
            if out and size > max_bytes:
                break
            out.append(event)
        return out


# --- readers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotFirst:
    """The reader must take the snapshot, then events after its seq."""

    reason: str


@dataclass(frozen=True, slots=True)
class CatchUp:
    """The reader resumes exactly after ``since``."""

    since: int


ResumePlan = SnapshotFirst | CatchUp


@dataclass(slots=True, eq=False)
class Reader:
    """One live reader of a session: where it is and who it is."""

    id: str
    name: str | None = None
    cursor: int = 0  # last seq handed to this reader's transport
    can_write: bool = False
    idle: bool = False  # parked, waiting for new events (eligible for direct push)


# --- the session -----------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    """A batch with seqs assigned, waiting to be stored and committed."""

    seqs: list[int]  # one per submitted event, duplicates map to the original seq
    new_events: list[Event]  # only the events to store, in seq order
    waits_for: int  # highest seq this batch's answer depends on (its own or in-flight)
    message_ids: list[str]  # messages this batch creates, visible to later batches at once


@dataclass
class Session:
    """The authority for one session's log on this node (see the module docstring)."""

    session_id: str
    epoch: str
    state: SessionState
    backlog: Backlog
    # True when every event id of the log is in ``_ids``; False after loading a snapshot
    # taken past the start, when older ids must be looked up in the store.
    all_ids_known: bool = True
    readers: dict[str, Reader] = field(default_factory=dict)
    _ids: dict[str, int] = field(default_factory=dict)
    # Messages created by batches prepared but not committed: a pipelined batch may
    # stream deltas into a message whose creating batch is still being stored.
    _messages_in_flight: Counter[str] = field(default_factory=Counter)
    _next_seq: int = 0
    _committed_seq: int = 0

    def __post_init__(self) -> None:
        self._committed_seq = self.state.seq
        self._next_seq = self.state.seq + 1

    @property
    def last_seq(self) -> int:
        """The highest committed seq (what readers can see)."""
        return self._committed_seq

    @property
    def in_flight(self) -> bool:
        return self._next_seq != self._committed_seq + 1

    def unknown_ids(self, ids: Iterable[str]) -> list[str]:
        """Ids not held in memory; when ``all_ids_known`` they are new for sure."""
        if self.all_ids_known:
            return []
        return [i for i in ids if i not in self._ids]

    def learn_ids(self, known: dict[str, int]) -> None:
        """Remember ids the store holds for this session (see ``unknown_ids``)."""
        self._ids.update(known)

    def prepare(self, batch: Sequence[NewEvent], max_event_bytes: int = 1 << 30) -> Prepared:
        """Assign seqs to a validated batch; on error (InvalidEvent, or PayloadTooLarge
        for an event whose envelope passes ``max_event_bytes``) prepare nothing."""
        seqs: list[int] = []
        fresh: list[NewEvent] = []
        batch_ids: dict[str, int] = {}
        new_message_ids: set[str] = set()
        waits_for = 0
        next_seq = self._next_seq
        for event in batch:
            seen = self._ids.get(event.id)
            if seen is None:
                seen = batch_ids.get(event.id)
            if seen is not None:
                seqs.append(seen)
                waits_for = max(waits_for, seen)
                continue
            self.state.check(event, new_message_ids, self._messages_in_flight)
            batch_ids[event.id] = next_seq
            seqs.append(next_seq)
            fresh.append(event)
            next_seq += 1
        new_events = [
            Event.make(seq, ev)
            for seq, ev in zip(range(self._next_seq, next_seq), fresh, strict=True)
        ]
        for i, made in enumerate(new_events):
            if len(made.encoded) > max_event_bytes:
                raise PayloadTooLarge(
                    f"events[{batch.index(fresh[i])}] is {len(made.encoded)} bytes encoded; "
                    f"the limit is {max_event_bytes}"
                )
        if new_events:
            waits_for = new_events[-1].seq
        self._ids.update(batch_ids)
        self._next_seq = next_seq
        created = [e.data["id"] for e in new_events if e.type == "message"]
        self._messages_in_flight.update(created)
        return Prepared(seqs, new_events, waits_for, created)

    def _settle_messages(self, prepared: Prepared) -> None:
        self._messages_in_flight.subtract(prepared.message_ids)
        for message_id in prepared.message_ids:
            if self._messages_in_flight[message_id] <= 0:
                del self._messages_in_flight[message_id]

    def abort(self, prepared: Prepared) -> bool:
        """Undo the newest prepared batch after a failed store; False if not the newest."""
        if not prepared.new_events:
            return True
        if prepared.new_events[-1].seq != self._next_seq - 1:
            return False
        for event in prepared.new_events:
            self._ids.pop(event.id, None)
        self._settle_messages(prepared)
        self._next_seq = prepared.new_events[0].seq
        return True

    def commit(self, prepared: Prepared) -> None:
        """Make a stored batch visible; batches must commit in the order prepared."""
        if not prepared.new_events:
            return
        if prepared.new_events[0].seq != self._committed_seq + 1:
            raise Conflict(
                f"batch starting at seq {prepared.new_events[0].seq} committed out of order "
                f"(committed up to {self._committed_seq})"
            )
        for event in prepared.new_events:
            self.state.apply(event)
        self._settle_messages(prepared)
        self.backlog.extend(prepared.new_events)
        self._committed_seq = prepared.new_events[-1].seq

    def load(self, events: Sequence[Event]) -> None:
        """Apply events read back from the store while loading (already durable)."""
        for event in events:
            if event.seq != self._committed_seq + 1:
                raise Conflict(f"stored log has a gap before seq {event.seq}")
            self.state.apply(event)
            self._ids[event.id] = event.seq
            self._committed_seq = event.seq
        self._next_seq = self._committed_seq + 1
        self.backlog.extend(events)

    def snapshot(self) -> dict[str, Any]:
        return self.state.to_json(self.epoch)

    # readers

    def plan_resume(self, epoch: str | None, since: int | None) -> ResumePlan:
        """Decide how a reader arriving with ``(epoch, since)`` starts."""
        if since is None:
            return SnapshotFirst("no position given")
        if epoch is not None and epoch != self.epoch:
            return SnapshotFirst("epoch changed: the log was rebuilt")
        if since < 0 or since > self.last_seq:
            return SnapshotFirst(f"seq {since} is not in this log (last is {self.last_seq})")
        return CatchUp(since)

    def attach(self, reader: Reader) -> None:
        self.readers[reader.id] = reader

    def detach(self, reader: Reader) -> None:
        self.readers.pop(reader.id, None)

    def pending_frame(self, reader: Reader, max_events: int) -> tuple[bytes, int] | None:
        """The next ``events`` frame for a reader that is behind (see ``frame_after``)."""
        return self.frame_after(reader.cursor, max_events)

    def frame_after(self, cursor: int, max_events: int) -> tuple[bytes, int] | None:
        """One ``events`` frame coalescing what follows ``cursor``, and the seq it ends at;
        None when ``cursor`` is up to date. Raises LookupError when the backlog no longer
        holds the next event (the caller reads from the store instead).
        """
        if cursor >= self.last_seq:
            return None
        events = self.backlog.after(cursor, max_events)
        if not events:
            raise LookupError(cursor)
        return events_frame([e.encoded for e in events]), events[-1].seq

    def lag(self, reader: Reader) -> int:
        return self.last_seq - reader.cursor

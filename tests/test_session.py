"""The per-session core, without I/O: seq, idempotency, fold, resume, frames."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agentsync.protocol import Conflict, Event, InvalidEvent, NewEvent, PayloadTooLarge, parse_event
from agentsync.session import Backlog, CatchUp, Reader, Session, SessionState, SnapshotFirst


def new(type_: str, data: dict[str, Any], id_: str | None = None) -> NewEvent:
    obj: dict[str, Any] = {"type": type_, "data": data}
    if id_ is not None:
        obj["id"] = id_
    return parse_event(obj)


def make_session(backlog: int = 100) -> Session:
    return Session("s1", "e1", SessionState({"id": "s1", "title": "t"}), Backlog(backlog, 1 << 20))


def commit(session: Session, batch: list[NewEvent]) -> list[int]:
    prepared = session.prepare(batch)
    session.commit(prepared)
    return prepared.seqs


def test_seqs_are_dense_across_batches() -> None:
    s = make_session()
    assert commit(s, [new("message", {"id": "m", "role": "user"})]) == [1]
    assert commit(s, [new("message.delta", {"id": "m", "delta": "a"}) for _ in range(3)]) == [
        2,
        3,
        4,
    ]
    assert s.last_seq == 4


def test_resent_ids_return_original_seqs_and_prepare_nothing() -> None:
    s = make_session()
    first = [new("message", {"id": "m", "role": "user"}, "a"), new("status", {"status": "x"}, "b")]
    assert commit(s, first) == [1, 2]
    again = s.prepare([new("status", {"status": "x"}, "b"), new("status", {"status": "y"}, "c")])
    assert again.seqs == [2, 3]
    assert [e.id for e in again.new_events] == ["c"]


def test_duplicate_within_one_batch_gets_one_seq() -> None:
    s = make_session()
    p = s.prepare([new("status", {"status": "x"}, "a"), new("status", {"status": "x"}, "a")])
    assert p.seqs == [1, 1]
    assert len(p.new_events) == 1


def test_in_flight_duplicate_waits_for_original() -> None:
    s = make_session()
    first = s.prepare([new("status", {"status": "x"}, "a")])
    retry = s.prepare([new("status", {"status": "x"}, "a")])
    assert retry.seqs == [1] and not retry.new_events and retry.waits_for == 1
    s.commit(first)
    s.commit(retry)
    assert s.last_seq == 1


def test_invalid_batch_prepares_nothing() -> None:
    s = make_session()
    with pytest.raises(InvalidEvent):
        s.prepare(
            [new("status", {"status": "x"}, "a"), new("message.delta", {"id": "no", "delta": "x"})]
        )
    assert commit(s, [new("status", {"status": "x"}, "a")]) == [1]


def test_message_created_earlier_in_the_batch_can_be_referenced() -> None:
    s = make_session()
    seqs = commit(
        s,
        [
            new("message", {"id": "m", "role": "assistant"}),
            new("message.delta", {"id": "m", "delta": "hi"}),
            new("tool_call", {"messageId": "m", "id": "c", "name": "ls", "arguments": {}}),
            new("tool_result", {"messageId": "m", "toolCallId": "c", "output": "a.py"}),
        ],
    )
    assert seqs == [1, 2, 3, 4]
    message = s.snapshot()["messages"][0]
    assert message["content"] == "hi"
    assert message["toolCalls"] == [{"id": "c", "name": "ls", "arguments": {}}]
    assert message["toolResults"] == [{"toolCallId": "c", "output": "a.py"}]


def test_abort_rolls_back_the_newest_batch() -> None:
    s = make_session()
    p = s.prepare([new("status", {"status": "x"}, "a")])
    assert s.abort(p)
    assert commit(s, [new("status", {"status": "x"}, "a")]) == [1]


def test_abort_refuses_an_older_batch() -> None:
    s = make_session()
    older = s.prepare([new("status", {"status": "x"})])
    s.prepare([new("status", {"status": "y"})])
    assert not s.abort(older)


def test_out_of_order_commit_is_refused() -> None:
    s = make_session()
    s.prepare([new("status", {"status": "x"})])
    second = s.prepare([new("status", {"status": "y"})])
    with pytest.raises(Conflict):
        s.commit(second)


def events_of(batch: list[tuple[str, dict[str, Any]]]) -> list[Event]:
    return [Event.make(i + 1, new(t, d)) for i, (t, d) in enumerate(batch)]


SCRIPT = [
    ("session.update", {"title": "Fix the bug", "metadata": {"agent": "x"}}),
    ("message", {"id": "u", "role": "user", "content": "please fix"}),
    ("status", {"status": "thinking"}),
    ("message", {"id": "a", "role": "assistant", "content": ""}),
    ("message.delta", {"id": "a", "delta": "Look"}),
    ("message.delta", {"id": "a", "delta": "ing"}),
    ("tool_call", {"messageId": "a", "id": "t1", "name": "read", "arguments": {"p": "x"}}),
    ("tool_call", {"messageId": "a", "id": "t1", "name": "read", "arguments": {"p": "y"}}),
    ("tool_result", {"messageId": "a", "toolCallId": "t1", "output": "ok", "error": None}),
    ("message", {"id": "u", "role": "user", "content": "edited prompt"}),
    ("status", {"status": "idle"}),
]


def test_fold_follows_the_spec_table() -> None:
    state = SessionState({"id": "s", "title": ""})
    for event in events_of(SCRIPT):
        state.apply(event)
    snap = state.to_json("e")
    assert snap["session"]["title"] == "Fix the bug"
    assert snap["session"]["metadata"] == {"agent": "x"}
    assert snap["status"] == "idle"
    assert [m["id"] for m in snap["messages"]] == ["u", "a"]
    assert snap["messages"][0]["content"] == "edited prompt"
    assistant = snap["messages"][1]
    assert assistant["content"] == "Looking"
    assert assistant["toolCalls"] == [{"id": "t1", "name": "read", "arguments": {"p": "y"}}]
    assert len(assistant["toolResults"]) == 1
    assert snap["seq"] == len(SCRIPT)


@pytest.mark.parametrize("cut", range(len(SCRIPT) + 1))
def test_snapshot_at_n_plus_later_events_equals_snapshot_at_m(cut: int) -> None:
    events = events_of(SCRIPT)
    whole = SessionState({"id": "s", "title": ""})
    for event in events:
        whole.apply(event)
    part = SessionState({"id": "s", "title": ""})
    for event in events[:cut]:
        part.apply(event)
    restored = SessionState.from_json(orjson.loads(orjson.dumps(part.to_json("e"))))
    for event in events[cut:]:
        restored.apply(event)
    assert restored.to_json("e") == whole.to_json("e")


def test_plan_resume() -> None:
    s = make_session()
    commit(s, [new("status", {"status": "x"}) for _ in range(5)])
    assert s.plan_resume("e1", 3) == CatchUp(3)
    assert s.plan_resume(None, 5) == CatchUp(5)
    assert s.plan_resume("e1", 0) == CatchUp(0)
    assert isinstance(s.plan_resume("other", 3), SnapshotFirst)
    assert isinstance(s.plan_resume("e1", 6), SnapshotFirst)
    assert isinstance(s.plan_resume("e1", None), SnapshotFirst)
    assert isinstance(s.plan_resume("e1", -1), SnapshotFirst)


def test_pending_frame_coalesces_and_respects_the_limit() -> None:
    s = make_session()
    commit(s, [new("status", {"status": str(i)}) for i in range(10)])
    reader = Reader("r", cursor=2)
    frame, end = s.pending_frame(reader, 5) or (b"", 0)
    body = orjson.loads(frame)
    assert body["op"] == "events"
    assert [e["seq"] for e in body["events"]] == [3, 4, 5, 6, 7]
    assert end == 7
    reader.cursor = 10
    assert s.pending_frame(reader, 5) is None


def test_reader_behind_the_backlog_must_read_the_store() -> None:
    s = make_session(backlog=4)
    commit(s, [new("status", {"status": str(i)}) for i in range(10)])
    with pytest.raises(LookupError):
        s.pending_frame(Reader("r", cursor=2), 100)
    frame, _ = s.pending_frame(Reader("r", cursor=6), 100) or (b"", 0)
    assert [e["seq"] for e in orjson.loads(frame)["events"]] == [7, 8, 9, 10]


def test_backlog_is_bounded_by_bytes() -> None:
    b = Backlog(max_events=1000, max_bytes=500)
    b.extend(events_of([("status", {"status": "x" * 100}) for _ in range(20)]))
    assert b.after(0, 100) is None
    kept = next(got for s in range(20) if (got := b.after(s, 100)) is not None)
    assert sum(len(e.encoded) for e in kept) <= 500
    assert kept[-1].seq == 20


def test_load_refuses_a_gap() -> None:
    s = make_session()
    events = events_of([("status", {"status": "x"})] * 3)
    with pytest.raises(Conflict):
        s.load([events[0], events[2]])


def test_encoded_envelope_matches_stored_roundtrip() -> None:
    original = Event.make(7, new("message", {"id": "m", "role": "user", "content": "é\u2028"}, "x"))
    stored = Event.from_stored(7, "x", "message", original.ts, orjson.dumps(original.data))
    assert orjson.loads(stored.encoded) == orjson.loads(original.encoded) == original.to_json()


def test_frames_are_bounded_by_bytes_too() -> None:
    b = Backlog(max_events=1000, max_bytes=1 << 30)
    b.extend(events_of([("status", {"status": "x" * 1000}) for _ in range(50)]))
    chunk = b.after(0, 1000, max_bytes=10_000) or []
    assert 5 <= len(chunk) < 10 and chunk[0].seq == 1
    huge = b.after(0, 1000, max_bytes=1) or []
    assert [e.seq for e in huge] == [1]


def test_pipelined_batch_may_refer_to_a_message_still_in_flight() -> None:
    s = make_session()
    first = s.prepare([new("message", {"id": "m", "role": "assistant"})])
    second = s.prepare([new("message.delta", {"id": "m", "delta": "hi"})])
    s.commit(first)
    s.commit(second)
    assert s.snapshot()["messages"][0]["content"] == "hi"
    # once the creating batch is aborted, the message is unknown again
    third = s.prepare([new("message", {"id": "n", "role": "assistant"})])
    assert s.abort(third)
    with pytest.raises(InvalidEvent):
        s.prepare([new("message.delta", {"id": "n", "delta": "x"})])


def test_oversized_event_prepares_nothing() -> None:
    s = make_session()
    big = new("status", {"status": "x" * 2000})
    with pytest.raises(PayloadTooLarge) as info:
        s.prepare([new("status", {"status": "ok"}, "a"), big], max_event_bytes=1000)
    assert "events[1]" in info.value.message
    assert commit(s, [new("status", {"status": "ok"}, "a")]) == [1]

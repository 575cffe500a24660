"""Validation of submitted events and the error/close-code contract."""

from __future__ import annotations

from typing import Any

import pytest

from agentsync import protocol
from agentsync.protocol import BadRequest, InvalidEvent, PayloadTooLarge, parse_event, parse_events


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ("not an object", "wrong_type"),
        ({"data": {}}, "missing_field"),
        ({"type": "nope", "data": {}}, "unknown_type"),
        ({"type": "message", "data": []}, "wrong_type"),
        ({"type": "message", "data": {"role": "user"}}, "missing_field"),
        ({"type": "message", "data": {"id": "m", "role": "robot"}}, "invalid_event"),
        ({"type": "message", "data": {"id": 5, "role": "user"}}, "wrong_type"),
        ({"type": "message.delta", "data": {"id": "m"}}, "missing_field"),
        ({"type": "message.delta", "data": {"id": "m", "delta": 3}}, "wrong_type"),
        ({"type": "tool_call", "data": {"messageId": "m", "id": "c"}}, "missing_field"),
        ({"type": "tool_result", "data": {"messageId": "m"}}, "missing_field"),
        ({"type": "status", "data": {"status": True}}, "wrong_type"),
        ({"type": "session.update", "data": {"title": 1}}, "wrong_type"),
        ({"type": "status", "data": {"status": "x"}, "id": ""}, "invalid_event"),
        ({"type": "status", "data": {"status": "x"}, "id": "x" * 200}, "invalid_event"),
        ({"type": "status", "data": {"status": "x"}, "ts": -1}, "invalid_event"),
        ({"type": "status", "data": {"status": "x"}, "ts": "now"}, "wrong_type"),
    ],
)
def test_invalid_events_are_422_with_a_reason(event: Any, code: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(event)
    assert info.value.status == 422
    assert info.value.code == code
    assert "events[0]" in info.value.message


def test_valid_event_gets_id_and_ts() -> None:
    ev = parse_event({"type": "status", "data": {"status": "idle", "extra": [1]}})
    assert ev.id and ev.ts > 0 and ev.data["extra"] == [1]
    assert parse_event({"type": "status", "data": {"status": "x"}}).id != ev.id


def test_batches() -> None:
    with pytest.raises(BadRequest):
        parse_events({}, max_batch=10)
    with pytest.raises(BadRequest):
        parse_events([], max_batch=10)
    with pytest.raises(PayloadTooLarge):
        parse_events([{"type": "status", "data": {"status": "x"}}] * 11, max_batch=10)


def test_malformed_and_non_utf8_json() -> None:
    for body in (b"{", b"\xff\xfe{}", b""):
        with pytest.raises(BadRequest) as info:
            protocol.decode_json(body)
        assert info.value.code == "malformed_json"


def test_close_code_ranges() -> None:
    for code in (protocol.CLOSE_SERVER_SHUTDOWN, protocol.CLOSE_SLOW_CONSUMER, 4499):
        assert protocol.is_resumable(code)
    for code in (protocol.CLOSE_GONE, protocol.CLOSE_FORBIDDEN, protocol.CLOSE_PROTOCOL_ERROR):
        assert not protocol.is_resumable(code)
    for err in (protocol.Forbidden, protocol.NotFound, protocol.Gone, protocol.InvalidEvent):
        assert 4500 <= err.close_code < 5000
    assert 4000 <= protocol.RateLimited.close_code < 4500


def test_deeply_nested_data_is_refused() -> None:
    deep: dict[str, Any] = {"status": "x"}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(InvalidEvent) as info:
        parse_event({"type": "status", "data": deep})
    assert "nested deeper" in info.value.message
    shallow: dict[str, Any] = {"status": "x", "n": [[{"a": [1]}]]}
    assert parse_event({"type": "status", "data": shallow}).data == shallow


def test_nul_in_ids_is_refused_on_every_store() -> None:
    for obj in (
        {"id": "a\x00b", "type": "status", "data": {"status": "x"}},
        {"type": "message.delta", "data": {"id": "m\x00", "delta": "x"}},
    ):
        with pytest.raises(InvalidEvent, match="NUL"):
            parse_event(obj)
    # Inside data it is only JSON text (stored as bytes): allowed.
    assert parse_event({"type": "status", "data": {"status": "a\x00b"}}).data["status"] == "a\x00b"

"""The pure rules of Durable Streams (agentsync.streams.rules): no server, no store."""

from __future__ import annotations

import base64
import random
from dataclasses import replace

import orjson
import pytest

from agentsync.streams import forks, rules
from agentsync.streams.rules import (
    NOW,
    START,
    AppendRequest,
    CreateRequest,
    Duplicate,
    Fork,
    ForkRequest,
    Producer,
    ProducerState,
    Segment,
    StreamError,
    StreamState,
    Write,
)

STATE = StreamState(
    id=7,
    path="s",
    content_type="text/plain",
    ttl_seconds=None,
    expires_at=None,
    expires_at_ms=None,
    created_at=0,
    accessed_at=0,
    tail=3,
    closed=False,
    closed_by=None,
    stream_seq=None,
)


def req(
    unit: bytes | None = b"x",
    *,
    content_type: str | None = "text/plain",
    stream_seq: str | None = None,
    producer: Producer | None = None,
    close: bool = False,
    body_error: StreamError | None = None,
) -> AppendRequest:
    return AppendRequest(unit, content_type, stream_seq, producer, close, body_error)


def refusal(state: StreamState, current: ProducerState | None, r: AppendRequest) -> StreamError:
    with pytest.raises(StreamError) as info:
        rules.decide_append(state, current, r)
    return info.value


# --- offsets ---------------------------------------------------------------------------


def test_offsets_are_fixed_width_and_sort_like_their_seqs() -> None:
    assert rules.offset_of(0) == "0000000000000000_0000000000000000"
    assert rules.offset_of(12) == "0000000000000000_0000000000000012"
    offsets = [rules.offset_of(n) for n in (0, 1, 9, 10, 99, 100, 12345)]
    assert offsets == sorted(offsets)


def test_parse_offset_sentinels_and_round_trip() -> None:
    assert rules.parse_offset([]) is None
    assert rules.parse_offset(["-1"]) == START
    assert rules.parse_offset(["now"]) == NOW
    assert rules.parse_offset([rules.offset_of(42)]) == 42


@pytest.mark.parametrize(
    "values",
    [[""], ["a", "b"], ["1,2"], ["0_1 "], ["../x"], ["0_1\n"], ["abc"], ["1_0"], ["0_"]],
)
def test_parse_offset_refuses_malformed(values: list[str]) -> None:
    with pytest.raises(StreamError) as info:
        rules.parse_offset(values)
    assert info.value.status == 400


# --- headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "ok"), [("0", 0), ("3600", 3600)])
def test_ttl_accepts_plain_integers(raw: str, ok: int) -> None:
    assert rules.parse_ttl(raw) == ok


@pytest.mark.parametrize("raw", ["-1", "+5", "05", "1.5", "1e3", "abc", ""])
def test_ttl_refuses_everything_else(raw: str) -> None:
    with pytest.raises(StreamError):
        rules.parse_ttl(raw)


def test_expires_at_parses_rfc3339() -> None:
    assert rules.parse_expires_at("1970-01-01T00:00:01Z") == 1000
    assert rules.parse_expires_at("1970-01-01T01:00:01+01:00") == 1000
    with pytest.raises(StreamError):
        rules.parse_expires_at("not-a-timestamp")


def test_content_type_is_kept_verbatim_and_compared_by_media_type() -> None:
    assert rules.create_content_type("text/plain") == "text/plain"
    assert rules.create_content_type(None) == "application/octet-stream"
    assert rules.create_content_type("garbage") == "application/octet-stream"
    assert rules.media_type("Application/JSON; charset=utf-8") == "application/json"
    assert rules.is_json("application/json;charset=utf-8")
    assert not rules.is_json("text/json")


def test_stream_closed_counts_only_when_true() -> None:
    assert rules.is_true("true") and rules.is_true("TRUE")
    assert not rules.is_true(None) and not rules.is_true("yes") and not rules.is_true("1")


def test_producer_headers_all_or_none() -> None:
    assert rules.parse_producer(None, None, None) is None
    assert rules.parse_producer("p", "1", "2") == Producer("p", 1, 2)
    for bad in [("p", "1", None), ("", "0", "0"), ("p", "1abc", "0"), ("p", "0", "-1"),
                ("p", "0", str(2**53))]:  # fmt: skip
        with pytest.raises(StreamError) as info:
            rules.parse_producer(*bad)
        assert info.value.status == 400


def test_fork_headers() -> None:
    prefix = "/v1/stream/"
    assert forks.parse_fork(None, None, None, prefix) is None
    assert forks.parse_fork("/v1/stream/a%20b", None, None, prefix) == ForkRequest("a b", None, 0)
    assert forks.parse_fork("http://h/v1/stream/a", rules.offset_of(2), "3", prefix) == (
        ForkRequest("a", 2, 3)
    )
    beyond = forks.parse_fork("/v1/stream/a", "9999999999999999_9999999999999999", None, prefix)
    assert beyond is not None and beyond.offset == forks.BEYOND
    for bad in [(None, None, "0"), (None, rules.offset_of(1), None), ("/elsewhere/a", None, None),
                ("/v1/stream/a", "1", None), ("/v1/stream/a", None, "05"),
                ("/v1/stream/a", None, "-1"), ("/v1/stream/a", None, "1.5")]:  # fmt: skip
        with pytest.raises(StreamError) as info:
            forks.parse_fork(*bad, prefix)
        assert info.value.status == 400


def test_a_fork_inherits_type_offset_and_expiry_from_its_source() -> None:
    source = replace(STATE, ttl_seconds=60)
    req = CreateRequest(None, None, None, None, False, None, ForkRequest("s", None, 0))
    resolved = forks.resolve(source, req)
    assert (resolved.content_type, resolved.ttl_seconds) == ("text/plain", 60)
    assert resolved.fork == ForkRequest("s", 3, 0)  # the source's tail
    own = forks.resolve(source, replace(req, expires_at="x", expires_at_ms=1))
    assert (own.ttl_seconds, own.expires_at) == (None, "x")  # its own, never capped
    for bad, status in [(replace(req, content_type="application/json"), 409),
                        (replace(req, fork=ForkRequest("s", 4, 0)), 400)]:  # fmt: skip
        with pytest.raises(StreamError) as info:
            forks.resolve(source, bad)
        assert info.value.status == status


def test_reads_of_a_fork_chain_are_capped_at_each_level() -> None:
    root = replace(STATE, id=1, tail=5)
    # level 1 forks the root at 4, then holds seqs 5..6 itself
    middle = replace(root, id=2, tail=6, fork=Fork("root", 1, 4, 0, forks.lineage(root, 4)))
    # level 2 forks level 1 at 2, inside what level 1 inherited
    leaf = replace(root, id=3, tail=3, fork=Fork("mid", 2, 2, 0, forks.lineage(middle, 2)))
    assert forks.segments(middle, 0, 6) == [Segment(1, 0, 4), Segment(2, 4, 6)]
    assert forks.segments(leaf, 0, 3) == [Segment(1, 0, 2), Segment(3, 2, 3)]
    assert forks.segments(leaf, 2, 3) == [Segment(3, 2, 3)]
    assert forks.segments(replace(root, id=4, tail=0, fork=Fork("r", 1, 0, 0, ())), 0, 0) == []


def test_sub_offset_prefixes() -> None:
    assert forks.sub_offset_prefix(b"hello", 3, json=False) == b"hel"
    assert forks.sub_offset_prefix(b"hello", 5, json=False) == b"hello"
    assert forks.sub_offset_prefix(b'{"a":1},[2],3', 2, json=True) == b'{"a":1},[2]'
    for unit, k, json in [(None, 1, False), (b"hi", 3, False), (b"1,2", 3, True)]:
        with pytest.raises(StreamError) as info:
            forks.sub_offset_prefix(unit, k, json=json)
        assert info.value.status == 400


# --- JSON mode -------------------------------------------------------------------------


def test_json_flattens_one_level() -> None:
    unit = rules.json_unit(b'[[1,2],[3],{"a":1}]', initial=False)
    assert orjson.loads(rules.json_body([unit])) == [[1, 2], [3], {"a": 1}]
    assert orjson.loads(rules.json_body([rules.json_unit(b'"x"', initial=False)])) == ["x"]


def test_json_empty_array_is_an_empty_create_but_a_bad_append() -> None:
    assert rules.json_unit(b"[]", initial=True) == b""
    with pytest.raises(StreamError):
        rules.json_unit(b"[]", initial=False)
    with pytest.raises(StreamError):
        rules.json_unit(b"{nope", initial=True)


def test_json_body_joins_units() -> None:
    units = [rules.json_unit(b"[1,2]", initial=False), rules.json_unit(b"3", initial=False)]
    assert rules.json_body(units) == b"[1,2,3]"
    assert rules.json_body([]) == b"[]"


# --- create ----------------------------------------------------------------------------


def test_same_config_compares_media_type_ttl_expiry_and_closure() -> None:
    create = CreateRequest("TEXT/PLAIN; charset=utf-8", None, None, None, False, None)
    assert rules.same_config(STATE, create)
    assert not rules.same_config(STATE, replace(create, content_type="application/json"))
    assert not rules.same_config(STATE, replace(create, ttl_seconds=5))
    assert not rules.same_config(STATE, replace(create, closed=True))


def test_expiry_uses_the_later_access_time() -> None:
    ttl = replace(STATE, ttl_seconds=1, accessed_at=1000)
    assert not ttl.expired(1999)
    assert ttl.expired(2000)
    assert not ttl.expired(2500, accessed_ms=1600)
    fixed = replace(STATE, expires_at_ms=5000)
    assert not fixed.expired(4999) and fixed.expired(5000, accessed_ms=5000)


# --- the producer decision -------------------------------------------------------------


def test_producer_first_append_must_be_seq_zero() -> None:
    assert rules.decide_producer(None, Producer("p", 0, 0)) == ProducerState(0, 0)
    with pytest.raises(StreamError) as info:
        rules.decide_producer(None, Producer("p", 0, 1))
    assert info.value.status == 409
    assert info.value.headers["producer-expected-seq"] == "0"


def test_producer_sequence_duplicate_and_gap() -> None:
    state = ProducerState(epoch=2, seq=5)
    assert rules.decide_producer(state, Producer("p", 2, 6)) == ProducerState(2, 6)
    assert rules.decide_producer(state, Producer("p", 2, 3)) == Duplicate(2, 5, closed=False)
    with pytest.raises(StreamError) as info:
        rules.decide_producer(state, Producer("p", 2, 8))
    assert info.value.status == 409
    assert info.value.headers == {"producer-expected-seq": "6", "producer-received-seq": "8"}


def test_producer_epochs_fence_zombies() -> None:
    state = ProducerState(epoch=2, seq=5)
    with pytest.raises(StreamError) as info:
        rules.decide_producer(state, Producer("p", 1, 6))
    assert (info.value.status, info.value.headers) == (403, {"producer-epoch": "2"})
    assert rules.decide_producer(state, Producer("p", 3, 0)) == ProducerState(3, 0)
    with pytest.raises(StreamError) as info:
        rules.decide_producer(state, Producer("p", 3, 1))
    assert info.value.status == 400


# --- the append decision ---------------------------------------------------------------


def test_plain_append_writes_the_unit() -> None:
    assert rules.decide_append(STATE, None, req()) == Write(b"x", None, None, False)


def test_closed_stream_refuses_with_its_final_offset() -> None:
    closed = replace(STATE, closed=True)
    err = refusal(closed, None, req())
    assert err.status == 409
    assert err.headers == {"stream-closed": "true", "stream-next-offset": rules.offset_of(3)}


def test_closing_again_is_idempotent_but_only_without_a_body() -> None:
    closed = replace(STATE, closed=True)
    outcome = rules.decide_append(closed, None, req(None, close=True))
    assert isinstance(outcome, Write) and outcome.unit is None and outcome.close
    assert refusal(closed, None, req(b"more", close=True)).status == 409


def test_the_closing_tuple_is_a_duplicate_even_with_another_body() -> None:
    p = Producer("p", 0, 4)
    closed = replace(STATE, closed=True, closed_by=p)
    assert rules.decide_append(closed, ProducerState(0, 4), req(b"other", producer=p)) == (
        Duplicate(0, 4, closed=True)
    )
    assert refusal(closed, ProducerState(0, 4), req(producer=Producer("p", 0, 5))).status == 409


def test_precedence_closed_then_type_then_producer_then_seq_then_body() -> None:
    bad_body = rules.bad_request("the body is not valid JSON")
    everything = req(
        content_type="application/json",
        stream_seq="1",
        producer=Producer("p", 0, 9),
        body_error=bad_body,
    )
    seq_state = replace(STATE, stream_seq="5")
    assert refusal(replace(seq_state, closed=True), None, everything).code == "stream_closed"
    assert refusal(seq_state, None, everything).code == "content_type_mismatch"
    typed = replace(everything, content_type="text/plain")
    assert refusal(seq_state, None, typed).code == "producer_seq_gap"
    producer_ok = replace(typed, producer=Producer("p", 0, 0))
    assert refusal(seq_state, None, producer_ok).code == "stream_seq_conflict"
    assert refusal(STATE, None, producer_ok) is bad_body


def test_close_only_ignores_content_type() -> None:
    outcome = rules.decide_append(STATE, None, req(None, content_type="image/png", close=True))
    assert outcome == Write(None, None, None, True)


def test_stream_seq_is_byte_wise_lexicographic() -> None:
    state = replace(STATE, stream_seq="2")
    assert refusal(state, None, req(stream_seq="10")).code == "stream_seq_conflict"
    assert refusal(state, None, req(stream_seq="2")).code == "stream_seq_conflict"
    assert rules.decide_append(replace(state, stream_seq="09"), None, req(stream_seq="10")) == (
        Write(b"x", None, "10", False)
    )
    assert refusal(replace(state, stream_seq="a"), None, req(stream_seq="B")).status == 409


def test_duplicate_answers_with_the_highest_accepted_seq() -> None:
    outcome = rules.decide_append(STATE, ProducerState(0, 7), req(producer=Producer("p", 0, 2)))
    assert outcome == Duplicate(0, 7, closed=False)
    headers = rules.append_headers(STATE, req(producer=Producer("p", 0, 2)), outcome)
    assert headers == {"producer-epoch": "0", "producer-seq": "7"}
    assert rules.append_status(req(producer=Producer("p", 0, 2)), outcome) == 204


def test_success_headers_and_status() -> None:
    r = req(producer=Producer("p", 1, 0), close=True)
    outcome = rules.decide_append(STATE, None, r)
    after = replace(STATE, tail=4, closed=True)
    assert rules.append_headers(after, r, outcome) == {
        "stream-next-offset": rules.offset_of(4),
        "producer-epoch": "1",
        "producer-seq": "0",
        "stream-closed": "true",
    }
    assert rules.append_status(r, outcome) == 200
    assert rules.append_status(req(), rules.decide_append(STATE, None, req())) == 204


# --- caching ---------------------------------------------------------------------------


def test_etag_changes_with_range_incarnation_and_closure() -> None:
    a = rules.etag(1, "-1", rules.offset_of(3), False)
    assert a != rules.etag(1, "-1", rules.offset_of(4), False)
    assert a != rules.etag(2, "-1", rules.offset_of(3), False)
    assert a != rules.etag(1, "-1", rules.offset_of(3), True)
    assert a.startswith('"') and a.endswith('"')


def test_cursor_is_the_interval_or_strictly_more() -> None:
    rng = random.Random(1)
    now = rules.CURSOR_EPOCH_MS + 20_000 * 100 + 5
    assert rules.response_cursor(None, now, rng) == "100"
    assert rules.response_cursor("50", now, rng) == "100"
    assert rules.response_cursor("junk", now, rng) == "100"
    for held in ("100", "150"):
        later = int(rules.response_cursor(held, now, rng))
        assert int(held) < later <= int(held) + 180


# --- SSE -------------------------------------------------------------------------------


def test_sse_lines_cannot_inject_events() -> None:
    event = rules.sse_event("data", "a\r\nevent: control\rb\nc")
    assert event == b"event: data\ndata:a\ndata:event: control\ndata:b\ndata:c\n\n"
    assert event.count(b"\n\n") == 1 and b"\r" not in event


def test_sse_data_encodings() -> None:
    assert rules.sse_uses_base64("application/octet-stream")
    assert rules.sse_uses_base64("image/png")
    assert not rules.sse_uses_base64("text/plain; charset=utf-8")
    assert not rules.sse_uses_base64("application/json")
    raw = rules.sse_data("application/octet-stream", [b"\x00\x01", b"\xff"])
    payload = raw.split(b"data:", 1)[1].strip()
    assert base64.b64decode(payload) == b"\x00\x01\xff"
    assert rules.sse_data("application/json", [b"1", b'"a"']) == b'event: data\ndata:[1,"a"]\n\n'


def control_of(event: bytes) -> object:
    return orjson.loads(event.split(b"data:")[1])


def test_sse_control_omits_the_cursor_once_closed() -> None:
    open_ = control_of(rules.sse_control(2, "9", up_to_date=True, closed=False))
    assert open_ == {
        "streamNextOffset": rules.offset_of(2),
        "streamCursor": "9",
        "upToDate": True,
    }
    closed = control_of(rules.sse_control(2, "9", up_to_date=True, closed=True))
    assert closed == {"streamNextOffset": rules.offset_of(2), "streamClosed": True}

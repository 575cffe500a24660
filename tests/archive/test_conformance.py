"""One conformance suite for every Archive backend (archive/base.py), and the format.

The S3 backend talks to an S3-compatible server started on loopback (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from agentsync.archive.base import (
    Archive,
    ArchiveCorrupt,
    check_key,
    decode,
    encode,
    new_name,
    seq_of,
)
from agentsync.archive.local import LocalArchive
from agentsync.archive.s3 import S3Archive
from agentsync.protocol import Event, NewEvent, Unavailable


@pytest.fixture(params=["local", "s3"])
async def archive(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Archive]:
    made: Archive
    if request.param == "local":
        made = LocalArchive(tmp_path / "archive")
    else:
        made = S3Archive.from_url(request.getfixturevalue("s3_archive_url"))
    await made.open()
    yield made
    await made.close()


async def test_round_trip_and_missing(archive: Archive) -> None:
    await archive.ping()
    assert await archive.get("s1", "v1-a.jsonl.gz") is None
    assert await archive.names("s1") == []
    await archive.put("s1", "v1-a.jsonl.gz", b"one")
    await archive.put("s1", "v2-b.jsonl.gz", b"two")
    await archive.put("s2", "v1-a.jsonl.gz", b"other session")
    assert await archive.get("s1", "v1-a.jsonl.gz") == b"one"
    assert await archive.get("s1", "v2-b.jsonl.gz") == b"two"
    assert await archive.get("s2", "v1-a.jsonl.gz") == b"other session"
    assert await archive.get("s1", "v3-c.jsonl.gz") is None
    assert await archive.names("s1") == ["v1-a.jsonl.gz", "v2-b.jsonl.gz"]


async def test_overwrite_keeps_the_last(archive: Archive) -> None:
    await archive.put("s", "v1-a.jsonl.gz", b"first")
    await archive.put("s", "v1-a.jsonl.gz", b"second, longer")
    assert await archive.get("s", "v1-a.jsonl.gz") == b"second, longer"
    assert await archive.names("s") == ["v1-a.jsonl.gz"]


async def test_delete_one_and_all(archive: Archive) -> None:
    for name in ("v1-a.jsonl.gz", "v2-b.jsonl.gz"):
        await archive.put("s", name, name.encode())
    await archive.put("t", "v1-a.jsonl.gz", b"kept")
    await archive.delete("s", "v1-a.jsonl.gz")
    await archive.delete("s", "v1-a.jsonl.gz")  # nothing there: no error
    assert await archive.names("s") == ["v2-b.jsonl.gz"]
    await archive.delete_session("s")
    await archive.delete_session("s")
    await archive.delete_session("never")
    assert await archive.names("s") == []
    assert await archive.get("s", "v2-b.jsonl.gz") is None
    assert await archive.get("t", "v1-a.jsonl.gz") == b"kept"


async def test_large_blob(archive: Archive) -> None:
    blob = os.urandom(12 * 1024 * 1024 + 7)  # past S3's multipart thresholds
    await archive.put("big", "v9-a.jsonl.gz", blob)
    assert await archive.get("big", "v9-a.jsonl.gz") == blob


async def test_files_stream_from_and_to_a_position(archive: Archive) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 11)  # several parts of any copy loop
    source = io.BytesIO(b"skipped" + blob)
    source.seek(len(b"skipped"))  # put from the file's position to its end
    await archive.put_file("f", "v9-a.jsonl.gz", source)
    assert await archive.get("f", "v9-a.jsonl.gz") == blob
    sink = io.BytesIO(b"kept:")
    sink.seek(0, io.SEEK_END)
    assert await archive.get_file("f", "v9-a.jsonl.gz", sink)
    assert sink.getvalue() == b"kept:" + blob
    missing = io.BytesIO()
    assert not await archive.get_file("f", "v1-none.jsonl.gz", missing)
    assert missing.getvalue() == b""


async def test_concurrent_puts(archive: Archive) -> None:
    await asyncio.gather(
        *(archive.put(f"s{i}", f"v{i}-x.jsonl.gz", bytes([i]) * 1000) for i in range(20))
    )
    for i in range(20):
        assert await archive.get(f"s{i}", f"v{i}-x.jsonl.gz") == bytes([i]) * 1000


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", "x" * 300, "a\x00"])
async def test_keys_cannot_escape(archive: Archive, bad: str) -> None:
    with pytest.raises(ValueError):
        await archive.put(bad, "v1-a.jsonl.gz", b"x")
    with pytest.raises(ValueError):
        await archive.get("s", bad)


async def test_local_put_leaves_no_temporary_file(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "a")
    await archive.open()
    await archive.put("s", "v1-a.jsonl.gz", b"x" * 10_000)
    assert [p.name for p in (tmp_path / "a" / "s").iterdir()] == ["v1-a.jsonl.gz"]


async def test_unreachable_s3_raises_unavailable() -> None:
    archive = S3Archive.from_url("s3://bucket?endpoint=http://127.0.0.1:9&region=us-east-1")
    await archive.open()
    try:
        with pytest.raises(Unavailable):
            await archive.get("s", "v1-a.jsonl.gz")
        with pytest.raises(Unavailable):
            await archive.ping()
    finally:
        await archive.close()


def test_s3_url() -> None:
    a = S3Archive.from_url("s3://bkt/a/b/?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert (a.bucket, a.prefix, a.endpoint_url, a.region) == (
        "bkt",
        "a/b",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    assert S3Archive.from_url("s3://bkt").prefix == ""
    with pytest.raises(ValueError):
        S3Archive.from_url("s3://bkt?bogus=1")
    with pytest.raises(ValueError):
        S3Archive.from_url("http://bkt")


# --- the format ------------------------------------------------------------------------


def _log(n: int) -> list[Event]:
    return [
        Event.make(i, NewEvent(f"id{i}", "status", 1_700_000_000_000 + i, {"status": f"s{i} ✓"}))
        for i in range(1, n + 1)
    ]


def _blob(n: int = 5) -> bytes:
    lines = [e.encoded for e in _log(n)]
    return encode("sid", "ep", {"id": "sid"}, lines, {"seq": n, "status": f"s{n}"})


def test_format_round_trip() -> None:
    archived = decode(_blob(5))
    assert (archived.session_id, archived.epoch, archived.last_seq) == ("sid", "ep", 5)
    assert [(e.seq, e.id, e.ts, e.data) for e in archived.events] == [
        (e.seq, e.id, e.ts, e.data) for e in _log(5)
    ]
    assert [orjson.loads(e.encoded) for e in archived.events] == [
        orjson.loads(e.encoded) for e in _log(5)
    ]
    assert archived.snapshot == {"seq": 5, "status": "s5"}
    assert seq_of(new_name(1234)) == 1234
    assert check_key(new_name(1)) and new_name(1) != new_name(1)


def _rewrite(blob: bytes, change: object) -> bytes:
    lines = gzip.decompress(blob).split(b"\n")
    assert callable(change)
    return gzip.compress(b"\n".join(change(lines)))


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # cut short
        lambda b: b[:-12] + bytes([b[-12] ^ 1]) + b[-11:],  # one bit of the stream
        lambda b: b"not gzip at all",
        lambda b: _rewrite(b, lambda ls: [*ls[:-2], b""]),  # no trailer
        lambda b: _rewrite(b, lambda ls: [ls[0], *ls[2:]]),  # an event lost
        lambda b: _rewrite(b, lambda ls: [ls[0], ls[1].replace(b"s1", b"s9"), *ls[2:]]),
        lambda b: _rewrite(b, lambda ls: [b'{"format": "other/9"}', *ls[1:]]),
    ],
)
def test_format_refuses_damage(damage: object) -> None:
    assert callable(damage)
    with pytest.raises(ArchiveCorrupt):
        decode(damage(_blob(5)))
